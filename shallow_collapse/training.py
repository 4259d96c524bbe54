"""SGD/MSE training of an :class:`~shallow_collapse.model.FCNEnsemble` with probes (MATH.md
sections 2 and 3).

Training runs in the ensemble's dtype (float32 by default, for speed); every probe re-evaluates
the network with a float64 copy of its parameters and computes all metrics in float64.

Loss: network r's loss is the mean over samples and outputs of (f - y)^2 (``torch.nn.MSELoss``
with ``reduction="mean"``); the optimised objective is the *sum* over networks of these means, so
each network receives exactly the gradient it would receive alone. ``torch.optim.SGD`` (lr,
momentum, weight_decay) updates elementwise, so stacking the parameters changes nothing either.
With ``batch_size < N`` every network shuffles its samples each epoch with its own generator
(seeded from its init seed), so its batches do not depend on the other networks.

Divergence: a network whose loss (on a batch, or at a probe) is NaN or infinite is marked
``diverged`` with the epoch it happened in; from then on it is excluded from the objective and
its probes are NaN, while the other networks keep training. When every network has diverged the
loop stops early. Nothing raises for a numerical failure.

What to train and probe comes as parameter groups (:class:`~shallow_collapse.params.SGDParams`,
:class:`~shallow_collapse.params.ProbeParams`); :func:`train` returns a :class:`TrainResult`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import metrics
from .data import one_hot_targets, scalar_targets
from .fast_gradients import TwoLayerGradients
from .model import FCNEnsemble, seed_int
from .params import ProbeParams, SGDParams

__all__ = ["make_targets", "predicted_classes", "probe", "train", "TrainResult", "probe_epochs", "weight_spectra"]


def make_targets(labels: torch.Tensor, num_classes: int, out_features: int) -> torch.Tensor:
    """``(N, out_features)`` float64 targets: scalar 2c-(C-1) for one output (MATH section 1),
    one-hot for ``out_features == num_classes``."""
    if out_features == 1:
        return scalar_targets(labels, num_classes).unsqueeze(-1)
    if out_features == num_classes:
        return one_hot_targets(labels, num_classes)
    raise ValueError(f"out_features must be 1 or num_classes={num_classes}, got {out_features}")


def predicted_classes(f: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class predicted from outputs ``f`` ``(..., N, out)``: argmax for C outputs; for one output
    the class whose target 2c-(C-1) is nearest (the sign of f for C=2)."""
    if f.shape[-1] == 1:
        c = torch.round((f[..., 0] + (num_classes - 1)) / 2.0)
        return c.clamp(0, num_classes - 1).nan_to_num(0).long()
    return f.argmax(-1)


def probe_epochs(num_epochs: int, probing_frequency: int | None) -> list[int]:
    """Epochs at which probes run: 0 (init), every ``probing_frequency`` and ``num_epochs``."""
    if not probing_frequency:
        return sorted({0, num_epochs})
    return sorted({0, num_epochs, *range(probing_frequency, num_epochs + 1, probing_frequency)})


def _nan(shape) -> np.ndarray:
    return np.full(shape, np.nan)


def _safe_metric(fn, H, labels, ok):
    """``fn(H[r], labels)`` for the networks in ``ok`` (batched, per network on failure); NaN
    elsewhere. A linear-algebra failure (e.g. eigh on inf entries) gives NaN, never an error."""
    out = _nan(H.shape[0])
    idx = torch.nonzero(torch.as_tensor(ok)).flatten()
    if len(idx) == 0:
        return out
    try:
        out[idx.numpy()] = fn(H[idx.to(H.device)], labels).cpu().numpy()
    except RuntimeError:
        for r in idx.tolist():
            try:
                out[r] = float(fn(H[r], labels))
            except RuntimeError:
                out[r] = np.nan
    return out


def weight_spectra(model: FCNEnsemble) -> dict[str, np.ndarray]:
    """Eigenvalues of W_l^T W_l (descending), ``{"W{l}": (R, min(out_l, in_l))}``, in float64.

    They are the squared singular values of W_l; the other in_l - min(out_l, in_l) eigenvalues of
    the in_l x in_l matrix W_l^T W_l are exactly zero and are not stored.
    """
    out = {}
    for l, W in enumerate(model.weights, start=1):
        W64 = W.detach().to(torch.float64)
        finite = torch.isfinite(W64).all(-1).all(-1)
        vals = torch.full((W64.shape[0], min(W64.shape[-2:])), float("nan"), dtype=torch.float64)
        if finite.any():
            try:
                vals[finite.cpu()] = (torch.linalg.svdvals(W64[finite]) ** 2).cpu()
            except RuntimeError:
                pass
        out[f"W{l}"] = vals.numpy()
    return out


def gram_matrices(model: FCNEnsemble) -> dict[str, np.ndarray]:
    """W_l^T W_l in float64, ``{"W{l}": (R, in_l, in_l)}``."""
    out = {}
    for l, W in enumerate(model.weights, start=1):
        W64 = W.detach().to(torch.float64)
        out[f"W{l}"] = (W64.transpose(-1, -2) @ W64).cpu().numpy()
    return out


@torch.no_grad()
def probe(model: FCNEnsemble, X: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
          num_classes: int, ok=None, features: bool = True, weights: bool = True) -> dict:
    """One probe of every network, in float64.

    Returns ``loss`` and ``accuracy`` ``(R,)``; with ``features`` also ``nc1`` and ``nc1_pinv``:
    ``{name: (R,)}`` for every feature map of :meth:`FCNEnsemble.forward` (metrics.nc1_features
    and metrics.nc1_pinv_from_means, equal to metrics.nc1_features_pinv); with ``weights`` also
    ``spectra`` (see :func:`weight_spectra`).
    Networks with ``ok[r]`` False (diverged) get NaN everywhere; a network whose float64 loss is
    not finite is reported with ``finite[r]`` False.
    """
    R = model.num_networks
    ok = np.ones(R, bool) if ok is None else np.asarray(ok, bool).copy()
    f, feats = model(X, features=True, dtype=torch.float64)
    T = targets.to(device=f.device, dtype=torch.float64)
    loss = ((f - T) ** 2).mean((-2, -1)).cpu().numpy()
    finite = np.isfinite(loss)
    ok &= finite
    pred = predicted_classes(f, num_classes).cpu()
    acc = (pred == labels.cpu()).double().mean(-1).numpy()
    out = {"loss": np.where(ok, loss, np.where(finite, np.nan, loss)),
           "accuracy": np.where(ok, acc, np.nan), "finite": finite, "output": f.cpu().numpy()}
    if features:
        lab = labels.to(f.device)
        out["nc1"] = {name: _safe_metric(metrics.nc1_features, H, lab, ok) for name, H in feats.items()}
        out["nc1_pinv"] = {name: _safe_metric(metrics.nc1_pinv_from_means, H, lab, ok) for name, H in feats.items()}
    if weights:
        spectra = weight_spectra(model)
        out["spectra"] = {k: np.where(ok[:, None], v, np.nan) for k, v in spectra.items()}
    return out


def _shuffle_generators(seeds):
    return [torch.Generator().manual_seed(seed_int(np.random.SeedSequence([s, 0x5EED]))) for s in seeds]


@dataclass
class TrainResult:
    """What :func:`train` records (NumPy arrays and lists; R networks, P probes, E epochs run).

    ``epochs``: the P probe epochs; ``train_loss`` ``(E, R)``: mean batch loss of each epoch run;
    ``loss``/``accuracy`` ``(P, R)``; ``data_nc1``/``data_nc1_pinv`` ``(R,)``: NC1 of the inputs;
    ``status`` (``ok``/``diverged`` per network) and ``diverged_epoch``; ``final_loss``,
    ``final_accuracy`` ``(R,)``; ``initial_output``/``final_output`` ``(R, N, out)`` (float64 network
    outputs; the first is None without the init probe); ``num_classes``; ``seconds``.
    With ``probe_features``: ``nc1``/``nc1_pinv`` ``{name: (P, R)}`` and ``final_nc1``/``final_nc1_pinv``
    ``{name: (R,)}`` for every feature map; with ``probe_weights``: ``spectra`` ``{"W{l}": (P, R, k)}``
    and ``gram_init``/``gram_final`` ``{"W{l}": (R, in, in)}`` (None otherwise).
    """

    epochs: list
    train_loss: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    data_nc1: np.ndarray
    data_nc1_pinv: np.ndarray
    status: list
    diverged_epoch: list
    final_loss: np.ndarray
    final_accuracy: np.ndarray
    initial_output: np.ndarray | None
    final_output: np.ndarray
    num_classes: int
    seconds: float
    nc1: dict | None = None
    nc1_pinv: dict | None = None
    final_nc1: dict | None = None
    final_nc1_pinv: dict | None = None
    spectra: dict | None = None
    gram_init: dict | None = None
    gram_final: dict | None = None


def train(model: FCNEnsemble, X: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
          sgd: SGDParams = SGDParams(), probes: ProbeParams = ProbeParams(), *, num_classes: int | None = None,
          probe_init: bool = True, fast_path: bool = True, log: logging.Logger | None = None) -> TrainResult:
    """Train every network of ``model`` with SGD (``sgd``) on the MSE loss and probe it (``probes``).

    ``X``: ``(N, d)`` shared by all networks or ``(R, N, d)`` one data set per network;
    ``targets``: ``(N,)`` or ``(N, out)`` with a shared ``X``, ``(R, N)`` or ``(R, N, out)`` with
    per-network ``X`` (a 1-D or ``(R, N)`` target is a scalar output); ``labels``: ``(N,)`` class of each
    sample (the same for every network).
    Probes (float64, see :func:`probe`) run at the epochs of :func:`probe_epochs` (without epoch 0
    when ``probe_init`` is False, e.g. in sweeps that only report the trained network).
    Two-layer networks without batch norm take their gradients from
    :class:`~shallow_collapse.fast_gradients.TwoLayerGradients`
    (``fast_path``, default) instead of autograd; the SGD update is ``torch.optim.SGD`` either way.
    """
    log = log or logging.getLogger(__name__)
    start = time.perf_counter()
    # Flush subnormal floats to zero while training: exp(-z^2) of the erf derivative produces
    # them for large |z| and they slow CPU arithmetic several-fold. Restored to the default after.
    # The two-layer fast path on CPU runs its sample chunks on torch.get_num_threads() Python
    # threads with single-threaded torch ops: one synchronisation per step instead of one per
    # operation, which matters on a shared machine. Thread count restored afterwards.
    threads = torch.get_num_threads()
    fast = None
    if fast_path and TwoLayerGradients.applies(model):
        cpu = model.weights[0].device.type == "cpu"
        # chunks sized for CPU caches; on a GPU one chunk (the whole batch) keeps the kernels large
        fast = TwoLayerGradients(model, chunk_elements=2**18 if cpu else 2**62, workers=threads if cpu else 1)
    torch.set_flush_denormal(True)
    if fast is not None and fast.workers > 1:
        torch.set_num_threads(1)
    try:
        return _train(model, X, targets, labels, sgd, probes, num_classes=num_classes, probe_init=probe_init,
                      fast=fast, log=log, start=start)
    finally:
        if fast is not None:
            fast.close()
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


@dataclass
class _Data:
    """The training data of :func:`_train`: float64 ``X64`` ``(R, N, d)`` and ``T64`` ``(R, N, out)``
    (what probes read), their copies ``Xt``, ``Tt`` in the ensemble's dtype (what SGD reads),
    ``labels`` ``(N,)`` on the CPU and the number of classes ``C``."""

    X64: torch.Tensor
    T64: torch.Tensor
    Xt: torch.Tensor
    Tt: torch.Tensor
    labels: torch.Tensor
    C: int

    @property
    def N(self) -> int:
        return self.X64.shape[1]


def _prepare_data(model, X, targets, labels, num_classes) -> _Data:
    """Move and broadcast the data to one set per network (shapes as in :func:`train`)."""
    R = model.num_networks
    p0 = model.weights[0]
    device, dtype = p0.device, p0.dtype
    labels = labels.cpu()
    C = int(num_classes if num_classes is not None else labels.max() + 1)
    X64 = X.to(device=device, dtype=torch.float64)
    X64 = X64.unsqueeze(0).expand(R, *X64.shape) if X64.dim() == 2 else X64
    T64 = targets.to(device=device, dtype=torch.float64)
    if T64.dim() == 1 or (T64.dim() == 2 and X.dim() == 3):  # (N,) or (R, N): scalar targets
        T64 = T64.unsqueeze(-1)
    T64 = T64.unsqueeze(0).expand(R, *T64.shape) if T64.dim() == 2 else T64
    if X64.shape[0] != R or T64.shape[0] != R or X64.shape[1] != len(labels) or T64.shape[1] != len(labels):
        raise ValueError(f"shapes: X {tuple(X.shape)}, targets {tuple(targets.shape)}, labels {tuple(labels.shape)}"
                         f" for an ensemble of {R}")
    return _Data(X64, T64, X64.to(dtype).contiguous(), T64.to(dtype).contiguous(), labels, C)


class _Recorder:
    """Per-network liveness (``alive``, and ``diverged_epoch``: when each network stopped, None
    while it trains) and the probe series of one training run; :meth:`result` assembles the
    :class:`TrainResult`."""

    def __init__(self, model, data: _Data, probes: ProbeParams, log):
        R = model.num_networks
        self.model, self.data, self.probes, self.log = model, data, probes, log
        self.alive = torch.ones(R, dtype=torch.bool, device=model.weights[0].device)
        self.diverged_epoch: list[int | None] = [None] * R
        self.epochs, self.loss, self.accuracy = [], [], []
        wanted = {"nc1": probes.probe_features, "nc1_pinv": probes.probe_features, "spectra": probes.probe_weights}
        self.series: dict[str, dict] = {key: {} for key, on in wanted.items() if on}  # key -> {name: [probe]}
        self.gram_init = gram_matrices(model) if probes.probe_weights else None
        self.initial_output = None
        lab = data.labels.to(self.alive.device)
        self.data_nc1 = metrics.nc1_features(data.X64, lab).cpu().numpy()
        self.data_nc1_pinv = metrics.nc1_features_pinv(data.X64, lab).cpu().numpy()

    def mark_diverged(self, newly, epoch):
        for r in newly:
            if self.diverged_epoch[r] is None:
                self.diverged_epoch[r] = epoch
                self.log.warning("network %d (seed %d) diverged at epoch %d: loss is not finite",
                                 r, self.model.seeds[r], epoch)

    def mark_dead(self, epoch) -> bool:
        """Mark the networks whose training loss stopped being finite; True when none is left."""
        dead = (~self.alive).cpu().numpy()
        self.mark_diverged([r for r in range(len(dead)) if dead[r]], epoch)
        return bool(dead.all())

    def probe(self, epoch) -> dict:
        """Probe every network (see :func:`probe`), record it and return the probe."""
        d = self.data
        ok = np.array([e is None for e in self.diverged_epoch])
        res = probe(self.model, d.X64, d.T64, d.labels, d.C, ok, self.probes.probe_features,
                    self.probes.probe_weights)
        newly = [r for r in range(len(ok)) if ok[r] and not res["finite"][r]]
        self.mark_diverged(newly, epoch)
        for r in newly:
            self.alive[r] = False
        self.epochs.append(epoch)
        self.loss.append(res["loss"])
        self.accuracy.append(res["accuracy"])
        for key, series in self.series.items():
            for name, v in res.get(key, {}).items():
                series.setdefault(name, []).append(v)
        self.log.info("epoch %d: loss %s accuracy %s", epoch, np.array2string(res["loss"], precision=4),
                      np.array2string(res["accuracy"], precision=3))
        return res

    def result(self, last: dict, train_loss: torch.Tensor, epochs_run: int, start: float) -> TrainResult:
        R, features = self.model.num_networks, self.probes.probe_features

        def stack(v):
            return np.stack(v) if len(v) else np.zeros((0, R))

        return TrainResult(
            epochs=list(self.epochs), train_loss=train_loss[:epochs_run].cpu().numpy(), loss=stack(self.loss),
            accuracy=stack(self.accuracy), data_nc1=self.data_nc1, data_nc1_pinv=self.data_nc1_pinv,
            status=["ok" if e is None else "diverged" for e in self.diverged_epoch],
            diverged_epoch=self.diverged_epoch, final_loss=last["loss"], final_accuracy=last["accuracy"],
            initial_output=self.initial_output, final_output=last["output"], num_classes=self.data.C,
            seconds=time.perf_counter() - start,
            **{key: {name: stack(v) for name, v in series.items()} for key, series in self.series.items()},
            final_nc1=dict(last["nc1"]) if features else None, final_nc1_pinv=dict(last["nc1_pinv"]) if features else None,
            gram_init=self.gram_init, gram_final=gram_matrices(self.model) if self.probes.probe_weights else None)


class _Batches:
    """One epoch's batches: the whole set, or (``batch_size < N``) every network's own shuffle of
    it, drawn from its generator (:func:`_shuffle_generators`) and split in order."""

    def __init__(self, model, data: _Data, batch_size):
        self.Xt, self.Tt, self.N, self.batch_size = data.Xt, data.Tt, data.N, batch_size
        device = data.Xt.device
        self.full = batch_size is None or batch_size >= self.N
        self.gens = None if self.full else _shuffle_generators(model.seeds)
        self.rows = torch.arange(model.num_networks, device=device).unsqueeze(-1)

    def epoch(self):
        if self.full:
            return [(self.Xt, self.Tt)]
        perm = torch.stack([torch.randperm(self.N, generator=g) for g in self.gens]).to(self.Xt.device)
        return [(self.Xt[self.rows, idx], self.Tt[self.rows, idx]) for idx in perm.split(self.batch_size, dim=1)]


def _losses_and_gradients(model, optimizer, fast, xb, tb, alive, zero):
    """Every network's loss on the batch ``(R,)``, with the gradients of the live ones' sum set
    (the fast path's or autograd's); ``alive`` is updated with the losses' finiteness."""
    if fast is not None:
        return fast(xb, tb, alive)
    optimizer.zero_grad(set_to_none=True)
    losses = (model(xb) - tb).pow(2).mean((-2, -1))
    with torch.no_grad():
        alive &= torch.isfinite(losses)
    torch.where(alive, losses, zero).sum().backward()
    return losses


def _train(model, X, targets, labels, sgd, probes, *, num_classes, probe_init, fast, log, start):
    data = _prepare_data(model, X, targets, labels, num_classes)
    batches = _Batches(model, data, sgd.batch_size)
    epochs = probe_epochs(sgd.num_epochs, probes.probing_frequency)
    rec = _Recorder(model, data, probes, log)
    optimizer = torch.optim.SGD(model.parameters(), lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay)
    p0 = model.weights[0]
    zero = torch.zeros((), dtype=p0.dtype, device=p0.device)
    train_loss = torch.zeros(sgd.num_epochs, model.num_networks, dtype=torch.float64, device=p0.device)
    last = rec.probe(0) if probe_init else None
    rec.initial_output = last["output"] if probe_init else None
    epochs_run = 0
    for epoch in range(1, sgd.num_epochs + 1):
        for xb, tb in batches.epoch():
            losses = _losses_and_gradients(model, optimizer, fast, xb, tb, rec.alive, zero)
            with torch.no_grad():
                train_loss[epoch - 1] += losses.detach().to(torch.float64) * (xb.shape[1] / data.N)
            optimizer.step()
        epochs_run = epoch
        if rec.mark_dead(epoch):
            log.warning("every network diverged; stopping at epoch %d", epoch)
            break
        if epoch in epochs:
            last = rec.probe(epoch)
    if last is None or (epochs_run and epochs_run not in rec.epochs):
        last = rec.probe(epochs_run)
    return rec.result(last, train_loss, epochs_run, start)

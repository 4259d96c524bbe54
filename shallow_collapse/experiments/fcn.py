"""Trained fully-connected networks: the sweep method ``fcn`` and the single run of ``fcn.py``.

Network init seeds are :func:`~shallow_collapse.model.network_seed` of (seed, class sizes, d,
repeat), so a sweep cell's repeat r and a single run with the same data keys (repeat 0) train
the very same network on the very same draw.
"""
from __future__ import annotations


import numpy as np
import torch

from .. import metrics
from . import error_rows
from ..devices import resolve_device, torch_threads
from ..kernels import kernel_names, limiting_kernels
from ..model import FCNEnsemble, network_seed
from ..params import NetworkParams, ProbeParams, SGDParams
from ..training import TrainResult, make_targets, predicted_classes, train
from . import Method, Row
from . import limiting_kernels as limiting_kernels_experiment
from . import single_run_data

__all__ = ["evaluate_cell", "run", "build_ensemble", "kernel_probe", "results_json", "cell_bytes", "probe_bytes",
           "METHOD"]

F32, F64 = 4, 8


def build_ensemble(cfg: dict, seeds, in_features: int, device=None, dtype=torch.float32) -> FCNEnsemble:
    """An :class:`FCNEnsemble` with the network keys of ``cfg`` and one network per seed."""
    return FCNEnsemble(seeds, in_features, cfg["hidden_features"], out_features=cfg["out_features"],
                       net=NetworkParams.from_config(cfg), use_batch_norm=cfg["use_batch_norm"], dtype=dtype,
                       device=device if device is not None else resolve_device(cfg["device"]))


# Sweep cells report the trained network only: no intermediate probes, no weight spectra.
CELL_PROBES = ProbeParams(probe_features=True, probe_weights=False, probing_frequency=None)


def evaluate_cell(cfg: dict, cell, datasets) -> list[dict]:
    """Train the repeats of ``cell`` as one ensemble (one network per draw) and report, per repeat,
    a row ``fcn`` (NC1 of the last hidden layer's post-activation features after training, both
    forms, with final loss and accuracy) plus the rows ``nngp`` and ``ntk`` of the same draw.

    ``batch_size`` >= N means full batch. A diverged network gives status ``diverged`` (NaN NC1,
    the epoch in ``diverged_epoch``); an unexpected failure of the training gives status ``error``
    with the message, never an exception.
    """
    C = len(cell.class_sizes)
    labels = datasets[0].labels  # shared by the draws of a cell (sweeps.cell_datasets)
    seeds = [network_seed(cfg["seed"], cell.class_sizes, cell.in_features, r) for r in cell.repeats]
    X = torch.stack([ds.X for ds in datasets])
    T = make_targets(labels, C, cfg["out_features"]).unsqueeze(0).expand(len(datasets), -1, -1)
    name = f"post{cfg['L'] - 1}"
    rows = []
    try:
        model = build_ensemble(cfg, seeds, cell.in_features)
        rec = train(model, X, T, labels, SGDParams.from_config(cfg), CELL_PROBES, num_classes=C, probe_init=False)
        per_net = rec.seconds / len(seeds)
        for i, r in enumerate(cell.repeats):
            rows.append({"method": "fcn", "repeat": r, "nc1": float(rec.final_nc1[name][i]),
                         "status": rec.status[i], "final_loss": float(rec.final_loss[i]),
                         "accuracy": float(rec.final_accuracy[i]),
                         "nc1_pinv": float(rec.final_nc1_pinv[name][i]),
                         "diverged_epoch": rec.diverged_epoch[i] if rec.diverged_epoch[i] is not None else "",
                         "network_seed": seeds[i], "train_seconds": per_net})
    except (RuntimeError, FloatingPointError) as exc:  # e.g. out of memory, a failed kernel
        rows = error_rows(["fcn"], cell.repeats, exc, network_seed=seeds)
    return rows + limiting_kernels_experiment.evaluate_cell(cfg, cell, datasets)


@torch.no_grad()
def kernel_probe(X: torch.Tensor, labels: torch.Tensor, net: NetworkParams) -> dict:
    """Limiting kernels of the network ``net`` on data ``X`` ``(N, d)`` (float64) with their NC1.

    Returns ``{name: {"kernel": (N, N), "eigenvalues": (N,) descending, "nc1": float}}`` for the
    names of :func:`~shallow_collapse.kernels.kernel_names` (``pre{l}``, ``post{l}``, ``ntk``).
    One thread: the eigenvalues do not depend on the thread count (that of the training loop).
    """
    out = {}
    with torch_threads(1):
        lk = limiting_kernels(X.to(torch.float64), net)
        for name, K in zip(kernel_names(net.L), [*lk.pre, *lk.post, lk.ntk]):
            eig = torch.linalg.eigvalsh(K).flip(-1)
            out[name] = {"kernel": K.cpu().numpy(), "eigenvalues": eig.cpu().numpy(),
                         "nc1": float(metrics.nc1_kernel(K, labels.to(K.device)))}
    return out


def results_json(result: TrainResult, network_seed_: int, kernels: dict | None = None) -> dict:
    """The JSON-serialisable part of a one-network training ``result`` (every probe by epoch) and,
    when given, the NC1 and spectra of the :func:`kernel_probe` ``kernels``."""
    def first(v):  # (P, R) -> (P,) for the single network
        return np.asarray(v)[..., 0] if np.ndim(v) >= 1 else v

    out = {
        "network_seed": network_seed_,
        "status": result.status[0], "diverged_epoch": result.diverged_epoch[0],
        "epochs": result.epochs,
        "train_loss": np.asarray(result.train_loss)[:, 0],
        "loss": first(result.loss), "accuracy": first(result.accuracy),
        "final_loss": float(result.final_loss[0]), "final_accuracy": float(result.final_accuracy[0]),
        "data_nc1": float(result.data_nc1[0]), "data_nc1_pinv": float(result.data_nc1_pinv[0]),
        "seconds": result.seconds,
    }
    for key in ("nc1", "nc1_pinv"):
        if getattr(result, key) is not None:
            out[key] = {name: first(v) for name, v in getattr(result, key).items()}
            out[f"final_{key}"] = {name: float(v[0]) for name, v in getattr(result, f"final_{key}").items()}
    if result.spectra is not None:  # (P, R, k) -> (P, k)
        out["spectra"] = {name: np.asarray(v)[:, 0] for name, v in result.spectra.items()}
    if kernels is not None:
        out["kernels"] = {name: {"nc1": k["nc1"], "eigenvalues": k["eigenvalues"]} for name, k in kernels.items()}
    return out


def plot_record(result: TrainResult, kernels: dict | None) -> dict:
    """What the figures of :mod:`shallow_collapse.plots.fcn` read: the recorded fields of
    ``result``, the predicted classes at init and at the end (``initial_prediction``,
    ``final_prediction`` ``(R, N)``) and the kernel probe."""
    record = {k: v for k, v in vars(result).items() if v is not None}
    for key in ("initial", "final"):
        if f"{key}_output" in record:
            f = torch.as_tensor(record[f"{key}_output"])
            record[f"{key}_prediction"] = predicted_classes(f, result.num_classes).numpy()
    if kernels is not None:
        record["kernels"] = kernels
    return record


def run(cfg: dict, run) -> None:
    """Train one network on the config's draw (repeat 0) and write ``results.json``,
    ``weights.pt`` (the ensemble's state dict, leading dimension 1; ``torch.load(...,
    weights_only=True)`` and :meth:`FCNEnsemble.load_state_dict`), ``initial_weights.pt`` and the
    plots of :mod:`shallow_collapse.plots.fcn`."""
    from ..plots.fcn import plot_run

    ds = single_run_data(cfg)
    sizes, d = tuple(cfg["class_sizes"]), cfg["in_features"]
    seed = network_seed(cfg["seed"], sizes, d, 0)
    device = resolve_device(cfg["device"])
    model = build_ensemble(cfg, [seed], d, device=device)
    run.log.info("training one network: N=%d d=%d h=%d L=%d %s on %s (network seed %d)", len(ds.labels), d,
                 cfg["hidden_features"], cfg["L"], cfg["activation"], device, seed)
    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    targets = make_targets(ds.labels, len(sizes), cfg["out_features"])
    kernels = kernel_probe(ds.X.to(device), ds.labels, model.net) if cfg["probe_kernels"] else None
    result = train(model, ds.X, targets, ds.labels, SGDParams.from_config(cfg), ProbeParams.from_config(cfg),
                   num_classes=len(sizes), log=run.log)
    results = results_json(result, seed, kernels)
    run.write_json("results.json", results)
    run.save_tensors("weights.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    run.save_tensors("initial_weights.pt", initial)
    run.log.info("status %s, final loss %.4g, accuracy %.3f, %.1f s", results["status"], results["final_loss"],
                 results["final_accuracy"], results["seconds"])
    if results["status"] != "ok":
        run.log.warning("the network diverged at epoch %s", results["diverged_epoch"])
    plot_run(plot_record(result, kernels), ds.X.numpy(), ds.labels.numpy(), run.plots)


def cell_bytes(cfg: dict, N: int, d: int, R: int) -> int:
    """The limiting kernels of the draws, plus R networks' weights, gradients, features and probes."""
    h, layers = cfg["hidden_features"], cfg["L"] - 1
    params = d * h + (layers - 1) * h * h + h * cfg["out_features"] + layers * h
    training = R * params * F32 * 4 + layers * R * N * h * (4 * F32 + 4 * F64)  # weights, grads, features
    probes = layers * R * h * h * F64 * 3 + R * cfg["num_epochs"] * F64
    return limiting_kernels_experiment.cell_bytes(cfg, N, d, R) + training + probes


def probe_bytes(cfg: dict) -> int:
    """What a single run records besides its cell: the probes' snapshots, and the probed kernels."""
    N, probes = cfg["N"], cfg["num_epochs"] // cfg["probing_frequency"] + 2
    kernels = (3 * cfg["L"] + 2) * N * N * F64 if cfg["probe_kernels"] else 0
    return probes * (cfg["L"] - 1) * cfg["hidden_features"] * F64 * 8 + kernels


METHOD = Method(
    prefix="fcn", description=f"NC1 of trained fully-connected networks, with the NNGP and NTK of the same draws, "
                              f"{limiting_kernels_experiment.GRID_OF}",
    owns=(Row("fcn", "FCN", ("network", "init", "fcn")),), reports=("fcn", "nngp", "ntk"), evaluate_cell=evaluate_cell,
    scopes=("network", "init", "fcn"), cell_bytes=cell_bytes, memory_keys=("hidden_features", "L", "num_epochs"),
    paper=True)

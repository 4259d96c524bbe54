"""Fully-connected networks (MATH.md section 2) as a batched ensemble of independent networks.

An :class:`FCNEnsemble` holds R networks with identical shapes; every parameter is stacked with a
leading dimension R and the forward pass is one batched matrix product per layer
(``torch.baddbmm`` on inputs of shape ``(R, N, d)``). Network r is initialised from its own seed
``seeds[r]`` alone, so an ensemble of R networks starts from exactly the parameters of R
single-network ensembles built with the same seeds, and (since every network's loss and every
optimizer update are separate, see :mod:`shallow_collapse.training`) trains to the same weights.

Architecture, for l = 1..L:
    z^l = W_l h^{l-1} + b_l   (h^0 = x),   h^l = phi(BN(z^l)) for l < L,   f = z^L,
with W_l of shape ``(out, in)`` as in ``torch.nn.Linear``. Initialisation (MATH section 2):
W_1 ~ N(0, sw^2/d), hidden W_l ~ N(0, sw^2/h), W_L ~ N(0, so^2/h), all biases ~ N(0, sb^2).
Each network's draws come from a CPU ``torch.Generator`` seeded with its seed, in float64, in
the order W_1, b_1, W_2, b_2, ..., then cast to the training dtype and moved to the device, so
initial weights do not depend on the device or on R.

Optional batch norm (``use_batch_norm``) normalises every hidden pre-activation over the samples
of the batch it is given (per network and unit, biased variance, eps=1e-5) followed by a learned
scale (init 1) and shift (init 0). It keeps no running averages: a forward pass on the whole
training set (as the probes do) uses that set's statistics. The "pre-activation" features of a
hidden layer are the input of phi, i.e. after batch norm when it is on.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import draw_seed
from .params import NetworkParams

__all__ = ["FCNEnsemble", "network_seed", "seed_int"]

BN_EPS = 1e-5


def seed_int(seed_sequence: np.random.SeedSequence) -> int:
    """A 63-bit integer seed for ``torch.Generator.manual_seed`` from a NumPy seed sequence."""
    return int(seed_sequence.generate_state(1, np.uint64)[0]) & ((1 << 63) - 1)


def network_seed(seed: int, class_sizes, d: int, repeat: int) -> int:
    """Init seed of the network trained on draw ``repeat`` of a cell: a function of
    (seed, class sizes, d, repeat) only (a child of :func:`data.draw_seed`, so it never collides
    with the data stream)."""
    return seed_int(draw_seed(seed, class_sizes, d, repeat).spawn(1)[0])


class FCNEnsemble(torch.nn.Module):
    """R independent L-layer fully-connected networks evaluated in one batched pass.

    ``net`` (the paper's by default) gives L, the activation and the init stds; ``hidden_features``
    is the width h of every hidden layer, ``out_features`` the number of outputs.

    Parameters (all ``torch.nn.Parameter``, leading dimension R):
    ``weights[l]``: ``(R, out_l, in_l)``; ``biases[l]``: ``(R, out_l)``; with batch norm also
    ``bn_scales[l]``, ``bn_shifts[l]``: ``(R, h)`` for each hidden layer.
    """

    def __init__(self, seeds, in_features: int, hidden_features: int, *, out_features: int = 1,
                 net: NetworkParams = NetworkParams(), use_batch_norm: bool = False, dtype=torch.float32,
                 device="cpu"):
        super().__init__()
        num_layers = net.L
        if num_layers < 2:
            raise ValueError(f"num_layers must be >= 2 (one hidden layer at least), got {num_layers}")
        self.phi = net.act.phi
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("an ensemble needs at least one seed")
        self.in_features, self.hidden_features, self.out_features = in_features, hidden_features, out_features
        self.net, self.use_batch_norm = net, use_batch_norm
        widths = [in_features] + [hidden_features] * (num_layers - 1) + [out_features]
        self.widths = widths
        stds = [net.hidden_weight_std / in_features**0.5]
        stds += [net.hidden_weight_std / hidden_features**0.5] * (num_layers - 2)
        stds += [net.final_weight_std / hidden_features**0.5]
        weights = [[] for _ in range(num_layers)]
        biases = [[] for _ in range(num_layers)]
        for seed in self.seeds:
            gen = torch.Generator().manual_seed(seed)
            for l in range(num_layers):
                fan_in, fan_out = widths[l], widths[l + 1]
                weights[l].append(torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64) * stds[l])
                biases[l].append(torch.randn(fan_out, generator=gen, dtype=torch.float64) * net.bias_std)
        opts = dict(dtype=dtype, device=device)
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(torch.stack(w).to(**opts)) for w in weights])
        self.biases = torch.nn.ParameterList([torch.nn.Parameter(torch.stack(b).to(**opts)) for b in biases])
        R = len(self.seeds)
        if use_batch_norm:
            self.bn_scales = torch.nn.ParameterList(
                [torch.nn.Parameter(torch.ones(R, hidden_features, **opts)) for _ in range(num_layers - 1)])
            self.bn_shifts = torch.nn.ParameterList(
                [torch.nn.Parameter(torch.zeros(R, hidden_features, **opts)) for _ in range(num_layers - 1)])

    @property
    def num_networks(self) -> int:
        return len(self.seeds)

    @property
    def num_layers(self) -> int:
        return self.net.L

    @property
    def activation(self) -> str:
        return self.net.activation

    def _batch_norm(self, z, l, params):
        mean = z.mean(-2, keepdim=True)
        var = z.var(-2, unbiased=False, keepdim=True)
        z = (z - mean) * torch.rsqrt(var + BN_EPS)
        return z * params["bn_scales"][l].unsqueeze(-2) + params["bn_shifts"][l].unsqueeze(-2)

    def _params(self, dtype=None):
        names = ["weights", "biases"] + (["bn_scales", "bn_shifts"] if self.use_batch_norm else [])
        out = {}
        for name in names:
            plist = getattr(self, name)
            out[name] = [p if dtype is None else p.detach().to(dtype) for p in plist]
        return out

    def forward(self, X: torch.Tensor, features: bool = False, dtype=None):
        """Outputs ``(R, N, out_features)`` for inputs ``X`` of shape ``(R, N, d)`` (one data set
        per network) or ``(N, d)`` (shared by all networks).

        With ``features=True`` returns ``(f, feats)`` where ``feats`` maps ``pre{l}`` (l = 1..L;
        ``pre{L}`` is the output f) and ``post{l}`` (l = 1..L-1) to ``(R, N, width)`` tensors.
        ``dtype`` evaluates a detached copy of the parameters in that dtype (e.g. float64 for
        probes) without touching the trained parameters.
        """
        params = self._params(dtype)
        R = self.num_networks
        h = X if dtype is None else X.to(dtype)
        if h.dim() == 2:
            h = h.unsqueeze(0).expand(R, *h.shape)
        feats = {}
        for l in range(self.num_layers):
            W, b = params["weights"][l], params["biases"][l]
            z = torch.baddbmm(b.unsqueeze(-2), h, W.transpose(-1, -2))
            if l == self.num_layers - 1:
                feats[f"pre{l + 1}"] = z
                break
            if self.use_batch_norm:
                z = self._batch_norm(z, l, params)
            h = self.phi(z)
            if features:
                feats[f"pre{l + 1}"], feats[f"post{l + 1}"] = z, h
        return (z, feats) if features else z

    def feature_names(self) -> list[str]:
        """Names of the feature maps :meth:`forward` returns with ``features=True``."""
        L = self.num_layers
        return [f"pre{l}" for l in range(1, L + 1)] + [f"post{l}" for l in range(1, L)]

    def network_state(self, r: int) -> dict:
        """State dict of network ``r`` alone (tensors without the leading R dimension)."""
        return {k: v[r].detach().clone() for k, v in self.state_dict().items()}

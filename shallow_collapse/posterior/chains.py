"""The chain driver: Gibbs sweeps of every chain (:mod:`.gibbs`) with a recorder of the retained ones.

Chain b draws every random number from its own CPU generator, so a chain gives the same numbers
(up to round-off) on any device, in any chain group and beside any other chains. Chains run in
groups whose matrices fit the last-level cache (``GROUP_BYTES``): a sweep reads every chain's
inverse and features once per candidate, so it runs at cache bandwidth rather than memory's
(bench/bench_posterior.py measures it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .. import metrics
from ..gp import readout_posterior
from . import gibbs

__all__ = ["Recorder", "ChainRun", "run_chains", "chain_groups", "GROUP_BYTES"]

GROUP_BYTES = 12 * 2**20  # a chain group's float64 matrices: two cells at once share a 32 MiB L3


class Recorder:
    """Per retained sweep and chain: the series ``tr_w``, ``tr_b`` (traces of Sigma_W, Sigma_B of
    K_W = c F F^T; linear in K, so chain means give the NC1 of E[K_W]) and ``sigma_trace``
    (Tr W^T W / h), and running sums of W^T W / h ``(B, d, d)``, of the Rao-Blackwellised
    E[f | W] ``(B, N, C)`` and of E[|a|^2 | W] ``(B,)`` (:func:`shallow_collapse.gp.readout_posterior`)."""

    def __init__(self, target: gibbs.GibbsTarget, labels: torch.Tensor):
        self.target, self.labels = target, labels
        self.series = {"tr_w": [], "tr_b": [], "sigma_trace": []}
        self.count = 0
        self.sigma_sum = self.f_sum = self.a2_sum = 0.0

    @torch.no_grad()
    def record(self, W: torch.Tensor, F: torch.Tensor) -> None:
        t = self.target
        tr_w, tr_b = metrics.feature_traces(F * math.sqrt(t.c), self.labels)
        S = W.transpose(-1, -2) @ W / t.h
        readout = readout_posterior(F, t.Y, t.c, t.sig2)
        self.series["tr_w"].append(tr_w)
        self.series["tr_b"].append(tr_b)
        self.series["sigma_trace"].append(torch.diagonal(S, dim1=-2, dim2=-1).sum(-1))
        self.sigma_sum = self.sigma_sum + S
        self.f_sum = self.f_sum + readout.f_mean
        self.a2_sum = self.a2_sum + readout.sq_norm
        self.count += 1

    def arrays(self) -> dict:
        """The series as ``(S, B)`` numpy arrays and the posterior means ``sigma`` ``(B, d, d)``,
        ``f`` ``(B, N, C)``, ``a2`` ``(B,)`` per chain."""
        out = {k: torch.stack(v).cpu().numpy() if v else np.zeros((0, self.target.X.shape[0]))
               for k, v in self.series.items()}
        n = max(self.count, 1)
        out.update(sigma=np.asarray((self.sigma_sum / n).cpu()), f=np.asarray((self.f_sum / n).cpu()),
                   a2=np.asarray((self.a2_sum / n).cpu()))
        return out


@dataclass
class ChainRun:
    """A finished run: the recorder's arrays; per chain ``(B,)`` the mean candidates per neuron
    update (``evaluations``), the cut brackets (``cuts``), the largest relative drift of the
    updated inverse before a refactorisation (``drift``); the sweeps and the wall time."""

    records: dict
    evaluations: np.ndarray
    cuts: np.ndarray
    drift: np.ndarray
    sweeps: int
    seconds: float
    W: torch.Tensor = field(repr=False)


def chain_groups(B: int, N: int, h: int) -> list[slice]:
    """Consecutive chain groups whose features ``(N, h)`` and inverse ``(N, N)`` fit ``GROUP_BYTES`` in
    float64 (at least one chain per group)."""
    size = max(1, GROUP_BYTES // (8 * (N * h + N * N)))
    return [slice(s, min(s + size, B)) for s in range(0, B, size)]


def _run_group(target: gibbs.GibbsTarget, labels, W0, generators, burn_in: int, samples: int, scale_move: bool):
    state = gibbs.init(target, W0.clone())
    recorder = Recorder(target, labels)
    evals = torch.zeros(W0.shape[0], dtype=W0.dtype, device=W0.device)
    cuts, drift = torch.zeros_like(evals), torch.zeros_like(evals)
    for t in range(burn_in + samples):
        noise = gibbs.draw_noise(generators, target.h, W0.shape[-1], W0.dtype, W0.device)
        info = gibbs.sweep(target, state, noise, scale_move=scale_move)
        evals += info.evaluations
        cuts += info.cuts
        drift = torch.maximum(drift, torch.nan_to_num(info.drift, nan=math.inf))
        if t >= burn_in:
            recorder.record(state.W, state.F)
    return recorder.arrays(), evals / max(burn_in + samples, 1), cuts, drift, state.W


def run_chains(target: gibbs.GibbsTarget, labels: torch.Tensor, W0: torch.Tensor,
               generators: list[torch.Generator], *, burn_in: int, samples: int, scale_move: bool) -> ChainRun:
    """``burn_in`` then ``samples`` recorded sweeps of every chain from ``W0`` ``(B, h, d)``, chain b
    drawing from ``generators[b]``; ``scale_move`` only for positively homogeneous activations."""
    start = time.perf_counter()
    parts = []
    for g in chain_groups(W0.shape[0], target.X.shape[-2], target.h):
        sub = replace(target, X=target.X[g], Y=target.Y[g])
        parts.append(_run_group(sub, labels, W0[g], generators[g], burn_in, samples, scale_move))
    records = {k: np.concatenate([p[0][k] for p in parts], axis=1 if k in ("tr_w", "tr_b", "sigma_trace") else 0)
               for k in parts[0][0]}
    cat = lambda i: torch.cat([p[i] for p in parts]).cpu().numpy()
    return ChainRun(records, cat(1), cat(2), cat(3), burn_in + samples, time.perf_counter() - start,
                    torch.cat([p[4] for p in parts]))

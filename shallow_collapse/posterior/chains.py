"""The chain driver: burn-in with per-chain step-size adaptation, then frozen-step sampling with a recorder.

All chains advance together as one batch (B = draws x chains). Chain b draws its start (a prior
draw of v) and every random number from its own generator, seeded by ``seeds[b]``, on the CPU,
so a chain gives the same numbers on any device up to round-off and however many chains run
beside it.

Adaptation (burn-in only): log eps_b += gain_t (p_b - target), p_b the chain's acceptance
probability of step t, gain_t = 1 / (t + 10)^0.6 (a Robbins-Monro sequence). The step is frozen
when sampling starts, so the sampled chain is a time-homogeneous Markov chain with the exact
posterior as its stationary law.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import metrics
from ..gp import readout_posterior
from .steps import State, initial_state, mh_step
from .target import CollapsedPosterior

__all__ = ["Recorder", "ChainRun", "run_chains"]


class Recorder:
    """What a retained sample contributes (per chain): the traces of Sigma_W, Sigma_B of its kernel
    K_W = (siga2/h) F F^T (``tr_w``, ``tr_b``: series ``(S, B)``, linear in K, so chain means give
    the NC1 of the posterior-averaged kernel), Tr (1/h) W^T W (series), and running sums of
    (1/h) W^T W ``(B, d, d)``, of the Rao-Blackwellised E[f | W] = F m_W ``(B, N, C)`` and of
    E[|a|^2 | W] ``(B,)`` from the conditional readout (:func:`shallow_collapse.gp.readout_posterior`)."""

    def __init__(self, target: CollapsedPosterior, labels: torch.Tensor):
        self.target, self.labels = target, labels
        self.series = {"tr_w": [], "tr_b": [], "sigma_trace": []}
        self.count = 0
        self.sigma_sum = self.f_sum = self.a2_sum = 0.0

    @torch.no_grad()
    def record(self, v: torch.Tensor) -> None:
        t = self.target
        h = v.shape[-2]
        F = t.features(v)
        tr_w, tr_b = metrics.feature_traces(F * math.sqrt(t.scale(h)), self.labels)
        W = t.weights(v)
        S = W.transpose(-1, -2) @ W / h
        readout = readout_posterior(F, t.Y, t.scale(h), t.sig2)
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
        out = {k: torch.stack(v).cpu().numpy() for k, v in self.series.items()}
        n = max(self.count, 1)
        out.update(sigma=(self.sigma_sum / n).cpu().numpy(), f=(self.f_sum / n).cpu().numpy(),
                   a2=(self.a2_sum / n).cpu().numpy())
        return out


@dataclass
class ChainRun:
    """A finished run: the recorder's arrays, the frozen step sizes ``eps`` ``(B,)``, the mean
    acceptance probability of each chain while sampling ``acceptance`` ``(B,)``, the steps taken and
    the wall time."""

    records: dict
    eps: np.ndarray
    acceptance: np.ndarray
    steps: int
    seconds: float
    v: torch.Tensor = field(repr=False)


def _normal(generators, shape, dtype, device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in generators]).to(device)


def _uniform(generators, dtype, device) -> torch.Tensor:
    return torch.stack([torch.rand((), generator=g, dtype=dtype) for g in generators]).to(device)


ADAPT_OFFSET, ADAPT_DECAY = 10.0, 0.6  # gain_t = 1 / (t + 10)^0.6: sum gain = inf, sum gain^2 < inf


def run_chains(target: CollapsedPosterior, labels: torch.Tensor, h: int, seeds: list[int], *, proposal: str,
               eps0: float, target_acceptance: float, burn_in: int, samples: int, thin: int) -> ChainRun:
    """Start one chain per seed at a prior draw of v ``(h, d)``, adapt its step over ``burn_in``
    steps, then record every ``thin``-th of ``samples * thin`` steps with the step frozen."""
    X = target.X
    B, d = X.shape[0], X.shape[-1]
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    v = _normal(generators, (h, d), X.dtype, X.device)
    state: State = initial_state(target, v)
    log_eps = torch.full((B,), math.log(eps0), dtype=X.dtype, device=X.device)
    recorder = Recorder(target, labels)
    acc_sum = torch.zeros(B, dtype=X.dtype, device=X.device)
    start = time.perf_counter()
    total = burn_in + samples * thin
    for t in range(total):
        noise = _normal(generators, (h, d), X.dtype, X.device)
        uniform = _uniform(generators, X.dtype, X.device)
        state, prob = mh_step(target, state, torch.exp(log_eps), noise, uniform, proposal)
        if t < burn_in:
            log_eps += (prob - target_acceptance) / (t + ADAPT_OFFSET) ** ADAPT_DECAY
        else:
            acc_sum += prob
            if (t - burn_in + 1) % thin == 0:
                recorder.record(state.v)
    sampled = max(total - burn_in, 1)
    return ChainRun(recorder.arrays(), torch.exp(log_eps).cpu().numpy(), (acc_sum / sampled).cpu().numpy(),
                    total, time.perf_counter() - start, state.v)

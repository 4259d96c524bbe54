"""Sample the collapsed posterior of one or more draws and reduce the chains to one result per draw."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .chains import run_chains
from .diagnostics import effective_size, ratio_log10, split_rhat
from .target import CollapsedPosterior

__all__ = ["PosteriorResult", "sample_posterior"]


@dataclass
class PosteriorResult:
    """One draw's posterior from its M chains.

    ``log10_nc1``, ``se_log10_nc1``: NC1 of the posterior-averaged kernel E[K_W] (ratio of the
    chain-averaged traces; delta-method standard error over the M independent chains).
    ``sigma``: E[(1/h) W^T W] ``(d, d)`` (what the AK's Sigma approximates); ``sigma_trace`` with
    its standard error over chains. ``f``: E[f(X)] ``(N, C)`` and ``a2``: E|a|^2, both
    Rao-Blackwellised. ``rhat``: the largest split R-hat and ``ess``: the smallest effective size
    over the series tr_w, tr_b, their ratio and Tr Sigma_W. ``acceptance``: mean acceptance
    probability while sampling, ``eps``: the frozen step sizes (mean over chains). ``status``:
    ok, not_converged, nan (with ``message``).
    """

    log10_nc1: float
    se_log10_nc1: float
    sigma: np.ndarray
    sigma_trace: float
    se_sigma_trace: float
    f: np.ndarray
    a2: float
    rhat: float
    ess: float
    acceptance: float
    eps: float
    status: str
    message: str
    steps: int
    seconds: float


def _status(value: float, rhat: float, ess: float, rhat_max: float, ess_min: float) -> tuple[str, str]:
    if not math.isfinite(value):
        return "nan", "the posterior-averaged kernel's NC1 is not finite"
    if not (rhat <= rhat_max):
        return "not_converged", f"split R-hat {rhat:.3g} > {rhat_max:g}: more burn-in or samples"
    if not (ess >= ess_min):
        return "not_converged", f"effective sample size {ess:.3g} < {ess_min:g}: more samples"
    return "ok", ""


def _reduce(records: dict, chains: slice, run, rhat_max: float, ess_min: float, seconds: float) -> PosteriorResult:
    tw, tb, st = (records[k][:, chains] for k in ("tr_w", "tr_b", "sigma_trace"))
    value, se = ratio_log10(tw.mean(0), tb.mean(0))
    series = (tw, tb, tw / tb, st)
    finite = all(np.all(np.isfinite(x)) for x in series)
    rhat = max(split_rhat(x) for x in series) if finite else math.nan
    ess = min(effective_size(x) for x in series) if finite else math.nan
    per_chain = st.mean(0)
    status, message = _status(value, rhat, ess, rhat_max, ess_min)
    M = per_chain.shape[0]
    return PosteriorResult(
        log10_nc1=value, se_log10_nc1=se, sigma=records["sigma"][chains].mean(0),
        sigma_trace=float(per_chain.mean()),
        se_sigma_trace=float(per_chain.std(ddof=1) / math.sqrt(M)) if M > 1 else math.nan,
        f=records["f"][chains].mean(0), a2=float(records["a2"][chains].mean()), rhat=rhat, ess=ess,
        acceptance=float(run.acceptance[chains].mean()), eps=float(run.eps[chains].mean()), status=status,
        message=message, steps=run.steps, seconds=seconds)


def sample_posterior(X: torch.Tensor, Y: torch.Tensor, labels: torch.Tensor, phi: Callable, *, sigw2: float,
                     siga2: float, sig2: float, h: int, params, seeds: list[int]) -> list[PosteriorResult]:
    """Sample the collapsed posterior of each draw: ``X`` ``(R, N, d)``, ``Y`` ``(R, N, C)``, the same
    ``labels`` ``(N,)`` for every draw, ``params`` a :class:`~shallow_collapse.params.PosteriorParams`,
    ``seeds`` ``R * params.chains`` chain seeds (draw r owns ``seeds[r*M:(r+1)*M]``). All chains of
    all draws run as one batch. Returns one result per draw (``seconds`` is the batch's wall time
    divided among the draws)."""
    R, M = X.shape[0], params.chains
    target = CollapsedPosterior(X.repeat_interleave(M, 0), Y.repeat_interleave(M, 0), phi, sigw2, siga2, sig2)
    run = run_chains(target, labels, h, seeds, proposal=params.proposal, eps0=params.step,
                     target_acceptance=params.target_acceptance, burn_in=params.burn_in,
                     samples=params.samples, thin=params.thin)
    return [_reduce(run.records, slice(r * M, (r + 1) * M), run, params.rhat_max, params.ess_min, run.seconds / R)
            for r in range(R)]

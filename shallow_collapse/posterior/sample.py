"""Sample the collapsed posterior of one or more draws and reduce the chains to one result per draw.

Each draw runs M chains (M even): the first M / 2 start from the prior, the others with the rows
of W drawn from N(0, Sigma_start) (the AK's Sigma of the same draw: overdispersed starts from the
theory under test). A draw is ``ok`` only when every diagnostic passes on the four series tr_w,
tr_b, their ratio and Tr Sigma (rank-normalised split R-hat, bulk and tail effective sizes,
:mod:`.diagnostics`), the Monte Carlo SE of log10 NC1 is small enough, and the two halves agree
on log10 NC1 and Tr Sigma within 4 combined Monte Carlo SEs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import diagnostics
from .chains import run_chains
from .compiled import activation_code
from .gibbs import GibbsTarget

__all__ = ["PosteriorResult", "sample_posterior", "AGREEMENT_SE"]

AGREEMENT_SE = 4.0  # the two halves' estimates may differ by this many combined Monte Carlo SEs
LN10 = math.log(10.0)


@dataclass
class PosteriorResult:
    """One draw's posterior from its M chains.

    ``log10_nc1``, ``se_log10_nc1``: NC1 of the posterior-averaged kernel E[K_W] (ratio of the
    chain-averaged traces) and its Monte Carlo SE (the MCSE of the delta method's linearised
    series tr_w / E tr_w - tr_b / E tr_b, divided by ln 10). ``sigma``: E[(1/h) W^T W] ``(d, d)``
    (what the AK's Sigma approximates); ``sigma_trace`` with its MCSE. ``f``: E[f(X)] ``(N, C)``
    and ``a2``: E|a|^2, both Rao-Blackwellised. ``rhat``: the largest rank-normalised split R-hat,
    ``ess_bulk``, ``ess_tail``: the smallest effective sizes over the four series. ``halves``:
    log10 NC1 from the prior-started and from the Sigma-started chains. ``evaluations``: mean
    candidates per neuron update; ``cuts``: brackets cut; ``drift``: the largest relative drift of
    the updated inverse. ``status``: ok, not_converged, nan (with ``message``). ``traces``: the
    series ``(S, M)`` by name.
    """

    log10_nc1: float
    se_log10_nc1: float
    sigma: np.ndarray
    sigma_trace: float
    se_sigma_trace: float
    f: np.ndarray
    a2: float
    rhat: float
    ess_bulk: float
    ess_tail: float
    halves: tuple[float, float]
    evaluations: float
    cuts: int
    drift: float
    status: str
    message: str
    sweeps: int
    seconds: float
    traces: dict = field(repr=False, default_factory=dict)


def _log10_ratio(tw: np.ndarray, tb: np.ndarray) -> tuple[float, float]:
    """log10(E tr_w / E tr_b) over draws ``(S, M)`` and its MCSE (delta method on the series)."""
    mw, mb = tw.mean(), tb.mean()
    if not (mw > 0 and mb > 0):
        return math.nan, math.nan
    return math.log10(mw / mb), diagnostics.mcse_mean(tw / mw - tb / mb) / LN10


def _disagreement(tw, tb, st, half: int) -> float:
    """The larger of the halves' differences in log10 NC1 and in Tr Sigma, in combined MCSEs."""
    a, b = slice(0, half), slice(half, None)
    (va, sa), (vb, sb) = _log10_ratio(tw[:, a], tb[:, a]), _log10_ratio(tw[:, b], tb[:, b])
    ta, tb_ = st[:, a].mean(), st[:, b].mean()
    za = abs(va - vb) / math.hypot(sa, sb)
    zb = abs(ta - tb_) / math.hypot(diagnostics.mcse_mean(st[:, a]), diagnostics.mcse_mean(st[:, b]))
    return max(za, zb)


def _status(value, se, rhat, ess_bulk, ess_tail, disagreement, params) -> tuple[str, str]:
    if not math.isfinite(value):
        return "nan", "the posterior-averaged kernel's NC1 is not finite"
    if not (rhat <= params.rhat_max):
        return "not_converged", f"rank R-hat {rhat:.3g} > {params.rhat_max:g}: more burn-in or sweeps"
    if not (min(ess_bulk, ess_tail) >= params.ess_min):
        return "not_converged", (f"effective sample size (bulk {ess_bulk:.3g}, tail {ess_tail:.3g}) < "
                                 f"{params.ess_min:g}: more sweeps")
    if not (se <= params.se_max):
        return "not_converged", f"Monte Carlo SE of log10 NC1 {se:.3g} > {params.se_max:g}: more sweeps"
    if not (disagreement <= AGREEMENT_SE):
        return "not_converged", (f"the prior-started and Sigma-started chains differ by {disagreement:.3g} "
                                 f"Monte Carlo SEs (> {AGREEMENT_SE:g}): a mode not yet crossed")
    return "ok", ""


def _reduce(run, chains: slice, params, seconds: float) -> PosteriorResult:
    rec = run.records
    tw, tb, st = (rec[k][:, chains] for k in ("tr_w", "tr_b", "sigma_trace"))
    M = tw.shape[1]
    value, se = _log10_ratio(tw, tb)
    traces = {"tr_w": tw, "tr_b": tb, "nc1": tw / tb, "sigma_trace": st}
    finite = all(np.all(np.isfinite(x)) for x in traces.values()) and tw.shape[0] >= 4
    rhat = max(diagnostics.rhat(x) for x in traces.values()) if finite else math.nan
    ess_bulk = min(diagnostics.ess_bulk(x) for x in traces.values()) if finite else math.nan
    ess_tail = min(diagnostics.ess_tail(x) for x in traces.values()) if finite else math.nan
    halves = (_log10_ratio(tw[:, :M // 2], tb[:, :M // 2])[0], _log10_ratio(tw[:, M // 2:], tb[:, M // 2:])[0])
    disagreement = _disagreement(tw, tb, st, M // 2) if finite else math.nan
    status, message = _status(value, se, rhat, ess_bulk, ess_tail, disagreement, params)
    return PosteriorResult(
        log10_nc1=value, se_log10_nc1=se, sigma=rec["sigma"][chains].mean(0), sigma_trace=float(st.mean()),
        se_sigma_trace=diagnostics.mcse_mean(st) if finite else math.nan, f=rec["f"][chains].mean(0),
        a2=float(rec["a2"][chains].mean()), rhat=rhat, ess_bulk=ess_bulk, ess_tail=ess_tail, halves=halves,
        evaluations=float(run.evaluations[chains].mean()), cuts=int(run.cuts[chains].sum()),
        drift=float(run.drift[chains].max()), status=status, message=message, sweeps=run.sweeps, seconds=seconds,
        traces=traces)


def _starts(generators, h: int, d: int, sigw2: float, start_sigma, M: int, dtype) -> torch.Tensor:
    """W ``(B, h, d)``: chain b of draw r from the prior when b % M < M / 2, else rows ~ N(0, Sigma_r)
    (the prior again where ``start_sigma`` is None). Drawn from the chains' own generators."""
    out = []
    for b, g in enumerate(generators):
        z = torch.randn((h, d), generator=g, dtype=dtype)
        sigma = None if start_sigma is None or b % M < M // 2 else start_sigma[b // M]
        if sigma is None:
            out.append(z * math.sqrt(sigw2 / d))
        else:
            out.append(z @ torch.linalg.cholesky(torch.as_tensor(sigma, dtype=dtype)).T)
    return torch.stack(out)


def sample_posterior(X: torch.Tensor, Y: torch.Tensor, labels: torch.Tensor, phi, prior, params, *,
                     seeds: list[int], homogeneous: bool = False, start_sigma=None) -> list[PosteriorResult]:
    """Sample the collapsed posterior of each draw: ``X`` ``(R, N, d)``, ``Y`` ``(R, N, C)``, the same
    ``labels`` ``(N,)`` for every draw, ``phi`` an :class:`~shallow_collapse.activations.Activation`
    (erf and the ReLU family run the compiled loop on CPU) or any callable, the network's ``prior``
    (width, priors and noise: an :class:`~shallow_collapse.params.EoSParams`), ``params`` a
    :class:`~shallow_collapse.params.PosteriorParams`,
    ``seeds`` ``R * params.chains`` chain seeds (draw r owns ``seeds[r*M:(r+1)*M]``), ``homogeneous``
    when phi(s z) = s phi(z) for s > 0 (adds the scale move), ``start_sigma`` ``(R, d, d)`` or None
    (the second half's starting covariance). Returns one result per draw (``seconds``: the run's
    wall time divided among the draws)."""
    R, M = X.shape[0], params.chains
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    W0 = _starts(generators, prior.h, X.shape[-1], prior.sigw2, start_sigma, M, X.dtype).to(X.device)
    target = GibbsTarget(X.repeat_interleave(M, 0), Y.repeat_interleave(M, 0), getattr(phi, "phi", phi), prior.sigw2,
                         prior.siga2, prior.sig2, prior.h, activation_code(phi))
    run = run_chains(target, labels, W0, generators, burn_in=params.burn_in, samples=params.samples,
                     scale_move=homogeneous)
    return [_reduce(run, slice(r * M, (r + 1) * M), params, run.seconds / R) for r in range(R)]

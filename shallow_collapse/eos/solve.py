"""Solve the EoS at chi = h: the least-action solution among the candidates, certified.

Every candidate (the primary strategy's branch, the direct solve at chi = h that competes with an
annealed ``minimize``, the branches of further ``candidates``) reports its action and relative
residual at chi = h; the chosen one is the converged candidate of least action, and it is
certified a local minimum (:mod:`.certificate`). ``status`` is ``ok`` only for a converged,
certified answer.
"""
from __future__ import annotations

import math
import time

from . import tolerances as tol
from . import certificate
from .continuation import Branch, follow, schedule
from .evaluator import PAPER_EOS, EoSEvaluator, EoSState
from .results import Candidate, EoSResult
from .strategies import STRATEGIES
from ..devices import torch_threads
from ..params import EoSParams, NetworkParams, SolverOptions


def solve_eos(X, y, params: EoSParams = PAPER_EOS, options: SolverOptions = SolverOptions(), *,
              activation: str = NetworkParams.activation, anneal: bool | None = None, device="cpu", on_accept=None,
              threads: int | None = 1, log=None) -> EoSResult:
    """Solve the EoS of ``params`` at chi = ``params.h``: the least-action solution among the
    candidates found.

    ``X`` ``(N, d)``, ``y`` ``(N,)`` (scalar targets; an ``(N, 1)`` y raises). ``params``: the
    network they describe (the paper's by default, :class:`~shallow_collapse.params.EoSParams`);
    ``options``: how they are solved (:class:`~shallow_collapse.params.SolverOptions`):

    ``strategy``: ``minimize`` (default), ``anderson`` or ``newton-krylov`` (:mod:`.strategies`).
    ``anneal``: follow ``annealing_factors`` (descending; ``h`` appended when it is not the last)
    from the NNGP limit, warm-started; default False for a strategy that may solve directly
    (``minimize``: one solve at chi = h from the NNGP limit) and always True for the others (the
    fixed-point strategies). A failed step is retried after inserting ``sqrt(chi_prev chi)``
    (``10 chi`` after chi = inf), nested up to ``max_subdivisions`` times; beyond that the branch
    stops at ``failed_factor``.
    ``candidates``: further strategies whose answers compete (each over its own branch). An
    annealed direct strategy adds its direct solve at chi = h from the NNGP limit. The result is the
    converged candidate of least action; ``result.candidates`` lists them all, and ``log`` gets a
    warning where they disagree.

    ``activation``: a registered name or an :class:`~shallow_collapse.activations.Activation`.
    ``on_accept(chi, state, step)``: called for the NNGP start
    (chi = inf, step None) and every accepted step of the primary branch.
    ``device``: ``cpu``, ``cuda`` or ``auto``.
    ``threads``: torch and BLAS threads for the solve (restored afterwards; None leaves them
    alone). One by default: the O(d^3) steps between the O(N^3) evaluations are many small
    parallel regions, and with two threads on a loaded 2-core machine a whole solve was measured
    up to 100x slower. ``log``: a logger for per-step debug lines and warnings.
    """
    for name in (options.strategy, *options.candidates):
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; expected one of {tuple(STRATEGIES)}")
    run = dict(activation=activation, anneal=anneal, device=device, on_accept=on_accept, log=log)
    if threads is None:
        return _solve(X, y, params, options, **run)
    with torch_threads(threads):
        return _solve(X, y, params, options, **run)


def _solve(X, y, params: EoSParams, options: SolverOptions, *, activation, anneal, device, on_accept,
           log) -> EoSResult:
    t_start = time.perf_counter()
    ev = EoSEvaluator(X, y, params, activation=activation, device=device)
    strategy, h = options.strategy, params.h
    anneal = not STRATEGIES[strategy].direct or bool(anneal)
    state0 = ev.state(ev.nngp_sigma())
    if on_accept is not None:
        on_accept(math.inf, state0, None)

    def branch(name, annealed, callback=None):
        origin = f"{name}, {'annealed' if annealed else 'direct at chi=h'}"
        return follow(ev, name, schedule(params.annealing_factors, h, annealed), state0, options, origin=origin,
                      on_accept=callback, log=log)

    branches = [branch(strategy, anneal, on_accept)]
    if STRATEGIES[strategy].direct and anneal:
        branches.append(branch(strategy, False))
    for name in options.candidates:
        if name != strategy:
            branches.append(branch(name, not STRATEGIES[name].direct))
    chosen = _least_action(ev, branches, float(h))
    # Stalled next to the solution at chi = h, below the float64 noise of the map: certify it too.
    stalled = (not chosen.converged and chosen.chi == float(h)
               and chosen.noise > max(options.rtol, tol.NOISE_LIMITED_MIN)
               and ev.rel_residual(chosen.state, float(h)) <= tol.NOISE_LIMITED_FACTOR * chosen.noise)
    curvature = certificate.curvature(ev, chosen.state, chosen.chi) if chosen.converged or stalled else math.nan
    found = _candidates(ev, branches, chosen, float(h))
    primary = branches[0]
    message = primary.message
    if chosen is not primary and found[0].sigma_gap > tol.SAME_POINT:
        message = f"least action: {chosen.origin} (the {primary.origin} branch ended elsewhere)"
    if chosen.converged and not curvature > 0:
        message = (f"{message}; " if message else "") + (
            f"not a local minimum: S curves downward (relative curvature {curvature:.3g})")
    disagree = [c for c in found if c.converged and c.sigma_gap > tol.SAME_POINT]
    if log is not None and disagree:
        log.warning("EoS candidates disagree (kept the least action, %s): %s", chosen.origin, "; ".join(
            f"{c.origin}: action {c.action:.12g}, rel_residual {c.rel_residual:.2g}, Sigma gap {c.sigma_gap:.2g}"
            for c in found))
    if log is not None and message:
        log.warning("EoS: %s", message)
    final = chosen.state
    return EoSResult(
        Sigma=final.Sigma.cpu(), Sigma0=state0.Sigma.cpu(), Q=final.Q.cpu(), Q0=state0.Q.cpu(),
        alpha=final.alpha.cpu(), fbar=final.fbar.cpu(), fbar0=state0.fbar.cpu(),
        converged=chosen.converged, rel_residual=ev.rel_residual(final, float(h)),
        action=ev.action(final, float(h)), curvature=curvature, factor=chosen.chi,
        evaluations=ev.evaluations, seconds=time.perf_counter() - t_start, strategy=strategy,
        origin=chosen.origin, steps=primary.steps, candidates=found,
        failed_factor=None if chosen.converged else primary.failed_factor, message=message,
        noise=chosen.noise, noise_limited=bool(stalled and curvature > 0),
        Sigma_next=ev.sigma_new(final.T, float(h)).cpu())


def _least_action(ev: EoSEvaluator, branches: list[Branch], h: float) -> Branch:
    """The converged branch of least action at ``h``; the first (primary) branch when none
    converged, or when it reached the same point (within ``SAME_POINT``: S then differs by
    float64 noise only)."""
    converged = [b for b in branches if b.converged]
    if not converged:
        return branches[0]
    best = min(converged, key=lambda b: ev.action(b.state, h))
    primary = branches[0]
    if primary.converged and _gap(primary.state, best.state) <= tol.SAME_POINT:
        return primary
    return best


def _gap(a: EoSState, b: EoSState) -> float:
    """max|Sigma_a - Sigma_b| / max|Sigma_b|."""
    return float((a.Sigma - b.Sigma).abs().max() / b.Sigma.abs().max())


def _candidates(ev: EoSEvaluator, branches: list[Branch], chosen: Branch, h: float) -> list[Candidate]:
    return [Candidate(origin=b.origin, converged=b.converged, factor=b.chi,
                      rel_residual=ev.rel_residual(b.state, h), action=ev.action(b.state, h),
                      evaluations=b.evaluations, sigma_gap=_gap(b.state, chosen.state), message=b.message)
            for b in branches]

"""How one continuation step is solved: a table of strategies with one signature.

Every entry of :data:`STRATEGIES` is a :class:`Strategy`: its ``step(ev, chi, start, branch,
options) -> StepOutcome`` solves the EoS at annealing factor ``chi`` from the accepted point
``start`` (an :class:`EoSState`), with the branch's history ``branch`` (:class:`BranchContext`) and
the :class:`SolverOptions`; ``direct`` says whether it may solve at chi = h straight from the NNGP
limit (and so whether it anneals by default).

- ``minimize`` (default): minimise S with scipy's L-BFGS-B over the Cholesky factor of Sigma
  (log diagonal, whitened by the factor of the starting point) with the exact gradient, until
  ``rel_residual <= POLISH_FROM``; then Anderson iteration on the map, started there, takes the
  relative residual to ``rtol`` (near the minimum the map is linear and S is too flat for a line
  search to resolve 1e-8).
- ``anderson``: Anderson-accelerated fixed-point iteration on ``Sigma -> Sigma_new``, with a secant
  predictor in ``1/chi`` and a chi-independent history carried across steps, safeguards and stall
  detection.
- ``newton-krylov``: ``scipy.optimize.newton_krylov`` on the scaled residual.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import tolerances as tol
from .evaluator import EoSEvaluator, EoSState, EvaluationError
from ..params import EOS_STRATEGIES, SolverOptions


@dataclass
class StepOutcome:
    """What a step reached: the best ``state`` and its ``rel_residual`` at chi, the iterations
    spent, whether it ``converged`` (``rel_residual <= rtol``), a ``message`` when not, and
    ``near_solution``: it stalled within ``POLISH_FROM`` of a solution, at the float64 noise floor
    of the map, where a smaller step in chi cannot help; ``noise``: that float64 noise of
    ``rel_residual`` (:func:`noise_floor`; nan where not measured)."""

    state: EoSState
    rel_residual: float
    iterations: int
    converged: bool
    message: str = ""
    near_solution: bool = False
    noise: float = math.nan


def _is_pd(S: torch.Tensor) -> bool:
    return int(torch.linalg.cholesky_ex(0.5 * (S + S.T))[1]) == 0


class AndersonMemory:
    """chi-independent secant history: (Sigma_i, T_i) pairs from past evaluations."""

    def __init__(self, size: int):
        self.size = size
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, state: EoSState):
        self.items.append((state.Sigma, state.T))
        del self.items[: max(0, len(self.items) - self.size - 1)]

    def clear(self, keep_last: bool = True):
        self.items = self.items[-1:] if keep_last else []


@dataclass
class BranchContext:
    """What a branch carries from step to step: its accepted ``(chi, state)`` pairs (the first is
    the NNGP start at chi = inf) and the Anderson history."""

    accepted: list[tuple[float, EoSState]]
    memory: AndersonMemory




def _anderson_step(ev: EoSEvaluator, chi: float, state: EoSState, memory: AndersonMemory, *, rtol,
                   maxiter, beta, regularization, predictor=None, stall=0):
    """Anderson-accelerated fixed-point solve of one continuation step, to ``rel_residual <= rtol``.

    Returns a :class:`StepOutcome` whose ``state`` is the best point.
    """
    res = ev.rel_residual(state, chi)
    best, best_res = state, res
    if res <= rtol:
        return StepOutcome(best, best_res, 0, True, "")
    # Secant predictor (1/chi extrapolation of the last two solutions) as the first trial point.
    trial = predictor if predictor is not None and _is_pd(predictor) else None
    iterations, restarts = 0, 0
    history: list[float] = []
    for iterations in range(1, maxiter + 1):
        if trial is None:
            # Anderson (type II) on g(x) = Sigma_new(x): residuals f_i = g_i - x_i re-scored for chi.
            xs = [S for S, _ in memory.items]
            gs = [ev.sigma_new(T, chi) for _, T in memory.items]
            x_k, g_k = xs[-1], gs[-1]
            f_k = g_k - x_k
            if len(xs) > 1:
                dF = torch.stack([(gs[i + 1] - xs[i + 1]) - (gs[i] - xs[i]) for i in range(len(xs) - 1)], -1)
                dX = torch.stack([xs[i + 1] - xs[i] for i in range(len(xs) - 1)], -1)
                Fm = dF.reshape(-1, dF.shape[-1])
                # Regularised least squares min |f_k - dF gamma|^2 + lam |gamma|^2.
                lam = regularization * float((Fm * Fm).sum()) + tol.TINY
                H = Fm.T @ Fm + lam * torch.eye(Fm.shape[-1], dtype=Fm.dtype, device=Fm.device)
                # H is symmetric positive definite (regularised): an LU solve. (torch.linalg.lstsq's
                # default CPU driver, gelsy, was measured to return different bits on repeated
                # calls here, which made solves irreproducible at the 1e-12 level.)
                gamma = torch.linalg.solve(H, (Fm.T @ f_k.reshape(-1))[:, None])[:, 0]
                trial = x_k + beta * f_k - ((dX + beta * dF).reshape(-1, dF.shape[-1]) @ gamma).reshape(x_k.shape)
            else:
                trial = x_k + beta * f_k
            trial = 0.5 * (trial + trial.T)
            # Keep iterates positive definite: pull back toward the best point when they are not.
            shrink = 0
            while not _is_pd(trial) and shrink < tol.ANDERSON_MAX_SHRINK:
                trial = best.Sigma + 0.5 * (trial - best.Sigma)
                shrink += 1
        try:
            new = ev.state(trial)
        except EvaluationError:
            # Unusable point: restart the history at the best point and take a damped step.
            memory.clear(keep_last=False)
            memory.add(best)
            trial = best.Sigma + tol.ANDERSON_RESTART_DAMPING * beta * (ev.sigma_new(best.T, chi) - best.Sigma)
            trial = 0.5 * (trial + trial.T)
            restarts += 1
            if restarts > tol.ANDERSON_MAX_RESTARTS:
                return StepOutcome(best, best_res, iterations, False, "evaluation failed repeatedly")
            continue
        trial = None
        memory.add(new)
        res = ev.rel_residual(new, chi)
        if res < best_res:
            best, best_res = new, res
        if res <= rtol:
            return StepOutcome(new, res, iterations, True, "")
        history.append(best_res)
        if stall and len(history) > stall and history[-1] > tol.ANDERSON_STALL_FACTOR * history[-1 - stall]:
            # Less than a halving of the best residual in `stall` iterations: give the step back
            # to the continuation (which subdivides it) instead of spending maxiter evaluations.
            return StepOutcome(best, best_res, iterations, False,
                               f"stalled (best rel_residual {best_res:.3g} after {iterations} iterations)")
        if res > tol.ANDERSON_DIVERGED * best_res or not math.isfinite(res):
            # Diverging: restart from the best point.
            memory.clear(keep_last=False)
            memory.add(best)
            restarts += 1
    return StepOutcome(best, best_res, iterations, False, f"maxiter {maxiter} reached (best rel_residual {best_res:.3g})")


def _newton_krylov_step(ev: EoSEvaluator, chi: float, state: EoSState, *, rtol, maxiter, inner_maxiter):
    """scipy newton_krylov on the residual scaled by max|Sigma| of the start. Returns like
    :func:`_anderson_step`."""
    from scipy.optimize import NoConvergence, newton_krylov

    res0 = ev.rel_residual(state, chi)
    if res0 <= rtol:
        return StepOutcome(state, res0, 0, True, "")
    scale = float(state.Sigma.abs().max())
    cache: dict = {"state": state}
    iterations = [0]

    def F(x):
        S = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=ev.device)
        try:
            st = ev.state(S)
        except EvaluationError:
            return np.full(x.shape, tol.NEWTON_KRYLOV_UNUSABLE)
        cache["state"] = st
        out = ((S - ev.sigma_new(st.T, chi)) / scale).cpu().numpy()  # F of the unsymmetrised input
        return out if np.all(np.isfinite(out)) else np.full(x.shape, tol.NEWTON_KRYLOV_UNUSABLE)

    def callback(x, f):
        iterations[0] += 1

    message = ""
    try:
        # The scaled residual's tolerance is rtol/2: max|Sigma| may shrink by up to that factor.
        x = newton_krylov(F, state.Sigma.cpu().numpy(), f_tol=tol.NEWTON_KRYLOV_FTOL_FACTOR * rtol, maxiter=maxiter,
                          inner_maxiter=inner_maxiter, callback=callback)
    except NoConvergence as err:
        x = np.asarray(err.args[0])
        message = f"maxiter {maxiter} reached"
    except (ValueError, FloatingPointError, np.linalg.LinAlgError) as err:
        return StepOutcome(state, res0, iterations[0], False, f"newton_krylov failed: {err}")
    S = torch.as_tensor(x, dtype=torch.float64, device=ev.device)
    S = 0.5 * (S + S.T)
    st = cache["state"]
    if not torch.equal(st.Sigma, S):
        try:
            st = ev.state(S)
        except EvaluationError as err:
            return StepOutcome(state, res0, iterations[0], False, f"final point unusable: {err}")
    res = ev.rel_residual(st, chi)
    return StepOutcome(st, res, iterations[0], res <= rtol, message)


class _Abort(Exception):
    """Ends an L-BFGS run from inside its callbacks."""


def _lbfgs(ev: EoSEvaluator, chi: float, start: EoSState, *, stop_at: float, maxiter: int):
    """Minimise S from ``start`` with scipy's L-BFGS-B until ``rel_residual <= stop_at`` (or until it
    stops by itself). Parameters: the lower triangle of ``Lt`` with ``Sigma = L0 Lt Lt^T L0^T``,
    ``L0`` the Cholesky factor of ``start.Sigma`` and the diagonal of ``Lt`` stored as its log, so
    every trial point is positive definite and the start is ``Lt = I``.

    Returns ``(state, rel_residual, iterations, message)`` at the last accepted iterate.
    """
    from scipy.optimize import minimize as scipy_minimize

    d = ev.d
    rows, cols = torch.tril_indices(d, d, device=ev.device)
    on_diag = rows == cols
    L0 = torch.linalg.cholesky(start.Sigma)
    seen: dict[bytes, EoSState] = {}
    track = {"state": start, "rel": ev.rel_residual(start, chi), "iterations": 0}
    last = {"value": None, "g": None, "backtracks": 0}  # the last usable point L-BFGS-B asked for

    def factor(theta) -> torch.Tensor:
        t = torch.as_tensor(theta, dtype=torch.float64, device=ev.device).clone()
        t[on_diag] = torch.exp(t[on_diag])
        Lt = torch.zeros(d, d, dtype=torch.float64, device=ev.device)
        Lt[rows, cols] = t
        return Lt

    def fun(theta):
        Lt = factor(theta)
        L = L0 @ Lt
        try:
            # theta = 0 is the start itself (L-BFGS-B evaluates it first): no new evaluation.
            st = start if not np.any(theta) else ev.state(L @ L.T)
            value, G = ev.action(st, chi), ev.action_gradient(st, chi)
        except (EvaluationError, torch.linalg.LinAlgError) as err:
            # A trial point too far along the search direction (M numerically indefinite at a
            # huge Sigma, say): report an action far above the last one, so the line search
            # backtracks toward the last usable point instead of the step failing.
            if last["value"] is None or last["backtracks"] >= tol.LBFGS_MAX_BACKTRACKS:
                raise _Abort(f"unusable trial point: {err}") from None
            last["backtracks"] += 1
            return last["value"] + tol.LBFGS_BACKTRACK_PENALTY * (1.0 + abs(last["value"])), last["g"]
        seen.clear()  # only the latest point is ever asked for by the callback
        seen[theta.tobytes()] = st
        grad = 2.0 * (L0.T @ G @ L)  # dS/dLt, then the chain rule through exp on the diagonal
        g = grad[rows, cols]
        g[on_diag] *= Lt.diagonal()
        g = g.cpu().numpy()
        last.update(value=value, g=g)
        return value, g

    def callback(intermediate_result):
        st = seen.get(intermediate_result.x.tobytes())
        if st is None:
            L = L0 @ factor(intermediate_result.x)
            st = ev.state(L @ L.T)
        track.update(state=st, rel=ev.rel_residual(st, chi), iterations=track["iterations"] + 1)
        if track["rel"] <= stop_at:
            raise StopIteration

    theta0 = np.zeros(d * (d + 1) // 2)
    try:
        # gtol = ftol = 0: stop on the relative residual (the callback), at maxiter, or when the
        # line search can no longer decrease S in float64.
        out = scipy_minimize(fun, theta0, jac=True, method="L-BFGS-B", callback=callback,
                       options=dict(maxiter=maxiter, maxfun=tol.LBFGS_FUN_PER_ITER * maxiter + tol.LBFGS_FUN_EXTRA,
                                    maxcor=tol.LBFGS_CORRECTIONS, gtol=0.0, ftol=0.0))
        message = "" if track["rel"] <= stop_at else f"L-BFGS-B: {out.message}"
    except _Abort as err:
        message = str(err)
    return track["state"], track["rel"], track["iterations"], message


def newton_steps(gradient, x0: np.ndarray, g0: np.ndarray, *, step: float, maxiter: int, accept: float,
            stop=None) -> tuple[np.ndarray, np.ndarray, int]:
    """Newton's method on a gradient field: at ``x``, the Hessian by forward differences of
    ``gradient`` with step ``step`` along each coordinate (symmetrised), then the full step
    ``-H^{-1} g``, taken only when the gradient norm there is at most ``accept`` times the current
    one. Ends at ``maxiter`` steps, at the first rejected step, when H is singular or
    ``gradient`` returns None (an unusable point), or when ``stop(x, g)`` is true.

    ``gradient(x) -> ndarray | None``; ``x0`` with its gradient ``g0``. Returns ``(x, g, steps)``:
    the last accepted point, its gradient and the number of accepted steps."""
    x, g, n = np.array(x0, dtype=np.float64), np.array(g0, dtype=np.float64), len(x0)
    for taken in range(maxiter):
        if stop is not None and stop(x, g):
            return x, g, taken
        H = np.empty((n, n))
        for k in range(n):
            e = np.zeros(n)
            e[k] = step
            g_k = gradient(x + e)
            if g_k is None:
                return x, g, taken
            H[:, k] = (g_k - g) / step
        try:
            p = np.linalg.solve(0.5 * (H + H.T), -g)
        except np.linalg.LinAlgError:
            return x, g, taken
        g_new = gradient(x + p)
        if g_new is None or not np.linalg.norm(g_new) <= accept * np.linalg.norm(g):
            return x, g, taken
        x, g = x + p, g_new
    return x, g, maxiter


def _newton_polish(ev: EoSEvaluator, chi: float, start: EoSState, *, rtol: float) -> tuple[EoSState, int]:
    """Newton steps on the exact gradient of S from ``start``, with a finite-difference Hessian,
    in coordinates whitened by ``start``: ``Sigma = L0 (I + sum_k z_k B_k) L0^T``, ``L0`` the
    Cholesky factor of ``start.Sigma``, ``B_k`` an orthonormal basis of the symmetric d x d
    matrices (so the KL term's curvature is chi/2 along every coordinate at ``z = 0``). A step is
    taken only where the gradient norm falls by ``NEWTON_ACCEPT`` (:func:`newton_steps`); the polish
    stops at ``rel_residual <= rtol``. Only for d (d + 1) / 2 <= ``NEWTON_MAX_UNKNOWNS`` (each
    Hessian costs that many evaluations). Returns ``(state, iterations)``: the last accepted point
    (``start`` when none was)."""
    d = ev.d
    n = d * (d + 1) // 2
    if n > tol.NEWTON_MAX_UNKNOWNS:
        return start, 0
    rows, cols = torch.tril_indices(d, d, device=ev.device)
    weight = torch.where(rows == cols, 1.0, math.sqrt(0.5)).to(torch.float64)  # B_k: E_ii, (E_ij + E_ji)/sqrt2
    L0 = torch.linalg.cholesky(start.Sigma)
    eye = torch.eye(d, dtype=torch.float64, device=ev.device)
    states: dict[bytes, EoSState] = {}

    def sigma(z: np.ndarray) -> torch.Tensor:
        Z = torch.zeros(d, d, dtype=torch.float64, device=ev.device)
        Z[rows, cols] = torch.as_tensor(z, dtype=torch.float64, device=ev.device) * weight
        Z = eye + Z + torch.tril(Z, -1).T
        return L0 @ Z @ L0.T

    def coordinates(state: EoSState) -> np.ndarray:
        Gw = L0.T @ ev.action_gradient(state, chi) @ L0  # dS = Tr(Gw dZ)
        return (Gw[rows, cols] * weight * torch.where(rows == cols, 1.0, 2.0)).cpu().numpy()

    def gradient(z: np.ndarray):
        S = sigma(z)
        if not _is_pd(S):
            return None
        try:
            st = ev.state(0.5 * (S + S.T))
        except EvaluationError:
            return None
        g = coordinates(st)
        if not np.all(np.isfinite(g)):
            return None
        states[z.tobytes()] = st
        return g

    z0 = np.zeros(n)
    states[z0.tobytes()] = start

    def stop(z, g):
        return ev.rel_residual(states[z.tobytes()], chi) <= rtol

    z, _, iterations = newton_steps(gradient, z0, coordinates(start), step=tol.NEWTON_FD_STEP,
                               maxiter=tol.NEWTON_MAXITER, accept=tol.NEWTON_ACCEPT, stop=stop)
    return states[z.tobytes()], iterations


def _minimize_step(ev: EoSEvaluator, chi: float, start: EoSState, *, rtol, maxiter, **_):
    """Least action at ``chi`` from ``start``: L-BFGS on S down to ``POLISH_FROM``, then Anderson
    polishing to ``rtol``; if the polish fails, L-BFGS again from the best point to its own stop
    and a second polish. On failure the outcome holds the point of least relative residual; where
    that lies below ``POLISH_FROM`` it is ``near_solution`` and its ``noise`` is the float64 noise
    of the map there (:func:`noise_floor`; nan where not measured)."""
    rel = ev.rel_residual(start, chi)
    if rel <= rtol:
        return StepOutcome(start, rel, 0, True)
    state, iterations, messages = start, 0, []
    best, best_rel = start, rel
    for stop_at in (max(rtol, tol.POLISH_FROM), rtol):
        state, rel, its, msg = _lbfgs(ev, chi, state, stop_at=stop_at, maxiter=maxiter)
        msg_lbfgs = msg
        iterations += its
        messages += [msg] if msg else []
        if rel <= rtol:
            return StepOutcome(state, rel, iterations, True)
        polish = _anderson_step(
            ev, chi, state, _anderson_memory(ev.d, state), rtol=rtol, maxiter=min(tol.POLISH_MAXITER, maxiter),
            beta=tol.POLISH_BETA, regularization=tol.POLISH_REGULARIZATION, stall=tol.POLISH_STALL)
        polished, rel_p, ok, msg = polish.state, polish.rel_residual, polish.converged, polish.message
        iterations += polish.iterations
        # Accept the polish only where it stayed at this minimum (S did not rise above the start of
        # the polish beyond float64 noise); otherwise it reached another fixed point.
        stayed = ev.action(polished, chi) <= ev.action(state, chi) + tol.POLISH_ACTION_RISE * abs(ev.action(state, chi))
        if ok and stayed:
            return StepOutcome(polished, rel_p, iterations, True)
        messages.append(f"polish: {msg}" if not ok else "polish left the minimum")
        candidates = [(state, rel), (polished, rel_p)] if stayed else [(state, rel)]
        best, best_rel = min([(best, best_rel), *candidates], key=lambda c: c[1])
        # (Not when L-BFGS-B merely spent its budget, scipy's "...LIMIT" stops: maxiter is the caller's.)
        if stop_at != rtol and "LIMIT" not in msg_lbfgs:
            # The first round stalled (the line search can stop short of the minimum where S is
            # flat to float64 along its direction): Newton steps on the exact gradient from the
            # best point, then the second round starts from where they ended.
            e0 = ev.evaluations
            newton, its = _newton_polish(ev, chi, best, rtol=rtol)
            iterations += its
            rel_n = ev.rel_residual(newton, chi)
            stayed = ev.action(newton, chi) <= ev.action(best, chi) + tol.POLISH_ACTION_RISE * abs(ev.action(best, chi))
            if rel_n <= rtol and stayed:
                return StepOutcome(newton, rel_n, iterations, True)
            if its:
                messages.append(f"newton: {its} steps, {ev.evaluations - e0} evaluations, rel_residual {rel_n:.3g}")
            if stayed and rel_n < best_rel:
                best, best_rel, state = newton, rel_n, newton
    noise = math.nan
    if best_rel <= tol.POLISH_FROM:
        noise = noise_floor(ev, best, chi)
        if noise > rtol:
            messages.insert(0, f"stalled at rel_residual {best_rel:.2g}, where the float64 noise of the map is "
                               f"about {noise:.1g} > rtol {rtol:g}: a tolerance above the noise can be met")
    return StepOutcome(best, best_rel, iterations, False, "; ".join(messages),
                       near_solution=best_rel <= tol.POLISH_FROM, noise=noise)


def noise_floor(ev: EoSEvaluator, state: EoSState, chi: float) -> float:
    """The float64 noise of ``rel_residual`` at ``state``: its change under scalings of Sigma by
    ``1 +- NOISE_STEP``, which move the exact residual by about NOISE_STEP |1 - J| only (J the
    map's slope, |J| < 1e3 where measured). Two evaluations."""
    F0 = ev.residual(state, chi)
    scale = float(state.Sigma.abs().max())
    changes = [float((ev.residual(ev.state(state.Sigma * (1.0 + sign * tol.NOISE_STEP)), chi) - F0).abs().max())
               for sign in (1.0, -1.0)]
    return max(changes) / scale


def _anderson_memory(d: int, state: EoSState) -> AndersonMemory:
    """A polishing memory: as many secant pairs as the problem has dimensions, at most 10."""
    memory = AndersonMemory(min(tol.POLISH_MEMORY_MAX, d * (d + 1) // 2))
    memory.add(state)
    return memory


# -- the table: one signature ----------------------------------------------------------------------

def minimize(ev: EoSEvaluator, chi: float, start: EoSState, branch: BranchContext,
             options: SolverOptions) -> StepOutcome:
    """L-BFGS on S, then Anderson polishing (:func:`_minimize_step`)."""
    return _minimize_step(ev, chi, start, rtol=options.rtol, maxiter=options.maxiter)


def anderson(ev: EoSEvaluator, chi: float, start: EoSState, branch: BranchContext,
             options: SolverOptions) -> StepOutcome:
    """Anderson iteration from ``start``, its first trial point the secant predictor in 1/chi
    through the branch's last two accepted solutions, its history the branch's."""
    predictor = None
    if len(branch.accepted) >= 2:
        (c_a, s_a), (c_b, s_b) = branch.accepted[-2], branch.accepted[-1]
        t_a, t_b, t_c = 1.0 / c_a, 1.0 / c_b, 1.0 / chi
        if t_b > t_a:
            predictor = s_b.Sigma + (s_b.Sigma - s_a.Sigma) * ((t_c - t_b) / (t_b - t_a))
    memory = branch.memory
    if not memory.items or memory.items[-1][0] is not start.Sigma:
        memory.add(start)
    return _anderson_step(ev, chi, start, memory, rtol=options.rtol, maxiter=options.maxiter,
                          beta=options.anderson_beta, regularization=options.anderson_regularization,
                          predictor=predictor, stall=options.anderson_stall)


def newton_krylov(ev: EoSEvaluator, chi: float, start: EoSState, branch: BranchContext,
                  options: SolverOptions) -> StepOutcome:
    """scipy's newton_krylov from ``start`` (:func:`_newton_krylov_step`)."""
    return _newton_krylov_step(ev, chi, start, rtol=options.rtol, maxiter=options.maxiter,
                               inner_maxiter=options.inner_maxiter)


Step = Callable[[EoSEvaluator, float, EoSState, BranchContext, SolverOptions], StepOutcome]


@dataclass(frozen=True)
class Strategy:
    """One strategy: its ``step``, and ``direct``: it may solve at chi = h straight from the NNGP
    limit (a minimiser of S may; a fixed-point iteration needs the continuation). A direct strategy
    solves directly unless asked to anneal, and an annealed one also competes with its direct solve."""

    step: Step
    direct: bool


STRATEGIES: dict[str, Strategy] = dict(zip(EOS_STRATEGIES, (  # the names: params.EOS_STRATEGIES
    Strategy(minimize, direct=True), Strategy(anderson, direct=False), Strategy(newton_krylov, direct=False))))

"""Adaptive kernel of a 2-layer network: the Equations of State and their action
(docs/MATH.md, sections 6 and 7).

Unknown: ``Sigma`` ``(d, d)``, symmetric positive definite, the covariance of a hidden unit's input
weights. For data ``X`` ``(N, d)`` and scalar targets ``y`` ``(N,)``:

- ``K = X Sigma X^T`` ``(N, N)``; ``Q = siga2 * Kphi(K)`` (erf or ReLU arc-cosine map);
- ``M = Q + sig2 I``; ``alpha = M^{-1} y`` ``(N,)``; ``fbar = Q alpha = y - sig2 alpha`` ``(N,)``;
- ``A = M^{-1} - alpha alpha^T`` ``(N, N)``; ``T(Sigma) = grad_Sigma Tr(A Q(Sigma)) = X^T G X``
  ``(d, d)`` with ``A`` held fixed and the closed-form ``G`` below;
- the EoS: ``Sigma = Sigma_new(Sigma) = [(d / sigw2) I + T / chi]^{-1}``.

**The action.** The EoS are the stationarity condition of

    S(Sigma) = (chi/2) [(d/sigw2) Tr Sigma - log det Sigma] + (1/2) y^T M^{-1} y + (1/2) log det M,

chi times the KL divergence to the prior plus the GP negative log marginal likelihood, whose
gradient is ``(1/2)[chi((d/sigw2) I - Sigma^{-1}) + T]``. S is coercive on SPD matrices, so a
minimiser (a solution) exists for every chi > 0; the relevant solution is the one of least action.

**Convergence** is relative: ``rel_residual = max|Sigma - Sigma_new| / max|Sigma| <= rtol``. (An
absolute ``max|F|`` criterion holds trivially when Sigma collapses toward 0.)

One evaluation costs one Cholesky factorisation of ``M`` and one ``cholesky_inverse`` (O(N^3));
everything else is O(N^2 d). ``T`` does not depend on ``chi``, so one evaluation gives the
residual, the action and its gradient for any annealing factor.

Closed-form ``G`` (``G_kl = dTr(A Q)/dK_kl`` with the entries of K taken as independent):

- erf: ``D_i = 1 + 2K_ii``, ``r = D^(-1/2)``, ``C = 2 K o r r^T``,
  ``B = A o siga2 (2/pi)(1 - C o C)^(-1/2)``, ``G = 2 B o r r^T - 2 diag(sum_j B_ij C_ij / D_i)``.
- ReLU: with ``n_ij = sqrt(K_ii K_jj)``, ``cos theta_ij = K_ij / n_ij`` and
  ``J(theta) = sin theta + (pi - theta) cos theta``, ``Kphi = n J / (2 pi)``. Since
  ``dJ/dcos = pi - theta``, ``dKphi_ij/dK_ij = (pi - theta_ij)/(2 pi) = Kdphi_ij`` and, through the
  prefactor and the cosine, ``dKphi_ij/dK_ii = n_ij sin theta_ij / (4 pi K_ii)``. Row and column
  both contribute, so ``G = siga2 [A o Kdphi + diag(sum_j A_ij n_ij sin theta_ij / (2 pi K_ii))]``.

Strategies (``strategy``):

- ``minimize`` (default): minimise S with scipy's L-BFGS-B over the Cholesky factor of Sigma
  (log diagonal, whitened by the factor of the starting point) with the exact gradient, until
  ``rel_residual <= POLISH_FROM``; then Anderson iteration on the map, started there, takes the
  relative residual to ``rtol`` (near the minimum the map is linear and S is too flat for a line
  search to resolve 1e-8). Sweeps minimise directly at chi = h from the NNGP limit; with
  ``anneal`` it solves every annealing factor, warm-started, and a direct solve at chi = h from
  the NNGP limit competes with the branch.
- ``anderson``: Anderson-accelerated fixed-point iteration on ``Sigma -> Sigma_new`` over the
  continuation, with a secant predictor in ``1/chi``, a chi-independent history carried across
  steps, safeguards and stall detection.
- ``newton-krylov``: ``scipy.optimize.newton_krylov`` on the scaled residual over the continuation.

Continuation (``anneal``; always for the fixed-point strategies): ``Sigma_0 = (sigw2/d) I``; every
factor warm-starts from the last accepted solution; a failed step is retried after inserting
``sqrt(chi_prev chi)`` (nested up to ``max_subdivisions``); then the solve stops and says where.

**Certification.** Every answer reports its action and relative residual; the chosen one (the
candidate of least action among the converged ones) is checked to be a local minimum: the second
directional derivative of S, by a finite difference of the exact gradient, is positive along the
scale direction and along random symmetric directions (fixed seed). ``status`` is ``ok`` only
for a converged, certified answer.

Public API: :func:`solve_eos` returns an :class:`EoSResult`; :func:`action` evaluates S and its
gradient at any Sigma; :class:`EoSEvaluator` exposes the map itself.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import activations
from .devices import resolve_device, torch_threads
from .params import EoSParams, NetworkParams

__all__ = ["STRATEGIES", "EoSEvaluator", "EoSState", "StepRecord", "Candidate", "EoSResult", "solve_eos",
           "action", "nngp_sigma"]

STRATEGIES = ("minimize", "anderson", "newton-krylov")
PAPER_EOS = EoSParams()
# minimize: L-BFGS on S hands over to Anderson polishing below this relative residual. Measured on
# the paper's data (erf and ReLU, d = 1..128): 1e-4 needs the fewest evaluations (262 over ten
# cells, against 352 at 1e-6 and 610 running L-BFGS to its own stop).
POLISH_FROM = 1e-4
# Certification: random symmetric directions besides the scale direction, and the relative step
# of the finite difference of the gradient.
CERTIFY_DIRECTIONS = 2
CERTIFY_STEP = 1e-4
# Candidates whose Sigma differ by less than this (relative to max|Sigma|) are the same solution:
# two points within rtol = 1e-8 of one fixed point differ by at most rtol times the conditioning
# of (I - J) (measured up to ~34 at d = 1), far below it.
SAME_POINT = 1e-6
# Relative scaling of Sigma that probes the float64 noise of the map (see _noise_floor).
NOISE_STEP = 1e-11


class EvaluationError(RuntimeError):
    """The map cannot be evaluated at this Sigma (not positive definite, Cholesky failure, NaN)."""


def nngp_sigma(d: int, sigw2: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """The NNGP limit ``Sigma_0 = (sigw2 / d) I`` ``(d, d)`` (the solution at chi = infinity)."""
    return torch.eye(d, dtype=dtype, device=device) * (sigw2 / d)


@dataclass
class EoSState:
    """Everything one O(N^3) evaluation at ``Sigma`` produces (all on the solver's device).

    ``Sigma`` ``(d, d)``; ``T = X^T G X`` ``(d, d)``; ``Q`` ``(N, N)``; ``alpha``, ``fbar`` ``(N,)``;
    ``nll`` = (1/2) y^T M^{-1} y + (1/2) log det M, the GP negative log marginal likelihood without
    its constant (N/2) log 2 pi.
    """

    Sigma: torch.Tensor
    T: torch.Tensor
    Q: torch.Tensor
    alpha: torch.Tensor
    fbar: torch.Tensor
    nll: float


class EoSEvaluator:
    """The EoS map and the action for fixed data and hyper-parameters.

    ``X`` ``(N, d)`` and ``y`` ``(N,)`` are moved to ``device`` in float64; ``params`` gives sigw2, siga2
    and sig2 (its solver fields are not used here). :meth:`state` does the
    O(N^3) work; :meth:`sigma_new`, :meth:`residual`, :meth:`rel_residual`, :meth:`action` and
    :meth:`action_gradient` turn a state into numbers for any chi for O(d^3). ``evaluations``
    counts calls of :meth:`state`.
    """

    def __init__(self, X, y, params: EoSParams = PAPER_EOS, *, activation: str = NetworkParams.activation,
                 device="cpu"):
        self.act = activations.get(activation)
        self.device = resolve_device(device)
        self.X = torch.as_tensor(X).to(device=self.device, dtype=torch.float64)
        y = torch.as_tensor(y).to(device=self.device, dtype=torch.float64)
        if self.X.ndim != 2:
            raise ValueError(f"X must be (N, d), got shape {tuple(self.X.shape)}")
        if y.shape != (self.X.shape[0],):
            # MATH section 6: an (N, 1) target against (N,) vectors broadcasts to (N, N).
            raise ValueError(f"y must be ({self.X.shape[0]},), got shape {tuple(y.shape)}")
        self.y = y
        self.N, self.d = self.X.shape
        self.activation = activation
        self.sigw2, self.siga2, self.sig2 = float(params.sigw2), float(params.siga2), float(params.sig2)
        self.evaluations = 0
        self._eye_d = torch.eye(self.d, dtype=torch.float64, device=self.device)

    # -- the O(N^3) part -------------------------------------------------------------------
    def state(self, Sigma: torch.Tensor) -> EoSState:
        """Evaluate Q, alpha, fbar, the GP likelihood term and T = X^T G X at ``Sigma`` ``(d, d)``.

        ``Sigma`` is symmetrised first. Raises :class:`EvaluationError` when ``M`` is not positive
        definite or anything is not finite.
        """
        self.evaluations += 1
        Sigma = torch.as_tensor(Sigma).to(device=self.device, dtype=torch.float64)
        Sigma = 0.5 * (Sigma + Sigma.T)
        X = self.X
        # K is symmetric up to round-off; nothing below needs it exactly symmetric (the Cholesky
        # reads one triangle and T is symmetrised), so it is not symmetrised (two passes saved).
        K = (X @ Sigma) @ X.T
        diag = torch.diagonal(K).clone()
        if not bool(torch.all(diag > 0)):
            raise EvaluationError("K has a non-positive diagonal: Sigma is not positive definite")
        Q, ctx = self.act.eos_q(K, diag, self.siga2)  # K is overwritten
        M = Q.clone()
        M.diagonal().add_(self.sig2)
        L, info = torch.linalg.cholesky_ex(M)
        if int(info) != 0:
            raise EvaluationError(f"M = Q + sig2 I is not positive definite (minor {int(info)})")
        alpha = torch.cholesky_solve(self.y[:, None], L)[:, 0]  # (N,), never (N, 1)
        fbar = self.y - self.sig2 * alpha
        nll = 0.5 * float(self.y @ alpha) + float(torch.log(torch.diagonal(L)).sum())
        A = torch.cholesky_inverse(L, out=M)  # reuses M's memory
        A.addr_(alpha, alpha, alpha=-1.0)  # A = M^{-1} - alpha alpha^T
        del L
        G, scale = self.act.eos_g(A, ctx, self.siga2)  # A is overwritten
        T = (X.T @ (G @ X)).mul_(scale)
        T = 0.5 * (T + T.T)
        if not (bool(torch.isfinite(T).all()) and bool(torch.isfinite(alpha).all()) and math.isfinite(nll)):
            raise EvaluationError("non-finite gradient, alpha or likelihood")
        return EoSState(Sigma=Sigma, T=T, Q=Q, alpha=alpha, fbar=fbar, nll=nll)

    # -- the O(d^3) part -------------------------------------------------------------------
    def sigma_new(self, T: torch.Tensor, chi: float) -> torch.Tensor:
        """``[(d / sigw2) I + T / chi]^{-1}`` ``(d, d)`` (Cholesky when positive definite)."""
        P = self._eye_d * (self.d / self.sigw2) + T / chi
        L, info = torch.linalg.cholesky_ex(P)
        if int(info) == 0:
            S = torch.cholesky_inverse(L)
        else:  # indefinite precision: the update is not a covariance, but the residual is defined
            S = torch.linalg.solve(P, self._eye_d)
        return 0.5 * (S + S.T)

    def residual(self, state: EoSState, chi: float) -> torch.Tensor:
        """``F = Sigma - Sigma_new(Sigma)`` ``(d, d)`` for annealing factor ``chi``."""
        return state.Sigma - self.sigma_new(state.T, chi)

    def rel_residual(self, state: EoSState, chi: float) -> float:
        """``max|Sigma - Sigma_new| / max|Sigma|`` (inf when not finite)."""
        v = float(self.residual(state, chi).abs().max() / state.Sigma.abs().max())
        return v if math.isfinite(v) else math.inf

    def action(self, state: EoSState, chi: float) -> float:
        """``S = (chi/2)[(d/sigw2) Tr Sigma - log det Sigma] + nll`` (docs/MATH.md section 7)."""
        L = torch.linalg.cholesky(state.Sigma)
        log_det = 2.0 * float(torch.log(torch.diagonal(L)).sum())
        return 0.5 * chi * ((self.d / self.sigw2) * float(torch.trace(state.Sigma)) - log_det) + state.nll

    def action_gradient(self, state: EoSState, chi: float) -> torch.Tensor:
        """``grad S = (1/2)[chi((d/sigw2) I - Sigma^{-1}) + T]`` ``(d, d)``, the gradient on symmetric
        matrices (``dS = Tr(grad S dSigma)``)."""
        inv = torch.cholesky_inverse(torch.linalg.cholesky(state.Sigma))
        g = 0.5 * (chi * (self._eye_d * (self.d / self.sigw2) - inv) + state.T)
        return 0.5 * (g + g.T)

    def nngp_sigma(self) -> torch.Tensor:
        return nngp_sigma(self.d, self.sigw2, device=self.device)


def action(X, y, Sigma, chi: float, params: EoSParams = PAPER_EOS, *, activation: str = NetworkParams.activation,
           device="cpu") -> tuple[float, torch.Tensor]:
    """The action ``S(Sigma)`` and its gradient ``(d, d)`` for data ``X`` ``(N, d)``, ``y`` ``(N,)``
    (sigw2, siga2, sig2 of ``params``)."""
    ev = EoSEvaluator(X, y, params, activation=activation, device=device)
    state = ev.state(Sigma)
    return ev.action(state, chi), ev.action_gradient(state, chi)


@dataclass
class StepRecord:
    """One attempted continuation step (failed attempts are kept, with ``accepted`` False).

    ``rel_residual`` and ``action`` are those of the step's returned point at this ``factor``.
    """

    factor: float
    iterations: int
    evaluations: int
    rel_residual: float
    action: float
    converged: bool
    seconds: float
    accepted: bool
    depth: int  # 0 for a factor of the schedule, k for one inserted by the k-th subdivision
    message: str = ""


@dataclass
class Candidate:
    """One solution found for chi = h (the branch of a strategy, or a restart from Sigma_0);
    ``rel_residual`` and ``action`` at chi = h, ``factor`` where its branch stopped.

    ``sigma_gap`` = max|Sigma - Sigma_chosen| / max|Sigma_chosen|.
    """

    origin: str
    converged: bool
    factor: float
    rel_residual: float
    action: float
    evaluations: int
    sigma_gap: float = math.nan
    message: str = ""


@dataclass
class EoSResult:
    """Outcome of :func:`solve_eos` (tensors on CPU, float64).

    ``Sigma``, ``Sigma0`` ``(d, d)``: the chosen solution (the converged candidate of least action;
    the primary branch's last accepted point when none converged) and the NNGP start.
    ``Q``, ``Q0`` ``(N, N)``: the kernel at ``Sigma`` and at ``Sigma0``.
    ``alpha``, ``fbar``, ``fbar0`` ``(N,)``. ``converged``: the chosen point solves the EoS at chi = h
    to ``rel_residual <= rtol``. ``rel_residual`` and ``action``: those of ``Sigma`` at chi = h
    (also when the branch stopped earlier, at chi = ``factor``: how far it is from a solution).
    ``curvature``: the least second directional derivative of S found at ``Sigma``, relative to
    that of the KL term (positive at a local minimum; nan when not checked). ``steps``: every
    attempted step of the primary branch. ``candidates``: every solution that competed.
    """

    Sigma: torch.Tensor
    Sigma0: torch.Tensor
    Q: torch.Tensor
    Q0: torch.Tensor
    alpha: torch.Tensor
    fbar: torch.Tensor
    fbar0: torch.Tensor
    converged: bool
    rel_residual: float
    action: float
    curvature: float
    factor: float
    evaluations: int
    seconds: float
    strategy: str
    origin: str
    steps: list[StepRecord] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    failed_factor: float | None = None
    message: str = ""

    @property
    def certified(self) -> bool:
        """Converged to a point where S curves upward along every direction checked."""
        return self.converged and self.curvature > 0

    @property
    def status(self) -> str:
        """``ok`` (converged and certified), ``not_converged``, ``not_minimum`` (a stationary point
        where S curves downward along a checked direction) or ``nan``."""
        if not bool(torch.isfinite(self.Q).all()) or not math.isfinite(self.rel_residual):
            return "nan"
        if not self.converged:
            return "not_converged"
        return "ok" if self.certified else "not_minimum"

    def steps_table(self) -> list[dict]:
        return [vars(s).copy() for s in self.steps]


def _is_pd(S: torch.Tensor) -> bool:
    return int(torch.linalg.cholesky_ex(0.5 * (S + S.T))[1]) == 0


class _Memory:
    """chi-independent secant history: (Sigma_i, T_i) pairs from past evaluations."""

    def __init__(self, size: int):
        self.size = size
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, state: EoSState):
        self.items.append((state.Sigma, state.T))
        del self.items[: max(0, len(self.items) - self.size - 1)]

    def clear(self, keep_last: bool = True):
        self.items = self.items[-1:] if keep_last else []


def _anderson_step(ev: EoSEvaluator, chi: float, state: EoSState, memory: _Memory, *, rtol,
                   maxiter, beta, regularization, predictor=None, stall=0):
    """Anderson-accelerated fixed-point solve of one continuation step, to ``rel_residual <= rtol``.

    Returns ``(state, rel_residual, iterations, converged, message)``; ``state`` is the best point.
    """
    res = ev.rel_residual(state, chi)
    best, best_res = state, res
    if res <= rtol:
        return best, best_res, 0, True, ""
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
                lam = regularization * float((Fm * Fm).sum()) + 1e-300
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
            while not _is_pd(trial) and shrink < 30:
                trial = best.Sigma + 0.5 * (trial - best.Sigma)
                shrink += 1
        try:
            new = ev.state(trial)
        except EvaluationError:
            # Unusable point: restart the history at the best point and take a damped step.
            memory.clear(keep_last=False)
            memory.add(best)
            trial = best.Sigma + 0.25 * beta * (ev.sigma_new(best.T, chi) - best.Sigma)
            trial = 0.5 * (trial + trial.T)
            restarts += 1
            if restarts > 8:
                return best, best_res, iterations, False, "evaluation failed repeatedly"
            continue
        trial = None
        memory.add(new)
        res = ev.rel_residual(new, chi)
        if res < best_res:
            best, best_res = new, res
        if res <= rtol:
            return new, res, iterations, True, ""
        history.append(best_res)
        if stall and len(history) > stall and history[-1] > 0.5 * history[-1 - stall]:
            # Less than a halving of the best residual in `stall` iterations: give the step back
            # to the continuation (which subdivides it) instead of spending maxiter evaluations.
            return best, best_res, iterations, False, f"stalled (best rel_residual {best_res:.3g} after {iterations} iterations)"
        if res > 1e3 * best_res or not math.isfinite(res):
            # Diverging: restart from the best point.
            memory.clear(keep_last=False)
            memory.add(best)
            restarts += 1
    return best, best_res, iterations, False, f"maxiter {maxiter} reached (best rel_residual {best_res:.3g})"


def _newton_krylov_step(ev: EoSEvaluator, chi: float, state: EoSState, *, rtol, maxiter, inner_maxiter):
    """scipy newton_krylov on the residual scaled by max|Sigma| of the start. Returns like
    :func:`_anderson_step`."""
    from scipy.optimize import NoConvergence, newton_krylov

    res0 = ev.rel_residual(state, chi)
    if res0 <= rtol:
        return state, res0, 0, True, ""
    scale = float(state.Sigma.abs().max())
    cache: dict = {"state": state}
    iterations = [0]

    def F(x):
        S = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=ev.device)
        try:
            st = ev.state(S)
        except EvaluationError:
            return np.full(x.shape, 1e6)
        cache["state"] = st
        out = ((S - ev.sigma_new(st.T, chi)) / scale).cpu().numpy()  # F of the unsymmetrised input
        return out if np.all(np.isfinite(out)) else np.full(x.shape, 1e6)

    def callback(x, f):
        iterations[0] += 1

    message = ""
    try:
        # The scaled residual's tolerance is rtol/2: max|Sigma| may shrink by up to that factor.
        x = newton_krylov(F, state.Sigma.cpu().numpy(), f_tol=0.5 * rtol, maxiter=maxiter,
                          inner_maxiter=inner_maxiter, callback=callback)
    except NoConvergence as err:
        x = np.asarray(err.args[0])
        message = f"maxiter {maxiter} reached"
    except (ValueError, FloatingPointError, np.linalg.LinAlgError) as err:
        return state, res0, iterations[0], False, f"newton_krylov failed: {err}"
    S = torch.as_tensor(x, dtype=torch.float64, device=ev.device)
    S = 0.5 * (S + S.T)
    st = cache["state"]
    if not torch.equal(st.Sigma, S):
        try:
            st = ev.state(S)
        except EvaluationError as err:
            return state, res0, iterations[0], False, f"final point unusable: {err}"
    res = ev.rel_residual(st, chi)
    return st, res, iterations[0], res <= rtol, message


class _Abort(Exception):
    """Ends an L-BFGS run from inside its callbacks."""


def _lbfgs(ev: EoSEvaluator, chi: float, start: EoSState, *, stop_at: float, maxiter: int):
    """Minimise S from ``start`` with scipy's L-BFGS-B until ``rel_residual <= stop_at`` (or until it
    stops by itself). Parameters: the lower triangle of ``Lt`` with ``Sigma = L0 Lt Lt^T L0^T``,
    ``L0`` the Cholesky factor of ``start.Sigma`` and the diagonal of ``Lt`` stored as its log, so
    every trial point is positive definite and the start is ``Lt = I``.

    Returns ``(state, rel_residual, iterations, message)`` at the last accepted iterate.
    """
    from scipy.optimize import minimize

    d = ev.d
    rows, cols = torch.tril_indices(d, d, device=ev.device)
    on_diag = rows == cols
    L0 = torch.linalg.cholesky(start.Sigma)
    seen: dict[bytes, EoSState] = {}
    track = {"state": start, "rel": ev.rel_residual(start, chi), "iterations": 0}

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
            st = ev.state(L @ L.T)
            value, G = ev.action(st, chi), ev.action_gradient(st, chi)
        except (EvaluationError, torch.linalg.LinAlgError) as err:
            raise _Abort(f"unusable trial point: {err}") from None
        seen.clear()  # only the latest point is ever asked for by the callback
        seen[theta.tobytes()] = st
        grad = 2.0 * (L0.T @ G @ L)  # dS/dLt, then the chain rule through exp on the diagonal
        g = grad[rows, cols]
        g[on_diag] *= Lt.diagonal()
        return value, g.cpu().numpy()

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
        out = minimize(fun, theta0, jac=True, method="L-BFGS-B", callback=callback,
                       options=dict(maxiter=maxiter, maxfun=2 * maxiter + 20, maxcor=10, gtol=0.0, ftol=0.0))
        message = "" if track["rel"] <= stop_at else f"L-BFGS-B: {out.message}"
    except _Abort as err:
        message = str(err)
    return track["state"], track["rel"], track["iterations"], message


def _minimize_step(ev: EoSEvaluator, chi: float, start: EoSState, *, rtol, maxiter, **_):
    """Least action at ``chi`` from ``start``: L-BFGS on S down to ``POLISH_FROM``, then Anderson
    polishing to ``rtol``; if the polish fails, L-BFGS again from the best point to its own stop
    and a second polish. Returns like :func:`_anderson_step` (on failure, the point of least
    relative residual; where that lies below ``POLISH_FROM`` the message gives the float64 noise
    of the map there, :func:`_noise_floor`)."""
    rel = ev.rel_residual(start, chi)
    if rel <= rtol:
        return start, rel, 0, True, ""
    state, iterations, messages = start, 0, []
    best, best_rel = start, rel
    for stop_at in (max(rtol, POLISH_FROM), rtol):
        state, rel, its, msg = _lbfgs(ev, chi, state, stop_at=stop_at, maxiter=maxiter)
        iterations += its
        messages += [msg] if msg else []
        if rel <= rtol:
            return state, rel, iterations, True, ""
        polished, rel_p, its, ok, msg = _anderson_step(
            ev, chi, state, _anderson_memory(ev.d, state), rtol=rtol, maxiter=min(50, maxiter), beta=1.0,
            regularization=1e-10, stall=10)
        iterations += its
        # Accept the polish only where it stayed at this minimum (S did not rise above the start of
        # the polish beyond float64 noise); otherwise it reached another fixed point.
        stayed = ev.action(polished, chi) <= ev.action(state, chi) + 1e-9 * abs(ev.action(state, chi))
        if ok and stayed:
            return polished, rel_p, iterations, True, ""
        messages.append(f"polish: {msg}" if not ok else "polish left the minimum")
        candidates = [(state, rel), (polished, rel_p)] if stayed else [(state, rel)]
        best, best_rel = min([(best, best_rel), *candidates], key=lambda c: c[1])
    if best_rel <= POLISH_FROM:
        noise = _noise_floor(ev, best, chi)
        if noise > rtol:
            messages.insert(0, f"stalled at rel_residual {best_rel:.2g}, where the float64 noise of the map is "
                               f"about {noise:.1g} > rtol {rtol:g}: a tolerance above the noise can be met")
    return best, best_rel, iterations, False, "; ".join(messages)


def _noise_floor(ev: EoSEvaluator, state: EoSState, chi: float) -> float:
    """The float64 noise of ``rel_residual`` at ``state``: its change under scalings of Sigma by
    ``1 +- NOISE_STEP``, which move the exact residual by about NOISE_STEP |1 - J| only (J the
    map's slope, |J| < 1e3 where measured). Two evaluations."""
    F0 = ev.residual(state, chi)
    scale = float(state.Sigma.abs().max())
    changes = [float((ev.residual(ev.state(state.Sigma * (1.0 + sign * NOISE_STEP)), chi) - F0).abs().max())
               for sign in (1.0, -1.0)]
    return max(changes) / scale


def _anderson_memory(d: int, state: EoSState) -> _Memory:
    """A polishing memory: as many secant pairs as the problem has dimensions, at most 10."""
    memory = _Memory(min(10, d * (d + 1) // 2))
    memory.add(state)
    return memory


@dataclass
class _Branch:
    """What one strategy reached: its last accepted (chi, state) and the attempted steps."""

    origin: str
    chi: float
    state: EoSState
    steps: list[StepRecord]
    evaluations: int
    converged: bool
    failed_factor: float | None = None
    message: str = ""


def _schedule(annealing_factors, h: float, anneal: bool) -> list[float]:
    factors = [float(f) for f in annealing_factors] if anneal else []
    if any(not (f > 0) for f in factors):
        raise ValueError(f"annealing factors must be positive, got {factors}")
    if not factors or factors[-1] != float(h):
        factors.append(float(h))
    return factors


def _branch(ev: EoSEvaluator, strategy: str, factors: list[float], state0: EoSState, *, origin: str,
            rtol, maxiter, inner_maxiter, max_subdivisions, anderson_memory, anderson_beta,
            anderson_regularization, anderson_stall, on_accept=None, log=None) -> _Branch:
    """Follow ``factors`` from the NNGP limit with ``strategy``, warm-starting every step from the
    last accepted solution and subdividing failed steps geometrically."""
    e_start = ev.evaluations
    memory = _Memory(anderson_memory)
    memory.add(state0)
    steps: list[StepRecord] = []
    accepted = [(math.inf, state0)]  # chi = inf is the NNGP limit (exact at 1/chi = 0)
    pending = [(f, 0) for f in factors]  # (factor, depth)
    while pending:
        chi, depth = pending.pop(0)
        prev_chi, prev = accepted[-1]
        t0, e0 = time.perf_counter(), ev.evaluations
        if strategy == "minimize":
            new, rel, iters, ok, msg = _minimize_step(ev, chi, prev, rtol=rtol, maxiter=maxiter)
        elif strategy == "anderson":
            predictor = None
            if len(accepted) >= 2:
                (c_a, s_a), (c_b, s_b) = accepted[-2], accepted[-1]
                t_a, t_b, t_c = 1.0 / c_a, 1.0 / c_b, 1.0 / chi
                if t_b > t_a:
                    predictor = s_b.Sigma + (s_b.Sigma - s_a.Sigma) * ((t_c - t_b) / (t_b - t_a))
            if not memory.items or memory.items[-1][0] is not prev.Sigma:
                memory.add(prev)
            new, rel, iters, ok, msg = _anderson_step(
                ev, chi, prev, memory, rtol=rtol, maxiter=maxiter, beta=anderson_beta,
                regularization=anderson_regularization, predictor=predictor, stall=anderson_stall)
        else:
            new, rel, iters, ok, msg = _newton_krylov_step(ev, chi, prev, rtol=rtol, maxiter=maxiter,
                                                           inner_maxiter=inner_maxiter)
        record = StepRecord(factor=chi, iterations=iters, evaluations=ev.evaluations - e0, rel_residual=rel,
                            action=ev.action(new, chi), converged=ok, seconds=time.perf_counter() - t0,
                            accepted=ok, depth=depth, message=msg)
        steps.append(record)
        if log is not None:
            log.debug("EoS %s chi=%g depth=%d iterations=%d evaluations=%d rel_residual=%.3g action=%.10g "
                      "converged=%s", origin, chi, depth, iters, record.evaluations, rel, record.action, ok)
        if ok:
            accepted.append((chi, new))
            if on_accept is not None:
                on_accept(chi, new, record)
            continue
        if strategy == "minimize" and rel <= POLISH_FROM:
            # Stalled next to a solution, at the float64 noise floor of the map: a smaller step in
            # chi cannot help. An intermediate factor still serves as a warm start; at the last
            # factor the branch ends at the near-solution, not converged.
            if pending:
                accepted.append((chi, new))
                continue
            message = f"chi={chi:g} not solved to rtol {rtol:g}: {msg}"
            return _Branch(origin, chi, new, steps, ev.evaluations - e_start, False, chi, message)
        if depth >= max_subdivisions:
            message = (f"step to chi={chi:g} from chi={prev_chi:g} did not converge after "
                       f"{max_subdivisions} subdivisions: rel_residual {rel:.3g} > rtol {rtol:g} ({msg})")
            return _Branch(origin, prev_chi, prev, steps, ev.evaluations - e_start, False, chi, message)
        mid = 10.0 * chi if math.isinf(prev_chi) else math.sqrt(prev_chi * chi)
        pending[:0] = [(mid, depth + 1), (chi, depth + 1)]
        memory.clear(keep_last=False)
        memory.add(prev)
    chi, state = accepted[-1]
    return _Branch(origin, chi, state, steps, ev.evaluations - e_start, True)


def _curvature(ev: EoSEvaluator, state: EoSState, chi: float) -> float:
    """The least second directional derivative of S at ``state`` over the scale direction and
    ``CERTIFY_DIRECTIONS`` random symmetric directions (fixed seed), each divided by the KL
    term's own curvature along it: ``< 0`` means S decreases along that direction (not a minimum).

    Directions are ``D = L E L^T`` with ``Sigma = L L^T`` and ``|E|_F = 1``, along which the KL term
    curves by ``chi/2``; the second derivative is a forward difference of the exact gradient with
    step ``CERTIFY_STEP`` (one evaluation per direction).
    """
    d = ev.d
    L = torch.linalg.cholesky(state.Sigma)
    g0 = ev.action_gradient(state, chi)
    gen = torch.Generator().manual_seed(0)
    Es = [torch.eye(d, dtype=torch.float64) / math.sqrt(d)]
    for _ in range(CERTIFY_DIRECTIONS if d > 1 else 0):
        R = torch.randn(d, d, generator=gen, dtype=torch.float64)
        R = R + R.T
        Es.append(R / torch.linalg.norm(R))
    ratios = []
    for E in Es:
        D = L @ E.to(ev.device) @ L.T
        try:
            moved = ev.state(state.Sigma + CERTIFY_STEP * D)
        except EvaluationError:
            return math.nan
        second = float(((ev.action_gradient(moved, chi) - g0) * D).sum()) / CERTIFY_STEP
        ratios.append(second / (0.5 * chi))
    return min(ratios)


def solve_eos(X, y, params: EoSParams = PAPER_EOS, *, activation: str = NetworkParams.activation,
              anneal: bool | None = None, device="cpu", on_accept=None, anderson_memory: int = 3,
              anderson_beta: float = 1.0, anderson_regularization: float = 1e-10, anderson_stall: int = 8,
              threads: int | None = 1, log=None) -> EoSResult:
    """Solve the EoS of ``params`` at chi = ``params.h``: the least-action solution among the
    candidates found.

    ``X`` ``(N, d)``, ``y`` ``(N,)`` (scalar targets; an ``(N, 1)`` y raises). ``params``: the
    hyper-parameters and solver options (the paper's by default, :class:`~shallow_collapse.params.EoSParams`):

    ``strategy``: ``minimize`` (default), ``anderson`` or ``newton-krylov`` (module docstring).
    ``anneal``: follow ``annealing_factors`` (descending; ``h`` appended when it is not the last)
    from the NNGP limit, warm-started; default False for ``minimize`` (one solve at chi = h from
    the NNGP limit) and always True for the fixed-point strategies. A failed step is retried after
    inserting ``sqrt(chi_prev chi)`` (``10 chi`` after chi = inf), nested up to
    ``max_subdivisions`` times; beyond that the branch stops at ``failed_factor``.
    ``candidates``: further strategies whose answers compete (each over its own branch). An
    annealed ``minimize`` adds the direct solve at chi = h from the NNGP limit. The result is the
    converged candidate of least action; ``result.candidates`` lists them all, and ``log`` gets a
    warning where they disagree.
    ``rtol``: convergence when max|Sigma - Sigma_new| / max|Sigma| <= rtol.
    ``maxiter``: iterations per step (minimize: L-BFGS iterations per round; newton-krylov: Newton
    steps); ``inner_maxiter``: Krylov iterations per Newton step.

    ``activation``: erf or relu. ``on_accept(chi, state, step)``: called for the NNGP start
    (chi = inf, step None) and every accepted step of the primary branch.
    ``device``: ``cpu``, ``cuda`` or ``auto``. ``anderson_*``: memory, mixing, Tikhonov
    regularisation (relative) and stall window (0 disables it) of the ``anderson`` strategy.
    ``threads``: torch and BLAS threads for the solve (restored afterwards; None leaves them
    alone). One by default: the O(d^3) steps between the O(N^3) evaluations are many small
    parallel regions, and with two threads on a loaded 2-core machine a whole solve was measured
    up to 100x slower. ``log``: a logger for per-step debug lines and warnings.
    """
    kwargs = {k: v for k, v in locals().items() if k not in ("X", "y", "threads")}
    for name in (params.strategy, *params.candidates):
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")
    if threads is None:
        return _solve(X, y, **kwargs)
    with torch_threads(threads):
        return _solve(X, y, **kwargs)


def _solve(X, y, *, params: EoSParams, activation, anneal, device, on_accept, anderson_memory, anderson_beta,
           anderson_regularization, anderson_stall, log) -> EoSResult:
    t_start = time.perf_counter()
    ev = EoSEvaluator(X, y, params, activation=activation, device=device)
    strategy, h = params.strategy, params.h
    options = dict(rtol=params.rtol, maxiter=params.maxiter, inner_maxiter=params.inner_maxiter,
                   max_subdivisions=params.max_subdivisions,
                   anderson_memory=anderson_memory, anderson_beta=anderson_beta,
                   anderson_regularization=anderson_regularization, anderson_stall=anderson_stall, log=log)
    anneal = strategy != "minimize" or bool(anneal)
    state0 = ev.state(ev.nngp_sigma())
    if on_accept is not None:
        on_accept(math.inf, state0, None)

    def branch(name, annealed, callback=None):
        origin = f"{name}, {'annealed' if annealed else 'direct at chi=h'}"
        return _branch(ev, name, _schedule(params.annealing_factors, h, annealed), state0, origin=origin,
                       on_accept=callback, **options)

    branches = [branch(strategy, anneal, on_accept)]
    if strategy == "minimize" and anneal:
        branches.append(branch("minimize", False))
    for name in params.candidates:
        if name != strategy:
            branches.append(branch(name, name != "minimize"))
    chosen = _least_action(ev, branches, float(h))
    curvature = _curvature(ev, chosen.state, chosen.chi) if chosen.converged else math.nan
    found = _candidates(ev, branches, chosen, float(h))
    primary = branches[0]
    message = primary.message
    if chosen is not primary and found[0].sigma_gap > SAME_POINT:
        message = f"least action: {chosen.origin} (the {primary.origin} branch ended elsewhere)"
    if chosen.converged and not curvature > 0:
        message = (f"{message}; " if message else "") + (
            f"not a local minimum: S curves downward (relative curvature {curvature:.3g})")
    disagree = [c for c in found if c.converged and c.sigma_gap > SAME_POINT]
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
        failed_factor=None if chosen.converged else primary.failed_factor, message=message)


def _least_action(ev: EoSEvaluator, branches: list[_Branch], h: float) -> _Branch:
    """The converged branch of least action at ``h``; the first (primary) branch when none
    converged, or when it reached the same point (within ``SAME_POINT``: S then differs by
    float64 noise only)."""
    converged = [b for b in branches if b.converged]
    if not converged:
        return branches[0]
    best = min(converged, key=lambda b: ev.action(b.state, h))
    primary = branches[0]
    if primary.converged and _gap(primary.state, best.state) <= SAME_POINT:
        return primary
    return best


def _gap(a: EoSState, b: EoSState) -> float:
    """max|Sigma_a - Sigma_b| / max|Sigma_b|."""
    return float((a.Sigma - b.Sigma).abs().max() / b.Sigma.abs().max())


def _candidates(ev: EoSEvaluator, branches: list[_Branch], chosen: _Branch, h: float) -> list[Candidate]:
    return [Candidate(origin=b.origin, converged=b.converged, factor=b.chi,
                      rel_residual=ev.rel_residual(b.state, h), action=ev.action(b.state, h),
                      evaluations=b.evaluations, sigma_gap=_gap(b.state, chosen.state), message=b.message)
            for b in branches]

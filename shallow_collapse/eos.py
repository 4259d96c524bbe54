"""Adaptive kernel of a 2-layer network: the Equations of State (MATH.md section 6).

Unknown: ``Sigma`` ``(d, d)``, the covariance of a hidden unit's input weights. For data ``X``
``(N, d)`` and scalar targets ``y`` ``(N,)``:

- ``K = X Sigma X^T`` ``(N, N)``; ``Q = siga2 * Kphi(K)`` (erf or ReLU arc-cosine map);
- ``M = Q + sig2 I``; ``alpha = M^{-1} y`` ``(N,)``; ``fbar = Q alpha = y - sig2 alpha`` ``(N,)``;
- ``A = M^{-1} - alpha alpha^T`` ``(N, N)``, evaluated at the current Sigma and held fixed;
- ``T(Sigma) = grad_Sigma Tr(A Q(Sigma)) = X^T G X`` ``(d, d)`` with the closed-form ``G`` below;
- ``Sigma_new = [(d / sigw2) I + T / chi]^{-1}``; residual ``F = Sigma - Sigma_new``;
  converged when ``max |F| <= f_tol``.

One evaluation costs one Cholesky factorisation of ``M`` and one ``cholesky_inverse``
(O(N^3)); everything else is O(N^2 d). ``T`` does not depend on ``chi``, so an evaluation made
for one annealing factor gives the residual for any other factor for O(d^3): the continuation
reuses it (the first residual of every step is free) and the ``anderson`` strategy keeps its
secant history across steps.

Closed-form ``G`` (``G_kl = dTr(A Q)/dK_kl`` with the entries of K taken as independent):

- erf (MATH section 6): ``D_i = 1 + 2K_ii``, ``r = D^(-1/2)``, ``C = 2 K o r r^T``,
  ``B = A o siga2 (2/pi)(1 - C o C)^(-1/2)``,
  ``G = 2 B o r r^T - 2 diag(sum_j B_ij C_ij / D_i)``.
- ReLU (derived here): with ``n_ij = sqrt(K_ii K_jj)``, ``cos theta_ij = K_ij / n_ij`` and
  ``J(theta) = sin theta + (pi - theta) cos theta``, ``Kphi = n J / (2 pi)``. Since
  ``dJ/dcos = pi - theta``, ``dKphi_ij/dK_ij = (pi - theta_ij)/(2 pi) = Kdphi_ij`` and, through the
  prefactor and the cosine, ``dKphi_ij/dK_ii = (Kphi_ij - K_ij Kdphi_ij) / (2 K_ii)
  = n_ij sin theta_ij / (4 pi K_ii)``. Row and column both contribute, so
  ``G = siga2 [A o Kdphi + diag(sum_j A_ij n_ij sin theta_ij / (2 pi K_ii))]``
  (the j = i term vanishes because theta_ii = 0).

Strategies (``strategy``):

- ``newton-krylov``: ``scipy.optimize.newton_krylov`` on the ``(d, d)`` residual (finite-difference
  Jacobian-vector products, each one evaluation).
- ``anderson`` (default): Anderson-accelerated fixed-point iteration (type II, memory
  ``anderson_memory`` = 3, mixing ``anderson_beta`` = 1) on ``Sigma -> Sigma_new``, with a
  secant predictor in ``1/chi`` (the NNGP limit is the exact solution at ``1/chi = 0``) as the
  first trial of each step, a history of ``(Sigma, T)`` pairs carried across annealing steps
  (re-scored for the new chi at no cost), safeguards (positive-definite trial points,
  restarts from the best point) and stall detection: a step whose best residual has not halved
  in ``anderson_stall`` iterations is handed back to the continuation, which subdivides it.
  A short memory works best here (a scan over memory 2..16 on the paper's data: 3 needs ~40%
  fewer evaluations than 8; stale secant pairs from earlier factors hurt more than they help).

Continuation: ``Sigma_0 = (sigw2/d) I``; every factor warm-starts from the last accepted
solution; a failed step is retried after inserting ``sqrt(chi_prev chi)`` (nested up to
``max_subdivisions``); then the solve stops and says where and by how much.

Public API: :func:`solve_eos` returns an :class:`EoSResult`; :class:`EoSEvaluator` exposes the
map itself (used by tests and the benchmark).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .devices import resolve_device as _resolve_device
from .devices import torch_threads

__all__ = ["STRATEGIES", "ACTIVATIONS", "EoSEvaluator", "EoSState", "StepRecord", "EoSResult",
           "solve_eos", "kernel_phi", "resolve_device", "nngp_sigma"]

STRATEGIES = ("anderson", "newton-krylov")
ACTIVATIONS = ("erf", "relu")


class EvaluationError(RuntimeError):
    """The map cannot be evaluated at this Sigma (not positive definite, Cholesky failure, NaN)."""


def resolve_device(device) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or a ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    return _resolve_device("auto" if device is None else device)


def nngp_sigma(d: int, sigw2: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """The NNGP limit ``Sigma_0 = (sigw2 / d) I`` ``(d, d)`` (the solution at chi = infinity)."""
    return torch.eye(d, dtype=dtype, device=device) * (sigw2 / d)


def kernel_phi(K: torch.Tensor, activation: str) -> torch.Tensor:
    """``Kphi(K)`` ``(N, N)`` of a symmetric pre-activation kernel (MATH section 5), differentiable.

    Written with plain torch ops so autograd can check the closed-form gradient; the solver uses
    the fused in-place versions in :class:`EoSEvaluator`.
    """
    diag = torch.diagonal(K)
    if activation == "erf":
        r = (1.0 + 2.0 * diag).rsqrt()
        return (2.0 / math.pi) * torch.asin(2.0 * K * r[:, None] * r[None, :])
    if activation == "relu":
        # The diagonal (theta = 0, Kphi_ii = K_ii / 2) is written separately so that autograd
        # never differentiates acos at 1 (its derivative is infinite there; the limit is finite).
        eye = torch.eye(K.shape[-1], dtype=torch.bool, device=K.device)
        n = torch.sqrt(diag[:, None] * diag[None, :])
        cos = torch.where(eye, 0.0, K / n)
        theta = torch.acos(cos)
        off = n * (torch.sin(theta) + (math.pi - theta) * cos) / (2.0 * math.pi)
        return torch.where(eye, 0.5 * n, off)
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


@dataclass
class EoSState:
    """Everything one O(N^3) evaluation at ``Sigma`` produces (all on the solver's device).

    ``Sigma`` ``(d, d)``; ``T = X^T G X`` ``(d, d)``; ``Q`` ``(N, N)``; ``alpha``, ``fbar`` ``(N,)``.
    """

    Sigma: torch.Tensor
    T: torch.Tensor
    Q: torch.Tensor
    alpha: torch.Tensor
    fbar: torch.Tensor


class EoSEvaluator:
    """The EoS map for fixed data and hyper-parameters.

    ``X`` ``(N, d)`` and ``y`` ``(N,)`` are moved to ``device`` in float64. :meth:`state` does the
    O(N^3) work; :meth:`sigma_new` and :meth:`residual` turn a state into the update for any chi
    for O(d^3). ``evaluations`` counts calls of :meth:`state`.
    """

    def __init__(self, X, y, *, activation="erf", sigw2=1.0, siga2=1.0, sig2=1e-6, device="cpu"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
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
        self.sigw2, self.siga2, self.sig2 = float(sigw2), float(siga2), float(sig2)
        self.evaluations = 0
        self._eye_d = torch.eye(self.d, dtype=torch.float64, device=self.device)

    # -- the O(N^3) part -------------------------------------------------------------------
    def state(self, Sigma: torch.Tensor, with_grad: bool = True) -> EoSState:
        """Evaluate Q, alpha, fbar and (when ``with_grad``) T = X^T G X at ``Sigma`` ``(d, d)``.

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
        if self.activation == "erf":
            c0 = self.siga2 * 2.0 / math.pi
            D = 1.0 + 2.0 * diag
            r = D.rsqrt()
            rr = torch.outer(r, r).mul_(2.0)  # 2 r r^T
            C = K.mul_(rr).clamp_(-1.0, 1.0)  # C = 2 K o r r^T, in K's memory
            Q = torch.asin(C).mul_(c0)
        else:
            n = torch.sqrt(diag[:, None] * diag[None, :])
            cos = (K / n).clamp_(-1.0, 1.0)
            sin = (1.0 - cos * cos).clamp_min_(0.0).sqrt_()
            theta = torch.atan2(sin, cos)
            Q = (sin + (math.pi - theta) * cos).mul_(n * (self.siga2 / (2.0 * math.pi)))
        M = Q.clone()
        M.diagonal().add_(self.sig2)
        L, info = torch.linalg.cholesky_ex(M)
        if int(info) != 0:
            raise EvaluationError(f"M = Q + sig2 I is not positive definite (minor {int(info)})")
        alpha = torch.cholesky_solve(self.y[:, None], L)[:, 0]  # (N,), never (N, 1)
        fbar = self.y - self.sig2 * alpha
        if not with_grad:
            return EoSState(Sigma=Sigma, T=None, Q=Q, alpha=alpha, fbar=fbar)
        A = torch.cholesky_inverse(L, out=M)  # reuses M's memory
        A.addr_(alpha, alpha, alpha=-1.0)  # A = M^{-1} - alpha alpha^T
        del L
        if self.activation == "erf":
            # B = c0 A o (1 - C^2)^(-1/2) with c0 = siga2 (2/pi);
            # G = 2 B o r r^T - 2 diag(sum_j B_ij C_ij / D_i) = c0 [Bu o rr - diag(2 (Bu C) 1 / D)]
            # with Bu = B / c0 and rr = 2 r r^T; c0 is applied to the d x d result.
            W = torch.addcmul(torch.ones((), dtype=C.dtype, device=C.device), C, C, value=-1.0)
            Bu = A.mul_(W.clamp_min_(1e-300).rsqrt_())
            del W
            diag_term = torch.linalg.vecdot(Bu, C, dim=1).div_(D).mul_(2.0)
            G = Bu.mul_(rr)
            G.diagonal().sub_(diag_term)
            T = (X.T @ (G @ X)).mul_(c0)
        else:
            # G = siga2 [A o Kdphi + diag(sum_j A_ij n_ij sin(theta_ij) / (2 pi K_ii))]
            diag_term = (A * n * sin).sum(1).div_(2.0 * math.pi * diag).mul_(self.siga2)
            G = A.mul_((math.pi - theta).mul_(self.siga2 / (2.0 * math.pi)))
            G.diagonal().add_(diag_term)
            T = X.T @ (G @ X)
        T = 0.5 * (T + T.T)
        if not (bool(torch.isfinite(T).all()) and bool(torch.isfinite(alpha).all())):
            raise EvaluationError("non-finite gradient or alpha")
        return EoSState(Sigma=Sigma, T=T, Q=Q, alpha=alpha, fbar=fbar)

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

    def nngp_sigma(self) -> torch.Tensor:
        return nngp_sigma(self.d, self.sigw2, device=self.device)


@dataclass
class StepRecord:
    """One attempted continuation step (failed attempts are kept, with ``accepted`` False)."""

    factor: float
    iterations: int
    evaluations: int
    residual: float
    converged: bool
    seconds: float
    accepted: bool
    depth: int  # 0 for a factor of the schedule, k for one inserted by the k-th subdivision
    message: str = ""


@dataclass
class EoSResult:
    """Outcome of :func:`solve_eos` (tensors on CPU, float64).

    ``Sigma``, ``Sigma0`` ``(d, d)``: the last accepted solution and the NNGP start.
    ``Q``, ``Q0`` ``(N, N)``: the kernel at ``Sigma`` and at ``Sigma0``.
    ``alpha``, ``fbar``, ``fbar0`` ``(N,)``. ``converged``: every step up to ``h`` converged.
    ``residual``: max|F| of the final attempt (at ``failed_factor`` when not converged).
    ``steps``: every attempt. ``snapshots`` (with ``record_steps``): one dict per accepted
    factor (plus the NNGP start, factor inf) with ``factor``, ``Sigma`` ``(d, d)``, ``fbar``
    ``(N,)`` and, when labels were given, ``nc1``, ``tr_w``, ``tr_b`` (of Q), ``fbar_nc1``
    (of fbar fbar^T) and ``mse`` (mean (y - fbar)^2).
    """

    Sigma: torch.Tensor
    Sigma0: torch.Tensor
    Q: torch.Tensor
    Q0: torch.Tensor
    alpha: torch.Tensor
    fbar: torch.Tensor
    fbar0: torch.Tensor
    converged: bool
    residual: float
    factor: float
    evaluations: int
    seconds: float
    strategy: str
    steps: list[StepRecord] = field(default_factory=list)
    failed_factor: float | None = None
    message: str = ""
    snapshots: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``ok``, ``not_converged`` or ``nan`` (non-finite Q at the returned Sigma)."""
        if not bool(torch.isfinite(self.Q).all()) or not math.isfinite(self.residual):
            return "nan"
        return "ok" if self.converged else "not_converged"

    def steps_table(self) -> list[dict]:
        return [vars(s).copy() for s in self.steps]


def _max_abs(F: torch.Tensor) -> float:
    v = float(F.abs().max())
    return v if math.isfinite(v) else math.inf


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


def _anderson_step(ev: EoSEvaluator, chi: float, state: EoSState, memory: _Memory, *, f_tol,
                   maxiter, beta, regularization, predictor, stall):
    """Anderson-accelerated fixed-point solve of one continuation step.

    Returns ``(state, residual, iterations, converged, message)``; ``state`` is the best point seen.
    """
    F = ev.residual(state, chi)
    res = _max_abs(F)
    best, best_res = state, res
    if res <= f_tol:
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
        res = _max_abs(ev.residual(new, chi))
        if res < best_res:
            best, best_res = new, res
        if res <= f_tol:
            return new, res, iterations, True, ""
        history.append(best_res)
        if stall and len(history) > stall and history[-1] > 0.5 * history[-1 - stall]:
            # Less than a halving of the best residual in `stall` iterations: give the step back
            # to the continuation (which subdivides it) instead of spending maxiter evaluations.
            return best, best_res, iterations, False, f"stalled (best max|F| {best_res:.3g} after {iterations} iterations)"
        if res > 1e3 * best_res or not math.isfinite(res):
            # Diverging: restart from the best point.
            memory.clear(keep_last=False)
            memory.add(best)
            restarts += 1
    return best, best_res, iterations, False, f"maxiter {maxiter} reached"


def _newton_krylov_step(ev: EoSEvaluator, chi: float, state: EoSState, *, f_tol, maxiter,
                        inner_maxiter):
    """scipy newton_krylov on the (d, d) residual. Returns like :func:`_anderson_step`."""
    from scipy.optimize import NoConvergence, newton_krylov

    F0 = ev.residual(state, chi)
    res0 = _max_abs(F0)
    if res0 <= f_tol:
        return state, res0, 0, True, ""
    cache: dict = {"state": state}
    iterations = [0]

    def F(x):
        S = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=ev.device)
        try:
            st = ev.state(S)
        except EvaluationError:
            return np.full(x.shape, 1e6)
        cache["state"] = st
        out = (S - ev.sigma_new(st.T, chi)).cpu().numpy()  # F of the unsymmetrised input
        return out if np.all(np.isfinite(out)) else np.full(x.shape, 1e6)

    def callback(x, f):
        iterations[0] += 1

    x0 = state.Sigma.cpu().numpy()
    message = ""
    try:
        x = newton_krylov(F, x0, f_tol=f_tol, maxiter=maxiter, inner_maxiter=inner_maxiter,
                          callback=callback)
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
    res = _max_abs(ev.residual(st, chi))
    return st, res, iterations[0], res <= f_tol, message


def _snapshot(ev: EoSEvaluator, factor: float, state: EoSState, labels) -> dict:
    from .metrics import kernel_traces, nc1_kernel

    snap = {"factor": float(factor), "Sigma": state.Sigma.cpu(), "fbar": state.fbar.cpu()}
    if labels is not None:
        lab = labels.to(state.Q.device)
        tr_w, tr_b = kernel_traces(state.Q, lab)
        f = state.fbar
        snap.update(nc1=float(tr_w / tr_b), tr_w=float(tr_w), tr_b=float(tr_b),
                    fbar_nc1=float(nc1_kernel(f[:, None] * f[None, :], lab)),
                    mse=float(((ev.y - f) ** 2).mean()))
    return snap


def solve_eos(X, y, *, activation: str = "erf", sigw2: float = 1.0, siga2: float = 1.0 / 128,
              sig2: float = 1e-6, h: float = 500.0, annealing_factors=(), strategy: str = "anderson",
              f_tol: float = 5e-4, maxiter: int = 100, inner_maxiter: int = 100,
              max_subdivisions: int = 4, device="cpu", record_steps: bool = False, labels=None,
              anderson_memory: int = 3, anderson_beta: float = 1.0,
              anderson_regularization: float = 1e-10, anderson_carry: bool = True,
              anderson_stall: int = 8, threads: int | None = 1, log=None) -> EoSResult:
    """Solve the EoS by continuation from the NNGP limit down to ``chi = h``.

    ``X`` ``(N, d)``, ``y`` ``(N,)`` (scalar targets; an ``(N, 1)`` y raises). The schedule is
    ``annealing_factors`` (descending) with ``h`` appended when it is not its last entry. Each
    step warm-starts from the previous accepted solution. A failed step (not converged within
    ``maxiter``, stalled, or an unusable point) is retried from the last accepted solution after
    inserting the geometric intermediate factor ``sqrt(chi_prev chi)`` (``10 chi`` for the first
    step, whose predecessor is chi = inf), nested up to ``max_subdivisions`` times per step; beyond
    that the solve stops and reports ``failed_factor``, the residual and a message.

    ``strategy``: ``anderson`` (default) or ``newton-krylov`` (see the module docstring).
    ``f_tol``: absolute tolerance on max|Sigma - Sigma_new| (note Sigma ~ sigw2/d: at d = 128 the
    default 5e-4 of the paper's code does not pin NC1 down; the configs use 1e-6).
    ``maxiter``: iterations per step (newton-krylov: Newton steps); ``inner_maxiter``: Krylov
    iterations per Newton step. ``record_steps``: keep one snapshot per accepted factor
    (``labels`` ``(N,)`` adds NC1 metrics). ``device``: ``cpu``, ``cuda`` or ``auto``.
    ``anderson_*``: memory, mixing, Tikhonov regularisation of the least squares (relative),
    whether the history is carried across steps, and the stall window (0 disables it).
    ``threads``: torch intra-op threads for the solve (restored afterwards; None leaves the
    setting alone). One by default: the O(d^3) steps between the O(N^3) evaluations are many small
    parallel regions, and with two threads on a loaded 2-core machine a whole solve was measured
    up to 100x slower (N=512, d=8: 30 s instead of 0.3 s). ``log``: a logger for per-step debug
    lines and warnings.
    """
    # locals() holds exactly the parameters here (nothing else is defined yet).
    if threads is None:
        return _solve(X, y, **{k: v for k, v in locals().items() if k not in ("X", "y", "threads")})
    with torch_threads(threads):
        return _solve(X, y, **{k: v for k, v in locals().items() if k not in ("X", "y", "threads")})


def _solve(X, y, *, activation, sigw2, siga2, sig2, h, annealing_factors, strategy, f_tol, maxiter,
           inner_maxiter, max_subdivisions, device, record_steps, labels, anderson_memory,
           anderson_beta, anderson_regularization, anderson_carry, anderson_stall, log) -> EoSResult:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    t_start = time.perf_counter()
    ev = EoSEvaluator(X, y, activation=activation, sigw2=sigw2, siga2=siga2, sig2=sig2, device=device)
    factors = [float(f) for f in annealing_factors]
    if any(not (f > 0) for f in factors):
        raise ValueError(f"annealing factors must be positive, got {factors}")
    if not factors or factors[-1] != float(h):
        factors.append(float(h))
    if labels is not None:
        labels = torch.as_tensor(labels)

    S0 = ev.nngp_sigma()
    state0 = ev.state(S0)
    memory = _Memory(anderson_memory)
    memory.add(state0)
    snapshots = [_snapshot(ev, math.inf, state0, labels)] if record_steps else []
    steps: list[StepRecord] = []
    # Accepted solutions as (chi, state); chi = inf is the NNGP limit (exact at 1/chi = 0).
    accepted = [(math.inf, state0)]
    pending = [(f, 0) for f in factors]  # (factor, depth)
    failed_factor, message, last_res = None, "", 0.0

    while pending:
        chi, depth = pending.pop(0)
        prev_chi, prev = accepted[-1]
        t0 = time.perf_counter()
        e0 = ev.evaluations
        predictor = None
        if strategy == "anderson" and len(accepted) >= 2:
            (c_a, s_a), (c_b, s_b) = accepted[-2], accepted[-1]
            t_a, t_b, t_c = 1.0 / c_a, 1.0 / c_b, 1.0 / chi
            if t_b > t_a:
                predictor = s_b.Sigma + (s_b.Sigma - s_a.Sigma) * ((t_c - t_b) / (t_b - t_a))
        if strategy == "anderson":
            if not anderson_carry:
                memory.clear(keep_last=False)
            if not memory.items or memory.items[-1][0] is not prev.Sigma:
                memory.add(prev)
            new, res, iters, ok, msg = _anderson_step(
                ev, chi, prev, memory, f_tol=f_tol, maxiter=maxiter, beta=anderson_beta,
                regularization=anderson_regularization, predictor=predictor, stall=anderson_stall)
        else:
            new, res, iters, ok, msg = _newton_krylov_step(
                ev, chi, prev, f_tol=f_tol, maxiter=maxiter, inner_maxiter=inner_maxiter)
        record = StepRecord(factor=chi, iterations=iters, evaluations=ev.evaluations - e0,
                            residual=res, converged=ok, seconds=time.perf_counter() - t0,
                            accepted=ok, depth=depth, message=msg)
        steps.append(record)
        last_res = res
        if log is not None:
            log.debug("EoS chi=%g depth=%d iterations=%d evaluations=%d residual=%.3g converged=%s",
                      chi, depth, iters, record.evaluations, res, ok)
        if ok:
            accepted.append((chi, new))
            if record_steps:
                snapshots.append(_snapshot(ev, chi, new, labels))
            continue
        if depth >= max_subdivisions:
            failed_factor = chi
            message = (f"step to chi={chi:g} from chi={prev_chi:g} did not converge after "
                       f"{max_subdivisions} subdivisions: max|F|={res:.3g} > f_tol={f_tol:g} ({msg})")
            if log is not None:
                log.warning("EoS: %s", message)
            break
        mid = 10.0 * chi if math.isinf(prev_chi) else math.sqrt(prev_chi * chi)
        pending[:0] = [(mid, depth + 1), (chi, depth + 1)]
        if strategy == "anderson":
            memory.clear(keep_last=False)
            memory.add(prev)

    chi_final, final = accepted[-1]
    converged = failed_factor is None
    scale = float(final.Sigma.abs().max())
    if converged and scale <= 10.0 * f_tol:
        # max|F| <= f_tol is absolute: when Sigma itself shrinks to that size it holds trivially.
        message = (f"Sigma collapsed toward 0 (max|Sigma| = {scale:.3g} <= 10 f_tol): the absolute "
                   f"criterion holds trivially; Q is close to its linear (small-K) limit")
        if log is not None:
            log.warning("EoS: %s", message)
    return EoSResult(
        Sigma=final.Sigma.cpu(), Sigma0=S0.cpu(), Q=final.Q.cpu(), Q0=state0.Q.cpu(),
        alpha=final.alpha.cpu(), fbar=final.fbar.cpu(), fbar0=state0.fbar.cpu(),
        converged=converged, residual=float(last_res), factor=float(chi_final),
        evaluations=ev.evaluations, seconds=time.perf_counter() - t_start, strategy=strategy,
        steps=steps, failed_factor=failed_factor, message=message, snapshots=snapshots)

"""The EoS map and the action at one Sigma (docs/MATH.md sections 6 and 7).

Unknown: ``Sigma`` ``(d, d)``, symmetric positive definite, the covariance of a hidden unit's input
weights. For data ``X`` ``(N, d)`` and scalar targets ``y`` ``(N,)``:

- ``K = X Sigma X^T`` ``(N, N)``; ``Q = siga2 * Kphi(K)`` (the activation's kernel map);
- ``M = Q + sig2 I``; ``alpha = M^{-1} y`` ``(N,)``; ``fbar = Q alpha = y - sig2 alpha`` ``(N,)``;
- ``A = M^{-1} - alpha alpha^T`` ``(N, N)``; ``T(Sigma) = grad_Sigma Tr(A Q(Sigma)) = X^T G X``
  ``(d, d)`` with ``A`` held fixed and ``G`` from the ``g`` pass of the activation's kernel map
  (:mod:`.passes`);
- the EoS: ``Sigma = Sigma_new(Sigma) = [(d / sigw2) I + T / chi]^{-1}``.

**The action** ``S(Sigma) = (chi/2) [(d/sigw2) Tr Sigma - log det Sigma] + (1/2) y^T M^{-1} y +
(1/2) log det M`` (chi times the KL divergence to the prior plus the GP negative log marginal
likelihood) has the gradient ``(1/2)[chi((d/sigw2) I - Sigma^{-1}) + T]``: the EoS are its
stationarity condition.

One evaluation (:meth:`EoSEvaluator.state`) costs one Cholesky factorisation of ``M`` and one
inverse from it (O(N^3); scipy's LAPACK on M's own memory on CPU, torch on CUDA) and O(N^2 d)
elementwise work (:mod:`.passes`: compiled loops on CPU for erf and ReLU); ReLU at d = 1 needs no factorisation
(Q has rank two, :meth:`EoSEvaluator._collinear_relu_state`). ``T`` does not depend on ``chi``, so
one evaluation gives the residual, the action and its gradient for any annealing factor.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import blas, lapack

from . import loops
from . import tolerances as tol
from .passes import passes_for
from .. import activations
from ..closed_forms import is_relu
from ..devices import resolve_device
from ..params import EoSParams, NetworkParams

PAPER_EOS = EoSParams()


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
    and sig2. :meth:`state` does the
    O(N^3) work; :meth:`sigma_new`, :meth:`residual`, :meth:`rel_residual`, :meth:`action` and
    :meth:`action_gradient` turn a state into numbers for any chi for O(d^3). ``evaluations``
    counts calls of :meth:`state`.
    """

    def __init__(self, X, y, params: EoSParams = PAPER_EOS, *, activation=NetworkParams.activation,
                 device="cpu"):
        self.act = activations.get(activation)
        self.passes = passes_for(self.act.kernel_map)  # Q and G of the activation's kernel map
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
        self.sigw2, self.siga2, self.sig2 = float(params.sigw2), float(params.siga2), float(params.sig2)
        self.evaluations = 0
        # ReLU on collinear data (d = 1): Q has rank two in closed form (_collinear_relu_state).
        self._rank_two = is_relu(self.act.kernel_map) and self.d == 1
        self._eye_d = torch.eye(self.d, dtype=torch.float64, device=self.device)
        # (Sigma, T) of the latest evaluations, d x d each: the certificate reads curvature along
        # the directions the solver explored last from them (T does not depend on chi).
        self.recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=tol.RECENT_EVALUATIONS)
        # Two (N, N) scratch matrices reused by every evaluation (K and its ctx; M, its factor, A
        # and G): a fresh 32 MB tensor costs as much in page faults as a pass over it (N = 2048).
        self._K = self._M = None

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
        if self._K is None:
            self._K, self._M = (torch.empty(self.N, self.N, dtype=torch.float64, device=self.device)
                                for _ in range(2))
        K = torch.matmul(X @ Sigma, X.T, out=self._K)
        diag = torch.diagonal(K).clone()
        if not bool(torch.all(diag > 0)):
            raise EvaluationError("K has a non-positive diagonal: Sigma is not positive definite")
        Q, ctx = self.passes.q(K, diag, self.siga2)  # K is overwritten
        if self._rank_two:
            return self._collinear_relu_state(Sigma, Q)
        M = self._M.copy_(Q)
        M.diagonal().add_(self.sig2)
        if self.device.type == "cpu":
            A, alpha, log_det_half = _inverse_lapack(M, Q, self.sig2, self.y)
        else:
            A, alpha, log_det_half = _inverse_torch(M, self.y)
        fbar = self.y - self.sig2 * alpha
        nll = 0.5 * float(self.y @ alpha) + log_det_half
        G, scale = self.passes.g(A, ctx, self.siga2)  # A is overwritten
        T = (X.T @ (G @ X)).mul_(scale)
        T = 0.5 * (T + T.T)
        if not (bool(torch.isfinite(T).all()) and bool(torch.isfinite(alpha).all()) and math.isfinite(nll)):
            raise EvaluationError("non-finite gradient, alpha or likelihood")
        self.recent.append((Sigma, T))
        return EoSState(Sigma=Sigma, T=T, Q=Q, alpha=alpha, fbar=fbar, nll=nll)

    def _collinear_relu_state(self, Sigma: torch.Tensor, Q: torch.Tensor) -> EoSState:
        """ReLU at d = 1: every pair of points is collinear, so Q = U U^T exactly with the two
        columns ``u_+- = sqrt(c) relu(+-x)``, ``c = siga2 s / 2`` (``Sigma = [[s]]``), orthogonal.
        With ``w = |u|^2`` and ``p = u . y`` Woodbury gives everything in O(N), without forming the
        ill-conditioned ``M^{-1}`` (whose explicit form made the map noisy at sig2 = 1e-6):
        ``u^T M^{-1} u = w / (sig2 + w)``, ``u^T alpha = p / (sig2 + w)``,
        ``alpha = (y - sum u p / (sig2 + w)) / sig2``, ``log det M = (N - 2) log sig2 +
        sum log(sig2 + w)``, and since Q is linear in s, ``T = Tr(A Q) / s =
        sum [w / (sig2 + w) - p^2 / (sig2 + w)^2] / s`` (docs/MATH.md section 6)."""
        s, sig2, y = float(Sigma[0, 0]), self.sig2, self.y
        x = self.X[:, 0]
        U = torch.stack([x.clamp(min=0.0), (-x).clamp(min=0.0)], 1) * math.sqrt(self.siga2 * s / 2.0)  # (N, 2)
        w = (U * U).sum(0)
        p = U.T @ y
        fbar = U @ (p / (sig2 + w))
        alpha = (y - fbar) / sig2
        y_alpha = (float(y @ y) - float((p * p / (sig2 + w)).sum())) / sig2
        log_det = (self.N - 2) * math.log(sig2) + float(torch.log(sig2 + w).sum())
        nll = 0.5 * y_alpha + 0.5 * log_det
        T = ((w / (sig2 + w) - p * p / (sig2 + w) ** 2).sum() / s).reshape(1, 1)
        if not (bool(torch.isfinite(T).all()) and math.isfinite(nll)):
            raise EvaluationError("non-finite gradient or likelihood")
        self.recent.append((Sigma, T))
        return EoSState(Sigma=Sigma, T=T, Q=Q, alpha=alpha, fbar=fbar, nll=nll)

    def kernel(self, Sigma: torch.Tensor) -> torch.Tensor:
        """``Q = siga2 Kphi(X Sigma X^T)`` ``(N, N)`` alone (O(N^2 d); not counted as an evaluation)."""
        Sigma = torch.as_tensor(Sigma).to(device=self.device, dtype=torch.float64)
        K = (self.X @ (0.5 * (Sigma + Sigma.T))) @ self.X.T
        diag = torch.diagonal(K).clone()
        if not bool(torch.all(diag > 0)):
            raise EvaluationError("K has a non-positive diagonal: Sigma is not positive definite")
        return self.passes.q(K, diag, self.siga2)[0]

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
        return self.gradient(state.Sigma, state.T, chi)

    def gradient(self, Sigma: torch.Tensor, T: torch.Tensor, chi: float) -> torch.Tensor:
        """:meth:`action_gradient` from ``Sigma`` and its ``T`` alone (O(d^3))."""
        inv = torch.cholesky_inverse(torch.linalg.cholesky(Sigma))
        g = 0.5 * (chi * (self._eye_d * (self.d / self.sigw2) - inv) + T)
        return 0.5 * (g + g.T)

    def nngp_sigma(self) -> torch.Tensor:
        return nngp_sigma(self.d, self.sigw2, device=self.device)


def _inverse_lapack(M: torch.Tensor, Q: torch.Tensor, sig2: float, y: torch.Tensor):
    """``(A, alpha, (1/2) log det M)`` with ``A = M^{-1} - alpha alpha^T`` ``(N, N)`` in M's memory,
    by scipy's LAPACK dpotrf/dpotrs/dpotri and BLAS dsymv on M itself (no copy: the Fortran-order
    view of the symmetric M is M) and one compiled pass that forms A from dpotri's triangle. scipy's OpenBLAS
    was measured 1.5-3x faster than torch's MKL for this pair on the AMD EPYC this project runs on
    (bench/bench_eos_evaluation.py)."""
    Mf = M.numpy().T  # F-contiguous, same memory; its Fortran lower triangle is M's C upper one
    c, info = lapack.dpotrf(Mf, lower=1, clean=0, overwrite_a=1)
    if info != 0:
        raise EvaluationError(f"M = Q + sig2 I is not positive definite (minor {int(info)})")
    log_det_half = float(np.log(np.diagonal(c)).sum())
    alpha, info = lapack.dpotrs(c, y.numpy(), lower=1)
    inv, info = lapack.dpotri(c, lower=1, overwrite_c=1)
    if info != 0:
        raise EvaluationError(f"M = Q + sig2 I is singular (dpotri info {int(info)})")
    # One step of iterative refinement (O(N^2)): M is ill-conditioned at small sig2 (kappa ~ 1e6 at
    # the paper's 1e-6) and y^T M^{-1} y enters the action. The correction is small, so the explicit
    # inverse applied to it (dsymv, 0.8 ms at N = 2048; a dpotrs solve takes 3.8 ms) gave the same
    # alpha to the last bit on the paper's data (erf and ReLU, sig2 = 1e-6, N = 512 and 1024).
    residual = y.numpy() - Q.numpy() @ alpha - sig2 * alpha
    alpha += blas.dsymv(1.0, inv, residual, lower=1)
    A = torch.from_numpy(inv.T)  # C order; M^{-1} in its upper triangle
    alpha = torch.from_numpy(alpha)
    loops.upper_minus_rank1(A.numpy(), alpha.numpy())
    return A, alpha, log_det_half


def _inverse_torch(M: torch.Tensor, y: torch.Tensor):
    """:func:`_inverse_lapack` with torch's Cholesky (any device; A reuses M's memory)."""
    L, info = torch.linalg.cholesky_ex(M)
    if int(info) != 0:
        raise EvaluationError(f"M = Q + sig2 I is not positive definite (minor {int(info)})")
    alpha = torch.cholesky_solve(y[:, None], L)[:, 0]  # (N,), never (N, 1)
    log_det_half = float(torch.log(torch.diagonal(L)).sum())
    A = torch.cholesky_inverse(L, out=M)
    A.addr_(alpha, alpha, alpha=-1.0)  # A = M^{-1} - alpha alpha^T
    return A, alpha, log_det_half


def action(X, y, Sigma, chi: float, params: EoSParams = PAPER_EOS, *, activation: str = NetworkParams.activation,
           device="cpu") -> tuple[float, torch.Tensor]:
    """The action ``S(Sigma)`` and its gradient ``(d, d)`` for data ``X`` ``(N, d)``, ``y`` ``(N,)``
    (sigw2, siga2, sig2 of ``params``)."""
    ev = EoSEvaluator(X, y, params, activation=activation, device=device)
    state = ev.state(Sigma)
    return ev.action(state, chi), ev.action_gradient(state, chi)



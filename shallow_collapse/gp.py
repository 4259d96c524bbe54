"""The Gaussian-process likelihood of a linear readout on features, and its conditional readout.

Model (docs/MATH.md, the collapsed posterior): targets ``Y`` ``(N, C)`` with independent columns,
``Y[:, c] ~ N(0, K)``, ``K = s F F^T + sig2 I_N`` for features ``F`` ``(N, h)`` and a readout scale
``s`` (``siga2 / h``). Everything is batched over leading dimensions and differentiable (torch
autograd), in the dtype of ``F`` (float64 for the science).

Two exact forms, chosen by size: with N <= h, the Cholesky factor of the N x N matrix ``K``;
with h < N, the Woodbury form through ``A = sig2 I_h + s F^T F`` (h x h):
``K^{-1} = (I - s F A^{-1} F^T) / sig2`` and ``log det K = (N - h) log sig2 + log det A``.

A matrix that is not positive definite (a failed Cholesky) gives ``ok = False`` and NaN values
for that batch entry, never an exception. The EoS evaluator (:mod:`shallow_collapse.eos.evaluator`)
does the same solve with LAPACK in place on its own memory, which was measured 1.5-3 x faster
than this torch form for one N x N matrix; it stays separate and the tests compare the two.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["GPLikelihood", "gp_likelihood", "ReadoutPosterior", "readout_posterior"]


@dataclass
class GPLikelihood:
    """``quad = tr(Y^T K^{-1} Y)`` and ``logdet = log det K`` per batch entry ``(...,)``; ``ok``
    marks the entries whose matrix was positive definite. ``-log p(Y) = quad / 2 + C logdet / 2 +
    N C log(2 pi) / 2``."""

    quad: torch.Tensor
    logdet: torch.Tensor
    ok: torch.Tensor

    def nll(self, C: int) -> torch.Tensor:
        """Minus the log density of the C target columns, without the constant N C log(2 pi) / 2."""
        return 0.5 * self.quad + 0.5 * C * self.logdet


def _cholesky(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower Cholesky factor of each matrix of ``M`` and which succeeded; failed ones get the identity
    (so the batch stays finite) and are masked by the caller."""
    L, info = torch.linalg.cholesky_ex(M)
    ok = info == 0
    if not bool(ok.all()):
        eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device).expand_as(M)
        L = torch.where(ok[..., None, None], L, eye)
    return L, ok


def _logdet(L: torch.Tensor) -> torch.Tensor:
    return 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


def _masked(values: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    return torch.where(ok, values, torch.full_like(values, math.nan))


def gp_likelihood(F: torch.Tensor, Y: torch.Tensor, scale: float, sig2: float) -> GPLikelihood:
    """The GP likelihood terms of ``Y`` ``(..., N, C)`` under ``K = scale F F^T + sig2 I``,
    ``F`` ``(..., N, h)``: the N x N form when N <= h, else the h x h (Woodbury) form."""
    N, h = F.shape[-2:]
    if N <= h:
        K = scale * F @ F.transpose(-1, -2)
        K = K + sig2 * torch.eye(N, dtype=F.dtype, device=F.device)
        L, ok = _cholesky(K)
        Z = torch.linalg.solve_triangular(L, Y, upper=False)  # L^{-1} Y
        quad, logdet = Z.pow(2).sum((-1, -2)), _logdet(L)
    else:
        A = scale * F.transpose(-1, -2) @ F + sig2 * torch.eye(h, dtype=F.dtype, device=F.device)
        L, ok = _cholesky(A)
        Z = torch.linalg.solve_triangular(L, F.transpose(-1, -2) @ Y, upper=False)  # L_A^{-1} F^T Y
        quad = (Y.pow(2).sum((-1, -2)) - scale * Z.pow(2).sum((-1, -2))) / sig2
        logdet = (N - h) * (math.log(sig2) if sig2 > 0 else math.nan) + _logdet(L)
    return GPLikelihood(_masked(quad, ok), _masked(logdet, ok), ok)


@dataclass
class ReadoutPosterior:
    """The readout given the features (docs/MATH.md): ``a | F, Y ~ N(mean, cov)`` per column, with
    ``mean`` ``(..., h, C)`` and the trace of its column covariance ``cov_trace`` ``(...,)``;
    ``f_mean = F mean`` ``(..., N, C)`` (the posterior mean of the outputs on the training points)
    and ``sq_norm = E|a|^2 = |mean|^2 + C cov_trace``. ``ok`` as in :class:`GPLikelihood`."""

    mean: torch.Tensor
    cov_trace: torch.Tensor
    f_mean: torch.Tensor
    sq_norm: torch.Tensor
    ok: torch.Tensor


@torch.no_grad()
def readout_posterior(F: torch.Tensor, Y: torch.Tensor, scale: float, sig2: float) -> ReadoutPosterior:
    """The conditional readout of ``Y`` ``(..., N, C)`` on features ``F`` ``(..., N, h)`` with prior
    ``a ~ N(0, scale I_h)`` and noise ``sig2``: ``cov = scale sig2 A^{-1}``, ``mean = scale A^{-1}
    F^T Y``, ``A = sig2 I_h + scale F^T F`` (solved in the N x N form when N <= h, through
    ``A^{-1} F^T = F^T K^{-1}``)."""
    N, h = F.shape[-2:]
    C = Y.shape[-1]
    if N <= h:
        K = scale * F @ F.transpose(-1, -2) + sig2 * torch.eye(N, dtype=F.dtype, device=F.device)
        L, ok = _cholesky(K)
        alpha = torch.cholesky_solve(Y, L)  # K^{-1} Y
        mean = scale * F.transpose(-1, -2) @ alpha
        # tr(A^{-1}) = (h - scale tr(F^T K^{-1} F)) / sig2
        G = torch.linalg.solve_triangular(L, F, upper=False)
        cov_trace = scale * (h - scale * G.pow(2).sum((-1, -2)))
    else:
        A = scale * F.transpose(-1, -2) @ F + sig2 * torch.eye(h, dtype=F.dtype, device=F.device)
        L, ok = _cholesky(A)
        mean = scale * torch.cholesky_solve(F.transpose(-1, -2) @ Y, L)
        Linv = torch.linalg.solve_triangular(L, torch.eye(h, dtype=F.dtype, device=F.device).expand_as(A), upper=False)
        cov_trace = scale * sig2 * Linv.pow(2).sum((-1, -2))
    f_mean = F @ mean
    sq_norm = mean.pow(2).sum((-1, -2)) + C * cov_trace
    okk = ok[..., None, None]
    return ReadoutPosterior(torch.where(okk, mean, math.nan), _masked(cov_trace, ok),
                            torch.where(okk, f_mean, math.nan), _masked(sq_norm, ok), ok)

"""Every activation phi the toolkit knows, and everything it needs of each (MATH.md sections 2, 5-6).

One :class:`Activation` per name in :data:`ACTIVATIONS`; adding an activation means adding its
functions here and one registry entry. For an activation it holds:

- ``phi``: the pointwise function of the network (autograd-aware); ``phi_out(z, out)`` writes
  phi(z) into ``out``; ``dphi_(z, zero)`` turns ``z`` into phi'(z) / ``slope`` in place (the
  training fast path applies ``slope`` once at the end).
- ``maps(K, k_row, k_col)``: ``(Kphi, Kdphi)`` = (E[phi(u)phi(v)], E[phi'(u)phi'(v)]) for
  (u, v) ~ N(0, [[K_ii, K_ij], [K_ij, K_jj]]), on blocks of any leading shape (limiting kernels).
- ``kernel_phi(K)``: Kphi of a square symmetric ``K`` ``(N, N)`` in plain differentiable torch ops
  (the autograd reference of the closed-form EoS gradient).
- ``eos_q(K, diag, siga2)`` -> ``(Q, ctx)`` and ``eos_g(A, ctx, siga2)`` -> ``(G, scale)``: the fused,
  in-place forms of the EoS evaluation (``K`` and ``A`` are overwritten): Q = siga2 Kphi(K), and
  ``scale * G`` = dTr(A Q)/dK with the entries of K taken as independent (MATH.md section 6).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Activation", "ACTIVATIONS", "get", "ERF_SLOPE", "erf", "erf_maps", "relu_maps", "kernel_phi"]

ERF_SLOPE = 2.0 / math.sqrt(math.pi)  # erf'(z) = ERF_SLOPE exp(-z^2)


# -- erf -------------------------------------------------------------------------------------------

class _Erf(torch.autograd.Function):
    """erf with a backward of fewer memory passes than autograd's: (2/sqrt(pi)) exp(-z^2) g,
    computed in place on one temporary (the activations are the largest tensors of a step)."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.erf(z)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return torch.mul(z, z).neg_().exp_().mul_(grad).mul_(ERF_SLOPE)


def erf(z: torch.Tensor) -> torch.Tensor:
    """``torch.erf`` with the same values and gradient (see :class:`_Erf`)."""
    return _Erf.apply(z)


def _diagonals(K, k_row, k_col):
    """Row and column variances, broadcastable against ``K`` (taken from its diagonal if None)."""
    if k_row is None:
        diag = torch.diagonal(K, dim1=-2, dim2=-1)
        return diag.unsqueeze(-1), diag.unsqueeze(-2)
    return k_row, k_col


def erf_maps(K, k_row=None, k_col=None):
    """E[erf(u)erf(v)] and E[erf'(u)erf'(v)] for (u, v) ~ N(0, [[K_ii, K_ij], [K_ij, K_jj]]).

    Kphi_ij = (2/pi) arcsin(2K_ij / sqrt(D_i D_j)),  Kdphi_ij = (4/pi) (D_i D_j - 4K_ij^2)^(-1/2),
    with D_i = 1 + 2K_ii. ``K`` is ``(..., n, m)``; ``k_row`` (``(..., n, 1)``) and ``k_col``
    (``(..., 1, m)``) are the variances K_ii and K_jj, read off the diagonal of a square ``K`` when
    omitted (passing them lets a block of rows, or the diagonal itself, be mapped alone).
    For a PSD kernel D_i D_j - 4K_ij^2 >= 1, so only round-off needs guarding.
    """
    k_row, k_col = _diagonals(K, k_row, k_col)
    r = ((1.0 + 2.0 * k_row) * (1.0 + 2.0 * k_col)).rsqrt()
    ratio = (2.0 * K * r).clamp_(-1.0, 1.0)
    Kphi = torch.asin(ratio).mul_(2.0 / math.pi)
    Kdphi = ratio.mul_(ratio).neg_().add_(1.0).clamp_min_(1e-300).rsqrt_().mul_(r * (4.0 / math.pi))
    return Kphi, Kdphi


def _erf_kernel_phi(K):
    r = (1.0 + 2.0 * torch.diagonal(K)).rsqrt()
    return (2.0 / math.pi) * torch.asin(2.0 * K * r[:, None] * r[None, :])


def _erf_eos_q(K, diag, siga2):
    D = 1.0 + 2.0 * diag
    r = D.rsqrt()
    if K.device.type == "cpu":  # compiled pass over the entry pairs, vectorised asin (eos/loops.py)
        from .eos import loops
        loops.erf_argument(K.numpy(), r.numpy())  # K <- C, symmetric
        return torch.asin(K, out=loops.fresh_like(K)).mul_(siga2 * 2.0 / math.pi), (K, r, D)
    rr = torch.outer(r, r).mul_(2.0)  # 2 r r^T
    C = K.mul_(rr).clamp_(-1.0, 1.0)  # C = 2 K o r r^T, in K's memory
    return torch.asin(C).mul_(siga2 * 2.0 / math.pi), (C, rr, D)


def _erf_eos_g(A, ctx, siga2):
    # B = c0 A o (1 - C^2)^(-1/2) with c0 = siga2 (2/pi);
    # G = 2 B o r r^T - 2 diag(sum_j B_ij C_ij / D_i) = c0 [Bu o rr - diag(2 (Bu C) 1 / D)]
    # with Bu = B / c0 and rr = 2 r r^T; c0 is the returned scale (applied to the d x d result).
    if A.device.type == "cpu":  # ctx from the compiled Q pass: C; (1 - C^2)^(-1/2) is recomputed
        from .eos import loops
        C, r, D = ctx
        loops.erf_g(A.numpy(), C.numpy(), r.numpy(), D.numpy())
        return A, siga2 * 2.0 / math.pi
    C, rr, D = ctx
    W = torch.addcmul(torch.ones((), dtype=C.dtype, device=C.device), C, C, value=-1.0)
    Bu = A.mul_(W.clamp_min_(1e-300).rsqrt_())
    del W
    diag_term = torch.linalg.vecdot(Bu, C, dim=1).div_(D).mul_(2.0)
    G = Bu.mul_(rr)
    G.diagonal().sub_(diag_term)
    return G, siga2 * 2.0 / math.pi


def _erf_dphi_(z, zero):
    return torch.addcmul(zero, z, z, value=-1.0, out=z).exp_()


# -- ReLU ------------------------------------------------------------------------------------------

_SNAP = 1.0 - 8 * torch.finfo(torch.float64).eps


def relu_maps(K, k_row=None, k_col=None):
    """E[relu(u)relu(v)] and E[step(u)step(v)] for (u, v) ~ N(0, K) (arc-cosine kernels).

    With cos(theta) = K_ij / sqrt(K_ii K_jj) clipped into [-1, 1] and theta = atan2(sin, cos):
    Kphi = sqrt(K_ii K_jj)(sin theta + (pi - theta) cos theta) / (2 pi),
    Kdphi = (pi - theta) / (2 pi). A zero-variance point (K_ii = 0) gives Kphi = 0, Kdphi = 1/2.
    Shapes as in :func:`erf_maps`.
    """
    k_row, k_col = _diagonals(K, k_row, k_col)
    norm = (k_row * k_col).clamp_min(0.0).sqrt()
    cos = torch.where(norm > 0, K / torch.where(norm > 0, norm, 1.0), 1.0).clamp_(-1.0, 1.0)
    # Within a few ulps of +-1, round-off eps would become theta ~ sqrt(2 eps) ~ 1e-8: snap it.
    cos = torch.where(cos.abs() > _SNAP, cos.sign(), cos)
    sin = (1.0 - cos * cos).clamp_min_(0.0).sqrt_()
    theta = torch.atan2(sin, cos)
    Kphi = (sin + (math.pi - theta) * cos).mul_(norm / (2.0 * math.pi))
    Kdphi = theta.neg_().add_(math.pi).div_(2.0 * math.pi)
    return Kphi, Kdphi


def _relu_kernel_phi(K):
    # The diagonal (theta = 0, Kphi_ii = K_ii / 2) is written separately so that autograd never
    # differentiates acos at 1 (its derivative is infinite there; the limit is finite).
    diag = torch.diagonal(K)
    eye = torch.eye(K.shape[-1], dtype=torch.bool, device=K.device)
    n = torch.sqrt(diag[:, None] * diag[None, :])
    cos = torch.where(eye, 0.0, K / n)
    theta = torch.acos(cos)
    off = n * (torch.sin(theta) + (math.pi - theta) * cos) / (2.0 * math.pi)
    return torch.where(eye, 0.5 * n, off)


def _relu_eos_q(K, diag, siga2):
    if K.device.type == "cpu":  # compiled passes over the entry pairs, vectorised atan2 (eos/loops.py)
        from .eos import loops
        Q = loops.fresh_like(K)
        loops.relu_argument(K.numpy(), diag.numpy(), _SNAP, Q.numpy())  # K <- cos, Q <- sin
        Q.atan2_(K)  # theta = atan2(sin, cos)
        loops.relu_q(K.numpy(), Q.numpy(), diag.numpy(), siga2)
        return Q, (K, diag)
    n = torch.sqrt(diag[:, None] * diag[None, :])
    cos = (K / n).clamp_(-1.0, 1.0)
    # Within a few ulps of +-1 (collinear points), round-off would become theta ~ 1e-8: snap it.
    cos = torch.where(cos.abs() > _SNAP, cos.sign(), cos)
    sin = (1.0 - cos * cos).clamp_min_(0.0).sqrt_()
    theta = torch.atan2(sin, cos)
    Q = (sin + (math.pi - theta) * cos).mul_(n * (siga2 / (2.0 * math.pi)))
    return Q, (n, sin, theta, diag)


def _relu_eos_g(A, ctx, siga2):
    # G = siga2 [A o Kdphi + diag(sum_j A_ij n_ij sin(theta_ij) / (2 pi K_ii))]
    if A.device.type == "cpu":  # ctx from the compiled Q pass: pi - theta above, n sin below
        from .eos import loops
        KC, diag = ctx
        loops.relu_g(A.numpy(), KC.numpy(), diag.numpy(), siga2)
        return A, 1.0
    n, sin, theta, diag = ctx
    diag_term = (A * n * sin).sum(1).div_(2.0 * math.pi * diag).mul_(siga2)
    G = A.mul_((math.pi - theta).mul_(siga2 / (2.0 * math.pi)))
    G.diagonal().add_(diag_term)
    return G, 1.0


def _relu_out(z, out):
    return torch.clamp(z, min=0.0, out=out)


def _relu_dphi_(z, zero):
    return z.gt_(0.0)


# -- the registry ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Activation:
    """What the toolkit needs of one activation (see the module docstring)."""

    name: str
    phi: Callable
    phi_out: Callable
    dphi_: Callable
    slope: float
    maps: Callable
    kernel_phi: Callable
    eos_q: Callable
    eos_g: Callable


ACTIVATIONS: dict[str, Activation] = {
    "erf": Activation("erf", erf, lambda z, out: torch.erf(z, out=out), _erf_dphi_, ERF_SLOPE, erf_maps,
                      _erf_kernel_phi, _erf_eos_q, _erf_eos_g),
    "relu": Activation("relu", torch.relu, _relu_out, _relu_dphi_, 1.0, relu_maps, _relu_kernel_phi,
                       _relu_eos_q, _relu_eos_g),
}


def get(name: str) -> Activation:
    """The :class:`Activation` called ``name``; ValueError naming the known ones otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


def kernel_phi(K: torch.Tensor, activation: str) -> torch.Tensor:
    """``Kphi(K)`` ``(N, N)`` of a symmetric pre-activation kernel ``K`` ``(N, N)``, differentiable."""
    return get(activation).kernel_phi(K)

"""The two passes of one EoS evaluation that depend on the activation (docs/MATH.md section 6).

- ``q(K, diag, siga2)`` -> ``(Q, ctx)``: Q = siga2 Kphi(K) ``(N, N)`` from the pre-activation kernel
  ``K`` and its diagonal ``diag`` (``K`` may be overwritten);
- ``g(A, ctx, siga2)`` -> ``(G, scale)``: ``scale * G`` = dTr(A Q)/dK with the entries of K taken as
  independent, from the full symmetric ``A`` (overwritten).

:func:`passes_for` chooses them by the type of the activation's kernel map: erf
(:class:`~shallow_collapse.closed_forms.ErfMap`) and ReLU
(:class:`~shallow_collapse.closed_forms.ReluFamilyMap` with alpha = 0) have fused in-place forms,
compiled loops on CPU (:mod:`.loops`) and torch forms on other devices; every other kernel map
(closed form or numerical) goes through its ``terms`` (F, Kdphi, P) and the one generic G.
The fused forms restate the arithmetic of :meth:`ErfMap.terms` and :meth:`ReluFamilyMap.terms`
in place (an O(N^2) pass each, the evaluation's cost beside one Cholesky); tests/eos/test_passes.py
checks both of them, on CPU, against those terms to 1e-13 relative.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from . import loops
from ..closed_forms import SNAP, ErfMap, is_relu

__all__ = ["Passes", "passes_for", "generic", "ERF", "RELU"]


@dataclass(frozen=True)
class Passes:
    """The ``q`` and ``g`` passes of one kernel map (see the module docstring)."""

    q: Callable
    g: Callable


def passes_for(kernel_map, *, fused: bool = True) -> Passes:
    """The passes of ``kernel_map``: fused for erf and ReLU (unless ``fused`` is False), generic
    otherwise."""
    if fused and isinstance(kernel_map, ErfMap):
        return ERF
    if fused and is_relu(kernel_map):
        return RELU
    return generic(kernel_map)


# -- any kernel map --------------------------------------------------------------------------------

def generic(kernel_map) -> Passes:
    """Q = siga2 F and G = A o Kdphi + diag(sum_j A_ij P_ij) with scale siga2, from the kernel map's
    ``terms`` (docs/MATH.md section 8)."""

    def q(K, diag, siga2):
        F, Kd, P = kernel_map.terms(K, diag[:, None], diag[None, :])
        return F.mul_(siga2), (Kd, P)

    return Passes(q, _generic_g)


def _generic_g(A, ctx, siga2):
    Kd, P = ctx
    diag_term = torch.linalg.vecdot(A, P, dim=1)
    G = A.mul_(Kd)
    G.diagonal().add_(diag_term)
    return G, siga2


# -- erf -------------------------------------------------------------------------------------------
# With D = 1 + 2 diag, r = D^(-1/2) and C = 2 K o r r^T (the ratio of ErfMap.terms):
# Q = siga2 (2/pi) asin(C); B = c0 A o (1 - C^2)^(-1/2) with c0 = siga2 (2/pi);
# G = 2 B o r r^T - 2 diag(sum_j B_ij C_ij / D_i) = c0 [Bu o rr - diag(2 (Bu C) 1 / D)]
# with Bu = B / c0 and rr = 2 r r^T; c0 is the returned scale (applied to the d x d result).

def erf_q_loops(K, diag, siga2):
    """Compiled pass over the entry pairs, vectorised asin; ctx ``(C, r, D)``."""
    D = 1.0 + 2.0 * diag
    r = D.rsqrt()
    loops.erf_argument(K.numpy(), r.numpy())  # K <- C, symmetric
    return torch.asin(K, out=loops.fresh_like(K)).mul_(siga2 * 2.0 / math.pi), (K, r, D)


def erf_g_loops(A, ctx, siga2):
    """ctx from :func:`erf_q_loops`: C; (1 - C^2)^(-1/2) is recomputed."""
    C, r, D = ctx
    loops.erf_g(A.numpy(), C.numpy(), r.numpy(), D.numpy())
    return A, siga2 * 2.0 / math.pi


def erf_q_torch(K, diag, siga2):
    """In place on ``K`` (any device); ctx ``(C, rr, D)``."""
    D = 1.0 + 2.0 * diag
    r = D.rsqrt()
    rr = torch.outer(r, r).mul_(2.0)  # 2 r r^T
    C = K.mul_(rr).clamp_(-1.0, 1.0)  # C = 2 K o r r^T, in K's memory
    return torch.asin(C).mul_(siga2 * 2.0 / math.pi), (C, rr, D)


def erf_g_torch(A, ctx, siga2):
    C, rr, D = ctx
    W = torch.addcmul(torch.ones((), dtype=C.dtype, device=C.device), C, C, value=-1.0)
    Bu = A.mul_(W.clamp_min_(1e-300).rsqrt_())
    del W
    diag_term = torch.linalg.vecdot(Bu, C, dim=1).div_(D).mul_(2.0)
    G = Bu.mul_(rr)
    G.diagonal().sub_(diag_term)
    return G, siga2 * 2.0 / math.pi


# -- ReLU ------------------------------------------------------------------------------------------
# With n = sqrt(diag_i diag_j) and theta, sin, cos as in ReluFamilyMap.terms (alpha = 0):
# Q = siga2 n (sin + (pi - theta) cos) / (2 pi);
# G = siga2 [A o (pi - theta) / (2 pi) + diag(sum_j A_ij n_ij sin(theta_ij) / (2 pi K_ii))], scale 1.

def relu_q_loops(K, diag, siga2):
    """Compiled passes over the entry pairs, vectorised atan2; ctx ``(K, diag)`` with pi - theta
    in K's upper triangle and n sin theta in its strict lower one."""
    Q = loops.fresh_like(K)
    loops.relu_argument(K.numpy(), diag.numpy(), SNAP, Q.numpy())  # K <- cos, Q <- sin
    Q.atan2_(K)  # theta = atan2(sin, cos)
    loops.relu_q(K.numpy(), Q.numpy(), diag.numpy(), siga2)
    return Q, (K, diag)


def relu_g_loops(A, ctx, siga2):
    KC, diag = ctx
    loops.relu_g(A.numpy(), KC.numpy(), diag.numpy(), siga2)
    return A, 1.0


def relu_q_torch(K, diag, siga2):
    """Any device; ctx ``(n, sin, theta, diag)``."""
    n = torch.sqrt(diag[:, None] * diag[None, :])
    cos = (K / n).clamp_(-1.0, 1.0)
    cos = torch.where(cos.abs() > SNAP, cos.sign(), cos)
    sin = (1.0 - cos * cos).clamp_min_(0.0).sqrt_()
    theta = torch.atan2(sin, cos)
    Q = (sin + (math.pi - theta) * cos).mul_(n * (siga2 / (2.0 * math.pi)))
    return Q, (n, sin, theta, diag)


def relu_g_torch(A, ctx, siga2):
    n, sin, theta, diag = ctx
    diag_term = (A * n * sin).sum(1).div_(2.0 * math.pi * diag).mul_(siga2)
    G = A.mul_((math.pi - theta).mul_(siga2 / (2.0 * math.pi)))
    G.diagonal().add_(diag_term)
    return G, 1.0


# -- the fused passes: compiled loops on CPU tensors, the torch forms elsewhere ----------------------

def _by_device(loops_form: Callable, torch_form: Callable) -> Callable:
    def run(M, arg, siga2):
        return (loops_form if M.device.type == "cpu" else torch_form)(M, arg, siga2)

    return run


ERF = Passes(_by_device(erf_q_loops, erf_q_torch), _by_device(erf_g_loops, erf_g_torch))
RELU = Passes(_by_device(relu_q_loops, relu_q_torch), _by_device(relu_g_loops, relu_g_torch))

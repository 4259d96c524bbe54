"""Compiled loops of one EoS evaluation on CPU: each entry pair (i <= j) of an N x N matrix is
visited once, in place, with every transcendental computed once (numba; docs/SOLVER.md).

Layout conventions (C order, ``(N, N)`` float64 numpy arrays sharing memory with torch tensors):

- the Q loops read the upper triangle of ``K`` (j >= i), write ``Q`` in full (both halves) and
  leave in ``K`` what the G loops need: one quantity in the upper triangle, another in the
  lower one, so no extra N x N memory is used;
- :func:`upper_minus_rank1` turns the upper triangle of ``M^{-1}`` (as LAPACK's dpotri leaves it)
  into the full symmetric ``A = M^{-1} - alpha alpha^T``;
- the G loops read the upper triangle of ``A`` and overwrite ``A`` in full with G.

The float64 operations are those of the torch forms in :mod:`shallow_collapse.activations` (kept
for CUDA), in the same order up to a reassociation of one product, so both agree to round-off
(tests/eos/test_evaluator.py checks 1e-12 relative).
"""
from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
_TINY = 1e-300  # floor of 1 - C^2 (erf): C = +-1 only by round-off, where the torch form clamps too


@_jit
def erf_q(K, r, s, Q, wdiag):
    """erf: ``C = 2 K_ij r_i r_j`` clipped to [-1, 1], ``Q = s asin(C)``; K's upper triangle
    becomes C, its strict lower triangle ``(1 - C^2)^(-1/2)``, ``wdiag`` that of the diagonal."""
    N = K.shape[0]
    for i in range(N):
        ri2 = 2.0 * r[i]
        for j in range(i, N):
            c = K[i, j] * (ri2 * r[j])
            c = min(1.0, max(-1.0, c))
            q = math.asin(c) * s
            Q[i, j] = q
            Q[j, i] = q
            w = 1.0 / math.sqrt(max(1.0 - c * c, _TINY))
            K[i, j] = c
            if j == i:
                wdiag[i] = w
            else:
                K[j, i] = w


@_jit
def erf_g(A, KC, wdiag, r, D):
    """erf: ``Bu = A o (1 - C^2)^(-1/2)``; ``G = Bu o 2 r r^T - diag(2 (Bu o C) 1 / D)`` (the scale
    c0 = siga2 2/pi is applied by the caller), written over A in full."""
    N = A.shape[0]
    acc = np.zeros(N)
    for i in range(N):
        ri2 = 2.0 * r[i]
        b = A[i, i] * wdiag[i]
        acc[i] += b * KC[i, i]
        g_ii = b * (ri2 * r[i])
        for j in range(i + 1, N):
            b = A[i, j] * KC[j, i]
            bc = b * KC[i, j]
            acc[i] += bc
            acc[j] += bc
            g = b * (ri2 * r[j])
            A[i, j] = g
            A[j, i] = g
        A[i, i] = g_ii
    for i in range(N):
        A[i, i] -= 2.0 * acc[i] / D[i]


@_jit
def relu_q(K, n_diag, s, snap, Q):
    """ReLU: ``cos = K_ij / n_ij`` (``n_ij = sqrt(K_ii K_jj)``) clipped, snapped to +-1 within
    ``snap``; ``Q = s n (sin + (pi - theta) cos) / (2 pi)``. K's upper triangle becomes
    ``pi - theta``, its strict lower triangle ``n sin theta``."""
    N = K.shape[0]
    c0 = s / (2.0 * math.pi)
    for i in range(N):
        for j in range(i, N):
            n = math.sqrt(n_diag[i] * n_diag[j])
            cos = K[i, j] / n
            cos = min(1.0, max(-1.0, cos))
            if abs(cos) > snap:
                cos = 1.0 if cos > 0 else -1.0
            sin = math.sqrt(max(1.0 - cos * cos, 0.0))
            theta = math.atan2(sin, cos)
            pt = math.pi - theta
            q = (sin + pt * cos) * (n * c0)
            Q[i, j] = q
            Q[j, i] = q
            K[i, j] = pt
            if j != i:
                K[j, i] = n * sin


@_jit
def relu_g(A, KC, diag, s):
    """ReLU: ``G = s [A o (pi - theta) / (2 pi) + diag(sum_j A_ij n_ij sin theta_ij / (2 pi K_ii))]``
    written over A in full (n_ii sin theta_ii = 0)."""
    N = A.shape[0]
    c0 = s / (2.0 * math.pi)
    acc = np.zeros(N)
    for i in range(N):
        g_ii = A[i, i] * (KC[i, i] * c0)
        for j in range(i + 1, N):
            a = A[i, j]
            ans = a * KC[j, i]
            acc[i] += ans
            acc[j] += ans
            g = a * (KC[i, j] * c0)
            A[i, j] = g
            A[j, i] = g
        A[i, i] = g_ii
    for i in range(N):
        A[i, i] += acc[i] / (2.0 * math.pi * diag[i]) * s


@_jit
def upper_minus_rank1(A, alpha):
    """``A <- M^{-1} - alpha alpha^T`` in full, from ``M^{-1}`` in A's upper triangle."""
    N = A.shape[0]
    for i in range(N):
        ai = alpha[i]
        for j in range(i, N):
            v = A[i, j] - ai * alpha[j]
            A[i, j] = v
            A[j, i] = v

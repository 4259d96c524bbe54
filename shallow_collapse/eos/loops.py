"""Compiled loops of one EoS evaluation on CPU: each entry pair (i <= j) of an N x N matrix is
visited once, in place, in square tiles (so that the mirrored write ``[j, i]`` stays in cache), and
the transcendentals run as torch's vectorised elementwise functions over the whole matrix in
between (numba calls libm one scalar at a time: at N = 2048 its arcsine of the N^2 / 2 pairs took
38 ms, torch's of all N^2 entries 16-24 ms; docs/SOLVER.md).

Layout conventions (C order, ``(N, N)`` float64 numpy arrays sharing memory with torch tensors):

- the argument loops (:func:`erf_argument`, :func:`relu_argument`) read the upper triangle of
  ``K`` (j >= i) and write the argument of the transcendental over ``K`` in full, symmetric;
- :func:`relu_q` turns ``(cos, theta)`` into ``Q`` and leaves what the G loop needs in ``cos``'s
  memory: ``pi - theta`` in the upper triangle, ``n sin theta`` in the strict lower one;
- :func:`upper_minus_rank1` turns the upper triangle of ``M^{-1}`` (as LAPACK's dpotri leaves it)
  into the full symmetric ``A = M^{-1} - alpha alpha^T``;
- the G loops read the upper triangle of ``A`` and overwrite ``A`` in full with G.

The float64 operations are those of the torch forms in :mod:`.passes` (kept for CUDA), in the
same order up to a reassociation of one product, and restate the closed forms of
:mod:`shallow_collapse.closed_forms` (``ErfMap.terms``, ``ReluFamilyMap.terms``);
tests/eos/test_passes.py checks both fused forms against those terms to 1e-13 relative.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys

import numba
import numpy as np
import torch

_jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
_TINY = 1e-300  # floor of 1 - C^2 (erf): C = +-1 only by round-off, where the torch form clamps too
TILE = 64  # 64 x 64 float64 tiles: a tile and its mirror fit in L2 (32 and 128: no faster, N = 2048)
_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14  # Linux


def _madvise():
    try:
        f = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return f


_madvise_fn = _madvise()


def fresh_like(K):
    """An uninitialised tensor like ``K``, asking Linux for 2 MB pages before it is first written:
    every evaluation returns a new Q ``(N, N)`` (the solver keeps states), and its first write
    page-faults 4 kB at a time, measured 13 ms of 30 at N = 2048 (10 ms saved with huge pages).
    Elsewhere, or where the kernel refuses, the plain allocation (same values either way)."""
    out = torch.empty_like(K)
    if _madvise_fn is not None and sys.platform.startswith("linux"):
        start = (out.data_ptr() + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (out.data_ptr() + out.numel() * out.element_size()) & ~(_HUGE_PAGE - 1)
        if end > start:
            _madvise_fn(start, end - start, _MADV_HUGEPAGE)  # advice only: its result is not needed
    return out


@_jit
def erf_argument(K, r):
    """erf: ``K <- C = 2 K_ij r_i r_j`` clipped to [-1, 1], in full, from K's upper triangle."""
    N = K.shape[0]
    for ib in range(0, N, TILE):
        for jb in range(ib, N, TILE):
            for i in range(ib, min(ib + TILE, N)):
                ri2 = 2.0 * r[i]
                for j in range(max(i, jb), min(jb + TILE, N)):
                    c = min(1.0, max(-1.0, K[i, j] * (ri2 * r[j])))
                    K[i, j] = c
                    K[j, i] = c


@_jit
def erf_g(A, C, r, D):
    """erf: ``Bu = A o (1 - C^2)^(-1/2)``; ``G = Bu o 2 r r^T - diag(2 (Bu o C) 1 / D)`` (the scale
    c0 = siga2 2/pi is applied by the caller), written over A in full; reads the upper triangles."""
    N = A.shape[0]
    acc = np.zeros(N)
    for ib in range(0, N, TILE):
        for jb in range(ib, N, TILE):
            for i in range(ib, min(ib + TILE, N)):
                ri2 = 2.0 * r[i]
                s = 0.0
                for j in range(max(i, jb), min(jb + TILE, N)):
                    c = C[i, j]
                    b = A[i, j] / math.sqrt(max(1.0 - c * c, _TINY))
                    bc = b * c
                    g = b * (ri2 * r[j])
                    A[i, j] = g
                    if j == i:
                        s += bc
                    else:
                        s += bc
                        acc[j] += bc
                        A[j, i] = g
                acc[i] += s
    for i in range(N):
        A[i, i] -= 2.0 * acc[i] / D[i]


@_jit
def relu_argument(K, n_diag, snap, S):
    """ReLU: ``K <- cos = K_ij / sqrt(K_ii K_jj)`` clipped to [-1, 1] and snapped to +-1 beyond
    ``snap``, and ``S <- sin = sqrt(1 - cos^2)``, both in full, from K's upper triangle."""
    N = K.shape[0]
    for ib in range(0, N, TILE):
        for jb in range(ib, N, TILE):
            for i in range(ib, min(ib + TILE, N)):
                for j in range(max(i, jb), min(jb + TILE, N)):
                    cos = min(1.0, max(-1.0, K[i, j] / math.sqrt(n_diag[i] * n_diag[j])))
                    if abs(cos) > snap:
                        cos = 1.0 if cos > 0 else -1.0
                    K[i, j] = cos
                    K[j, i] = cos
                    sin = math.sqrt(max(1.0 - cos * cos, 0.0))
                    S[i, j] = sin
                    S[j, i] = sin


@_jit
def relu_q(CS, theta, n_diag, s):
    """ReLU: ``theta <- Q = s n (sin + (pi - theta) cos) / (2 pi)`` in full, from ``cos`` (CS's
    upper triangle) and ``theta``; CS's upper triangle becomes ``pi - theta``, its strict lower one
    ``n sin theta``."""
    N = CS.shape[0]
    c0 = s / (2.0 * math.pi)
    for ib in range(0, N, TILE):
        for jb in range(ib, N, TILE):
            for i in range(ib, min(ib + TILE, N)):
                for j in range(max(i, jb), min(jb + TILE, N)):
                    n = math.sqrt(n_diag[i] * n_diag[j])
                    cos = CS[i, j]
                    sin = math.sqrt(max(1.0 - cos * cos, 0.0))
                    pt = math.pi - theta[i, j]
                    q = (sin + pt * cos) * (n * c0)
                    theta[i, j] = q
                    theta[j, i] = q
                    CS[i, j] = pt
                    if j != i:
                        CS[j, i] = n * sin


@_jit
def relu_g(A, KC, diag, s):
    """ReLU: ``G = s [A o (pi - theta) / (2 pi) + diag(sum_j A_ij n_ij sin theta_ij / (2 pi K_ii))]``
    written over A in full (n_ii sin theta_ii = 0); reads the upper triangle of A."""
    N = A.shape[0]
    c0 = s / (2.0 * math.pi)
    acc = np.zeros(N)
    for ib in range(0, N, TILE):
        for jb in range(ib, N, TILE):
            for i in range(ib, min(ib + TILE, N)):
                t = 0.0
                for j in range(max(i, jb), min(jb + TILE, N)):
                    a = A[i, j]
                    g = a * (KC[i, j] * c0)
                    A[i, j] = g
                    if j != i:
                        ans = a * KC[j, i]
                        t += ans
                        acc[j] += ans
                        A[j, i] = g
                acc[i] += t
    for i in range(N):
        A[i, i] += acc[i] / (2.0 * math.pi * diag[i]) * s


@_jit
def upper_minus_rank1(A, alpha):
    """``A <- M^{-1} - alpha alpha^T`` in full (every ``g`` pass of :mod:`.passes` may read all of A),
    from ``M^{-1}`` in A's upper triangle."""
    N = A.shape[0]
    for ib in range(0, N, TILE):
        for jb in range(ib, N, TILE):
            for i in range(ib, min(ib + TILE, N)):
                ai = alpha[i]
                for j in range(max(i, jb), min(jb + TILE, N)):
                    v = A[i, j] - ai * alpha[j]
                    A[i, j] = v
                    A[j, i] = v

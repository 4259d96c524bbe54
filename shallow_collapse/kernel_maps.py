"""Kernel maps of any activation computed from phi alone (docs/MATH.md section 8).

For (u, v) ~ N(0, [[a, c], [c, b]]) (a = K_ii, b = K_jj, c = K_ij) write
F(a, b, c) = Kphi = E[phi(u) phi(v)]. Everything the toolkit needs is F and its partial derivatives:

- ``Kdphi = dF/dc = E[phi'(u) phi'(v)]`` (Price's theorem; the NTK factor);
- ``P = 2 dF/da = E[phi''(u) phi(v)]`` (the row variance; the diagonal of the EoS gradient G).

**Method** (:class:`NumericalMaps`). With rho = c / sqrt(ab) and sigma = log a mapped onto [-1, 1]
over a box [a_lo, a_hi] of variances, F is a smooth function on [-1, 1]^3 and is replaced by its
tensor-product Chebyshev interpolant

    F ~ sum_{p, q, m} C_pqm T_p(sigma_i) T_q(sigma_j) T_m(rho_ij),

whose degrees are raised until the trailing coefficients fall below ``tol`` (relative). The
coefficients in rho come out directly from polar coordinates (z = R cos t, z' = R cos(t - theta),
rho = cos theta): F is a radial average of a circular cross-correlation in t, whose cosine
coefficients multiply cos(m theta) = T_m(rho) (:meth:`NumericalMaps._rho_coefficients`; FFT in t,
Gauss-Legendre in R). Why not the Hermite (Mehler) series, a Taylor series in rho: the paper's
kernels sit at |rho| near 1, where it needs 100-180+ terms for 1e-12 at K_ii ~ 4 against 26-58
Chebyshev degrees (docs/MATH.md section 8). Evaluation on N x N pairs is a
Clenshaw recurrence in rho whose coefficient matrices ``T(sigma) C_m T(sigma)^T`` are products of
rank ``n_sigma``: O(N^2 (n_sigma + 3)) per degree. dF/drho comes from the Chebyshev derivative of the
coefficients and dF/dsigma from the derivative of the basis, so the EoS gradient is the exact
derivative of the Q it is computed with.

**Collinear pairs** (|rho| = 1 to within ``COLLINEAR``: the diagonal, and every pair at d = 1) are
one-dimensional expectations with u = s_i z, v = +-s_j z, computed by the trapezoid rule on
``QUAD_NODES`` points of [-QUAD_HALF_WIDTH, QUAD_HALF_WIDTH] (spectrally accurate for smooth phi):
F = E[phi(s_i z) phi(+-s_j z)], Kdphi = E[phi'(s_i z) phi'(+-s_j z)], and (Stein's lemma, so that
phi'' is never needed) P = E[phi'(s_i z)(z f(z) - f'(z))] / s_i with f(z) = phi(+-s_j z).

Tables are cached per box; boxes are rounded outwards to quarter octaves of the variance so that
nearby kernels (successive EoS evaluations, the cells of a sweep) share one table.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from numpy.polynomial import chebyshev

__all__ = ["NumericalMaps", "Table", "QUAD_NODES", "QUAD_HALF_WIDTH", "derivative_by_autograd"]

QUAD_NODES = 360  # trapezoid nodes on [-9, 9]: step 0.05, error ~exp(-2 pi tau / 0.05) for phi analytic in
# |Im z| < tau; an even count keeps 0 (the kink of ReLU-like phi) off the grid, halfway between nodes
QUAD_HALF_WIDTH = 9.0  # the Gaussian weight beyond 9 is below 1e-17
COLLINEAR = 1e-12  # |rho| > 1 - COLLINEAR is treated as exactly collinear
BOX_STEP = 0.25  # boxes of variances are rounded outwards to multiples of 2^BOX_STEP
START_DEGREES = (8, 160)  # n_sigma of the first table (raised by 1.5x until converged); n_rho
MAX_DEGREES = (32, 160)  # caps of (n_sigma, n_rho); trailing coefficients below tol are dropped
ANGLE_NODES = 1024  # trapezoid nodes in the polar angle (cosine coefficients by FFT)
RADIAL_NODES = 100  # Gauss-Legendre nodes of the radius on [0, R_MAX]
R_MAX = 9.5  # P(R > 9.5) = exp(-45)
CACHE_SIZE = 16


def derivative_by_autograd(phi: Callable) -> Callable:
    """phi' of an elementwise torch function, by autograd (phi'' is never needed)."""

    def dphi(z):
        with torch.enable_grad():
            x = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(phi(x).sum(), x)
        return g

    return dphi


def _grid(dtype=torch.float64, device=None):
    x = torch.linspace(-QUAD_HALF_WIDTH, QUAD_HALF_WIDTH, QUAD_NODES, dtype=dtype, device=device)
    w = torch.exp(-0.5 * x * x)
    return x, w / w.sum()


def _radial():
    """Nodes and weights of E[g(R)] for R Rayleigh (density R exp(-R^2/2)): Gauss-Legendre on [0, R_MAX]."""
    x, w = np.polynomial.legendre.leggauss(RADIAL_NODES)
    R = 0.5 * R_MAX * (x + 1.0)
    w = 0.5 * R_MAX * w * R * np.exp(-0.5 * R * R)
    return torch.as_tensor(R), torch.as_tensor(w)


def _cheb_nodes(n: int) -> np.ndarray:
    return np.cos(np.pi * (np.arange(n) + 0.5) / n)


def _cheb_transform(n: int) -> np.ndarray:
    """(n, n) matrix taking values at the first-kind nodes to Chebyshev coefficients."""
    t = _cheb_nodes(n)
    k = np.arange(n)[:, None]
    M = (2.0 / n) * np.cos(k * np.arccos(t)[None, :])
    M[0] *= 0.5
    return M


def _basis(t: torch.Tensor, n: int, derivative: bool = False) -> torch.Tensor:
    """T_0..T_{n-1} (or their derivatives) at ``t`` ``(...)`` -> ``(..., n)``."""
    T = [torch.ones_like(t), t]
    for _ in range(2, n):
        T.append(2 * t * T[-1] - T[-2])
    T = torch.stack(T[:n], -1)
    if not derivative:
        return T
    # T_k' = k U_{k-1}; U_0 = 1, U_1 = 2t, U_k = 2t U_{k-1} - U_{k-2}
    U = [torch.ones_like(t), 2 * t]
    for _ in range(2, n - 1):
        U.append(2 * t * U[-1] - U[-2])
    dT = [torch.zeros_like(t)] + [k * U[k - 1] for k in range(1, n)]
    return torch.stack(dT, -1)


@dataclass
class Table:
    """A Chebyshev interpolant of F on a box of variances (see the module docstring).

    ``lo``, ``hi``: natural logs of the box; ``C`` ``(n_sigma, n_sigma, n_rho)``; ``dC`` the rho-derivative
    coefficients ``(n_sigma, n_sigma, n_rho - 1)``; ``tail``: the largest of the last coefficients
    along each axis relative to the largest coefficient (an estimate of the relative error).
    """

    lo: float
    hi: float
    C: torch.Tensor
    dC: torch.Tensor
    tail: float

    def sigma(self, a: torch.Tensor) -> torch.Tensor:
        return (2.0 * (torch.log(a) - self.lo) / (self.hi - self.lo) - 1.0).clamp(-1.0, 1.0)

    @property
    def dsigma_dloga(self) -> float:
        return 2.0 / (self.hi - self.lo)


def _clenshaw(rho: torch.Tensor, Tr: torch.Tensor, Tc: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """sum_m T_m(rho) (Tr C_m Tc^T) for ``rho`` ``(..., n, m)``, ``Tr`` ``(..., n, p)``, ``Tc`` ``(..., m, p)``,
    ``C`` ``(p, p, deg)``: one product of rank p and three elementwise passes per degree."""
    deg = C.shape[-1]
    TrC = torch.einsum("...ia,abm->m...ib", Tr, C)  # (deg, ..., n, p)
    TcT = Tc.transpose(-1, -2)
    if deg == 1:
        return TrC[0] @ TcT
    b1 = TrC[deg - 1] @ TcT
    b2 = torch.zeros_like(b1)
    for m in range(deg - 2, 0, -1):
        t = torch.matmul(TrC[m], TcT).sub_(b2).addcmul_(rho, b1, value=2.0)
        b2, b1 = b1, t
    return torch.matmul(TrC[0], TcT).sub_(b2).addcmul_(rho, b1)


def _clenshaw_plain(rho, Tr, Tc, C):
    """:func:`_clenshaw` in out-of-place ops (differentiable)."""
    deg = C.shape[-1]
    TrC = torch.einsum("...ia,abm->m...ib", Tr, C)
    TcT = Tc.transpose(-1, -2)
    b1, b2 = TrC[deg - 1] @ TcT, 0.0
    for m in range(deg - 2, 0, -1):
        b1, b2 = TrC[m] @ TcT - b2 + 2.0 * rho * b1, b1
    return TrC[0] @ TcT - b2 + rho * b1 if deg > 1 else b1


class NumericalMaps:
    """Kphi, Kdphi and the EoS derivatives of ``phi`` (and ``dphi``, by autograd when None) by the
    method of the module docstring: a kernel map with the interface of the closed forms
    (:mod:`shallow_collapse.closed_forms`: ``terms`` and ``maps``), plus :meth:`kernel_phi`, its
    differentiable Kphi. ``tol``: relative size of the trailing Chebyshev coefficients at which a
    table is accepted."""

    def __init__(self, phi: Callable, dphi: Callable | None = None, *, tol: float = 1e-14,
                 max_degrees: tuple[int, int] = MAX_DEGREES):
        self.phi = phi
        self.dphi = dphi if dphi is not None else derivative_by_autograd(phi)
        self.tol = tol
        self.max_degrees = max_degrees
        self._tables: OrderedDict = OrderedDict()

    # -- tables ----------------------------------------------------------------------------------
    def table(self, a_min: float, a_max: float, device=None) -> Table:
        """The cached table of the quarter-octave box around [a_min, a_max] (variances > 0)."""
        if not (a_min > 0 and math.isfinite(a_max)):
            raise ValueError(f"numerical kernel maps need finite positive variances, got [{a_min}, {a_max}]")
        lo2 = math.floor(math.log2(a_min) / BOX_STEP) * BOX_STEP
        hi2 = max(math.ceil(math.log2(a_max) / BOX_STEP) * BOX_STEP, lo2 + BOX_STEP)
        key = (lo2, hi2, str(device))
        if key in self._tables:
            self._tables.move_to_end(key)
            return self._tables[key]
        table = self._build(lo2 * math.log(2.0), hi2 * math.log(2.0), device)
        self._tables[key] = table
        if len(self._tables) > CACHE_SIZE:
            self._tables.popitem(last=False)
        return table

    def _rho_coefficients(self, s: torch.Tensor, nr: int) -> torch.Tensor:
        """Chebyshev coefficients in rho of F(s_p, s_q, rho) for scales ``s`` ``(ns,)``: ``(ns, ns, nr)``.

        In polar coordinates z = R cos(t), z' = R cos(t - theta) with rho = cos(theta), F is a radial
        average of the circular cross-correlation of f_p(t) = phi(s_p R cos t) and f_q, so with the
        cosine coefficients A_pm(R) of f_p, F = sum_m eps_m E_R[A_pm A_qm] cos(m theta) and
        cos(m theta) = T_m(rho): the coefficients come out directly (eps_0 = 1, eps_m = 1/2).
        R is integrated by Gauss-Legendre on [0, R_MAX], t by the trapezoid rule (FFT).
        """
        R, wt = _radial()
        angles = torch.arange(ANGLE_NODES, dtype=torch.float64) * (2.0 * math.pi / ANGLE_NODES)
        with torch.no_grad():
            f = self.phi(s[:, None, None] * R[None, :, None] * torch.cos(angles)[None, None, :])  # (ns, nR, nt)
            A = torch.fft.rfft(f, dim=-1).real[..., :nr] * (2.0 / ANGLE_NODES)
            A[..., 0] *= 0.5
        Am = A.permute(2, 0, 1)  # (nr, ns, nR)
        V = torch.bmm(Am * wt, Am.transpose(1, 2)).permute(1, 2, 0)  # (ns, ns, nr)
        V[..., 1:] *= 0.5
        return V

    def _build(self, lo, hi, device) -> Table:
        ns, nr = START_DEGREES[0], self.max_degrees[1]
        while True:
            s = torch.exp(0.5 * (lo + (torch.as_tensor(_cheb_nodes(ns)) + 1.0) * 0.5 * (hi - lo)))
            V = self._rho_coefficients(s, nr).numpy()
            Ms = _cheb_transform(ns)
            C = np.einsum("ap,bq,pqm->abm", Ms, Ms, V, optimize=True)
            scale = np.abs(C).max()
            tail_s = np.abs(C[-2:]).max() / scale if ns > 2 else 0.0
            if tail_s <= self.tol or ns >= self.max_degrees[0]:
                break
            ns = min(int(ns * 1.5), self.max_degrees[0])
        tail_r = np.abs(C[:, :, -3:]).max() / scale
        # drop trailing coefficients below tol (they cost evaluation time and carry nothing)
        keep_r = int(np.nonzero(np.abs(C).max((0, 1)) > self.tol * scale)[0].max()) + 1
        keep_s = int(np.nonzero(np.abs(C).max((1, 2)) > self.tol * scale)[0].max()) + 1
        C = C[:keep_s, :keep_s, :keep_r]
        dC = chebyshev.chebder(C, axis=2) if keep_r > 1 else np.zeros_like(C)
        to = dict(dtype=torch.float64, device=device)
        return Table(lo, hi, torch.as_tensor(C, **to), torch.as_tensor(dC, **to),
                     float(max(tail_s, tail_r if keep_r == C.shape[2] and keep_r == self.max_degrees[1] else 0.0)))

    # -- collinear pairs (one-dimensional expectations) -------------------------------------------
    def _line_factors(self, s: torch.Tensor):
        """phi(s z), phi'(s z) on the grid for scales ``s`` ``(..., n)`` -> each ``(..., n, nx)``, and w."""
        x, w = _grid(device=s.device)
        z = s[..., None] * x
        return self.phi(z), self.dphi(z), x, w

    def _line_pairs(self, s_row, s_col, sign, want_derivatives: bool):
        """F (and Kdphi, P) of collinear pairs, elementwise over broadcast ``s_row``, ``s_col``, ``sign``."""
        s_row, s_col, sign = torch.broadcast_tensors(s_row, s_col, sign)
        f_r, d_r, x, w = self._line_factors(s_row)
        f_c, d_c, _, _ = self._line_factors(s_col)
        neg = sign[..., None] < 0
        f_c = torch.where(neg, f_c.flip(-1), f_c)  # phi(-s z) on the symmetric grid
        d_c = torch.where(neg, d_c.flip(-1), d_c)
        F = (f_r * f_c) @ w
        if not want_derivatives:
            return F, None, None
        Kd = (d_r * d_c) @ w
        P = ((d_r * (x * f_c - sign[..., None] * s_col[..., None] * d_c)) @ w) / s_row
        return F, Kd, P

    def _line_blocks(self, s_row, s_col, want_derivatives: bool):
        """The same for every pair of rows ``(..., n)`` and columns ``(..., m)``, for both signs:
        dicts sign -> ``(..., n, m)`` (matrix products over the grid)."""
        f_r, d_r, x, w = self._line_factors(s_row)
        f_c, d_c, _, _ = self._line_factors(s_col)
        out = {}
        for sign in (1.0, -1.0):
            fc, dc = (f_c, d_c) if sign > 0 else (f_c.flip(-1), d_c.flip(-1))
            F = (f_r * w) @ fc.transpose(-1, -2)
            if want_derivatives:
                Kd = (d_r * w) @ dc.transpose(-1, -2)
                P = ((d_r * (w * x)) @ fc.transpose(-1, -2)
                     - sign * ((d_r * w) @ dc.transpose(-1, -2)) * s_col[..., None, :]) / s_row[..., :, None]
                out[sign] = (F, Kd, P)
            else:
                out[sign] = (F, None, None)
        return out

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, K, a_row, a_col, *, derivatives: bool = False, p: bool = True):
        """F, Kdphi and P (the last two None unless ``derivatives``; P None unless ``p`` too) of ``K``
        ``(..., n, m)`` whose row variances are ``a_row`` ``(..., n)`` and column variances ``a_col``
        ``(..., m)``."""
        s_row, s_col = a_row.sqrt(), a_col.sqrt()
        norm = s_row[..., :, None] * s_col[..., None, :]
        rho = (K / norm).clamp(-1.0, 1.0)
        coll = rho.abs() > 1.0 - COLLINEAR
        n_coll = int(coll.sum())
        out = [None, None, None]
        if n_coll < coll.numel():
            tab = self.table(float(torch.minimum(a_row.min(), a_col.min())),
                             float(torch.maximum(a_row.max(), a_col.max())), K.device)
            ns = tab.C.shape[0]
            sr, sc = tab.sigma(a_row), tab.sigma(a_col)
            Tr, Tc = _basis(sr, ns), _basis(sc, ns)
            out[0] = _clenshaw(rho, Tr, Tc, tab.C)
            if derivatives:
                F_rho = _clenshaw(rho, Tr, Tc, tab.dC)
                out[1] = F_rho / norm
            if derivatives and p:
                F_sig = _clenshaw(rho, _basis(sr, ns, derivative=True), Tc, tab.C)
                # P = 2 dF/da_i at fixed a_j, c: sigma moves with log a_i, rho as -rho/(2 a_i)
                out[2] = (F_sig.mul_(2.0 * tab.dsigma_dloga).sub_(F_rho.mul_(rho))).div_(a_row[..., :, None])
        if n_coll:
            self._fill_collinear(out, coll, n_coll, rho, s_row, s_col, derivatives)
        if derivatives and not p:
            out[2] = None
        return tuple(out)

    def _fill_collinear(self, out, coll, n_coll, rho, s_row, s_col, derivatives):
        shape = rho.shape
        if n_coll == coll.numel() or n_coll > 4 * (shape[-1] + shape[-2]):  # every pair (d = 1): products
            blocks = self._line_blocks(s_row, s_col, derivatives)
            pos = rho > 0
            for k in range(3 if derivatives else 1):
                val = torch.where(pos, blocks[1.0][k], blocks[-1.0][k])
                out[k] = val if out[k] is None else torch.where(coll, val, out[k])
            return
        idx = coll.nonzero(as_tuple=True)  # a few pairs (the diagonal): one by one
        sr = s_row[..., :, None].expand(shape)[idx]
        sc = s_col[..., None, :].expand(shape)[idx]
        vals = self._line_pairs(sr, sc, torch.sign(rho[idx]), derivatives)
        for k in range(3 if derivatives else 1):
            if out[k] is not None:
                out[k][idx] = vals[k]

    # -- the kernel-map interface (as :class:`shallow_collapse.closed_forms.ClosedForm`) ------------
    def terms(self, K, a, b, p: bool = True):
        """``(F, Kdphi, P)`` of ``K`` ``(..., n, m)`` with row variances ``a`` ``(..., n, 1)`` and column
        variances ``b`` ``(..., 1, m)`` (P None unless ``p``)."""
        return self.evaluate(K, a[..., 0], b[..., 0, :], derivatives=True, p=p)

    def maps(self, K, k_row=None, k_col=None):
        """``(Kphi, Kdphi)`` of ``K`` ``(..., n, m)``; ``k_row`` ``(..., n, 1)`` and ``k_col`` ``(..., 1, m)``
        (from the diagonal when None), or both of K's shape (elementwise: e.g. the diagonal itself)."""
        if k_row is None:
            diag = torch.diagonal(K, dim1=-2, dim2=-1)
            k_row, k_col = diag[..., :, None], diag[..., None, :]
        if k_row.shape[-1] == 1 and k_col.shape[-2] == 1:
            F, Kd, _ = self.evaluate(K, k_row[..., 0], k_col[..., 0, :], derivatives=True, p=False)
            return F, Kd
        # elementwise: every entry its own pair
        K, k_row, k_col = torch.broadcast_tensors(K, k_row, k_col)
        F, Kd = self._elementwise(K.reshape(-1), k_row.reshape(-1), k_col.reshape(-1))
        return F.reshape(K.shape), Kd.reshape(K.shape)

    def _elementwise(self, c, a, b):
        """F and Kdphi of independent pairs given as vectors ``(P,)``."""
        s_a, s_b = a.sqrt(), b.sqrt()
        rho = (c / (s_a * s_b)).clamp(-1.0, 1.0)
        coll = rho.abs() > 1.0 - COLLINEAR
        F, Kd = torch.empty_like(c), torch.empty_like(c)
        if bool(coll.any()):
            f, kd, _ = self._line_pairs(s_a[coll], s_b[coll], torch.sign(rho[coll]), True)
            F[coll], Kd[coll] = f, kd
        rest = ~coll
        if bool(rest.any()):
            tab = self.table(float(torch.minimum(a[rest].min(), b[rest].min())),
                             float(torch.maximum(a[rest].max(), b[rest].max())), c.device)
            ns = tab.C.shape[0]
            Tr, Tc = _basis(tab.sigma(a[rest]), ns), _basis(tab.sigma(b[rest]), ns)
            # per pair: sum_m T_m(rho) Tr C_m Tc^T, as 1 x 1 blocks
            r = rho[rest][:, None, None]
            F[rest] = _clenshaw(r, Tr[:, None, :], Tc[:, None, :], tab.C)[:, 0, 0]
            Kd[rest] = _clenshaw(r, Tr[:, None, :], Tc[:, None, :], tab.dC)[:, 0, 0] / (s_a[rest] * s_b[rest])
        return F, Kd

    def kernel_phi(self, K):
        """Kphi ``(N, N)`` of a symmetric ``K`` in out-of-place ops (differentiable; the autograd
        reference of the EoS gradient). The same table and collinear rule as :meth:`evaluate`."""
        diag = torch.diagonal(K)
        s = diag.sqrt()
        norm = s[:, None] * s[None, :]
        rho = (K / norm).clamp(-1.0, 1.0)
        coll = rho.detach().abs() > 1.0 - COLLINEAR
        line = {}
        if bool(coll.any()):
            blocks = self._line_blocks(s, s, False)
            line = torch.where(rho.detach() > 0, blocks[1.0][0], blocks[-1.0][0])
        if bool(coll.all()):
            return line
        d = diag.detach()
        tab = self.table(float(d.min()), float(d.max()), K.device)
        T = _basis(tab.sigma(diag), tab.C.shape[0])
        F = _clenshaw_plain(rho, T, T, tab.C)
        return torch.where(coll, line, F) if bool(coll.any()) else F

"""The mean-field adaptive kernel: the EoS without their Gaussian single-neuron density
(docs/MATH.md section 11).

Data ``X`` ``(N, d)``, targets ``Y`` ``(N, C)`` (or ``y`` ``(N,)``, one column), width ``h``, priors
``sigw2`` (times 1/d) and ``siga2``, noise ``sig2``, activation phi. With ``Phi`` ``(N, N)`` the
neurons' feature covariance,

    M = siga2 Phi + sig2 I,  alpha = M^{-1} Y ``(N, C)``,  A = C M^{-1} - alpha alpha^T,
    Phihat = (siga2 / h) A,
    Phi = E_p[phi(X w) phi(X w)^T],  p(w) ∝ N(w; 0, (sigw2/d) I) exp(-phi(X w)^T Phihat phi(X w) / 2),

and the kernel is Q = siga2 Phi (its NC1 by :func:`shallow_collapse.metrics.nc1_kernel`). For C = 1
A is the EoS's M^{-1} - alpha alpha^T (docs/MATH.md section 6).

Expectations under p (all in prior-whitened coordinates z, w = L z, L L^T the prior covariance):

- **Positively homogeneous phi** (the ReLU family, abs): along w = r e the exponent is
  -(r^2/2) kappa(e) with kappa(e) = 1 + phi(X L e)^T H phi(X L e), so the radius integrates out
  exactly: the directions have density ∝ kappa^{-d/2} on the sphere and E[r^{2k} | e] =
  (2/kappa)^k Gamma(d/2 + k) / Gamma(d/2). p is normalisable iff kappa > 0 on the whole sphere. At
  d = 1 the sphere is {+1, -1} (exact); at d = 2 a circle, integrated by Gauss-Legendre on the arcs
  between the kinks of phi(X L e) (where kappa is smooth) and minimised exactly on each arc (phi is
  linear there, so kappa = 1 + e^T B e with a 2 x 2 B).
- **Other phi, d <= 2**: the trapezoid rule on a tensor-product grid over the box where the log
  density lies within :data:`CUT` of its maximum (grown until it does not touch its edges, zoomed
  once on the fine grid), with the number of points doubled until the moments stop moving.
- **d > 2**: walkers moved by :func:`elliptical_slice` (batched, exact for p); for homogeneous phi
  their radii are integrated out given their directions (Rao-Blackwell: weights m2 = E[r^2 | e]).

The fixed point is found by damped iteration (with Anderson mixing for the deterministic
quadrature), then, with walkers, Robbins-Monro averaging; independent replicate solves (different
seeds) give the Monte Carlo standard error of log10 NC1. :func:`gaussian_restriction` solves the
same theory with p restricted to N(0, Sigma), which is the EoS (section 11 of docs/MATH.md): the
tests tie the two theories together with it. Statuses, never exceptions: ``ok``,
``not_converged``, ``not_normalisable``, ``nan``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import activations, metrics

__all__ = ["MeanFieldParams", "MeanFieldResult", "GaussianRestriction", "Tilt", "solve_mean_field",
           "gaussian_restriction", "tilt", "factored_tilt", "elliptical_slice", "STATUSES"]

STATUSES = ("ok", "not_converged", "not_normalisable", "nan")
CUT = 46.0  # the quadrature box holds every point whose log density is within CUT of the maximum
Z_BOX = 12.0  # first half-width of the box in whitened coordinates (grown while the density touches it)
Z_BOX_MAX = 1e5
COARSE = 48  # points per axis of the grid that locates the box
RESTART = 10.0  # Anderson restarts from the best point when the residual exceeds RESTART times its best
MAX_SHRINKS = 64  # candidates per elliptical slice update (then the walker stays where it is)
DTYPE = torch.float64


@dataclass(frozen=True, kw_only=True)
class MeanFieldParams:
    """Knobs of :func:`solve_mean_field` (names fit config keys ``mean_field_<name>``).

    ``method``: ``auto`` (quadrature for d <= 2, walkers above), ``quadrature`` or ``walkers``.
    ``damping``: eta of Phi <- (1 - eta) Phi + eta E_p[phi phi^T]; ``anderson``: memory of the
    Anderson mixing of the deterministic iteration (0: plain damping); ``iterations``: budget of the
    deterministic iteration, or the damped phase of the walkers; ``averaging``: Robbins-Monro
    iterations of the walkers (step 1/k, so Phi becomes the running mean of the estimates);
    ``rtol``: converged when max|E_p[phi phi^T] - Phi| / max|Phi| <= rtol (quadrature), or within
    ``mc_tol`` Monte Carlo standard errors of it (walkers); ``grid``: first points per axis (or per
    arc, Gauss-Legendre, homogeneous phi at d = 2), doubled while the nodes stay within
    ``max_points`` until the moments move by less than ``quad_tol`` (relative); ``walkers``,
    ``sweeps`` (elliptical slice updates per walker and iteration), ``burn_in`` (updates before the
    first estimate), ``replicates`` (independent solves for the standard error; the quadrature is
    deterministic and solves once).
    """

    method: str = "auto"
    damping: float = 0.5
    anderson: int = 5
    iterations: int = 500
    averaging: int = 40
    rtol: float = 1e-8
    mc_tol: float = 6.0
    grid: int = 64
    max_points: int = 1 << 18
    quad_tol: float = 1e-10
    walkers: int = 4000
    sweeps: int = 2
    burn_in: int = 20
    replicates: int = 4


@dataclass
class MeanFieldResult:
    """What :func:`solve_mean_field` returns (float64 tensors on CPU).

    ``log10_nc1``: log10 NC1 of ``Q = siga2 Phi`` (the mean over replicates with walkers; nan
    unless the status is ``ok`` or ``not_converged``); ``se_log10_nc1``: its Monte Carlo standard
    error from the replicates (0 for the quadrature, nan with one replicate); ``Q``, ``Phi``
    ``(N, N)``; ``sigma`` = E_p[w w^T] ``(d, d)``; ``kurtosis`` = E[(e^T w)^4] / E[(e^T w)^2]^2
    along the leading eigenvector e of ``sigma`` (3 for a Gaussian); ``residual`` =
    max|E_p[phi phi^T] - Phi| / max|Phi| at the answer (the largest over replicates);
    ``noise``: the Monte Carlo standard error of that difference, relative (walkers; 0 otherwise);
    ``refinement``: how much the moments moved when the quadrature was refined once more at the
    answer (relative; nan with walkers); ``kappa_min``: the least of kappa(e) = 1 + (sigw2/d)
    phi(Xe)^T Phihat phi(Xe) over unit e found (homogeneous phi; p is normalisable iff it is
    positive; nan for bounded phi); ``iterations``; ``status`` (:data:`STATUSES`); ``message``;
    ``seconds``; ``method``; ``replicate_log10_nc1``: one value per replicate.
    """

    log10_nc1: float
    se_log10_nc1: float
    Q: torch.Tensor | None
    Phi: torch.Tensor | None
    sigma: torch.Tensor | None
    kurtosis: float
    residual: float
    iterations: int
    status: str
    message: str
    seconds: float
    method: str
    noise: float = 0.0
    refinement: float = math.nan
    kappa_min: float = math.nan
    replicate_log10_nc1: list = field(default_factory=list)

    @property
    def nc1(self) -> float:
        return 10.0 ** self.log10_nc1


@dataclass
class GaussianRestriction:
    """The theory with p restricted to N(0, Sigma) (:func:`gaussian_restriction`): ``Sigma``
    ``(d, d)``, ``Q = siga2 E_{N(0, Sigma)}[phi phi^T]`` ``(N, N)``, ``residual`` = max|Sigma -
    Sigma_new| / max|Sigma|, ``iterations``, ``status`` (ok / not_converged / nan), ``message``."""

    Sigma: torch.Tensor
    Q: torch.Tensor
    residual: float
    iterations: int
    status: str
    message: str = ""


class _NotNormalisable(Exception):
    def __init__(self, kappa_min: float, where: str = ""):
        super().__init__(f"kappa_min = {kappa_min:.6g}{where}")
        self.kappa_min = kappa_min


# -- the tilt ----------------------------------------------------------------------------------------

@dataclass
class Tilt:
    """Phihat = (siga2/h)(C M^{-1} - alpha alpha^T) in factored form: ``L`` ``(N, N)`` the lower
    Cholesky factor of M = siga2 Phi + sig2 I, ``B = L^{-1} Y`` ``(N, C)``, ``scale = siga2 / h``. The
    quadratic form phi^T Phihat phi = scale (C |g|^2 - |B^T g|^2), g = L^{-1} phi, is evaluated by a
    triangular solve: at sig2 = 1e-6 the explicit M^{-1} (entries ~1/sig2) loses ~1e-8 relative in
    it to cancellation, which was the floor of the fixed-point residual."""

    L: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def C(self) -> int:
        return self.B.shape[1]

    def whiten(self, F: torch.Tensor) -> torch.Tensor:
        """L^{-1} f for every row f of ``F`` ``(..., n, N)`` -> ``(..., n, N)``."""
        return torch.linalg.solve_triangular(self.L, F.transpose(-1, -2), upper=False).transpose(-1, -2)

    def quad(self, F: torch.Tensor) -> torch.Tensor:
        """phi^T Phihat phi for every row of ``F`` ``(..., n, N)`` -> ``(..., n)``."""
        G = self.whiten(F)
        return self.scale * (self.C * (G * G).sum(-1) - (G @ self.B).pow(2).sum(-1))

    def dense(self) -> torch.Tensor:
        """Phihat ``(N, N)``."""
        Linv = torch.linalg.solve_triangular(self.L, torch.eye(self.L.shape[0], dtype=DTYPE), upper=False)
        W = Linv.T @ self.B  # alpha = M^{-1} Y
        H = self.scale * (self.C * Linv.T @ Linv - W @ W.T)
        return 0.5 * (H + H.T)


def factored_tilt(Phi: torch.Tensor, Y: torch.Tensor, *, siga2: float, sig2: float, h: float) -> Tilt:
    """The :class:`Tilt` of ``Phi`` ``(N, N)`` and ``Y`` ``(N, C)``. Raises
    ``torch.linalg.LinAlgError`` when M is not positive definite (or not finite)."""
    N = Y.shape[0]
    M = siga2 * Phi + sig2 * torch.eye(N, dtype=DTYPE)
    if not bool(torch.isfinite(M).all()):
        raise torch.linalg.LinAlgError("M is not finite")
    L = torch.linalg.cholesky(0.5 * (M + M.T))
    B = torch.linalg.solve_triangular(L, Y, upper=False)
    return Tilt(L, B, siga2 / h)


def tilt(Phi: torch.Tensor, Y: torch.Tensor, *, siga2: float, sig2: float, h: float) -> torch.Tensor:
    """Phihat = (siga2/h)(C M^{-1} - alpha alpha^T) ``(N, N)``, M = siga2 Phi + sig2 I, alpha = M^{-1} Y
    (``Y`` ``(N, C)``): (2/h) dG/dPhi of G = tr(Y^T M^{-1} Y)/2 + (C/2) log det M (dense; the solver
    uses :func:`factored_tilt`)."""
    return factored_tilt(Phi, Y, siga2=siga2, sig2=sig2, h=h).dense()


# -- nodes: a discrete measure standing for p ----------------------------------------------------------

@dataclass
class _Nodes:
    """Points ``z`` ``(n, d)`` (whitened; w = z L^T), normalised ``weight`` ``(n,)``, features
    ``F = phi(X w)`` ``(n, N)`` and, for directions whose radius is integrated out, the radial moments
    ``m2 = E[r^2 | e]``, ``m4 = E[r^4 | e]`` (ones for plain points)."""

    z: torch.Tensor
    weight: torch.Tensor
    F: torch.Tensor
    m2: torch.Tensor
    m4: torch.Tensor
    L: torch.Tensor

    def phi_moment(self) -> torch.Tensor:
        """E[phi phi^T] ``(N, N)``."""
        Fw = self.F * (self.weight * self.m2)[:, None]
        S = Fw.T @ self.F
        return 0.5 * (S + S.T)

    def zz(self) -> torch.Tensor:
        """E[z z^T] ``(d, d)``."""
        zw = self.z * (self.weight * self.m2)[:, None]
        return zw.T @ self.z

    def sigma(self) -> torch.Tensor:
        """E[w w^T] ``(d, d)``."""
        S = self.L @ self.zz() @ self.L.T
        return 0.5 * (S + S.T)

    def kurtosis(self, e: torch.Tensor) -> float:
        """E[(e.w)^4] / E[(e.w)^2]^2 along ``e`` ``(d,)``."""
        u = (self.z @ self.L.T) @ e
        m2 = float((self.weight * self.m2 * u**2).sum())
        m4 = float((self.weight * self.m4 * u**4).sum())
        return m4 / m2**2


def _features(phi, X, z, L):
    return phi((z @ L.T) @ X.T)


def _radial_moments(kappa: torch.Tensor, d: int):
    """E[r^2 | e], E[r^4 | e] for the radial density r^{d-1} exp(-kappa r^2 / 2)."""
    return d / kappa, d * (d + 2) / kappa**2


def _homogeneous_nodes(phi, X, L, H, dirs, angular_weight) -> _Nodes:
    """Directions ``dirs`` ``(n, d)`` (unit, whitened) with the prior's angular weights; the radius
    integrated out (module docstring). Raises :class:`_NotNormalisable` when kappa <= 0 at a node."""
    d = dirs.shape[1]
    F = _features(phi, X, dirs, L)
    kappa = 1.0 + H.quad(F) if H is not None else torch.ones(len(dirs), dtype=DTYPE)
    kmin = float(kappa.min())
    if not kmin > 0:
        raise _NotNormalisable(kmin, " at a quadrature node")
    logw = torch.log(angular_weight) - 0.5 * d * torch.log(kappa)
    w = torch.exp(logw - logw.max())
    m2, m4 = _radial_moments(kappa, d)
    return _Nodes(dirs, w / w.sum(), F, m2, m4, L)


def _kinks(X: torch.Tensor, L: torch.Tensor) -> np.ndarray:
    """The angles in [0, 2 pi) where some x_i . (L e(theta)) = 0 (d = 2), sorted, with 0 and 2 pi."""
    V = (X @ L).numpy()  # rows: x_i^T L, so x_i . L e = V_i . e
    base = np.arctan2(V[:, 1], V[:, 0])
    angles = np.concatenate([base + 0.5 * np.pi, base - 0.5 * np.pi]) % (2 * np.pi)
    angles = np.unique(np.concatenate([[0.0, 2 * np.pi], angles[np.tile(np.linalg.norm(V, axis=1) > 0, 2)]]))
    keep = np.concatenate([[True], np.diff(angles) > 1e-13])
    return angles[keep]


def _circle_nodes(breaks: np.ndarray, n: int):
    """Gauss-Legendre with ``n`` nodes on each arc between ``breaks``: (dirs ``(m, 2)``, weights ``(m,)``
    summing to 1, the uniform measure on the circle)."""
    x, w = np.polynomial.legendre.leggauss(n)
    a, b = breaks[:-1, None], breaks[1:, None]
    theta = (0.5 * (b - a) * x[None, :] + 0.5 * (a + b)).ravel()
    weight = (0.5 * (b - a) * w[None, :]).ravel() / (2 * np.pi)
    dirs = np.stack([np.cos(theta), np.sin(theta)], 1)
    return torch.from_numpy(dirs), torch.from_numpy(weight)


def _circle_kappa_min(act, X, L, H, breaks: np.ndarray, scale: float = 1.0) -> float:
    """The exact minimum over the circle of kappa(e) = 1 + scale phi(X L e)^T H phi(X L e) for a
    homogeneous phi (d = 2): on each arc phi(X L e) = D X L e with D the slopes of phi there, so
    kappa = 1 + e^T B e, B = scale (D X L)^T H (D X L), whose minimum on the arc is at an end or at an
    eigenvector of B inside it."""
    V = X @ L  # (N, 2)
    mids = 0.5 * (breaks[:-1] + breaks[1:])
    e_mid = torch.from_numpy(np.stack([np.cos(mids), np.sin(mids)], 1))
    ones = torch.ones(1, dtype=DTYPE)
    slopes = torch.stack([act.phi(ones)[0], -act.phi(-ones)[0]])  # phi(z)/z above and below 0
    D = torch.where(e_mid @ V.T > 0, slopes[0], slopes[1])  # (arcs, N)
    DV = D[:, :, None] * V[None]  # (arcs, N, 2)
    G = H.whiten(DV.transpose(1, 2))  # (arcs, 2, N): L^{-1} of both columns of D X L
    GB = G @ H.B  # (arcs, 2, C)
    B = scale * H.scale * (H.C * G @ G.transpose(1, 2) - GB @ GB.transpose(1, 2))  # (arcs, 2, 2)
    B = 0.5 * (B + B.transpose(1, 2))
    best = math.inf
    for ends in (breaks[:-1], breaks[1:]):
        e = torch.from_numpy(np.stack([np.cos(ends), np.sin(ends)], 1))
        best = min(best, float(torch.einsum("ai,aij,aj->a", e, B, e).min()))
    vals, vecs = torch.linalg.eigh(B)
    for k in range(2):
        for sign in (1.0, -1.0):
            v = sign * vecs[:, :, k]
            ang = torch.atan2(v[:, 1], v[:, 0]).numpy() % (2 * np.pi)
            inside = (ang >= breaks[:-1]) & (ang <= breaks[1:])
            if inside.any():
                best = min(best, float(vals[torch.from_numpy(inside), k].min()))
    return 1.0 + best


def _grid_nodes(phi, X, L, H, n: int, box: np.ndarray) -> tuple[_Nodes, torch.Tensor]:
    """The trapezoid rule with ``n`` points per axis on ``box`` ``(d, 2)`` (whitened): nodes and the
    log density at them (up to a constant)."""
    d = box.shape[0]
    axes = [torch.linspace(float(lo), float(hi), n, dtype=DTYPE) for lo, hi in box]
    z = torch.cartesian_prod(*axes).reshape(-1, d)
    F = _features(phi, X, z, L)
    logp = -0.5 * (z * z).sum(1)
    if H is not None:
        logp = logp - 0.5 * H.quad(F)
    w = torch.exp(logp - logp.max())
    ones = torch.ones(len(z), dtype=DTYPE)
    return _Nodes(z, w / w.sum(), F, ones, ones, L), logp


def _locate_box(phi, X, L, H, d: int) -> np.ndarray:
    """The box (whitened) holding every coarse point within CUT of the maximum log density, one coarse
    step wider each side; grown while that region touches the box's edge."""
    R = Z_BOX
    while True:
        box = np.array([[-R, R]] * d)
        nodes, logp = _grid_nodes(phi, X, L, H, COARSE, box)
        inside = logp > logp.max() - CUT
        pts = nodes.z[inside]
        lo, hi = pts.min(0).values.numpy(), pts.max(0).values.numpy()
        step = 2 * R / (COARSE - 1)
        if (lo > -R + 0.5 * step).all() and (hi < R - 0.5 * step).all():
            return np.stack([lo - step, hi + step], 1)
        if R >= Z_BOX_MAX:
            raise _NotNormalisable(math.nan, f": the density reaches the edge of a box of {R:g} prior "
                                   "standard deviations")
        R *= 4.0


def _zoom(nodes: _Nodes, logp: torch.Tensor, box: np.ndarray, n: int) -> np.ndarray:
    inside = logp > logp.max() - CUT
    pts = nodes.z[inside]
    step = (box[:, 1] - box[:, 0]) / (n - 1)
    lo = np.maximum(pts.min(0).values.numpy() - 2 * step, box[:, 0])
    hi = np.minimum(pts.max(0).values.numpy() + 2 * step, box[:, 1])
    return np.stack([lo, hi], 1)


class _Quadrature:
    """E_p for d <= 2 at ``level`` points per axis (or per arc); see the module docstring."""

    def __init__(self, act, X, L, n: int):
        self.act, self.X, self.L, self.n = act, X, L, n
        self.d = X.shape[1]
        self.homogeneous = act.homogeneous
        if self.homogeneous and self.d == 2:
            self.breaks = _kinks(X, L)

    def nodes(self, H, n: int | None = None) -> _Nodes:
        n = self.n if n is None else n
        phi = self.act.phi
        if self.homogeneous:
            if self.d == 1:
                dirs = torch.tensor([[1.0], [-1.0]], dtype=DTYPE)
                return _homogeneous_nodes(phi, self.X, self.L, H, dirs, torch.full((2,), 0.5, dtype=DTYPE))
            dirs, aw = _circle_nodes(self.breaks, n)
            return _homogeneous_nodes(phi, self.X, self.L, H, dirs, aw)
        box = _locate_box(phi, self.X, self.L, H, self.d)
        nodes, logp = _grid_nodes(phi, self.X, self.L, H, n, box)
        if self.d == 1:  # points are cheap on a line; a zoom from an under-resolved grid can cut a narrow peak
            return nodes
        zoomed = _zoom(nodes, logp, box, n)
        if ((zoomed[:, 1] - zoomed[:, 0]) > 0.8 * (box[:, 1] - box[:, 0])).all():
            return nodes  # the coarse box was already tight: no second pass
        return _grid_nodes(phi, self.X, self.L, H, n, zoomed)[0]

    def refine(self, H, tol: float, n_max: int):
        """Double the points from ``self.n`` until the moments move by at most ``tol`` (relative) or
        ``n_max`` is reached; ``self.n`` becomes the level reached. Returns (nodes, moments, change)."""
        nodes = self.nodes(H)
        new = nodes.phi_moment()
        if self.exact:
            return nodes, new, 0.0
        change = math.inf
        while self.n < n_max:
            fine_nodes = self.nodes(H, 2 * self.n)
            fine = fine_nodes.phi_moment()
            change = float((fine - new).abs().max() / fine.abs().max())
            self.n, nodes, new = 2 * self.n, fine_nodes, fine
            if change <= tol:
                break
        return nodes, new, change

    def kappa_min(self, H, scale: float = 1.0) -> float:
        """The least kappa over the sphere (homogeneous phi; nan otherwise)."""
        if not self.homogeneous or H is None:
            return math.nan
        if self.d == 1:
            dirs = torch.tensor([[1.0], [-1.0]], dtype=DTYPE)
            F = _features(self.act.phi, self.X, dirs, self.L)
            return float(1.0 + scale * H.quad(F).min())
        return _circle_kappa_min(self.act, self.X, self.L, H, self.breaks, scale)

    def max_n(self, max_points: int) -> int:
        """The most points per axis (or per arc) within ``max_points`` nodes."""
        if self.homogeneous and self.d == 2:
            return max(1, max_points // (len(self.breaks) - 1))
        return int(round(max_points ** (1.0 / self.d)))

    @property
    def exact(self) -> bool:
        return self.homogeneous and self.d == 1


# -- elliptical slice sampling -------------------------------------------------------------------------

def elliptical_slice(log_lik: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, nu: torch.Tensor,
                     u: torch.Tensor, *, generator: torch.Generator | None = None, ll: torch.Tensor | None = None,
                     max_shrinks: int = MAX_SHRINKS):
    """One elliptical slice update (Murray, Adams and MacKay 2010) of every row of ``x`` ``(B, d)``
    for the density prior x exp(log_lik), the prior a centred Gaussian.

    ``nu`` ``(B, d)``: draws from that prior; ``u`` ``(B,)``: uniforms on (0, 1) (the slice level is
    log_lik(x) + log u); ``generator`` draws the angles; ``ll``: log_lik(x) when known. Rows are
    independent: each shrinks its own bracket on theta toward 0 until its candidate x cos theta +
    nu sin theta lies above its level, or keeps x after ``max_shrinks`` candidates (a fixed cut pairs
    each path with its reverse, so the update stays reversible). Returns (x_new, log_lik(x_new),
    candidates evaluated, rows cut)."""
    B = x.shape[0]
    ll = log_lik(x) if ll is None else ll
    level = ll + torch.log(u)
    theta = torch.rand(B, dtype=x.dtype, generator=generator) * (2 * math.pi)
    lo, hi = theta - 2 * math.pi, theta.clone()
    x_new, ll_new = x.clone(), ll.clone()
    active = torch.arange(B)
    evaluations = 0
    for _ in range(max_shrinks):
        t = theta[active]
        cand = x[active] * torch.cos(t)[:, None] + nu[active] * torch.sin(t)[:, None]
        lc = log_lik(cand)
        evaluations += len(active)
        ok = lc > level[active]
        x_new[active[ok]], ll_new[active[ok]] = cand[ok], lc[ok]
        rest = active[~ok]
        tr = theta[rest]
        neg = tr < 0
        lo[rest] = torch.where(neg, tr, lo[rest])
        hi[rest] = torch.where(neg, hi[rest], tr)
        active = rest
        if len(active) == 0:
            break
        theta[active] = lo[active] + (hi[active] - lo[active]) * torch.rand(len(active), dtype=x.dtype,
                                                                            generator=generator)
    return x_new, ll_new, evaluations, len(active)


def _sphere_kappa_min(act, X, L, H, starts: torch.Tensor, steps: int = 150, scale: float = 1.0) -> float:
    """The least kappa(e) = 1 + scale psi(X L e)^T H psi(X L e) over unit e found by projected gradient
    descent (Adam) from the rows of ``starts`` ``(S, d)``; psi = phi (homogeneous)."""
    v = starts.clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=0.05)
    best = math.inf
    for _ in range(steps):
        e = v / v.norm(dim=1, keepdim=True)
        k = 1.0 + scale * H.quad(act.phi(e @ (X @ L).T))
        best = min(best, float(k.detach().min()))
        opt.zero_grad()
        k.sum().backward()
        opt.step()
    return best


# -- the solver ----------------------------------------------------------------------------------------

def _as_targets(y) -> torch.Tensor:
    Y = torch.as_tensor(y).to(DTYPE)
    return Y[:, None] if Y.ndim == 1 else Y


def _labels_from(Y: torch.Tensor) -> torch.Tensor:
    if Y.shape[1] == 1:
        return torch.unique(Y[:, 0], return_inverse=True)[1]
    return Y.argmax(1)


def _log10_nc1(Q, labels) -> float:
    return metrics.log10(float(metrics.nc1_kernel(Q, labels)))


def _start_phi(X, Y, act, start, siga2, sig2, h, sigw2):
    """(Phi_0 ``(N, N)``, Sigma_0 ``(d, d)`` for the walkers) from ``start``: an EoSResult (or anything
    with ``Q`` and ``Sigma``), a Sigma ``(d, d)``, a Phi ``(N, N)``, or None (the EoS of the same draw)."""
    N, d = X.shape
    if start is None:
        from .eos import solve_eos
        from .params import EoSParams

        if Y.shape[1] != 1:
            start = torch.eye(d, dtype=DTYPE) * (sigw2 / d)
        else:
            start = solve_eos(X, Y[:, 0], EoSParams(sigw2=sigw2, siga2=siga2, sig2=sig2, h=int(h)),
                              activation=act, device="cpu")
    if hasattr(start, "Q") and hasattr(start, "Sigma"):
        return start.Q.to(DTYPE) / siga2, start.Sigma.to(DTYPE)
    S = torch.as_tensor(start).to(DTYPE)
    if S.shape == (N, N) and N != d:
        return S, torch.eye(d, dtype=DTYPE) * (sigw2 / d)
    K = X @ (0.5 * (S + S.T)) @ X.T
    return act.kernel_map.maps(K)[0].to(DTYPE), S


class _Anderson:
    """Anderson mixing (type II, memory m) of x <- x + beta g, g = G(x) - x; plain damping when m = 0."""

    def __init__(self, m: int, beta: float):
        self.m, self.beta = m, beta
        self.dx, self.dg = [], []
        self.prev = None

    def reset(self):
        self.dx, self.dg, self.prev = [], [], None

    def step(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.m == 0:
            return x + self.beta * g
        if self.prev is not None:
            self.dx.append(x - self.prev[0])
            self.dg.append(g - self.prev[1])
            self.dx, self.dg = self.dx[-self.m:], self.dg[-self.m:]
        self.prev = (x.clone(), g.clone())
        if not self.dx:
            return x + self.beta * g
        DX, DG = torch.stack(self.dx, 1), torch.stack(self.dg, 1)
        gamma = torch.linalg.lstsq(DG, g[:, None], rcond=1e-12).solution[:, 0]
        return x + self.beta * g - (DX + self.beta * DG) @ gamma


def _finish(Phi, nodes, labels, siga2):
    Q = siga2 * Phi
    sigma = nodes.sigma()
    e = torch.linalg.eigh(sigma).eigenvectors[:, -1]
    return Q, sigma, nodes.kurtosis(e)


def _solve_quadrature(X, Y, act, Phi, labels, prm: MeanFieldParams, consts, t0) -> MeanFieldResult:
    sigw2, siga2, sig2, h = consts
    d = X.shape[1]
    L = torch.eye(d, dtype=DTYPE) * math.sqrt(sigw2 / d)
    quad = _Quadrature(act, X, L, prm.grid)
    mixer = _Anderson(prm.anderson, prm.damping)
    best = (math.inf, Phi, None, None, None)
    residual, refinement, kmin, it = math.inf, math.nan, math.nan, 0
    status, message, nodes = "not_converged", "", None

    def moments(H, n=None):
        nd = quad.nodes(H, n)
        return nd, nd.phi_moment()

    try:
        H = factored_tilt(Phi, Y, siga2=siga2, sig2=sig2, h=h)
        kmin = quad.kappa_min(H)
        if quad.homogeneous and not kmin > 0:
            raise _NotNormalisable(kmin, " at the start")
        # The working level: refined at the start until the moments move by sqrt(quad_tol) (for
        # the exponentially convergent rules here its own error is then about quad_tol); checked
        # against the next level at the answer, and raised there when needed.
        nodes, new, _ = quad.refine(H, math.sqrt(prm.quad_tol), quad.max_n(prm.max_points))
        while True:
            residual = float((new - Phi).abs().max() / Phi.abs().max())
            if not math.isfinite(residual):
                status, message = "nan", "the moments are not finite"
                break
            if residual < best[0]:
                best = (residual, Phi, nodes, new, H)
            elif residual > RESTART * best[0] and mixer.dx:  # the mixing went astray: back to the best
                mixer.reset()                                  # point, and a damped step from there
                residual, Phi, nodes, new, H = best
            if residual <= prm.rtol:
                if quad.exact:
                    refinement = 0.0
                    status = "ok"
                    break
                _, fine = moments(H, 2 * quad.n)
                refinement = float((fine - new).abs().max() / fine.abs().max())
                if refinement <= max(prm.quad_tol, prm.rtol) or 2 * quad.n > quad.max_n(prm.max_points):
                    status = "ok" if refinement <= max(prm.quad_tol, prm.rtol) else "not_converged"
                    if status != "ok":
                        message = f"the quadrature still moves by {refinement:.2g} at {quad.n} points"
                    break
                quad.n *= 2
                mixer.reset()
                best = (math.inf, Phi, None, None, None)  # the best point of this level only
            if it >= prm.iterations:
                message = f"iteration budget {prm.iterations} spent (residual {residual:.3g})"
                break
            it += 1
            x = Phi.reshape(-1)
            trial = mixer.step(x, (new - Phi).reshape(-1)).reshape(Phi.shape)
            trial = 0.5 * (trial + trial.T)
            try:
                H = factored_tilt(trial, Y, siga2=siga2, sig2=sig2, h=h)
            except torch.linalg.LinAlgError:  # the extrapolation left the cone: a damped step instead
                mixer.reset()
                trial = Phi + prm.damping * (new - Phi)
                H = factored_tilt(trial, Y, siga2=siga2, sig2=sig2, h=h)
            Phi = trial
            kmin = quad.kappa_min(H)
            if quad.homogeneous and not kmin > 0:
                raise _NotNormalisable(kmin, f" at iteration {it}")
            nodes, new = moments(H)
    except _NotNormalisable as err:
        return _not_normalisable(err, it, t0, "quadrature")
    except torch.linalg.LinAlgError as err:
        status, message = "nan", f"M = siga2 Phi + sig2 I is not positive definite ({err})"
    if status == "nan" or nodes is None:
        return MeanFieldResult(math.nan, math.nan, None, None, None, math.nan, residual, it, "nan", message,
                               time.perf_counter() - t0, "quadrature", kappa_min=kmin)
    if status != "ok":  # report the best point reached
        if best[2] is not None:
            residual, Phi, nodes = best[:3]
    Q, sigma, kurt = _finish(Phi, nodes, labels, siga2)
    val = _log10_nc1(Q, labels)
    if not math.isfinite(val):
        status, message = "nan", "NC1 of Q is not finite"
    return MeanFieldResult(val, 0.0, Q, Phi, sigma, kurt, residual, it, status, message, time.perf_counter() - t0,
                           "quadrature", refinement=refinement, kappa_min=kmin, replicate_log10_nc1=[val])


def _not_normalisable(err: _NotNormalisable, it: int, t0: float, method: str) -> MeanFieldResult:
    return MeanFieldResult(math.nan, math.nan, None, None, None, math.nan, math.nan, it, "not_normalisable",
                           f"the tilted density has no finite integral: {err}", time.perf_counter() - t0, method,
                           kappa_min=err.kappa_min)


class _Walkers:
    """Walkers on p(w) ∝ N(0, s0^2 I) exp(-phi^T H phi / 2) moved by :func:`elliptical_slice`."""

    def __init__(self, act, X, W0, s0, gen):
        self.act, self.X, self.W, self.s0, self.gen = act, X, W0, s0, gen
        self.H = None
        self.ll = None
        self.evaluations = 0

    def log_lik(self, W):
        return -0.5 * self.H.quad(self.act.phi(W @ self.X.T))

    def set_tilt(self, H):
        self.H = H
        self.ll = self.log_lik(self.W)

    def sweep(self):
        B, d = self.W.shape
        nu = self.s0 * torch.randn(B, d, dtype=DTYPE, generator=self.gen)
        u = torch.rand(B, dtype=DTYPE, generator=self.gen).clamp_min(1e-300)
        self.W, self.ll, ev, _ = elliptical_slice(self.log_lik, self.W, nu, u, generator=self.gen, ll=self.ll)
        self.evaluations += ev

    def nodes(self, homogeneous: bool) -> _Nodes:
        B, d = self.W.shape
        L = torch.eye(d, dtype=DTYPE) * self.s0
        z = self.W / self.s0
        weight = torch.full((B,), 1.0 / B, dtype=DTYPE)
        if homogeneous:  # Rao-Blackwell: the radius integrated out given the direction
            r = z.norm(dim=1, keepdim=True)
            e = z / r
            F = _features(self.act.phi, self.X, e, L)
            kappa = 1.0 + self.H.quad(F)
            m2, m4 = _radial_moments(kappa.clamp_min(1e-300), d)
            return _Nodes(e, weight, F, m2, m4, L)
        ones = torch.ones(B, dtype=DTYPE)
        return _Nodes(z, weight, self.act.phi(self.W @ self.X.T), ones, ones, L)


def _group_se(nodes: _Nodes, groups: int = 8) -> torch.Tensor:
    """Per-entry standard error of E[phi phi^T] from ``groups`` batches of the walkers ``(N, N)``."""
    n = len(nodes.weight) // groups * groups
    F = nodes.F[:n] * nodes.m2[:n, None].sqrt()
    parts = torch.stack([Fg.T @ Fg / len(Fg) for Fg in F.reshape(groups, -1, F.shape[1])])
    return parts.std(0) / math.sqrt(groups)


def _solve_walkers_once(X, Y, act, Phi, Sigma0, labels, prm: MeanFieldParams, consts, seed: int):
    sigw2, siga2, sig2, h = consts
    N, d = X.shape
    s0 = math.sqrt(sigw2 / d)
    gen = torch.Generator().manual_seed(int(seed))
    Lstart = torch.linalg.cholesky(0.5 * (Sigma0 + Sigma0.T))
    walkers = _Walkers(act, X, torch.randn(prm.walkers, d, dtype=DTYPE, generator=gen) @ Lstart.T, s0, gen)
    homog = act.homogeneous
    L = torch.eye(d, dtype=DTYPE) * s0
    kmin = math.nan

    def check(H, it):
        nonlocal kmin
        if not homog:
            return
        g = torch.Generator().manual_seed(int(seed) + 7919 * it + 1)
        starts = torch.cat([torch.randn(64, d, dtype=DTYPE, generator=g), walkers.W[:64] / s0])
        kmin = _sphere_kappa_min(act, X, L, H, starts)
        radius = float((walkers.W.norm(dim=1) / s0).max())
        if not kmin > 0:
            raise _NotNormalisable(kmin, " at the start" if it == 0 else f" at iteration {it}")
        if radius > 1e4:
            raise _NotNormalisable(kmin, f": walkers reach {radius:.3g} prior standard deviations at iteration {it}")

    H = factored_tilt(Phi, Y, siga2=siga2, sig2=sig2, h=h)
    check(H, 0)
    walkers.set_tilt(H)
    for _ in range(prm.burn_in):
        walkers.sweep()
    it = 0
    total = prm.iterations + prm.averaging
    for it in range(1, total + 1):
        for _ in range(prm.sweeps):
            walkers.sweep()
        est = walkers.nodes(homog).phi_moment()
        gamma = prm.damping if it <= prm.iterations else 1.0 / (it - prm.iterations + 1)
        Phi = Phi + gamma * (est - Phi)
        Phi = 0.5 * (Phi + Phi.T)
        H = factored_tilt(Phi, Y, siga2=siga2, sig2=sig2, h=h)
        check(H, it)
        walkers.set_tilt(H)
    # the residual at the answer, against fresh estimates averaged over a few sweeps
    parts = []
    for _ in range(4):
        for _ in range(prm.sweeps):
            walkers.sweep()
        parts.append(walkers.nodes(homog))
    est = sum(p.phi_moment() for p in parts) / len(parts)
    se = torch.stack([_group_se(p) for p in parts]).pow(2).sum(0).sqrt() / len(parts)
    scale = float(Phi.abs().max())
    diff = (est - Phi).abs()
    residual = float(diff.max()) / scale
    noise = float(se.max()) / scale
    nodes = parts[-1]
    return Phi, nodes, residual, noise, total, kmin, walkers.evaluations


def _solve_walkers(X, Y, act, Phi0, Sigma0, labels, prm: MeanFieldParams, consts, seed, t0) -> MeanFieldResult:
    siga2 = consts[1]
    runs, it = [], 0
    try:
        for r in range(prm.replicates):
            runs.append(_solve_walkers_once(X, Y, act, Phi0.clone(), Sigma0, labels, prm, consts,
                                            seed * 1000003 + r))
    except _NotNormalisable as err:
        return _not_normalisable(err, it, t0, "walkers")
    except torch.linalg.LinAlgError as err:
        return MeanFieldResult(math.nan, math.nan, None, None, None, math.nan, math.nan, 0, "nan",
                               f"M = siga2 Phi + sig2 I is not positive definite ({err})",
                               time.perf_counter() - t0, "walkers")
    vals = [_log10_nc1(siga2 * run[0], labels) for run in runs]
    Phi = sum(run[0] for run in runs) / len(runs)
    sigmas = [run[1].sigma() for run in runs]
    sigma = sum(sigmas) / len(sigmas)
    e = torch.linalg.eigh(sigma).eigenvectors[:, -1]
    kurt = float(np.mean([run[1].kurtosis(e) for run in runs]))
    residual = max(run[2] for run in runs)
    noise = max(run[3] for run in runs)
    kmins = [run[5] for run in runs]
    kmin = min(kmins) if all(math.isfinite(k) for k in kmins) else math.nan
    val = float(np.mean(vals))
    se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else math.nan
    status, message = "ok", ""
    if not (math.isfinite(val) and bool(torch.isfinite(Phi).all())):
        status, message = "nan", "NC1 of Q is not finite"
    elif residual > max(prm.rtol, prm.mc_tol * noise):
        status = "not_converged"
        message = (f"residual {residual:.3g} exceeds {prm.mc_tol:g} Monte Carlo standard errors "
                   f"({noise:.3g}) after {runs[0][4]} iterations")
    evaluations = sum(run[6] for run in runs)
    message = (message + "; " if message else "") + f"{evaluations} likelihood evaluations"
    return MeanFieldResult(val, se, siga2 * Phi, Phi, sigma, kurt, residual, runs[0][4], status, message,
                           time.perf_counter() - t0, "walkers", noise=noise, kappa_min=kmin,
                           replicate_log10_nc1=vals)


def solve_mean_field(X, y, *, activation="erf", sigw2: float = 1.0, siga2: float = 1.0 / 128, sig2: float = 1e-6,
                     h: float = 500, params: MeanFieldParams = MeanFieldParams(), start=None, labels=None,
                     seed: int = 0) -> MeanFieldResult:
    """The mean-field adaptive kernel of ``X`` ``(N, d)`` and ``y`` ``(N,)`` or ``(N, C)`` (module
    docstring), started from ``start``: an :class:`~shallow_collapse.eos.EoSResult` of the same draw
    (Phi_0 = Q / siga2; the walkers start from N(0, Sigma)), a Sigma ``(d, d)``, a Phi ``(N, N)``, or
    None (the EoS solved here; the NNGP's Sigma_0 for C > 1). ``labels`` ``(N,)`` for NC1 (from y by
    default). ``activation``: a registered name or an Activation. Never raises for numerical
    failures: see :class:`MeanFieldResult`'s ``status``."""
    t0 = time.perf_counter()
    act = activations.get(activation)
    X = torch.as_tensor(X).to(DTYPE)
    Y = _as_targets(y)
    if X.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise ValueError(f"X must be (N, d) and y (N,) or (N, C); got {tuple(X.shape)} and {tuple(Y.shape)}")
    if params.method not in ("auto", "quadrature", "walkers"):
        raise ValueError(f"method must be auto, quadrature or walkers; got {params.method!r}")
    labels = _labels_from(Y) if labels is None else torch.as_tensor(labels)
    d = X.shape[1]
    method = params.method if params.method != "auto" else ("quadrature" if d <= 2 else "walkers")
    if method == "quadrature" and d > 2:
        raise ValueError("the quadrature is for d <= 2")
    consts = (float(sigw2), float(siga2), float(sig2), float(h))
    try:
        Phi0, Sigma0 = _start_phi(X, Y, act, start, siga2, sig2, h, sigw2)
    except Exception as err:  # a failed start is a status too
        return MeanFieldResult(math.nan, math.nan, None, None, None, math.nan, math.nan, 0, "nan",
                               f"no starting point: {err}", time.perf_counter() - t0, method)
    if method == "quadrature":
        return _solve_quadrature(X, Y, act, Phi0, labels, params, consts, t0)
    return _solve_walkers(X, Y, act, Phi0, Sigma0, labels, params, consts, seed, t0)


# -- the Gaussian restriction (the EoS, computed with the same quadrature) ---------------------------

def _chol_of(theta: np.ndarray, d: int) -> torch.Tensor:
    """The lower Cholesky factor of Sigma from its log-diagonal parametrisation."""
    t = torch.as_tensor(theta, dtype=DTYPE)
    if d == 1:
        return torch.exp(t).reshape(1, 1)
    return torch.stack([torch.stack([torch.exp(t[0]), torch.zeros((), dtype=DTYPE)]),
                        torch.stack([t[1], torch.exp(t[2])])])


def _theta_of(L: torch.Tensor) -> np.ndarray:
    if L.shape[0] == 1:
        return np.array([math.log(float(L[0, 0]))])
    return np.array([math.log(float(L[0, 0])), float(L[1, 0]), math.log(float(L[1, 1]))])


class _Restricted:
    """The action of the Gaussian restriction, S(Sigma) = h KL(N(0, Sigma) || prior) + G(Phi(Sigma)),
    Phi(Sigma) = E_{N(0, Sigma)}[phi phi^T], with its gradient and the map Sigma -> Sigma_new, all by
    the quadrature of :class:`_Quadrature` (refined at every evaluation to ``quad_tol``)."""

    def __init__(self, act, X, Y, sigw2, siga2, sig2, h, grid, quad_tol, max_points):
        self.act, self.X, self.Y = act, X, Y
        self.sigw2, self.siga2, self.sig2, self.h = sigw2, siga2, sig2, h
        self.n, self.quad_tol, self.max_points = grid, quad_tol, max_points
        self.d = X.shape[1]

    def evaluate(self, L: torch.Tensor):
        d, (N, C) = self.d, self.Y.shape
        quad = _Quadrature(self.act, self.X, L, max(8, self.n // 2))
        nodes, Phi, _ = quad.refine(None, self.quad_tol, quad.max_n(self.max_points))
        self.n = quad.n
        M = self.siga2 * Phi + self.sig2 * torch.eye(N, dtype=DTYPE)
        Lm = torch.linalg.cholesky(M)
        alpha = torch.cholesky_solve(self.Y, Lm)
        alpha = alpha + torch.cholesky_solve(self.Y - M @ alpha, Lm)
        G = 0.5 * float((self.Y * alpha).sum()) + C * float(torch.log(torch.diagonal(Lm)).sum())
        H = factored_tilt(Phi, self.Y, siga2=self.siga2, sig2=self.sig2, h=self.h)
        f = H.quad(nodes.F)  # phi^T Phihat phi at the nodes (degree 2 in the radius)
        ezzf = (nodes.z * (nodes.weight * nodes.m4 * f)[:, None]).T @ nodes.z
        ef = float((nodes.weight * nodes.m2 * f).sum())
        Linv = torch.linalg.inv(L)
        eye = torch.eye(d, dtype=DTYPE)
        grad_f = 0.5 * Linv.T @ (ezzf - ef * eye) @ Linv  # grad_Sigma E_q[phi^T Phihat phi], A fixed
        grad_f = 0.5 * (grad_f + grad_f.T)
        Sigma = L @ L.T
        kl = 0.5 * ((d / self.sigw2) * float(torch.trace(Sigma)) - 2.0 * float(torch.log(torch.diagonal(L)).sum()))
        action = self.h * kl + G
        Sinv = torch.cholesky_inverse(L)
        grad = 0.5 * self.h * ((d / self.sigw2) * eye - Sinv + grad_f)  # grad_Sigma S
        new = torch.linalg.inv((d / self.sigw2) * eye + grad_f)
        return action, grad, 0.5 * (new + new.T), Sigma, Phi

    def fun(self, theta):
        L = _chol_of(theta, self.d)
        action, grad, *_ = self.evaluate(L)
        gL = 2.0 * grad @ L  # dS/dL for Sigma = L L^T
        if self.d == 1:
            return action, np.array([float(gL[0, 0] * L[0, 0])])
        return action, np.array([float(gL[0, 0] * L[0, 0]), float(gL[1, 0]), float(gL[1, 1] * L[1, 1])])

    def residual(self, theta):
        _, _, new, Sigma, _ = self.evaluate(_chol_of(theta, self.d))
        i, j = np.triu_indices(self.d)
        return ((Sigma - new)[i, j] / Sigma.abs().max()).numpy()


def gaussian_restriction(X, y, *, activation="erf", sigw2: float = 1.0, siga2: float = 1.0 / 128,
                         sig2: float = 1e-6, h: float = 500, start=None, rtol: float = 1e-10,
                         grid: int = 64, quad_tol: float = 1e-13, max_points: int = 1 << 17,
                         maxiter: int = 300) -> GaussianRestriction:
    """The theory with p restricted to q = N(0, Sigma) (d <= 2): the least-action stationary point of

        S(Sigma) = h KL(q || prior) + tr(Y^T M^{-1} Y)/2 + (C/2) log det M,  M = siga2 E_q[phi phi^T] + sig2 I,

    i.e. of KL(q || p) with Phihat held fixed: Sigma^{-1} = (d/sigw2) I + grad_Sigma E_q[phi^T Phihat phi],
    grad_Sigma E_q[f] = (1/2) Sigma^{-1} E_q[(w w^T - Sigma) f(w)] Sigma^{-1} (Stein's identity; no
    derivative of phi). Every expectation is the quadrature of :func:`solve_mean_field` against
    N(0, Sigma), not the kernel maps: equal to the EoS (docs/MATH.md sections 6-7) if both are right.
    L-BFGS on the log-diagonal Cholesky factor of Sigma from ``start`` (the NNGP's (sigw2/d) I by
    default), then a root polish (MINPACK hybrd) of Sigma - Sigma_new to ``rtol``."""
    from scipy import optimize

    act = activations.get(activation)
    X = torch.as_tensor(X).to(DTYPE)
    Y = _as_targets(y)
    d = X.shape[1]
    if d > 2:
        raise ValueError("the Gaussian restriction is computed by quadrature, for d <= 2")
    Sigma = torch.eye(d, dtype=DTYPE) * (sigw2 / d) if start is None else torch.as_tensor(start).to(DTYPE)
    problem = _Restricted(act, X, Y, float(sigw2), float(siga2), float(sig2), float(h), grid, quad_tol, max_points)
    theta = _theta_of(torch.linalg.cholesky(Sigma))
    status, message, it = "not_converged", "", 0
    try:
        opt = optimize.minimize(problem.fun, theta, jac=True, method="L-BFGS-B",
                                options={"maxiter": maxiter, "gtol": 1e-12, "ftol": 1e-15})
        theta, it = opt.x, int(opt.nit)
        root = optimize.root(problem.residual, theta, method="hybr", options={"xtol": 1e-14})
        if np.all(np.isfinite(root.x)) and np.abs(problem.residual(root.x)).max() <= np.abs(
                problem.residual(theta)).max():
            theta = root.x
        it += int(root.nfev)
        _, _, new, Sigma, Phi = problem.evaluate(_chol_of(theta, d))
        residual = float((Sigma - new).abs().max() / Sigma.abs().max())
        if not math.isfinite(residual):
            status, message = "nan", "not finite"
        elif residual <= rtol:
            status = "ok"
        else:
            message = f"residual {residual:.3g} above rtol {rtol:g}"
    except (torch.linalg.LinAlgError, _NotNormalisable, ValueError) as err:
        return GaussianRestriction(Sigma, torch.full((X.shape[0],) * 2, math.nan, dtype=DTYPE), math.nan, it,
                                   "nan", str(err))
    return GaussianRestriction(Sigma, siga2 * Phi, residual, it, status, message)

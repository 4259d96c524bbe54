"""An exact reference for the collapsed posterior at input dimension d = 1 (no bias).

Model: f(x) = sum_{j<=h} a_j phi(w_j x) with phi the leaky ReLU of slope alpha in [0, 1) (alpha = 0:
ReLU), priors w_j ~ N(0, sigw2), a ~ N(0, c I_h) with c = siga2 / h, targets Y ``(N, C)`` with noise
variance sig2. Integrating a out, p(Y | W) = N(Y; 0, C_W) per column, C_W = c sum_j phi_j phi_j^T + sig2 I.

Reduction: phi(w x) = w u for w > 0 and |w| v for w < 0, with u = phi(x), v = phi(-x), so
C_W = sig2 I + c A u u^T + c B v v^T with A = sum_{w_j > 0} w_j^2, B = sum_{w_j < 0} w_j^2. Under the
prior n = #{w_j > 0} ~ Binomial(h, 1/2) and, given n, A / sigw2 ~ chi2_n, B / sigw2 ~ chi2_{h-n}
(chi2_0: the point 0), independent. With [u v] = Q R (R 2 x 2 upper triangular) and Z = Q^T Y,

    log p(Y | A, B) = const - (C/2) log det H - tr(Z^T H^{-1} Z) / 2,   H = sig2 I_2 + R diag(cA, cB) R^T,
    const = -(N C / 2) log(2 pi) - (C (N - 2) / 2) log sig2 - |Y - Q Z|^2 / (2 sig2),

a 2 x 2 problem (Woodbury / the determinant lemma in the orthonormal basis Q). For the ReLU u^T v = 0,
so R is diagonal and the likelihood factorises, f(A) g(B): then each n needs two 1-D integrals, else
one 2-D integral.

Quadrature: in s = log(A / sigw2) (and t = log(B / sigw2)), where the chi2_k prior has the smooth
log-density (k/2) s - e^s / 2 - (k/2) log 2 - lgamma(k/2) (Jacobian included). A coarse grid (step 1/4 on
[-110, log q], q the chi2_h quantile of upper tail 1e-40, grown while a box touches an end) locates, per
n, the box where the log integrand is within 50 of its maximum, one coarse step wider each side. The
trapezoid rule on a uniform grid of that box (step <= 0.1 / refine, at least 48 refine intervals per
axis) is then zoomed once onto the part within 50 of the maximum and repeated there, which gives
log Z(n) = log of the integral of prior x exp(log p(Y | A, B) - const) and E[A | n], E[B | n]. The
integrand is smooth and negligible at the box's edges, so the rule converges exponentially (from a
deliberately coarse base grid the error goes 1e-1, 1e-3, 1e-9, 1e-16 as the points double); at the
default grid doubling ``refine`` changes the results by <~1e-13 relative, more only where the log
integrand is ~1e6 and its rounding sets the floor. The n terms are combined by log-sum-exp of
log Binomial(h, n) 2^-h + log Z(n); log p(Y) = that + const.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import chdtri, gammaln, logsumexp

__all__ = ["D1Reduction", "ExactD1", "d1_reduction", "relu_d1_posterior"]

S_LO = -110.0  # lowest s = log(A / sigw2): the chi2_1 prior mass below it is ~e^-55
COARSE = 0.25  # step of the locating grid in s
CUT = 50.0  # the box holds every coarse point whose log integrand is within CUT of the maximum
D_MAX, G_MIN = 0.1, 48  # fine step at most D_MAX / refine, at least G_MIN * refine intervals per axis
CHUNK = 1 << 20  # grid points per block of the 2-D sums (memory ~ a few blocks of doubles)


def _leaky(z: np.ndarray, slope: float) -> np.ndarray:
    return np.where(z > 0, z, slope * z)


@dataclass(frozen=True)
class D1Reduction:
    """The rank-two reduction of the module docstring: ``u``, ``v`` ``(N,)``, ``R`` ``(2, 2)`` upper
    triangular with [u v] = Q R, ``Z = Q^T Y`` ``(2, C)``, ``resid = |Y - Q Z|_F^2``, ``c = siga2 / h``."""

    u: np.ndarray
    v: np.ndarray
    R: np.ndarray
    Z: np.ndarray
    resid: float
    c: float
    sig2: float

    @property
    def N(self) -> int:
        return self.u.shape[0]

    @property
    def C(self) -> int:
        return self.Z.shape[1]

    @property
    def factorised(self) -> bool:
        """Whether u^T v = 0 (the ReLU), so that log p(Y | A, B) = f(A) + g(B)."""
        return self.R[0, 1] == 0.0

    @property
    def const(self) -> float:
        """The part of log p(Y | A, B) that depends on neither A nor B."""
        N, C = self.N, self.C
        return (-0.5 * N * C * math.log(2 * math.pi) - 0.5 * C * (N - 2) * math.log(self.sig2)
                - 0.5 * self.resid / self.sig2)

    def reduced_loglik(self, A, B) -> np.ndarray:
        """log p(Y | A, B) - const = -(C/2) log det H - tr(Z^T H^{-1} Z) / 2, broadcast over A, B >= 0.
        Cholesky of the 2 x 2 H per column of Z: every term is a sum of squares (no cancellation)."""
        a, b = self.c * np.asarray(A, dtype=np.float64), self.c * np.asarray(B, dtype=np.float64)
        (r11, r12), (_, r22) = self.R
        s2 = self.sig2
        h11 = s2 + a * r11**2 + b * r12**2
        h12 = b * (r12 * r22)
        det = (s2 + a * r11**2) * (s2 + b * r22**2) + s2 * b * r12**2
        l21_over_l11 = h12 / h11
        quad = 0.0
        for z1, z2 in self.Z.T:
            quad = quad + z1**2 / h11 + (z2 - l21_over_l11 * z1) ** 2 * (h11 / det)
        return -0.5 * self.C * np.log(det) - 0.5 * quad

    def axis_loglik(self, axis: int, A) -> np.ndarray:
        """The factorised case's f(A) (axis 0) or g(B) (axis 1), reduced_loglik = f(A) + g(B)."""
        r = self.R[axis, axis]
        h = self.sig2 + self.c * np.asarray(A, dtype=np.float64) * r**2
        return -0.5 * self.C * np.log(h) - 0.5 * np.sum(self.Z[axis] ** 2) / h

    def log_likelihood(self, A, B) -> np.ndarray:
        """log p(Y | A, B), the Gaussian density of Y (constants included)."""
        return self.const + self.reduced_loglik(A, B)


def _as_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def d1_reduction(x, Y, *, slope: float, siga2: float, sig2: float, h: int) -> D1Reduction:
    """The reduction of ``x`` ``(N,)`` and ``Y`` ``(N, C)`` (or ``(N,)``, one column); Gram-Schmidt with
    one reorthogonalisation, so that R[0, 1] is exactly 0 when u^T v is (the ReLU)."""
    x, Y = _as_numpy(x), _as_numpy(Y)
    if Y.ndim == 1:
        Y = Y[:, None]
    if x.ndim != 1 or Y.ndim != 2 or Y.shape[0] != x.shape[0] or x.shape[0] < 2:
        raise ValueError(f"x must be (N,) with N >= 2 and Y (N, C); got {x.shape} and {Y.shape}")
    if not 0.0 <= slope < 1.0 or h < 1 or sig2 <= 0 or siga2 <= 0:
        raise ValueError("need 0 <= slope < 1, h >= 1, sig2 > 0, siga2 > 0")
    u, v = _leaky(x, slope), _leaky(-x, slope)
    r11 = float(np.linalg.norm(u))
    q1 = u / r11 if r11 > 0 else np.zeros_like(u)
    r12, w = 0.0, v.copy()
    for _ in range(2):
        d = float(q1 @ w)
        r12, w = r12 + d, w - d * q1
    r22 = float(np.linalg.norm(w))
    q2 = w / r22 if r22 > 0 else np.zeros_like(w)
    Q = np.stack([q1, q2], 1)
    Z = Q.T @ Y
    R = np.array([[r11, r12], [0.0, r22]])
    return D1Reduction(u, v, R, Z, float(np.sum((Y - Q @ Z) ** 2)), siga2 / h, float(sig2))


@dataclass(frozen=True)
class ExactD1:
    """The posterior moments: ``mean_a`` = E[A | Y], ``mean_b`` = E[B | Y], ``kernel`` = E[K_W | Y]
    ``(N, N)`` = c (E[A] u u^T + E[B] v v^T), ``sigma_trace`` = E[Tr W^T W / h | Y] = E[A + B] / h,
    ``log_evidence`` = log p(Y) (the Gaussian density of Y in R^{N x C}, all constants included),
    ``prob_n`` ``(h + 1,)`` the posterior of n = #{w_j > 0}, and the ``reduction`` used."""

    mean_a: float
    mean_b: float
    kernel: np.ndarray
    sigma_trace: float
    log_evidence: float
    prob_n: np.ndarray
    reduction: D1Reduction


def _log_chi2_s(k: int, s: np.ndarray) -> np.ndarray:
    """Log density of s = log X, X ~ chi2_k (k >= 1)."""
    return 0.5 * k * s - 0.5 * np.exp(s) - 0.5 * k * math.log(2.0) - gammaln(0.5 * k)


def _coarse_prior(h: int, s: np.ndarray) -> np.ndarray:
    """``(h + 1, 1 + len(s))``: log prior density of chi2_k at A = 0 (entry 0) and on the grid s."""
    P = np.full((h + 1, 1 + len(s)), -np.inf)
    P[0, 0] = 0.0
    for k in range(1, h + 1):
        P[k, 1:] = _log_chi2_s(k, s)
    return P


def _locate(h: int, boxes_on) -> tuple[np.ndarray, np.ndarray]:
    """The coarse grid s and, per n, the coarse index ranges ``(h + 1, 2 or 4)`` (index 0 is A = 0) that
    ``boxes_on(s, Ac, P)`` finds; the grid grows while a box touches its lowest or highest point."""
    lo, hi = S_LO, math.log(chdtri(h, 1e-40)) + 2 * COARSE
    while True:
        s = np.arange(lo, hi + 0.5 * COARSE, COARSE)
        boxes = boxes_on(s, np.concatenate([[0.0], np.exp(s)]), _coarse_prior(h, s))
        bottom, top = np.any(boxes == 1), np.any(boxes == len(s))
        if not (bottom or top):
            return s, boxes
        if hi > 690 or lo < -5000:  # e^s would overflow
            raise RuntimeError("the posterior of A or B does not fit the coarse grid")
        lo, hi = lo - 50.0 * bottom, hi + max(10.0, hi - lo) * top


def _fine_axis(k: int, lo: float, hi: float, sigw2: float, refine: int):
    """(s, A = sigw2 e^s, log weights = log prior density + log trapezoid weight), each ``(G + 1,)``, on
    [lo, hi]; chi2_0 is the single point A = 0 of weight 1."""
    if k == 0:
        return np.full(1, -np.inf), np.zeros(1), np.zeros(1)
    G = refine * max(G_MIN, math.ceil((hi - lo) / D_MAX))
    t = np.linspace(lo, hi, G + 1)
    w = np.full(G + 1, (hi - lo) / G)
    w[[0, -1]] *= 0.5
    return t, sigw2 * np.exp(t), _log_chi2_s(k, t) + np.log(w)


def _span(mask: np.ndarray) -> tuple[int, int]:
    i = np.flatnonzero(mask)
    return i[0], i[-1]


def _coarse_box(s: np.ndarray, first: int, last: int) -> tuple[float, float]:
    """The interval of the coarse indices first..last (index 0 is A = 0), one coarse step wider each side."""
    return (s[first - 1] - COARSE, s[last - 1] + COARSE) if first > 0 else (0.0, 0.0)


def _zoom(t: np.ndarray, peak: np.ndarray) -> tuple[float, float]:
    """The interval of the fine points where ``peak`` (the log integrand, maximised over the other axis)
    is within CUT of its maximum, one fine step wider each side."""
    if len(t) == 1:
        return 0.0, 0.0
    i, j = _span(peak > peak.max() - CUT)
    return t[max(i - 1, 0)], t[min(j + 1, len(t) - 1)]


def _moments_1d(A: np.ndarray, L: np.ndarray):
    m = L.max()
    e = np.exp(L - m)
    z = e.sum()
    return m + math.log(z), float(e @ A / z)


def _moments_2d(red: D1Reduction, A, la, B, lb):
    """(log integral, E[A], E[B], max_j L_ij, max_i L_ij) of exp(L_ij), L_ij = la_i + lb_j +
    reduced_loglik(A_i, B_j), in row blocks of about CHUNK points."""
    rows = max(1, CHUNK // len(B))
    parts, rowmax, colmax = [], [], np.full(len(B), -np.inf)
    for i in range(0, len(A), rows):
        L = la[i:i + rows, None] + lb[None, :] + red.reduced_loglik(A[i:i + rows, None], B[None, :])
        rowmax.append(L.max(1))
        colmax = np.maximum(colmax, L.max(0))
        m = rowmax[-1].max()
        e = np.exp(L - m)
        parts.append((m, e.sum(), e.sum(1) @ A[i:i + rows], e.sum(0) @ B))
    m = max(p[0] for p in parts)
    z, za, zb = (sum(math.exp(p[0] - m) * p[j] for p in parts) for j in (1, 2, 3))
    return m + math.log(z), za / z, zb / z, np.concatenate(rowmax), colmax


def _per_n_2d(red: D1Reduction, h: int, sigw2: float, refine: int):
    def boxes_on(s, e, P):
        Ac = sigw2 * e
        lc = red.reduced_loglik(Ac[:, None], Ac[None, :])
        out = np.empty((h + 1, 4), dtype=int)
        for n in range(h + 1):
            L = P[n][:, None] + P[h - n][None, :] + lc
            mask = L > L.max() - CUT
            out[n] = *_span(mask.any(1)), *_span(mask.any(0))
        return out

    s, boxes = _locate(h, boxes_on)
    out = np.empty((h + 1, 3))
    for n, (a0, a1, b0, b1) in enumerate(boxes):
        box_a, box_b = _coarse_box(s, a0, a1), _coarse_box(s, b0, b1)
        for final in (False, True):  # the second pass on the box the first pass zooms in to
            sa, A, la = _fine_axis(n, *box_a, sigw2, refine)
            sb, B, lb = _fine_axis(h - n, *box_b, sigw2, refine)
            logz, ea, eb, peak_a, peak_b = _moments_2d(red, A, la, B, lb)
            box_a, box_b = _zoom(sa, peak_a), _zoom(sb, peak_b)
        out[n] = logz, ea, eb
    return out.T


def _per_n_1d(red: D1Reduction, h: int, sigw2: float, refine: int):
    def boxes_on(s, e, P):
        out = np.empty((h + 1, 4), dtype=int)
        for axis in (0, 1):
            L = P + red.axis_loglik(axis, sigw2 * e)[None, :]
            mask = L > L.max(1, keepdims=True) - CUT
            out[:, 2 * axis:2 * axis + 2] = [_span(row) for row in mask]
        return out

    s, boxes = _locate(h, boxes_on)
    logF, mean = np.empty((2, h + 1)), np.empty((2, h + 1))
    for axis in (0, 1):
        for k in range(h + 1):
            box = _coarse_box(s, *boxes[k, 2 * axis:2 * axis + 2])
            for final in (False, True):
                t, A, la = _fine_axis(k, *box, sigw2, refine)
                L = la + red.axis_loglik(axis, A)
                box = _zoom(t, L)
            logF[axis, k], mean[axis, k] = _moments_1d(A, L)
    n = np.arange(h + 1)
    return logF[0, n] + logF[1, h - n], mean[0, n], mean[1, h - n]


def relu_d1_posterior(x, Y, *, slope: float, sigw2: float, siga2: float, sig2: float, h: int,
                      method: str = "auto", refine: int = 1) -> ExactD1:
    """The exact posterior moments of the module docstring for ``x`` ``(N,)`` and ``Y`` ``(N, C)``
    (numpy or torch, float64). ``method``: "1d" (the factorised path; ReLU only), "2d" (general),
    "auto" (1d where the likelihood factorises). ``refine`` multiplies the quadrature's points per axis."""
    red = d1_reduction(x, Y, slope=slope, siga2=siga2, sig2=sig2, h=h)
    if method == "auto":
        method = "1d" if red.factorised else "2d"
    if method == "1d" and not red.factorised:
        raise ValueError("the 1-D path needs u^T v = 0 (the ReLU)")
    if method not in ("1d", "2d"):
        raise ValueError(f"method must be 'auto', '1d' or '2d'; got {method!r}")
    logZ, ea, eb = (_per_n_1d if method == "1d" else _per_n_2d)(red, h, sigw2, int(refine))
    n = np.arange(h + 1)
    lp = gammaln(h + 1) - gammaln(n + 1) - gammaln(h - n + 1) - h * math.log(2.0) + logZ
    log_ev = float(logsumexp(lp))
    prob = np.exp(lp - log_ev)
    mean_a, mean_b = float(prob @ ea), float(prob @ eb)
    kernel = red.c * (mean_a * np.outer(red.u, red.u) + mean_b * np.outer(red.v, red.v))
    return ExactD1(mean_a, mean_b, kernel, (mean_a + mean_b) / h, log_ev + red.const, prob, red)

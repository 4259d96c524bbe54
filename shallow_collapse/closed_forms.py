"""The kernel maps of the activations that have a closed form, each written once (MATH.md sections 5
and 8): erf, the ReLU family (ReLU, leaky ReLU, abs), GELU, sin and cos.

A kernel map is the object an :class:`~shallow_collapse.activations.Activation` carries besides phi.
For (u, v) ~ N(0, [[a, c], [c, b]]) (a = K_ii, b = K_jj, c = K_ij) and F = Kphi = E[phi(u) phi(v)]
it gives

- ``terms(K, a, b, p=True)`` -> ``(F, Kdphi, P)`` with Kdphi = dF/dc = E[phi'(u) phi'(v)] and
  P = 2 dF/da (the diagonal part of the EoS gradient, MATH.md section 6; None when ``p`` is False),
  for ``K`` ``(..., n, m)``, row variances ``a`` ``(..., n, 1)`` and column variances ``b``
  ``(..., 1, m)`` (or any shapes that broadcast against ``K``, e.g. all of K's shape);
- ``maps(K, k_row=None, k_col=None)`` -> ``(Kphi, Kdphi)``, the variances read off the diagonal of
  a square ``K`` when omitted (the limiting kernels).

:class:`~shallow_collapse.kernel_maps.NumericalMaps` is the same kind of object computed from phi
alone. The fused EoS passes of erf and ReLU (compiled loops on CPU, in-place torch forms elsewhere)
live in :mod:`shallow_collapse.eos.passes` and are tested against :meth:`terms` here.
"""
from __future__ import annotations

import math

import torch

__all__ = ["ClosedForm", "ErfMap", "ReluFamilyMap", "is_relu", "TrigMap", "GeluMap", "SNAP", "diagonals"]

# Within a few ulps of +-1 the cosine of two collinear points is round-off, and theta ~ sqrt(2 eps)
# ~ 1e-8 would enter the ReLU maps: cosines beyond SNAP are snapped to +-1.
SNAP = 1.0 - 8 * torch.finfo(torch.float64).eps


def diagonals(K, k_row=None, k_col=None):
    """Row and column variances, broadcastable against ``K`` (taken from its diagonal if None)."""
    if k_row is None:
        diag = torch.diagonal(K, dim1=-2, dim2=-1)
        return diag.unsqueeze(-1), diag.unsqueeze(-2)
    return k_row, k_col


class ClosedForm:
    """A kernel map in closed form: subclasses write :meth:`terms`."""

    def terms(self, K, a, b, p: bool = True):
        raise NotImplementedError

    def maps(self, K, k_row=None, k_col=None):
        """``(Kphi, Kdphi)`` of ``K`` ``(..., n, m)`` (see the module docstring)."""
        k_row, k_col = diagonals(K, k_row, k_col)
        F, Kd, _ = self.terms(K, k_row, k_col, p=False)
        return F, Kd

    def __repr__(self):
        return f"{type(self).__name__}()"


class ErfMap(ClosedForm):
    """phi = erf. With D_a = 1 + 2a and the ratio rho = 2c / sqrt(D_a D_b):
    F = (2/pi) asin(rho), Kdphi = (4/pi) (D_a D_b)^(-1/2) (1 - rho^2)^(-1/2),
    P = -(4/pi) rho (1 - rho^2)^(-1/2) / D_a. For a PSD kernel D_a D_b - 4c^2 >= 1, so 1 - rho^2 > 0
    up to round-off, which the clamps guard."""

    def terms(self, K, a, b, p: bool = True):
        r = ((1.0 + 2.0 * a) * (1.0 + 2.0 * b)).rsqrt()
        ratio = (2.0 * K * r).clamp_(-1.0, 1.0)
        F = torch.asin(ratio).mul_(2.0 / math.pi)
        P = ratio.mul(-4.0 / math.pi).div_(1.0 + 2.0 * a) if p else None
        w = ratio.mul_(ratio).neg_().add_(1.0).clamp_min_(1e-300).rsqrt_()  # (1 - rho^2)^(-1/2)
        if p:
            P.mul_(w)
        return F, w.mul_(r * (4.0 / math.pi)), P


class ReluFamilyMap(ClosedForm):
    """phi(x) = x for x > 0 and ``alpha`` x below: ReLU (alpha = 0), leaky ReLU, abs (alpha = -1).

    With n = sqrt(ab), cos theta = c / n (clipped into [-1, 1], snapped to +-1 beyond :data:`SNAP`),
    theta = atan2(sin, cos) and the arc-cosine kernels J = E[relu(u) relu(v)] =
    n (sin + (pi - theta) cos) / (2 pi) and E[relu(u) relu(-v)] = n (sin - theta cos) / (2 pi):
    F = (1 + alpha^2) J - 2 alpha n (sin - theta cos) / (2 pi),
    Kdphi = (1 + alpha^2) (pi - theta) / (2 pi) + 2 alpha theta / (2 pi),
    P = (1 - alpha)^2 sqrt(b / a) sin theta / (2 pi).
    A zero-variance point (a = 0) gives F = 0 and P = 0; alpha = 0 computes J alone."""

    def __init__(self, alpha: float = 0.0):
        self.alpha = float(alpha)

    def __repr__(self):
        return f"ReluFamilyMap(alpha={self.alpha!r})"

    def terms(self, K, a, b, p: bool = True):
        al = self.alpha
        norm = (a * b).clamp_min(0.0).sqrt()
        cos = torch.where(norm > 0, K / torch.where(norm > 0, norm, 1.0), 1.0).clamp_(-1.0, 1.0)
        cos = torch.where(cos.abs() > SNAP, cos.sign(), cos)
        sin = (1.0 - cos * cos).clamp_min_(0.0).sqrt_()
        theta = torch.atan2(sin, cos)
        F = (sin + (math.pi - theta) * cos).mul_(norm / (2.0 * math.pi))
        if al != 0.0:
            F = (1.0 + al * al) * F - (2.0 * al) * ((sin - theta * cos) * (norm / (2.0 * math.pi)))
            Kd = (1.0 + al * al) * (math.pi - theta) / (2.0 * math.pi) + (2.0 * al) * theta / (2.0 * math.pi)
        else:
            Kd = theta.neg().add_(math.pi).div_(2.0 * math.pi)
        P = None
        if p:
            ratio = torch.where(a > 0, (b / torch.where(a > 0, a, 1.0)).sqrt(), 0.0)
            P = ((1.0 - al) ** 2 / (2.0 * math.pi)) * ratio * sin
        return F, Kd, P



def is_relu(kernel_map) -> bool:
    """``kernel_map`` is ReLU's (the ReLU family at alpha = 0, however the activation is named: leaky_relu
    with slope 0 is ReLU): the fused passes, the rank-two path at d = 1 and the trainer's forms key on it."""
    return isinstance(kernel_map, ReluFamilyMap) and kernel_map.alpha == 0.0


class TrigMap(ClosedForm):
    """phi = sin: F = exp(-(a+b)/2) sinh c, Kdphi = exp(-(a+b)/2) cosh c; phi = cos: sinh and cosh
    swap; P = -F (phi'' = -phi)."""

    def __init__(self, kind: str):
        if kind not in ("sin", "cos"):
            raise ValueError(f"TrigMap kind must be 'sin' or 'cos', got {kind!r}")
        self.kind = kind

    def __repr__(self):
        return f"TrigMap({self.kind!r})"

    def terms(self, K, a, b, p: bool = True):
        e = torch.exp(-0.5 * (a + b))
        sh, ch = e * torch.sinh(K), e * torch.cosh(K)
        F, Kd = (sh, ch) if self.kind == "sin" else (ch, sh)
        return F, Kd, -F if p else None


def gelu_kphi(K, a, b):
    """E[u Phi(u) v Phi(v)] (GELU, Phi the normal CDF), differentiable in (K, a, b).

    With g1, g2 ~ N(0, 1) independent, Phi(u) Phi(v) = P(g1 < u, g2 < v); for xi = (u - g1, v - g2)
    (covariance S = [[a+1, c], [c, b+1]]), E[uv | xi] = c - k_u^T S^-1 k_v + (S^-1 k_u)^T xi xi^T (S^-1 k_v)
    with k_u = (a, c), k_v = (c, b), and the orthant moments of a correlated pair (correlation r):
    P(x>0, y>0) = 1/4 + asin(r)/(2 pi), E[x^2 1] = P + r sqrt(1-r^2)/(2 pi),
    E[xy 1] = r P + sqrt(1-r^2)/(2 pi).
    """
    sa, sb = (a + 1.0).sqrt(), (b + 1.0).sqrt()
    det = (a + 1.0) * (b + 1.0) - K * K
    r = (K / (sa * sb)).clamp(-1.0, 1.0)
    root = (1.0 - r * r).clamp_min(0.0).sqrt()
    prob = 0.25 + torch.asin(r) / (2.0 * math.pi)
    m_xx = prob + r * root / (2.0 * math.pi)
    m_xy = r * prob + root / (2.0 * math.pi)
    # S^-1 k_u and S^-1 k_v (2-vectors), expressed in the standardised xi / (sa, sb)
    au, cu = ((b + 1.0) * a - K * K) / det, (-K * a + (a + 1.0) * K) / det
    av, cv = ((b + 1.0) * K - K * b) / det, (-K * K + (a + 1.0) * b) / det
    cond = K - (a * av + K * cv)  # c - k_u^T S^-1 k_v
    quad = (au * av * (a + 1.0) * m_xx + cu * cv * (b + 1.0) * m_xx
            + (au * cv + cu * av) * sa * sb * m_xy)
    return cond * prob + quad


class GeluMap(ClosedForm):
    """phi = GELU: F is :func:`gelu_kphi`; Kdphi and P are its derivatives by autograd."""

    def terms(self, K, a, b, p: bool = True):
        with torch.enable_grad():
            K, a, b = torch.broadcast_tensors(K.detach(), a.detach(), b.detach())
            K, a = K.clone().requires_grad_(True), a.clone().requires_grad_(True)
            F = gelu_kphi(K, a, b)
            dK, da = torch.autograd.grad(F.sum(), (K, a))
        return F.detach(), dK, 2.0 * da if p else None

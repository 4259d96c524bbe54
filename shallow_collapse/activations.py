"""Every activation phi the toolkit knows, and everything it needs of each (MATH.md sections 2, 5-6, 8).

One :class:`Activation` per name in :data:`ACTIVATIONS` (see docs/ACTIVATIONS.md). phi alone defines
an activation: :func:`register` builds every other field from it with the numerical engine of
:mod:`shallow_collapse.kernel_maps`; a closed form, where one exists, overrides the numerical maps.
For an activation it holds:

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
- ``numerical``: the :class:`~shallow_collapse.kernel_maps.NumericalMaps` of phi (what the maps are
  without a closed form; the accuracy benchmark compares the two); ``closed_form``: whether the
  maps above are closed forms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .kernel_maps import NumericalMaps, derivative_by_autograd

__all__ = ["Activation", "ACTIVATIONS", "get", "register", "leaky_relu", "ERF_SLOPE", "erf", "erf_maps",
           "relu_maps", "kernel_phi"]

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


# -- closed forms as (F, Kdphi, P) of pairs ---------------------------------------------------------
# Each takes K (..., n, m) with row variances a (..., n, 1) and column variances b (..., 1, m) and
# returns F = E[phi(u)phi(v)], Kdphi = dF/dK_ij and P = 2 dF/dK_ii = E[phi''(u)phi(v)] (MATH.md 8).

def _leaky_triple(alpha: float):
    """phi(x) = p x + q |x| with p = (1+alpha)/2, q = (1-alpha)/2 (x for x > 0, alpha x below):
    F = p^2 c + q^2 (2/pi) n (sqrt(1-rho^2) + rho asin rho), Kdphi = p^2 + q^2 (2/pi) asin rho,
    P = q^2 (2/pi) sqrt(b/a) sqrt(1-rho^2), with n = sqrt(ab), rho = c/n (E[|u||v|] and its derivatives)."""
    p2, q2 = ((1.0 + alpha) / 2.0) ** 2, ((1.0 - alpha) / 2.0) ** 2

    def triple(K, a, b):
        n = (a * b).clamp_min(0.0).sqrt()
        rho = torch.where(n > 0, K / torch.where(n > 0, n, 1.0), 1.0).clamp(-1.0, 1.0)
        rho = torch.where(rho.abs() > _SNAP, rho.sign(), rho)  # see relu_maps
        sin = (1.0 - rho * rho).clamp_min(0.0).sqrt()
        asin = torch.asin(rho)
        F = p2 * K + q2 * (2.0 / math.pi) * n * (sin + rho * asin)
        Kd = p2 + q2 * (2.0 / math.pi) * asin
        P = q2 * (2.0 / math.pi) * torch.where(a > 0, (b / torch.where(a > 0, a, 1.0)).sqrt(), 0.0) * sin
        return F, Kd, P

    return triple


def _trig_triple(kind: str):
    """sin: F = exp(-(a+b)/2) sinh c, Kdphi = exp(-(a+b)/2) cosh c; cos: sinh and cosh swap; P = -F."""

    def triple(K, a, b):
        e = torch.exp(-0.5 * (a + b))
        sh, ch = e * torch.sinh(K), e * torch.cosh(K)
        F, Kd = (sh, ch) if kind == "sin" else (ch, sh)
        return F, Kd, -F

    return triple


def _gelu_kphi(K, a, b):
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


def _autograd_triple(kphi: Callable):
    """(F, Kdphi, P) of a differentiable closed-form F(K, a, b), its derivatives by autograd."""

    def triple(K, a, b):
        with torch.enable_grad():
            K, a, b = torch.broadcast_tensors(K.detach(), a.detach(), b.detach())
            K, a = K.clone().requires_grad_(True), a.clone().requires_grad_(True)
            F = kphi(K, a, b)
            dK, da = torch.autograd.grad(F.sum(), (K, a))
        return F.detach(), dK, 2.0 * da

    return triple


def _closed_form_fields(triple: Callable, kphi: Callable | None = None) -> dict:
    """``maps``, ``kernel_phi``, ``eos_q``, ``eos_g`` of a closed-form triple (see above)."""

    def maps(K, k_row=None, k_col=None):
        k_row, k_col = _diagonals(K, k_row, k_col)
        F, Kd, _ = triple(K, k_row, k_col)
        return F, Kd

    def kernel_phi(K):
        d = torch.diagonal(K)
        return (kphi or (lambda K, a, b: triple(K, a, b)[0]))(K, d[:, None], d[None, :])

    def eos_q(K, diag, siga2):
        F, Kd, P = triple(K, diag[:, None], diag[None, :])
        return F.mul_(siga2), (Kd, P)

    def eos_g(A, ctx, siga2):
        Kd, P = ctx
        diag_term = torch.linalg.vecdot(A, P, dim=1)
        G = A.mul_(Kd)
        G.diagonal().add_(diag_term)
        return G, siga2

    return dict(maps=maps, kernel_phi=kernel_phi, eos_q=eos_q, eos_g=eos_g)


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
    numerical: NumericalMaps | None = None
    closed_form: bool = False


def _from_phi(name: str, phi: Callable, dphi: Callable | None = None, **overrides) -> Activation:
    """An :class:`Activation` from phi alone (phi' by autograd when ``dphi`` is None); ``overrides``
    replace fields (closed forms, fused training forms)."""
    dphi = dphi if dphi is not None else derivative_by_autograd(phi)
    engine = NumericalMaps(phi, dphi)
    fields = dict(name=name, phi=phi, phi_out=lambda z, out: out.copy_(phi(z)),
                  dphi_=lambda z, zero: z.copy_(dphi(z)), slope=1.0, maps=engine.maps,
                  kernel_phi=engine.kernel_phi, eos_q=engine.eos_q, eos_g=engine.eos_g, numerical=engine,
                  closed_form=False)
    closed = {"maps", "kernel_phi", "eos_q", "eos_g"} & set(overrides)
    if closed and closed != {"maps", "kernel_phi", "eos_q", "eos_g"}:
        raise ValueError(f"activation {name!r}: a closed form overrides all of maps, kernel_phi, eos_q, eos_g")
    fields.update(overrides, closed_form=bool(closed))
    return Activation(**fields)


def leaky_relu(slope: float = 0.01) -> Activation:
    """phi(x) = x for x > 0 and ``slope`` x below (closed form; slope = -1 is abs, 0 is ReLU)."""
    p, q = (1.0 + slope) / 2.0, (1.0 - slope) / 2.0
    return _from_phi("leaky_relu", lambda z: p * z + q * z.abs(), lambda z: p + q * torch.sign(z), **_closed_form_fields(_leaky_triple(slope)))


def _sigmoid_d(z):
    s = torch.sigmoid(z)
    return s * (1.0 - s)


def _gelu(z):
    return 0.5 * z * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))


def _gelu_d(z):
    return 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0)))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _silu_d(z):
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


ACTIVATIONS: dict[str, Activation] = {
    "erf": _from_phi("erf", erf, lambda z: ERF_SLOPE * torch.exp(-z * z),
                     phi_out=lambda z, out: torch.erf(z, out=out), dphi_=_erf_dphi_, slope=ERF_SLOPE,
                     maps=erf_maps, kernel_phi=_erf_kernel_phi, eos_q=_erf_eos_q, eos_g=_erf_eos_g),
    "relu": _from_phi("relu", torch.relu, lambda z: (z > 0).to(z.dtype), phi_out=_relu_out,
                      dphi_=_relu_dphi_, maps=relu_maps, kernel_phi=_relu_kernel_phi, eos_q=_relu_eos_q,
                      eos_g=_relu_eos_g),
    "leaky_relu": leaky_relu(),
    "abs": _from_phi("abs", torch.abs, torch.sign, **_closed_form_fields(_leaky_triple(-1.0))),
    "gelu": _from_phi("gelu", _gelu, _gelu_d,
                      **_closed_form_fields(_autograd_triple(_gelu_kphi), _gelu_kphi)),
    "sin": _from_phi("sin", torch.sin, torch.cos, **_closed_form_fields(_trig_triple("sin"))),
    "cos": _from_phi("cos", torch.cos, lambda z: -torch.sin(z), **_closed_form_fields(_trig_triple("cos"))),
    "silu": _from_phi("silu", torch.nn.functional.silu, _silu_d),
    "softplus": _from_phi("softplus", torch.nn.functional.softplus, torch.sigmoid),
    "tanh": _from_phi("tanh", torch.tanh, lambda z: 1.0 - torch.tanh(z) ** 2),
    "sigmoid": _from_phi("sigmoid", torch.sigmoid, _sigmoid_d),
}


def register(name: str, phi: Callable, dphi: Callable | None = None, **closed_form) -> Activation:
    """Add the activation ``phi`` (an elementwise torch function) under ``name`` and return it.

    Everything else is derived from phi (phi' by autograd unless ``dphi`` is given); ``closed_form``
    may give ``maps``, ``kernel_phi``, ``eos_q`` and ``eos_g`` together (see the module docstring).
    Configs can then name it; a name already taken is refused.
    """
    if name in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is already registered")
    ACTIVATIONS[name] = _from_phi(name, phi, dphi, **closed_form)
    return ACTIVATIONS[name]


def get(name, *, slope: float | None = None) -> Activation:
    """The :class:`Activation` called ``name`` (an Activation is returned as it is); ``slope`` makes
    leaky_relu's negative-side slope. ValueError naming the known ones otherwise."""
    if isinstance(name, Activation):
        return name
    if name == "leaky_relu" and slope is not None and slope != 0.01:
        return _leaky_cache(float(slope))
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(sorted(ACTIVATIONS))}") from None


_LEAKY: dict[float, Activation] = {}


def _leaky_cache(slope: float) -> Activation:
    if slope not in _LEAKY:
        _LEAKY[slope] = leaky_relu(slope)
    return _LEAKY[slope]


def kernel_phi(K: torch.Tensor, activation) -> torch.Tensor:
    """``Kphi(K)`` ``(N, N)`` of a symmetric pre-activation kernel ``K`` ``(N, N)``, differentiable."""
    return get(activation).kernel_phi(K)

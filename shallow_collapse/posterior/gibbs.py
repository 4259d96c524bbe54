"""Collapsed Gibbs over neurons: each w_j from its exact conditional by elliptical slice sampling.

The target is p(W | Y) of the network the EoS describe, readout integrated out (docs/MATH.md,
the posterior one neuron at a time): w_j ~ N(0, (sigw2/d) I_d) a priori, and with c = siga2/h,
F = phi(X W^T) ``(N, h)``, C_W = c F F^T + sig2 I_N,

    log p(Y | W) = -tr(Y^T C_W^{-1} Y) / 2 - (C/2) log det C_W + const.

Removing neuron j leaves B = (C_W - c phi_j phi_j^T)^{-1}; a candidate feature u = phi(X w) then
has log-likelihood (up to a constant shared by all candidates)

    log L(u) = -(C/2) log(1 + c rho) + (c/2) |omega|^2 / (1 + c rho),  rho = u^T B u,  omega = Y^T B u.

The state keeps M = C_W^{-1} ``(B, N, N)`` and Z = M Y (:class:`CovarianceInverse`): B u = M u + kappa p (p . u),
p = M phi_j, kappa = c / (1 - c phi_j . p); after the move M += kappa p p^T - gamma r r^T with
r = B u, gamma = c / (1 + c rho) (Sherman-Morrison twice). O(N^2) per candidate. rho is a quadratic
form of the positive definite B, so it keeps its relative accuracy however small sig2 is. (The
h x h form through A_W = sig2 I_h + c F^T F is cheaper per candidate only when h < 0.62 N, and it
is not accurate: its rho and its pivot sig2 (1 + c rho) come from differences of terms c |u|^2
apart, so the updated inverse drifted 1e-5 to 1e-4 relative in one sweep at sig2 = 1e-6 where
this form's drifted 1e-9 to 1e-13 (docs/POSTERIOR.md). It is not kept.)

Elliptical slice sampling (Murray, Adams and MacKay 2010) needs no step size and no gradient, so
every activation works, kinks included. Its shrinking bracket is cut after ``MAX_SHRINKS``
candidates (the chain then stays at w_j): both the shrinkage and the cut pair each path with its
reverse of the same length, so the update stays reversible; cuts are counted.

For positively homogeneous activations (the ReLU family, abs) a scale move W -> s W follows each
sweep: K_W -> s^2 K_W, so one thin SVD of F gives the exact 1-D conditional of t = log s, sampled
by slice sampling with stepping out (Neal 2003).

The neuron updates run here in batched torch (any activation, any device) or, for erf and the
ReLU family on CPU, in the compiled loop of :mod:`.compiled` (the same chain to rounding).

The inverse drifts by rounding; each sweep ends with a fresh factorisation, and the largest
relative difference to the updated one is recorded (``drift``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

__all__ = ["GibbsTarget", "GibbsState", "init", "sweep", "log_likelihood", "MAX_SHRINKS"]

MAX_SHRINKS = 64  # candidates per neuron update; the bracket shrinks ~2x per candidate


@dataclass(frozen=True)
class GibbsTarget:
    """p(W | Y) on data ``X`` ``(B, N, d)``, targets ``Y`` ``(B, N, C)`` (one chain per batch entry)."""

    X: torch.Tensor
    Y: torch.Tensor
    phi: Callable
    sigw2: float
    siga2: float
    sig2: float
    h: int
    code: tuple | None = None  # the compiled loop's activation (:func:`.compiled.activation_code`), or None

    @property
    def c(self) -> float:
        return self.siga2 / self.h

    @property
    def prior_std(self) -> float:
        return math.sqrt(self.sigw2 / self.X.shape[-1])

    def features(self, W: torch.Tensor) -> torch.Tensor:
        """phi(X W^T): ``(B, N, h)`` from ``W`` ``(B, h, d)``."""
        return self.phi(self.X @ W.transpose(-1, -2))


def log_likelihood(rho: torch.Tensor, omega: torch.Tensor, c: float) -> torch.Tensor:
    """log L of the module docstring from rho ``(B,)`` and omega ``(B, C)``."""
    C = omega.shape[-1]
    return -0.5 * C * torch.log1p(c * rho) + 0.5 * c * omega.pow(2).sum(-1) / (1 + c * rho)


def _vm(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """v^T M per batch entry: ``v`` ``(B, n)``, ``M`` ``(B, n, m)`` -> ``(B, m)``. For a symmetric M this
    is M v; torch's batched row-times-matrix product is several times faster than matrix-times-column."""
    return (v.unsqueeze(-2) @ M).squeeze(-2)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


class CovarianceInverse:
    """C_W^{-1} ``(B, N, N)`` and Z = C_W^{-1} Y ``(B, N, C)`` of the chains' features ``F``."""

    def __init__(self, target: GibbsTarget, F: torch.Tensor):
        self.t = target
        self.M, self.Z = self.factorise(F)

    def factorise(self, F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.t
        K = t.c * F @ F.transpose(-1, -2) + t.sig2 * torch.eye(F.shape[-2], dtype=F.dtype, device=F.device)
        L, info = torch.linalg.cholesky_ex(K)
        M = torch.cholesky_inverse(L).mT.contiguous()  # row-major (the inverse comes column-major; it is symmetric)
        M = torch.where((info == 0)[:, None, None], M, math.nan)  # a chain that is not finite stays NaN
        return M, M @ t.Y

    def refresh(self, F: torch.Tensor) -> torch.Tensor:
        M, Z = self.factorise(F)
        drift = (self.M - M).abs().amax((-1, -2)) / M.abs().amax((-1, -2))
        self.M, self.Z = M, Z
        return drift

    def remove(self, F: torch.Tensor, j: torch.Tensor) -> dict:
        phi_j = F[torch.arange(F.shape[0]), :, j]
        p = _vm(phi_j, self.M)
        den = 1 - self.t.c * _dot(phi_j, p)
        pY = (p.unsqueeze(-1) * self.t.Y).sum(-2)
        return {"p": p, "kappa": self.t.c / den, "pY": pY, "rho0": _dot(phi_j, p) / den, "omega0": pY / den[:, None]}

    def current(self, ctx: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rho, omega, B phi_j) of the neuron's present features (B phi_j = p / (1 - c phi_j . p))."""
        return ctx["rho0"], ctx["omega0"], ctx["p"] * (ctx["kappa"] / self.t.c)[:, None]

    def evaluate(self, ctx: dict, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rho, omega, B u) of candidate features ``u`` ``(B, N)``."""
        pu = _dot(ctx["p"], u) * ctx["kappa"]
        r = _vm(u, self.M) + pu[:, None] * ctx["p"]
        omega = (self.Z * u.unsqueeze(-1)).sum(-2) + pu[:, None] * ctx["pY"]
        return _dot(u, r), omega, r

    def insert(self, ctx: dict, j: torch.Tensor, u: torch.Tensor, rho, omega, r) -> None:
        p, kappa = ctx["p"], ctx["kappa"]
        gamma = self.t.c / (1 + self.t.c * rho)
        left = torch.stack([kappa[:, None] * p, -gamma[:, None] * r], -1)  # (B, N, 2)
        self.M.baddbmm_(left, torch.stack([p, r], -2))
        self.Z.baddbmm_(left, torch.stack([ctx["pY"], omega], -2))


@dataclass
class GibbsState:
    """Chains at ``W`` ``(B, h, d)`` with features ``F`` ``(B, N, h)`` and their inverse ``form``."""

    W: torch.Tensor
    F: torch.Tensor
    form: CovarianceInverse


@dataclass
class SweepInfo:
    """Per chain ``(B,)``: candidates evaluated per neuron, cut brackets, the inverse's drift
    before refactorisation, and the scale move's factor s (1 when there is none)."""

    evaluations: torch.Tensor
    cuts: torch.Tensor
    drift: torch.Tensor
    scale: torch.Tensor


def init(target: GibbsTarget, W: torch.Tensor) -> GibbsState:
    """The state at ``W`` ``(B, h, d)``."""
    F = target.features(W)
    return GibbsState(W, F, CovarianceInverse(target, F))


@dataclass
class SweepNoise:
    """The random numbers of one sweep, per chain: neuron ``order`` ``(B, h)``, ellipse directions
    ``nu`` ``(B, h, d)`` (standard normal), ``uniform`` ``(B, h, 1 + MAX_SHRINKS)`` (threshold,
    then angles), and ``scale`` ``(B, 2 + 2 * SCALE_STEPS)`` uniforms for the scale move."""

    order: torch.Tensor
    nu: torch.Tensor
    uniform: torch.Tensor
    scale: torch.Tensor


SCALE_STEPS = 64  # stepping-out and shrinkage steps of the scale move's slice sampler (each)


def draw_noise(generators: list[torch.Generator], h: int, d: int, dtype, device) -> SweepNoise:
    """One sweep's random numbers, each chain from its own CPU generator (device-independent)."""
    order, nu, uni, sc = [], [], [], []
    for g in generators:
        order.append(torch.randperm(h, generator=g))
        nu.append(torch.randn((h, d), generator=g, dtype=dtype))
        uni.append(torch.rand((h, 1 + MAX_SHRINKS), generator=g, dtype=dtype))
        sc.append(torch.rand((2 + 2 * SCALE_STEPS,), generator=g, dtype=dtype))
    to = lambda xs: torch.stack(xs).to(device)
    return SweepNoise(to(order), to(nu), to(uni), to(sc))


def _update_neuron(target: GibbsTarget, state: GibbsState, j: torch.Tensor, nu: torch.Tensor,
                   uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One elliptical slice update of neuron ``j`` ``(B,)`` of every chain; returns (candidates
    evaluated, cut) per chain."""
    b = torch.arange(j.shape[0])
    form, c = state.form, target.c
    ctx = form.remove(state.F, j)
    rho, omega, extra = form.current(ctx)
    threshold = log_likelihood(rho, omega, c) + torch.log(uniform[:, 0])
    w0 = state.W[b, j]
    nu = nu * target.prior_std
    theta = 2 * math.pi * uniform[:, 1]
    lo, hi = theta - 2 * math.pi, theta.clone()
    w_new, u_new = w0.clone(), state.F[b, :, j].clone()  # a cut bracket stays put
    active = torch.isfinite(threshold)  # a NaN chain does not move (its status will say nan)
    count = torch.zeros_like(theta)
    for k in range(MAX_SHRINKS):
        w = w0 * torch.cos(theta)[:, None] + nu * torch.sin(theta)[:, None]
        u = target.phi((target.X @ w.unsqueeze(-1)).squeeze(-1))
        rho_k, omega_k, extra_k = form.evaluate(ctx, u)
        count += active
        accept = active & (log_likelihood(rho_k, omega_k, c) > threshold)
        a = accept[:, None]
        w_new, u_new, extra = torch.where(a, w, w_new), torch.where(a, u, u_new), torch.where(a, extra_k, extra)
        rho, omega = torch.where(accept, rho_k, rho), torch.where(a, omega_k, omega)
        active &= ~accept
        if not bool(active.any()):
            break
        if k + 1 < MAX_SHRINKS:
            lo = torch.where(active & (theta < 0), theta, lo)
            hi = torch.where(active & (theta >= 0), theta, hi)
            theta = lo + (hi - lo) * uniform[:, 1 + k + 1]
    form.insert(ctx, j, u_new, rho, omega, extra)
    state.W[b, j] = w_new
    state.F[b, :, j] = u_new
    return count, active.to(count.dtype)


def _scale_log_density(t: torch.Tensor, lam: torch.Tensor, proj2: torch.Tensor, w2: torch.Tensor,
                       target: GibbsTarget, hd: int) -> torch.Tensor:
    """log p(log s = t | the direction of W) + const ``(B,)``: the prior of s W with the Jacobian
    s^{hd}, times the likelihood under s^2 K_W, K_W = sum_k lam_k q_k q_k^T (``lam`` ``(B, m)``,
    proj2 = |q_k^T Y|^2 ``(B, m)``; the part of Y outside the q_k adds a constant)."""
    C = target.Y.shape[-1]
    s2 = torch.exp(2 * t)
    ev = s2[:, None] * lam + target.sig2
    quad = (proj2 / ev).sum(-1)
    logdet = torch.log(ev).sum(-1)
    return hd * t - 0.5 * s2 * w2 / target.prior_std**2 - 0.5 * quad - 0.5 * C * logdet


def _scale_move(target: GibbsTarget, state: GibbsState, uniform: torch.Tensor) -> torch.Tensor:
    """W -> s W for a positively homogeneous phi (F -> s F), log s by slice sampling with stepping
    out (width 1, at most SCALE_STEPS each way, then shrinkage); K_W from the thin SVD of F.
    ``uniform`` ``(B, 2 + 2 SCALE_STEPS)``. Returns s ``(B,)``."""
    F, Y = state.F, target.Y
    B = F.shape[0]
    U, S, _ = torch.linalg.svd(F, full_matrices=False)
    lam, proj2 = target.c * S**2, (U.transpose(-1, -2) @ Y).pow(2).sum(-1)
    w2 = state.W.pow(2).sum((-1, -2))
    hd = state.W.shape[-2] * state.W.shape[-1]
    dens = lambda t: _scale_log_density(t, lam, proj2, w2, target, hd)
    t0 = torch.zeros(B, dtype=F.dtype, device=F.device)
    level = dens(t0) + torch.log(uniform[:, 0])
    lo = t0 - uniform[:, 1]
    hi = lo + 1.0
    for _ in range(SCALE_STEPS):  # step out, one unit per side per pass
        out_lo, out_hi = dens(lo) > level, dens(hi) > level
        if not bool((out_lo | out_hi).any()):
            break
        lo, hi = torch.where(out_lo, lo - 1.0, lo), torch.where(out_hi, hi + 1.0, hi)
    t = t0.clone()
    active = torch.ones(B, dtype=torch.bool, device=F.device)
    for k in range(SCALE_STEPS):  # shrink toward t = 0 (the present scale)
        cand = lo + (hi - lo) * uniform[:, 2 + k]
        ok = active & (dens(cand) > level)
        t = torch.where(ok, cand, t)
        active &= ~ok
        if not bool(active.any()):
            break
        lo = torch.where(active & (cand < 0), cand, lo)
        hi = torch.where(active & (cand >= 0), cand, hi)
    s = torch.exp(t)
    state.W *= s[:, None, None]
    state.F *= s[:, None, None]
    return s


@torch.no_grad()
def sweep(target: GibbsTarget, state: GibbsState, noise: SweepNoise, *, scale_move: bool) -> SweepInfo:
    """Update every neuron of every chain once (each chain in its own random order), then the scale
    move (``scale_move``: only valid for positively homogeneous phi), then refactorise."""
    if target.code is not None and state.W.device.type == "cpu":
        from .compiled import sweep_neurons
        evaluations, cuts = sweep_neurons(target, state, noise, target.code)
    else:
        evaluations, cuts = _sweep_neurons(target, state, noise)
    drift = state.form.refresh(state.F)
    s = torch.ones_like(evaluations)
    if scale_move:
        s = _scale_move(target, state, noise.scale)
        state.form.refresh(state.F)
    return SweepInfo(evaluations, cuts, drift, s)


def _sweep_neurons(target: GibbsTarget, state: GibbsState, noise: SweepNoise) -> tuple[torch.Tensor, torch.Tensor]:
    """The neuron updates of a sweep in batched torch (any activation, any device): (mean candidates
    per update, cuts) per chain ``(B,)``."""
    evaluations = torch.zeros(state.W.shape[0], dtype=state.W.dtype, device=state.W.device)
    cuts = torch.zeros_like(evaluations)
    b = torch.arange(state.W.shape[0])
    for i in range(target.h):
        j = noise.order[:, i]
        count, cut = _update_neuron(target, state, j, noise.nu[b, j], noise.uniform[:, i])
        evaluations += count
        cuts += cut
    return evaluations / target.h, cuts

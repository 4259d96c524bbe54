"""The certificate: is a solution a local minimum of the action?

The chosen solution is checked by the second directional derivative of S, a forward difference
of the exact gradient, along the scale direction and along random symmetric directions (fixed
seed). A stationary point where S curves downward along a checked direction is not a minimum.
"""
from __future__ import annotations

import math

import torch

from . import tolerances as tol
from .evaluator import PAPER_EOS, EoSEvaluator, EoSState, EvaluationError
from .. import metrics
from ..params import EoSParams, NetworkParams


def curvature(ev: EoSEvaluator, state: EoSState, chi: float) -> float:
    """The least second directional derivative of S at ``state`` over ``1 + CERTIFY_DIRECTIONS``
    symmetric directions (one at d = 1), each divided by the KL term's own curvature along it:
    ``< 0`` means S decreases along that direction (not a minimum).

    Directions are ``D = L E L^T`` with ``Sigma = L L^T`` and ``|E|_F = 1``, along which the KL term
    curves by ``chi/2``; the second derivative is a forward difference of the exact gradient,
    ``<grad S(Sigma + eps D) - grad S(Sigma), D> / eps``. The directions are first those the solver
    explored last (recent evaluations at relative distance ``eps`` in [CERTIFY_EXPLORED_MIN,
    CERTIFY_STEP], pairwise distinct: no evaluation needed), then the scale direction and random
    symmetric ones (fixed seed) with ``eps = CERTIFY_STEP``, one evaluation each.
    """
    d = ev.d
    needed = 1 if d == 1 else 1 + tol.CERTIFY_DIRECTIONS
    L = torch.linalg.cholesky(state.Sigma)
    g0 = ev.action_gradient(state, chi)
    scale = float(state.Sigma.abs().max())
    used: list[torch.Tensor] = []
    ratios = []
    for S_k, T_k in reversed(list(ev.recent)):
        if len(used) == needed:
            break
        D = S_k - state.Sigma
        if not tol.CERTIFY_EXPLORED_MIN <= float(D.abs().max()) / scale <= tol.CERTIFY_STEP:
            continue
        E = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, D, upper=False).T, upper=False)
        eps = float(torch.linalg.norm(E))
        E = E / eps
        if any(abs(float((E * F).sum())) > tol.CERTIFY_DISTINCT for F in used):
            continue
        used.append(E)
        second = float(((ev.gradient(S_k, T_k, chi) - g0) * (D / eps)).sum()) / eps
        ratios.append(second / (0.5 * chi))
    gen = torch.Generator().manual_seed(0)
    standard = [torch.eye(d, dtype=torch.float64) / math.sqrt(d)]
    for _ in range(tol.CERTIFY_DIRECTIONS if d > 1 else 0):
        R = torch.randn(d, d, generator=gen, dtype=torch.float64)
        R = R + R.T
        standard.append(R / torch.linalg.norm(R))
    for E in standard[: needed - len(used)]:
        D = L @ E.to(ev.device) @ L.T
        try:
            moved = ev.state(state.Sigma + tol.CERTIFY_STEP * D)
        except EvaluationError:
            return math.nan
        second = float(((ev.action_gradient(moved, chi) - g0) * D).sum()) / tol.CERTIFY_STEP
        ratios.append(second / (0.5 * chi))
    return min(ratios)


def nc1_error_bound(result, X, labels, params: EoSParams = PAPER_EOS, *,
                    activation: str = NetworkParams.activation) -> float:
    """How far NC1 of ``result.Q`` may be from NC1 at the exact solution, for a ``noise_limited``
    result (any result with a finite ``curvature``): a first-order estimate, not a proof.

    The distance to the fixed point is ``|Sigma - Sigma*| ~ |(I - J)^{-1} F|`` (J the slope of the
    map, F the residual); the least relative curvature c found by the certificate is the least
    eigenvalue of I - J along the directions it checked, so the radius is
    ``r = max(rel_residual, noise) / min(c, 1)`` relative to max|Sigma| (the true point may lie
    anywhere within the noise, hence ``noise``). The bound is the largest change of NC1 when Sigma
    moves by r max|Sigma| (in max norm) along the residual direction ``Sigma_next - Sigma``, the
    scale direction and ``CERTIFY_DIRECTIONS`` random symmetric ones (fixed seed), either sign.
    Each NC1 needs Q alone (O(N^2 d)). ``X`` ``(N, d)``, ``labels`` ``(N,)``: the solve's data.
    """
    if not result.curvature > 0:
        return math.nan
    ev = EoSEvaluator(X, torch.zeros(len(labels), dtype=torch.float64), params, activation=activation)
    Sigma = result.Sigma.to(torch.float64)
    scale = float(Sigma.abs().max())
    noise = result.noise if math.isfinite(result.noise) else 0.0
    r = max(result.rel_residual, noise) / min(result.curvature, 1.0)
    nc1 = float(metrics.nc1_kernel(result.Q, labels))
    gen = torch.Generator().manual_seed(0)
    directions = [Sigma]
    if result.Sigma_next is not None:
        directions.append(result.Sigma_next - Sigma)
    for _ in range(tol.CERTIFY_DIRECTIONS if ev.d > 1 else 0):
        R = torch.randn(ev.d, ev.d, generator=gen, dtype=torch.float64)
        directions.append(R + R.T)
    change = 0.0
    for D in directions:
        size = float(D.abs().max())
        if not size > 0:
            continue
        for sign in (1.0, -1.0):
            moved = Sigma + (sign * r * scale / size) * D
            try:
                moved_change = abs(float(metrics.nc1_kernel(ev.kernel(moved), labels)) - nc1)
            except EvaluationError:
                return math.inf
            if not math.isfinite(moved_change):  # max() would drop a NaN: no bound then
                return math.inf
            change = max(change, moved_change)
    return change

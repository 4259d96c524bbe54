"""The certificate: is a solution a local minimum of the action?

The chosen solution is checked by the second directional derivative of S, a forward difference
of the exact gradient, along the scale direction and along random symmetric directions (fixed
seed). A stationary point where S curves downward along a checked direction is not a minimum.
"""
from __future__ import annotations

import math

import torch

from . import tolerances as tol
from .evaluator import EoSEvaluator, EoSState, EvaluationError


def curvature(ev: EoSEvaluator, state: EoSState, chi: float) -> float:
    """The least second directional derivative of S at ``state`` over the scale direction and
    ``CERTIFY_DIRECTIONS`` random symmetric directions (fixed seed), each divided by the KL
    term's own curvature along it: ``< 0`` means S decreases along that direction (not a minimum).

    Directions are ``D = L E L^T`` with ``Sigma = L L^T`` and ``|E|_F = 1``, along which the KL term
    curves by ``chi/2``; the second derivative is a forward difference of the exact gradient with
    step ``CERTIFY_STEP`` (one evaluation per direction).
    """
    d = ev.d
    L = torch.linalg.cholesky(state.Sigma)
    g0 = ev.action_gradient(state, chi)
    gen = torch.Generator().manual_seed(0)
    Es = [torch.eye(d, dtype=torch.float64) / math.sqrt(d)]
    for _ in range(tol.CERTIFY_DIRECTIONS if d > 1 else 0):
        R = torch.randn(d, d, generator=gen, dtype=torch.float64)
        R = R + R.T
        Es.append(R / torch.linalg.norm(R))
    ratios = []
    for E in Es:
        D = L @ E.to(ev.device) @ L.T
        try:
            moved = ev.state(state.Sigma + tol.CERTIFY_STEP * D)
        except EvaluationError:
            return math.nan
        second = float(((ev.action_gradient(moved, chi) - g0) * D).sum()) / tol.CERTIFY_STEP
        ratios.append(second / (0.5 * chi))
    return min(ratios)

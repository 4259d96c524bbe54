"""Exact Metropolis-Hastings steps on U(v) = |v|^2 / 2 + Phi(v) with Gaussian proposals.

Both proposals are N(mean(v), s^2 I); the Hastings ratio is computed from that density directly:

    log alpha = U(v) - U(v') + log q(v | v') - log q(v' | v),  log q(b | a) = -|b - mean(a)|^2 / (2 s^2) + const.

- ``mala``: mean(v) = v - (eps^2 / 2) grad U(v), s = eps (Metropolis-adjusted Langevin).
- ``pcnl``: preconditioned Crank-Nicolson Langevin: the prior N(0, I) is treated exactly,
  mean(v) = ((2 - delta) v - 2 delta grad Phi(v)) / (2 + delta), s = sqrt(8 delta) / (2 + delta),
  with the step parameter delta = eps^2 / 2 (so both reduce to the same Langevin step as eps -> 0).
  Its proposal keeps the prior invariant without the data term, so its acceptance does not fall as
  the width h grows.

``eps`` is per chain ``(B,)``. A proposal whose U is not finite is rejected.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .target import CollapsedPosterior

__all__ = ["State", "PROPOSALS", "initial_state", "mh_step"]


@dataclass
class State:
    """Chains at v ``(B, h, d)`` with Phi ``(B,)`` and grad Phi ``(B, h, d)`` there."""

    v: torch.Tensor
    phi: torch.Tensor
    grad: torch.Tensor

    @property
    def potential(self) -> torch.Tensor:
        return 0.5 * self.v.pow(2).sum((-1, -2)) + self.phi


def _bcast(x: torch.Tensor) -> torch.Tensor:
    return x[:, None, None]


def _mala(state: State, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    e = _bcast(eps)
    return state.v - 0.5 * e**2 * (state.v + state.grad), e


def _pcnl(state: State, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    delta = _bcast(0.5 * eps**2)
    return ((2 - delta) * state.v - 2 * delta * state.grad) / (2 + delta), torch.sqrt(8 * delta) / (2 + delta)


PROPOSALS = {"mala": _mala, "pcnl": _pcnl}  # name -> (state, eps) -> (proposal mean, proposal std)


def initial_state(target: CollapsedPosterior, v: torch.Tensor) -> State:
    phi, grad = target.data_term_and_grad(v)
    return State(v, phi, grad)


def _log_q(to: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log q(to | from) up to the constant shared by both directions (same std both ways)."""
    return -(to - mean).pow(2).sum((-1, -2)) / (2 * std.reshape(-1) ** 2)


@torch.no_grad()
def mh_step(target: CollapsedPosterior, state: State, eps: torch.Tensor, noise: torch.Tensor,
            uniform: torch.Tensor, proposal: str) -> tuple[State, torch.Tensor]:
    """One Metropolis-Hastings step of every chain: ``noise`` ``(B, h, d)`` standard normal,
    ``uniform`` ``(B,)`` in (0, 1). Returns the new state and the acceptance probabilities ``(B,)``
    (0 for a non-finite proposal)."""
    propose = PROPOSALS[proposal]
    mean, std = propose(state, eps)
    v_new = mean + std * noise
    new = initial_state(target, v_new)
    back_mean, _ = propose(new, eps)
    log_alpha = (state.potential - new.potential + _log_q(state.v, back_mean, std) - _log_q(v_new, mean, std))
    finite = torch.isfinite(log_alpha) & torch.isfinite(new.grad).all(-1).all(-1)
    prob = torch.where(finite, torch.exp(torch.clamp(log_alpha, max=0.0)), 0.0)
    accept = finite & (uniform < prob)
    keep = _bcast(accept)
    return State(torch.where(keep, new.v, state.v), torch.where(accept, new.phi, state.phi),
                 torch.where(keep, new.grad, state.grad)), prob

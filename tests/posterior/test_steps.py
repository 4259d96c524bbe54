"""The Metropolis-Hastings steps: detailed balance to rounding, and the right moments on a Gaussian target."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from shallow_collapse.posterior.steps import PROPOSALS, initial_state, mh_step


@dataclass(frozen=True)
class GaussianData:
    """A stand-in target: Phi(v) = c |v - mu|^2 / 2, so the posterior is N(c mu / (1 + c), I / (1 + c))."""

    c: float
    mu: float

    def data_term_and_grad(self, v):
        return 0.5 * self.c * (v - self.mu).pow(2).sum((-1, -2)), self.c * (v - self.mu)


def _log_density(target, v):
    return -(0.5 * v.pow(2).sum((-1, -2)) + target.data_term_and_grad(v)[0])


@pytest.mark.parametrize("proposal", sorted(PROPOSALS))
def test_each_step_satisfies_detailed_balance_to_rounding(proposal):
    """pi(v) q(v'|v) alpha(v -> v') = pi(v') q(v|v') alpha(v' -> v) for given pairs (v, v')."""
    target = GaussianData(c=3.0, mu=0.7)
    g = torch.Generator().manual_seed(1)
    v, w = (torch.randn(5, 2, 3, generator=g, dtype=torch.float64) for _ in range(2))
    eps = torch.full((5,), 0.6, dtype=torch.float64)
    one = torch.ones(5, dtype=torch.float64)  # uniform = 1: reject, but the probability is returned

    def flow(a, b):
        state = initial_state(target, a)
        mean, std = PROPOSALS[proposal](state, eps)
        noise = (b - mean) / std
        _, prob = mh_step(target, state, eps, noise, one, proposal)
        log_q = -(noise**2).sum((-1, -2)) / 2 - a[0].numel() * torch.log(std.reshape(-1))
        return _log_density(target, a) + log_q + torch.log(prob)

    # every term is O(10); rounding of sums of 6 squares and one exp/log: ~1e-14 absolute
    torch.testing.assert_close(flow(v, w), flow(w, v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("proposal", sorted(PROPOSALS))
def test_chains_sample_the_gaussian_posterior(proposal):
    """Mean and variance of 16 independent chains against the exact N(c mu / (1 + c), 1 / (1 + c))."""
    target = GaussianData(c=3.0, mu=0.8)
    chains, steps, burn = 16, 3000, 200
    g = torch.Generator().manual_seed(7)
    state = initial_state(target, torch.randn(chains, 1, 1, generator=g, dtype=torch.float64) * 3)
    eps = torch.full((chains,), 0.9, dtype=torch.float64)
    draws = []
    for t in range(steps):
        noise = torch.randn(chains, 1, 1, generator=g, dtype=torch.float64)
        state, _ = mh_step(target, state, eps, noise, torch.rand(chains, generator=g, dtype=torch.float64), proposal)
        if t >= burn:
            draws.append(state.v.reshape(-1))
    x = torch.stack(draws)  # (S, chains)
    mean_exact, var_exact = 3.0 * 0.8 / 4.0, 1 / 4.0
    means, variances = x.mean(0), x.var(0)
    # one number per independent chain: the spread over the 16 chains gives the standard error
    se_mean, se_var = means.std() / math.sqrt(chains), variances.std() / math.sqrt(chains)
    assert abs(means.mean().item() - mean_exact) < 4 * se_mean.item()
    assert abs(variances.mean().item() - var_exact) < 4 * se_var.item()
    assert se_mean.item() < 0.02  # the test has power: a bias of 0.1 would fail it

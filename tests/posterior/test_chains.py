"""The chain driver and its reduction: diagnostics of known chains, the large-width limit, statuses, devices."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shallow_collapse import metrics
from shallow_collapse.data import gaussian_data
from shallow_collapse.kernels import limiting_kernels
from shallow_collapse.params import NetworkParams, PosteriorParams
from shallow_collapse.posterior import sample_posterior
from shallow_collapse.posterior.diagnostics import effective_size, split_rhat


def _ar1(rng, rho, shape):
    """AR(1) chains ``shape = (..., steps, chains)`` with unit stationary variance, started at 0."""
    x, noise = np.zeros(shape), rng.standard_normal(shape)
    for t in range(1, shape[-2]):
        x[..., t, :] = rho * x[..., t - 1, :] + math.sqrt(1 - rho**2) * noise[..., t, :]
    return x


def test_rhat_and_effective_size_of_known_chains():
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((1000, 8))
    # iid: split-Rhat ~ 1 + (B/W - 1) / (2n) with B/W ~ chi2_15 / 15 (16 half-chains of n = 500),
    # whose standard deviation sqrt(2/15) / 1000 = 4e-4 makes 0.01 some 25 standard errors
    assert split_rhat(iid) == pytest.approx(1.0, abs=0.01)
    rho = 0.9
    x = _ar1(rng, rho, (4000, 8))
    # The spread of each estimate over 16 independent replicates (fixed seed): 5 of its standard
    # deviations (~4% of 8000 for iid, ~7% of 1684 for AR(1); the fixed 15% and 25% were ~3.7)
    replicates = np.random.default_rng(1)
    sd_iid = np.std([effective_size(replicates.standard_normal((1000, 8))) for _ in range(16)], ddof=1)
    sd_ar = np.std([effective_size(chains) for chains in _ar1(replicates, rho, (16, 4000, 8))], ddof=1)
    assert abs(effective_size(iid) - 8000) <= 5 * sd_iid
    assert abs(effective_size(x) - 32000 * (1 - rho) / (1 + rho)) <= 5 * sd_ar
    assert split_rhat(iid + np.arange(8)) > 2  # chains around different means: not mixed


def _data(N=16, d=2):
    ds = gaussian_data((N // 2, N // 2), d, [-1.0, 1.0], [1.0, 1.0], 0, 0)
    return ds, ds.X[None], ds.y[None, :, None]


@pytest.mark.slow
def test_posterior_approaches_the_gp_as_the_width_grows():
    """siga2 fixed, h growing: the posterior-averaged kernel's NC1 tends to the NNGP's and the
    Rao-Blackwellised posterior mean of f to the GP's Q (Q + sig2 I)^-1 y. Each step of the NC1
    trend is asserted beyond 2 standard errors of the two gaps."""
    sig2, siga2, M = 0.05, 1.0, 8
    ds, X, Y = _data()
    net = NetworkParams(L=2, activation="erf", hidden_weight_std=1.0, final_weight_std=1.0, bias_std=0.0)
    Q = siga2 * limiting_kernels(ds.X, net).nngp
    gp = (Q @ torch.linalg.solve(Q + sig2 * torch.eye(len(ds.y), dtype=Q.dtype), ds.y)).numpy()
    nngp = math.log10(float(metrics.nc1_kernel(Q, ds.labels)))
    params = PosteriorParams(chains=M, burn_in=300, samples=600, thin=1)
    gaps, f_gaps = [], []
    for h in (2, 16, 128):
        (r,) = sample_posterior(X, Y, ds.labels, torch.erf, sigw2=1.0, siga2=siga2, sig2=sig2, h=h, params=params,
                                seeds=list(range(100 * h, 100 * h + M)))
        assert r.status == "ok", r.message
        gaps.append((abs(r.log10_nc1 - nngp), r.se_log10_nc1))
        f_gaps.append(float(np.abs(r.f[:, 0] - gp).max()))
    for (g0, s0), (g1, s1) in zip(gaps, gaps[1:]):
        assert g0 - g1 > 2 * math.hypot(s0, s1), gaps
    assert f_gaps[0] > f_gaps[1] > f_gaps[2], f_gaps


def test_short_or_broken_chains_are_statuses_not_exceptions():
    ds, X, Y = _data()
    short = sample_posterior(X, Y, ds.labels, torch.erf, sigw2=1.0, siga2=1.0, sig2=0.1, h=8,
                             params=PosteriorParams(burn_in=0, samples=4, thin=1, chains=2), seeds=[1, 2])[0]
    assert short.status == "not_converged" and short.message
    broken = sample_posterior(X, Y, ds.labels, lambda z: z * math.nan, sigw2=1.0, siga2=1.0, sig2=0.1, h=8,
                              params=PosteriorParams(burn_in=2, samples=4, thin=1, chains=2), seeds=[1, 2])[0]
    assert broken.status == "nan" and broken.message


def test_a_chain_does_not_depend_on_the_chains_beside_it():
    """Chain b draws every random number from its own seed: alone or in a batch of draws, same numbers."""
    ds, X, Y = _data()
    params = PosteriorParams(burn_in=20, samples=8, thin=1, chains=2)
    kw = dict(sigw2=1.0, siga2=1.0, sig2=0.1, h=8, params=params)
    alone = sample_posterior(X, Y, ds.labels, torch.erf, seeds=[5, 6], **kw)[0]
    other = gaussian_data((8, 8), 2, [-1.0, 1.0], [1.0, 1.0], 0, 1)
    both = sample_posterior(torch.cat([X, other.X[None]]), torch.cat([Y, other.y[None, :, None]]), ds.labels,
                            torch.erf, seeds=[5, 6, 7, 8], **kw)[0]
    # batched matrix products may sum in another order: equal to rounding, ~1e-15 relative per step
    # (sums of N = 16 terms), added over the 28 steps (a flipped accept/reject would be O(1)) and
    # through the potential's conditioning (kappa(C) <= 1 + (siga2/h) N h / sig2 = 161 here, |phi| <= 1):
    # <~ 5e-12, so 1e-9 leaves x200 and does not depend on the machine's summation order
    assert both.log10_nc1 == pytest.approx(alone.log10_nc1, rel=1e-9)
    assert both.sigma_trace == pytest.approx(alone.sigma_trace, rel=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_chain_equals_cpu_in_float64():
    ds, X, Y = _data()
    params = PosteriorParams(burn_in=20, samples=8, thin=1, chains=2)
    runs = [sample_posterior(X.to(dev), Y.to(dev), ds.labels.to(dev), torch.erf, sigw2=1.0, siga2=1.0, sig2=0.1,
                             h=8, params=params, seeds=[1, 2])[0] for dev in ("cpu", "cuda")]
    # as in test_a_chain_does_not_depend_on_the_chains_beside_it: ~1e-12 from the order of sums
    assert runs[1].log10_nc1 == pytest.approx(runs[0].log10_nc1, rel=1e-9)
    np.testing.assert_allclose(runs[1].sigma, runs[0].sigma, rtol=1e-9)

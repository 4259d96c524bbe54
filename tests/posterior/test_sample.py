"""sample_posterior and its reduction: the large-width limit, statuses, overdispersed starts, chain
independence (of the batch and of the chain groups), devices."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shallow_collapse import metrics
from shallow_collapse.activations import get
from shallow_collapse.data import gaussian_data
from shallow_collapse.kernels import limiting_kernels
from shallow_collapse.params import EoSParams, NetworkParams, PosteriorParams
from shallow_collapse.posterior import sample_posterior
from shallow_collapse.posterior import chains


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
    gaps, f_gaps = [], []
    for h in (2, 16, 128):
        # a sweep is h neuron updates: the narrow networks get more, cheaper sweeps
        # (R-hat at 1.02: the trend, not the last digit of convergence, is under test here)
        params = PosteriorParams(chains=M, burn_in=100, samples=3000 if h <= 16 else 400, rhat_max=1.02)
        (r,) = sample_posterior(X, Y, ds.labels, get("erf"), EoSParams(sigw2=1.0, siga2=siga2, sig2=sig2, h=h), params,
                                seeds=list(range(100 * h, 100 * h + M)))
        assert r.status == "ok", (h, r.message)
        gaps.append((abs(r.log10_nc1 - nngp), r.se_log10_nc1))
        f_gaps.append(float(np.abs(r.f[:, 0] - gp).max()))
    for (g0, s0), (g1, s1) in zip(gaps, gaps[1:]):
        assert g0 - g1 > 2 * math.hypot(s0, s1), gaps
    assert f_gaps[0] > f_gaps[1] > f_gaps[2], f_gaps


def test_short_or_broken_chains_are_statuses_not_exceptions():
    ds, X, Y = _data()
    short = sample_posterior(X, Y, ds.labels, torch.erf, prior=EoSParams(sigw2=1.0, siga2=1.0, sig2=0.1, h=8),
                             params=PosteriorParams(burn_in=0, samples=4, chains=2), seeds=[1, 2])[0]
    assert short.status == "not_converged" and short.message
    broken = sample_posterior(X, Y, ds.labels, lambda z: z * math.nan, EoSParams(sigw2=1.0, siga2=1.0, sig2=0.1, h=8),
                              params=PosteriorParams(burn_in=2, samples=4, chains=2), seeds=[1, 2])[0]
    assert broken.status == "nan" and broken.message


def test_chains_started_far_from_the_posterior_are_flagged():
    """Half the chains start from a Sigma 400 times the prior's: after a few sweeps the two halves
    disagree, and the draw is not ok however its other diagnostics read."""
    ds, X, Y = _data()
    far = 400.0 * torch.eye(2, dtype=torch.float64)[None] / 2
    (r,) = sample_posterior(X, Y, ds.labels, torch.erf, prior=EoSParams(sigw2=1.0, siga2=1.0, sig2=1e-4, h=64),
                            params=PosteriorParams(burn_in=0, samples=8, chains=4), seeds=[1, 2, 3, 4],
                            start_sigma=far)
    assert r.status == "not_converged"
    assert abs(r.halves[0] - r.halves[1]) > 3 * r.se_log10_nc1


def test_sigma_started_chains_start_from_sigma():
    """The second half's first W has rows ~ N(0, Sigma): its Tr W^T W / h is about Tr Sigma."""
    g = [torch.Generator().manual_seed(s) for s in range(4)]
    sigma = torch.tensor([[[4.0, 1.0], [1.0, 2.0]]], dtype=torch.float64)
    from shallow_collapse.posterior.sample import _starts
    W = _starts(g, 4000, 2, 1.0, sigma, 4, torch.float64)
    tr = (W.pow(2).sum((-1, -2)) / 4000).numpy()
    # Tr of the sample covariance of 4000 rows: sd sqrt(2 tr(Sigma^2) / 4000) = 0.11; 5 sd bounds
    assert np.all(np.abs(tr[:2] - 1.0) < 0.03) and np.all(np.abs(tr[2:] - 6.0) < 0.55), tr


def test_a_chain_does_not_depend_on_the_chains_beside_it():
    """Chain b draws every random number from its own seed: alone or in a batch of draws, same numbers."""
    ds, X, Y = _data()
    params = PosteriorParams(burn_in=10, samples=8, chains=2)
    kw = dict(prior=EoSParams(sigw2=1.0, siga2=1.0, sig2=0.1, h=8), params=params)
    alone = sample_posterior(X, Y, ds.labels, torch.erf, seeds=[5, 6], **kw)[0]
    other = gaussian_data((8, 8), 2, [-1.0, 1.0], [1.0, 1.0], 0, 1)
    both = sample_posterior(torch.cat([X, other.X[None]]), torch.cat([Y, other.y[None, :, None]]), ds.labels,
                            torch.erf, seeds=[5, 6, 7, 8], **kw)[0]
    # batched matrix products may sum in another order: equal to rounding, ~1e-15 relative per update
    # (sums of N = 16 terms), added over 18 sweeps of 8 updates (a flipped slice decision would be
    # O(1)) and through the conditioning (kappa(C) <= 1 + (siga2/h) N h / sig2 = 161 here, |phi| <= 1):
    # <~ 5e-12, so 1e-9 leaves x200 and does not depend on the machine's summation order
    assert both.log10_nc1 == pytest.approx(alone.log10_nc1, rel=1e-9)
    assert both.sigma_trace == pytest.approx(alone.sigma_trace, rel=1e-9)


def test_chain_groups_do_not_change_the_chains(monkeypatch):
    """Chains run in cache-sized groups; one chain per group gives the same chains to rounding."""
    ds, X, Y = _data()
    kw = dict(prior=EoSParams(sigw2=1.0, siga2=1.0, sig2=0.1, h=8),
              params=PosteriorParams(burn_in=5, samples=6, chains=4),
              seeds=[5, 6, 7, 8])
    together = sample_posterior(X, Y, ds.labels, torch.erf, **kw)[0]
    monkeypatch.setattr(chains, "GROUP_BYTES", 1)
    assert chains.chain_groups(4, 16, 8) == [slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 4)]
    apart = sample_posterior(X, Y, ds.labels, torch.erf, **kw)[0]
    assert apart.log10_nc1 == pytest.approx(together.log10_nc1, rel=1e-9)  # as above
    np.testing.assert_allclose(apart.traces["sigma_trace"], together.traces["sigma_trace"], rtol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_chain_equals_cpu_in_float64():
    ds, X, Y = _data()
    params = PosteriorParams(burn_in=10, samples=8, chains=2)
    runs = [sample_posterior(X.to(dev), Y.to(dev), ds.labels.to(dev), torch.erf,
                             EoSParams(sigw2=1.0, siga2=1.0, sig2=0.1, h=8), params, seeds=[1, 2])[0]
            for dev in ("cpu", "cuda")]
    # as in test_a_chain_does_not_depend_on_the_chains_beside_it: ~1e-12 from the order of sums
    assert runs[1].log10_nc1 == pytest.approx(runs[0].log10_nc1, rel=1e-9)
    np.testing.assert_allclose(runs[1].sigma, runs[0].sigma, rtol=1e-9)

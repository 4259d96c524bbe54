"""The exact d = 1 reference (shallow_collapse.posterior.exact) against quadrature over W itself, importance
sampling from the prior, its own factorised path and its own grid refinement. Every check that is not the
reduction computes C_W = (siga2 / h) phi(x W^T) phi(x W^T)^T + sig2 I explicitly, with N x N algebra."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shallow_collapse.posterior.exact import d1_reduction, relu_d1_posterior

SIGA2 = 1.0


def _data(N: int, C: int = 1, seed: int = 0):
    """x: two Gaussian classes (means -2, 2, std 0.5, N/2 each); Y: +-1 as a column, or one-hot (C = 2)."""
    rng = np.random.default_rng(seed)
    label = np.arange(N) >= N // 2
    x = np.where(label, 2.0, -2.0) + 0.5 * rng.standard_normal(N)
    Y = np.where(label, 1.0, -1.0)[:, None] if C == 1 else np.eye(2)[label.astype(int)]
    return x, Y


def _phi(z, slope):
    return np.where(z > 0, z, slope * z)


def _explicit(W, x, Y, slope, sig2, chunk=20000):
    """log p(Y | W) ``(M,)`` and K_W ``(M, N, N)`` for W ``(M, h)``, from the N x N covariance itself."""
    M, h = W.shape
    N, C = Y.shape
    ll, K = np.empty(M), np.empty((M, N, N))
    for i in range(0, M, chunk):
        F = _phi(x[None, :, None] * W[i:i + chunk, None, :], slope)  # (m, N, h)
        K[i:i + chunk] = (SIGA2 / h) * F @ F.transpose(0, 2, 1)
        cov = K[i:i + chunk] + sig2 * np.eye(N)
        logdet = 2 * np.log(np.diagonal(np.linalg.cholesky(cov), axis1=1, axis2=2)).sum(1)
        quad = (Y * np.linalg.solve(cov, Y)).sum((1, 2))
        ll[i:i + chunk] = -0.5 * N * C * math.log(2 * math.pi) - 0.5 * C * logdet - 0.5 * quad
    return ll, K


def _brute(x, Y, slope, sigw2, sig2, h):
    """(log p(Y), E[K_W], E[Tr W^T W / h]) by the trapezoid rule over W in R^h. h = 1: a uniform grid in w
    on [-9, 9] sd (step 1e-3 sd; the kink of C_W at w = 0 sits where the posterior is ~e^-400). h = 2: per
    orthant, a uniform grid in tau_j = log|w_j| (step 0.2 on [log sd - 36, log sd + 2.6], Jacobian |w_j|),
    so each piece is smooth (C_W has a kink at w_j = 0, where one unit is dead and the density is not small);
    the prior mass left out is ~e^-36 below and ~e^-90 above."""
    sd = math.sqrt(sigw2)
    if h == 1:
        w = np.linspace(-9 * sd, 9 * sd, 18001)
        W, logq = w[:, None], np.full(len(w), math.log(w[1] - w[0]))
    else:
        step = 0.2
        tau = np.arange(math.log(sd) - 36, math.log(sd) + 2.6, step)
        w1, lj = np.concatenate([-np.exp(tau), np.exp(tau)]), math.log(step) + np.concatenate([tau, tau])
        W = np.stack([g.ravel() for g in np.meshgrid(*[w1] * h, indexing="ij")], 1)
        logq = sum(g.ravel() for g in np.meshgrid(*[lj] * h, indexing="ij"))
    logprior = (-0.5 * W**2 / sigw2 - 0.5 * math.log(2 * math.pi * sigw2)).sum(1)
    ll, K = _explicit(W, x, Y, slope, sig2)
    L = logq + logprior + ll
    e = np.exp(L - L.max())
    z = e.sum()
    return L.max() + math.log(z), np.einsum("m,mij->ij", e, K) / z, e @ (W**2).sum(1) / h / z


def _rel(a, b):
    return np.abs(np.asarray(a) - b).max() / np.abs(b).max()


@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("slope", [0.0, 0.3])
@pytest.mark.parametrize("h,N", [(1, 12), (2, 8)])
def test_brute_force_over_w(h, N, slope, C):
    # Both sides are converged quadratures: measured agreement ~1e-13 at h = 1 and ~1e-10 at h = 2 (the
    # brute force's tau step 0.2 is its limit: 0.25 gives ~5e-8, 0.1 gives ~1e-14), so 1e-8 (h = 2) and 1e-10
    # (h = 1) leave margin while any slip in the reduction (homogeneity, chi2 / binomial bookkeeping,
    # Woodbury) would show at O(1).
    x, Y = _data(N, C)
    sigw2, sig2 = 1.0, 1e-2
    exact = relu_d1_posterior(x, Y, slope=slope, sigw2=sigw2, siga2=SIGA2, sig2=sig2, h=h)
    log_ev, kernel, sigma = _brute(x, Y, slope, sigw2, sig2, h)
    tol = 1e-10 if h == 1 else 1e-8
    assert _rel(exact.kernel, kernel) < tol
    assert abs(exact.sigma_trace - sigma) < tol * sigma
    assert abs(exact.log_evidence - log_ev) < tol * max(1.0, abs(log_ev))
    assert exact.kernel.shape == (N, N) and abs(exact.prob_n.sum() - 1) < 1e-12


@pytest.mark.parametrize("slope,C", [(0.0, 1), (0.3, 2)])
def test_importance_sampling_h8(slope, C):
    # Self-normalised IS from the prior, 200000 draws, explicit likelihood. sigw2 = 0.2 makes the data pull
    # the weights well away from the prior (the shift is ~230 SE; asserted > 50) while keeping the effective
    # sample size high (measured 7.4e4), so the SE from the weights is itself reliable. 4 SE: two-sided
    # p ~ 6e-5 per check. (Over 12 other seeds the z-scores of E[Tr W^T W / h] had mean -0.04, sd 1.10.)
    h, N, M, sigw2, sig2 = 8, 16, 200_000, 0.2, 1e-2
    x, Y = _data(N, C)
    exact = relu_d1_posterior(x, Y, slope=slope, sigw2=sigw2, siga2=SIGA2, sig2=sig2, h=h)
    W = math.sqrt(sigw2) * np.random.default_rng(7).standard_normal((M, h))
    ll, K = _explicit(W, x, Y, slope, sig2)
    w = np.exp(ll - ll.max())
    w /= w.sum()
    ess = 1.0 / (w @ w)
    assert ess > 20_000, ess
    checks = [((W**2).sum(1) / h, exact.sigma_trace), (np.trace(K, axis1=1, axis2=2), np.trace(exact.kernel))]
    checks += [(K[:, i, j], exact.kernel[i, j]) for i, j in ((0, 1), (-2, -1))]  # one entry per class: B, A
    for f, target in checks:
        mean = w @ f
        se = math.sqrt(w**2 @ (f - mean) ** 2)
        assert abs(mean - target) < 4 * se, (mean, target, se)
    prior_mean = sigw2  # E[Tr W^T W / h] under the prior
    assert abs(exact.sigma_trace - prior_mean) > 50 * math.sqrt(w**2 @ ((W**2).sum(1) / h - exact.sigma_trace) ** 2)


@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("h,sig2,sigw2", [(1, 1e-2, 1.0), (8, 1e-6, 1.0), (64, 1e-6, 1.0), (64, 1e-6, 1e-4),
                                          (512, 1e-6, 1.0)])
def test_factorised_path_equals_general(h, sig2, sigw2, C):
    # The ReLU's 1-D path (two 1-D integrals per n) against the 2-D path on the same likelihood: different
    # grids, the same converged integrals. Measured differences <= 1e-12 (the largest where the log
    # integrand is ~1e6 and its rounding, 1e-10 absolute, is what is left); 1e-10 relative.
    x, Y = _data(64 if h == 512 else 32, C)
    kw = dict(slope=0.0, sigw2=sigw2, siga2=SIGA2, sig2=sig2, h=h)
    assert d1_reduction(x, Y, slope=0.0, siga2=SIGA2, sig2=sig2, h=h).factorised
    one, two = relu_d1_posterior(x, Y, method="1d", **kw), relu_d1_posterior(x, Y, method="2d", **kw)
    for a, b in ((one.mean_a, two.mean_a), (one.mean_b, two.mean_b), (one.sigma_trace, two.sigma_trace)):
        assert abs(a - b) < 1e-10 * abs(b)
    assert _rel(one.kernel, two.kernel) < 1e-10 and _rel(one.prob_n, two.prob_n) < 1e-10
    assert abs(one.log_evidence - two.log_evidence) < 1e-10 * abs(two.log_evidence)


@pytest.mark.parametrize("slope", [0.0, 0.3])
@pytest.mark.parametrize("h,sigw2", [(8, 1.0), (64, 1.0), (64, 1e-4)])
def test_grid_refinement(h, sigw2, slope):
    # Doubling the points per axis (refine 1 -> 2, 2-D path for both slopes) at the paper's sig2 = 1e-6.
    # The trapezoid rule on a smooth integrand negligible at the box's edges converges exponentially:
    # measured changes ~1e-14 (sigw2 = 1e-4 puts the posterior of A deep in the prior's tail, a peak of
    # width ~0.02 in log A, which the zoom pass resolves). Bound 1e-8 relative, as required.
    x, Y = _data(32)
    kw = dict(slope=slope, sigw2=sigw2, siga2=SIGA2, sig2=1e-6, h=h, method="2d")
    r1, r2 = relu_d1_posterior(x, Y, refine=1, **kw), relu_d1_posterior(x, Y, refine=2, **kw)
    for a, b in ((r1.mean_a, r2.mean_a), (r1.mean_b, r2.mean_b), (r1.sigma_trace, r2.sigma_trace)):
        assert abs(a - b) < 1e-8 * abs(b)
    assert _rel(r1.kernel, r2.kernel) < 1e-8
    assert abs(r1.log_evidence - r2.log_evidence) < 1e-8 * abs(r2.log_evidence)


def test_reduction_matches_explicit_likelihood():
    # log p(Y | W) through (A, B) and the 2 x 2 system against the N x N Cholesky, for random W (including
    # units of both signs); both in float64 with log p ~ -1e4, so 1e-9 relative is rounding plus margin.
    h, sig2 = 5, 1e-3
    for slope, C in ((0.0, 1), (0.3, 2), (0.01, 1)):
        x, Y = _data(24, C, seed=3)
        red = d1_reduction(x, Y, slope=slope, siga2=SIGA2, sig2=sig2, h=h)
        W = np.random.default_rng(5).standard_normal((50, h))
        A, B = (np.where(W > 0, W, 0.0) ** 2).sum(1), (np.where(W < 0, W, 0.0) ** 2).sum(1)
        ll, _ = _explicit(W, x, Y, slope, sig2)
        assert np.abs(red.log_likelihood(A, B) - ll).max() < 1e-9 * np.abs(ll).max()
        assert red.factorised == (slope == 0.0)


def test_large_inputs_and_torch():
    # The sizes the reference must handle (N = 1024, h = 512; seconds), torch input, and the guard on "1d".
    x, Y = _data(1024)
    for slope in (0.0, 0.3):
        r = relu_d1_posterior(torch.from_numpy(x), torch.from_numpy(Y), slope=slope, sigw2=1.0, siga2=SIGA2,
                              sig2=1e-6, h=512)
        n = relu_d1_posterior(x, Y, slope=slope, sigw2=1.0, siga2=SIGA2, sig2=1e-6, h=512)
        assert r.mean_a == n.mean_a and r.log_evidence == n.log_evidence
        assert r.kernel.shape == (1024, 1024) and np.allclose(r.kernel, r.kernel.T)
        assert abs(r.prob_n.sum() - 1) < 1e-12 and np.isfinite(r.log_evidence)
        assert abs(r.sigma_trace - (r.mean_a + r.mean_b) / 512) < 1e-15 * r.sigma_trace
    with pytest.raises(ValueError):
        relu_d1_posterior(x, Y, slope=0.3, sigw2=1.0, siga2=SIGA2, sig2=1e-6, h=4, method="1d")

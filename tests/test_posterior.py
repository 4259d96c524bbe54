"""The Langevin sampler of the posterior network: statistical tests with fixed seeds.

Every bound is a number of standard errors of a chain average, the standard error taken from the
spread between independent chains (each from its own seed), so a correct sampler fails a 4 SE bound
with probability below 1e-4 per assertion (normal tail; with 32-64 chains the t tail is close).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shallow_collapse import activations, metrics
from shallow_collapse.data import gaussian_data
from shallow_collapse.kernels import limiting_kernels
from shallow_collapse.params import LangevinParams, NetworkParams
from shallow_collapse.posterior import (PosteriorTarget, effective_size, langevin, layer_curvatures, richardson,
                                        sample_posterior, split_rhat)

ERF = activations.get("erf").phi


def _target(N, d, chains, sigw2=1.0, siga2=0.5, sig2=0.1, likelihood=True, seed=0):
    ds = gaussian_data((N // 2, N // 2), d, [-1.0, 1.0], [1.0, 1.0], seed, 0)
    X = ds.X.unsqueeze(0).expand(chains, -1, -1).contiguous()
    y = ds.y.unsqueeze(0).expand(chains, -1).contiguous()
    return PosteriorTarget(X, y, ERF, sigw2, siga2, sig2, likelihood), ds


def _chain_mean(x):
    """Mean over samples and chains of ``x`` ``(S, B)`` and its SE from the B chain means."""
    m = x.mean(0)
    return m.mean(), m.std(ddof=1) / math.sqrt(len(m))


def test_prior_moments_without_likelihood():
    # Without the data term, U is the prior: Var(W_ij) = sigw2/d, Var(a_c) = siga2/h. The recorded
    # Tr (1/h) W^T W has mean sigw2 and |a|^2 has mean siga2.
    B, h, d, sigw2, siga2 = 32, 8, 3, 2.0, 0.25
    target, ds = _target(8, d, B, sigw2=sigw2, siga2=siga2, likelihood=False)
    gens = [torch.Generator().manual_seed(1000 + b) for b in range(B)]
    W, a = target.prior_draw(gens, h)
    precond = tuple(1 / lam for lam in layer_curvatures(target, W, a))
    assert torch.allclose(precond[0], torch.full((B,), sigw2 / d, dtype=torch.float64))
    stats = langevin(target, W, a, ds.labels, step=0.7, precond=precond, burn_in=20, samples=100, thin=3,
                     generators=gens)
    for x, expected in ((stats.sigma_trace, sigw2), (stats.readout_norm, siga2)):
        mean, se = _chain_mean(x)
        assert abs(mean - expected) < 4 * se, (mean, expected, se)
        assert se < 0.05 * expected  # the test has the power to see a 20% error


def _readout_posterior(sig2=0.1, siga2=1.0):
    """One hidden unit (h = 1) with W frozen: the readout a has an exactly Gaussian posterior with
    precision phi.phi / sig2 + 1 / siga2 and mean (phi.y / sig2) / precision."""
    B = 64
    target, ds = _target(16, 2, B, siga2=siga2, sig2=sig2)
    gens = [torch.Generator().manual_seed(2000 + b) for b in range(B)]
    W, a = target.prior_draw(gens, 1)
    W = W[:1].expand(B, -1, -1).contiguous()  # the same hidden unit in every chain
    phi = target.features(W)[0, :, 0]
    precision = float(phi @ phi) / sig2 + 1 / siga2
    mean, var = float(phi @ ds.y) / sig2 / precision, 1 / precision
    lam_a = layer_curvatures(target, W, a)[1]
    assert torch.allclose(lam_a, torch.full((B,), precision, dtype=torch.float64))
    return target, ds, W, a, gens, phi, mean, var


def _readout_moments(stats, phi, mean):
    """Chain averages of a and of (a - mean)^2 (``mean`` the exact posterior mean), each with its SE."""
    i = int(phi.abs().argmax())
    mean_a = (stats.f_sum[:, i] / stats.samples / phi[i]).numpy()
    centred = stats.readout_norm.mean(0) - 2 * mean * mean_a + mean**2
    se = lambda x: x.std(ddof=1) / math.sqrt(len(x))  # noqa: E731
    return (mean_a.mean(), se(mean_a)), (centred.mean(), se(centred))


@pytest.mark.parametrize("scheme, step", [("lm", 1.0), ("euler", 0.5), ("euler", 0.25)])
def test_gaussian_readout_posterior_mean_and_variance(scheme, step):
    # Leimkuhler-Matthews is exact for a Gaussian at any step; Euler-Maruyama with the step
    # eta / precision has the exact mean and the variance var / (1 - eta / 2) (its known bias).
    target, ds, W, a, gens, phi, mean, var = _readout_posterior()
    lam_a = layer_curvatures(target, W, a)[1]
    stats = langevin(target, W, a, ds.labels, step=step, precond=(torch.zeros_like(lam_a), 1 / lam_a), burn_in=30,
                     samples=200, thin=2, generators=gens, scheme=scheme)
    expected_var = var if scheme == "lm" else var / (1 - step / 2)
    (m, se_m), (v, se_v) = _readout_moments(stats, phi, mean)
    assert abs(m - mean) < 4 * se_m, (m, mean, se_m)
    assert abs(v - expected_var) < 4 * se_v, (v, expected_var, se_v)
    assert se_v < 0.03 * var  # power: a 12% variance error would fail


def test_half_step_check_sees_the_euler_bias_and_the_extrapolation_removes_it():
    # Euler at eta, eta/2, eta/4: the variance moves by the known bias (the half-step check
    # detects it), and the straight-line extrapolation to eta = 0 lands on the exact value.
    target, ds, W, a, gens, phi, mean, var = _readout_posterior()
    lam_a = layer_curvatures(target, W, a)[1]
    steps, values, errors = [0.4, 0.2, 0.1], [], []
    for k, step in enumerate(steps):
        stats = langevin(target, W, a, ds.labels, step=step, precond=(torch.zeros_like(lam_a), 1 / lam_a),
                         burn_in=40 * 2**k, samples=200, thin=2 * 2**k, generators=gens, scheme="euler")
        (value, error) = _readout_moments(stats, phi, mean)[1]
        values.append(value)
        errors.append(error)
    exact = var
    shift, se_shift = values[0] - values[1], math.hypot(errors[0], errors[1])
    predicted = var / (1 - steps[0] / 2) - var / (1 - steps[1] / 2)
    assert shift > 4 * se_shift  # the half-step check sees the bias ...
    assert abs(shift - predicted) < 4 * se_shift  # ... of the size Euler's theory gives
    v0, se0, misfit = richardson(steps, values, errors)
    # The line leaves the quadratic term (var/4) eta^2 of var / (1 - eta/2): fitted at eta_max (1,
    # 1/2, 1/4) it shifts the intercept by 0.3125 (var/4) eta_max^2.
    assert abs(v0 - exact) < 4 * se0 + 0.3125 * var * steps[0] ** 2 / 4, (v0, exact, se0)
    assert misfit < 4


def test_richardson_recovers_a_line_and_flags_a_curve():
    v0, se0, z = richardson([1.0, 0.5, 0.25], [3.0, 2.0, 1.5], [0.01, 0.01, 0.01])
    assert v0 == pytest.approx(1.0) and z == pytest.approx(0.0, abs=1e-9) and 0 < se0 < 0.05
    assert richardson([1.0, 0.5, 0.25], [3.0, 1.0, 1.5], [0.01, 0.01, 0.01])[2] > 10
    assert math.isnan(richardson([1.0, 0.5], [float("nan"), 1.0], [0.1, 0.1])[0])


def test_rhat_and_effective_size_of_known_chains():
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((1000, 8))
    assert split_rhat(iid) == pytest.approx(1.0, abs=0.01)
    assert effective_size(iid) == pytest.approx(8000, rel=0.15)
    rho, x = 0.9, np.zeros((4000, 8))
    noise = rng.standard_normal((4000, 8))
    for t in range(1, 4000):
        x[t] = rho * x[t - 1] + math.sqrt(1 - rho**2) * noise[t]
    assert effective_size(x) == pytest.approx(32000 * (1 - rho) / (1 + rho), rel=0.25)
    shifted = iid + np.arange(8)  # chains around different means: not mixed
    assert split_rhat(shifted) > 2


@pytest.mark.slow
def test_posterior_approaches_the_gp_as_the_width_grows():
    # siga2 fixed, h growing: the posterior-averaged kernel's NC1 tends to the NNGP's and the
    # posterior mean of f to the GP's Q (Q + sig2 I)^-1 y (MATH.md section 9). Each step of the
    # NC1 trend is asserted beyond 2 standard errors of the two gaps.
    N, d, M, sig2, siga2 = 16, 2, 8, 0.05, 1.0
    target, ds = _target(N, d, M, siga2=siga2, sig2=sig2)
    net = NetworkParams(L=2, activation="erf", hidden_weight_std=1.0, final_weight_std=1.0, bias_std=0.0)
    Q = siga2 * limiting_kernels(ds.X, net).nngp
    gp = (Q @ torch.linalg.solve(Q + sig2 * torch.eye(N, dtype=Q.dtype), ds.y)).numpy()
    nngp = math.log10(float(metrics.nc1_kernel(Q, ds.labels)))
    params = LangevinParams(step=1.0, levels=2, burn_in=200, samples=64, thin=10, chains=M)
    gaps, f_gaps = [], []
    for h in (2, 16, 128):
        [r] = sample_posterior(target, ds.labels, h, params, list(range(100 * h, 100 * h + M)))
        value, se = r.estimates["log10_nc1"]
        gaps.append((abs(value - nngp), se))
        f_gaps.append(float(np.abs(r.fbar - gp).max()))
    for (g0, s0), (g1, s1) in zip(gaps, gaps[1:]):
        assert g0 - g1 > 2 * math.hypot(s0, s1), gaps
    assert f_gaps[0] > f_gaps[1] > f_gaps[2], f_gaps


def test_divergence_and_too_short_chains_are_statuses_not_exceptions():
    target, ds = _target(16, 2, 4)
    diverged = sample_posterior(target, ds.labels, 8, LangevinParams(step=50.0, burn_in=5, samples=4, thin=1, chains=4),
                                [1, 2, 3, 4])[0]
    assert diverged.status == "diverged"
    short = sample_posterior(target, ds.labels, 8, LangevinParams(step=1.0, burn_in=0, samples=4, thin=1, chains=4),
                             [1, 2, 3, 4])[0]
    assert short.status == "not_converged" and short.message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_chain_equals_cpu_in_float64():
    target, ds = _target(16, 2, 4)
    runs = []
    for device in ("cpu", "cuda"):
        t = PosteriorTarget(target.X.to(device), target.y.to(device), ERF, target.sigw2, target.siga2, target.sig2)
        gens = [torch.Generator().manual_seed(s) for s in range(4)]
        W, a = t.prior_draw(gens, 8)
        precond = tuple(1 / lam for lam in layer_curvatures(t, W, a))
        runs.append(langevin(t, W, a, ds.labels.to(device), step=0.5, precond=precond, burn_in=20, samples=8,
                             thin=2, generators=gens))
    cpu, cuda = runs
    for key in ("tr_w", "tr_b", "sigma_trace", "readout_norm"):
        np.testing.assert_allclose(getattr(cuda, key), getattr(cpu, key), rtol=1e-9)
    torch.testing.assert_close(cuda.W.cpu(), cpu.W, rtol=1e-9, atol=1e-12)

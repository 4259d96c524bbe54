"""The Gibbs sampler over neurons: one update's detailed balance on a grid, the scale move's, the
updated inverse against fresh factorisations, and the chains against the exact
posterior of the ReLU family at d = 1 (:mod:`shallow_collapse.posterior.exact`)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shallow_collapse import metrics
from shallow_collapse.activations import leaky_relu
from shallow_collapse.posterior import gibbs
from shallow_collapse.posterior.chains import run_chains
from shallow_collapse.posterior.diagnostics import ratio_log10
from shallow_collapse.posterior.exact import relu_d1_posterior

EPS = float(np.finfo(np.float64).eps)


def _d1(N: int, seed: int = 0):
    """Two classes at -2 and 2 (std 0.5), targets -1 / +1: ``x`` ``(N,)``, ``y`` ``(N,)``, labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N) // (N // 2)
    x = torch.where(labels == 0, -2.0, 2.0).double() + 0.5 * torch.randn(N, generator=g, dtype=torch.float64)
    return x, (2.0 * labels - 1).double(), labels


def _target(X, y, phi, sig2, h, siga2=1.0, sigw2=1.0):
    return gibbs.GibbsTarget(X, y[..., None], phi, sigw2, siga2, sig2, h)


def _log_posterior(W: np.ndarray, x: np.ndarray, y: np.ndarray, phi, sig2: float, siga2: float) -> np.ndarray:
    """log p(W | y) + const for W ``(G, h)`` at d = 1, sigw2 = 1, by explicit N x N Cholesky."""
    h = W.shape[1]
    F = phi(torch.from_numpy(W[:, None, :] * x[None, :, None]))  # (G, N, h)
    K = siga2 / h * F @ F.transpose(-1, -2) + sig2 * torch.eye(len(x), dtype=torch.float64)
    L = torch.linalg.cholesky(K)
    z = torch.linalg.solve_triangular(L, torch.from_numpy(y)[None, :, None].expand(len(W), -1, -1), upper=False)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return (-0.5 * (W**2).sum(1) - 0.5 * z.pow(2).sum((-1, -2)).numpy() - 0.5 * logdet.numpy())


def _grid_draws(x, y, phi, sig2, siga2, n_draws, rng, half=4.0, n=300):
    """Draws of W ``(n_draws, 2)`` from the h = 2 posterior tabulated on an n x n grid of [-half, half]^2
    (cell centres plus a uniform jitter inside the cell)."""
    axis = -half + (np.arange(n) + 0.5) * 2 * half / n
    W = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    logp = _log_posterior(W, x, y, phi, sig2, siga2)
    p = np.exp(logp - logp.max())
    cells = rng.choice(len(W), size=n_draws, p=p / p.sum())
    return W[cells] + (rng.random((n_draws, 2)) - 0.5) * 2 * half / n


def _symmetry_chi2(a: np.ndarray, b: np.ndarray, bins: int) -> tuple[float, int]:
    """Pearson's statistic for H = H^T of the 2-D histogram of pairs (a, b) on quantile bins of a:
    sum over a < b of (H_ab - H_ba)^2 / (H_ab + H_ba), chi^2 with bins (bins - 1) / 2 degrees of freedom
    under a reversible kernel started from its stationary law."""
    edges = np.quantile(np.concatenate([a, b]), np.linspace(0, 1, bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    H = np.histogram2d(a, b, bins=[edges, edges])[0]
    iu = np.triu_indices(bins, 1)
    num, den = (H - H.T)[iu] ** 2, (H + H.T)[iu]
    return float((num[den > 0] / den[den > 0]).sum()), int((den > 0).sum())


# chi^2 quantile at 1 - 1e-4 for k degrees of freedom (Wilson-Hilferty): a correct kernel passes at
# the fixed seed with probability 0.9999; a kernel that leaves another law invariant fails by far
def _chi2_bound(k: int) -> float:
    z = 3.719
    return k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


@pytest.mark.parametrize("act", ["erf", "relu"])
def test_one_neuron_update_is_reversible_against_the_grid_posterior(act):
    """Pairs (w_0, w_0') of one elliptical slice update of neuron 0 started from the exact h = 2
    posterior (tabulated on a grid) have a symmetric joint law, and w_1 does not move."""
    phi = {"erf": torch.erf, "relu": torch.relu}[act]
    x, y, _ = _d1(6, seed=3)
    sig2, siga2, M = 0.05, 2.0, 60000
    rng = np.random.default_rng(0)
    W = _grid_draws(x.numpy(), y.numpy(), phi, sig2, siga2, M, rng)
    target = _target(x[None, :, None].expand(M, -1, -1), y[None].expand(M, -1), phi, sig2, 2, siga2=siga2)
    state = gibbs.init(target, torch.from_numpy(W)[:, :, None].clone())
    g = torch.Generator().manual_seed(1)
    uniform = torch.rand((M, 1 + gibbs.MAX_SHRINKS), generator=g, dtype=torch.float64)
    nu = torch.randn((M, 1), generator=g, dtype=torch.float64)
    j = torch.zeros(M, dtype=torch.long)
    gibbs._update_neuron(target, state, j, nu, uniform)
    after = state.W[:, :, 0].numpy()
    assert np.array_equal(after[:, 1], W[:, 1])
    stat, dof = _symmetry_chi2(W[:, 0], after[:, 0], bins=12)
    assert dof >= 30 and stat < _chi2_bound(dof), (stat, dof)  # bin pairs the update never links drop out
    assert np.mean(after[:, 0] != W[:, 0]) > 0.99  # the update moves (the test is not of the identity)


def test_scale_move_is_reversible_against_the_grid_posterior():
    """The same for the scale move W -> s W (ReLU, positively homogeneous): pairs (log|W|, log|W'|)."""
    x, y, _ = _d1(6, seed=3)
    sig2, siga2, M = 1e-3, 2.0, 60000
    rng = np.random.default_rng(2)
    W = _grid_draws(x.numpy(), y.numpy(), torch.relu, sig2, siga2, M, rng, half=5.0)
    target = _target(x[None, :, None].expand(M, -1, -1), y[None].expand(M, -1), torch.relu, sig2, 2, siga2=siga2)
    state = gibbs.init(target, torch.from_numpy(W)[:, :, None].clone())
    uniform = torch.rand((M, 2 + 2 * gibbs.SCALE_STEPS), generator=torch.Generator().manual_seed(3),
                         dtype=torch.float64)
    s = gibbs._scale_move(target, state, uniform)
    after = state.W[:, :, 0].numpy()
    np.testing.assert_allclose(after, W * s.numpy()[:, None], rtol=1e-15)
    r0, r1 = np.log(np.hypot(*W.T)), np.log(np.hypot(*after.T))
    stat, dof = _symmetry_chi2(r0, r1, bins=12)
    assert stat < _chi2_bound(dof), (stat, dof)
    assert np.median(np.abs(np.log(s.numpy()))) > 0.05  # it moves


def _random_problem(N, h, d=3, B=3, sig2=1e-6, phi=torch.erf, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, N, d, generator=g, dtype=torch.float64)
    target = gibbs.GibbsTarget(X, torch.sign(X[..., :1]), phi, 1.0, 1.0, sig2, h)
    W = torch.randn(B, h, d, generator=g, dtype=torch.float64) * target.prior_std
    return target, W


def _noise(B, h, d, sweep):
    return gibbs.draw_noise([torch.Generator().manual_seed(100 * sweep + b) for b in range(B)], h, d,
                            torch.float64, "cpu")


@pytest.mark.parametrize("N, h", [(48, 64), (64, 48)])
def test_updated_inverse_drifts_within_its_conditioning_bound(N, h):
    """After a sweep of h rank-two updates C_W^-1 differs from a fresh factorisation by at most
    ~ h eps kappa (each update's rounding ~ eps kappa relative, accumulated over h updates), kappa
    the condition number of C_W at sig2 = 1e-6, with fewer neurons than points and more."""
    target, W = _random_problem(N, h)
    state = gibbs.init(target, W)
    for k in range(3):
        info = gibbs.sweep(target, state, _noise(3, h, 3, k), scale_move=False)
        F = state.F
        K = target.c * F @ F.transpose(-1, -2) + target.sig2 * torch.eye(N, dtype=F.dtype)
        kappa = torch.linalg.cond(K)
        assert torch.all(info.drift <= 10 * h * EPS * kappa), (info.drift, h * EPS * kappa)
        assert torch.all(info.drift > 0)  # it is measured, not assumed


EXACT_CASES = [(slope, sig2, h) for slope in (0.0, 0.2) for sig2 in (1e-2, 1e-6) for h in (8, 64)]


@pytest.mark.slow
@pytest.mark.parametrize("slope, sig2, h", EXACT_CASES)
def test_chains_agree_with_the_exact_d1_posterior(slope, sig2, h):
    """ReLU and leaky ReLU at d = 1, N = 32: NC1 of E[K_W] and E[Tr W^T W / h] within 4 standard
    errors of the exact answer, the SEs from the spread of 16 independent chains' means."""
    N, B = 32, 16
    x, y, labels = _d1(N)
    exact = relu_d1_posterior(x, y[:, None], slope=slope, sigw2=1.0, siga2=1.0, sig2=sig2, h=h)
    log_nc1 = math.log10(float(metrics.nc1_kernel(torch.as_tensor(exact.kernel), labels)))
    target = _target(x[None, :, None].expand(B, -1, -1).clone(), y[None].expand(B, -1).clone(),
                     leaky_relu(slope).phi, sig2, h)
    generators = [torch.Generator().manual_seed(1000 * h + b) for b in range(B)]
    W0 = torch.stack([torch.randn(h, 1, generator=g, dtype=torch.float64) for g in generators])
    samples = 600 if h == 8 else 200
    run = run_chains(target, labels, W0, generators, burn_in=samples // 5, samples=samples, scale_move=True)
    tw, tb, st = (run.records[k].mean(0) for k in ("tr_w", "tr_b", "sigma_trace"))
    value, se = ratio_log10(tw, tb)
    assert abs(value - log_nc1) < 4 * se and se < 2e-3, (value, log_nc1, se)
    se_sigma = st.std(ddof=1) / math.sqrt(B)
    assert abs(st.mean() - exact.sigma_trace) < 4 * se_sigma and se_sigma < 0.02, (st.mean(), exact.sigma_trace)
    # a cut bracket (64 candidates, the bracket shrunk to ~e^-64) happens only when the threshold lies
    # within rounding of log L at the present point (log L ~ |y|^2 / sig2 = 3e7 here): rare, and exact
    assert run.cuts.sum() <= 1e-4 * B * h * run.sweeps, run.cuts.sum()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sweep_equals_cpu():
    target, W = _random_problem(N=24, h=16, sig2=1e-2)
    states = []
    for dev in ("cpu", "cuda"):
        t = gibbs.GibbsTarget(target.X.to(dev), target.Y.to(dev), torch.erf, 1.0, 1.0, 1e-2, 16)
        s = gibbs.init(t, W.to(dev))
        for k in range(3):
            gibbs.sweep(t, s, gibbs.draw_noise([torch.Generator().manual_seed(10 * k + b) for b in range(3)], 16, 3,
                                               torch.float64, dev), scale_move=False)
        states.append(s.W.cpu())
    assert (states[0] - states[1]).abs().max() < 1e-8  # as the N x N / h x h comparison


@pytest.mark.parametrize("name", ["erf", "relu", "leaky_relu", "abs"])
def test_compiled_loop_gives_the_torch_loops_chain(name):
    """The compiled neuron loop (erf, the ReLU family) and the batched torch loop (any activation)
    on the same noise: the same W to rounding after 4 sweeps (scale move included where valid)."""
    from dataclasses import replace

    from shallow_collapse.activations import get
    from shallow_collapse.posterior.compiled import activation_code

    act = get(name)
    target, W = _random_problem(N=24, h=16, sig2=1e-4, phi=act.phi)
    states = [gibbs.init(t, W.clone()) for t in (target, replace(target, code=activation_code(act)))]
    for k in range(4):
        noise = _noise(3, 16, 3, k)
        for t, s in zip((target, replace(target, code=activation_code(act))), states):
            gibbs.sweep(t, s, noise, scale_move=act.homogeneous)
    # one flipped slice decision would be O(1); otherwise rounding, ~eps kappa(C_W) per update with
    # kappa <= 1 + N c |phi|^2_max / sig2 ~ 1e6 here: 1e-8 leaves a wide margin
    assert (states[0].W - states[1].W).abs().max() < 1e-8


def test_the_compiled_loop_is_chosen_by_kernel_map():
    from shallow_collapse.activations import get, leaky_relu
    from shallow_collapse.posterior.compiled import activation_code

    assert activation_code(leaky_relu(0.0)) == activation_code(get("relu")) == (1, 0.5, 0.5)
    assert activation_code(get("abs")) == (1, 0.0, 1.0) and activation_code(get("erf"))[0] == 0
    assert activation_code(get("tanh")) is None and activation_code(torch.erf) is None

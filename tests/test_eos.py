"""The Equations-of-State solver and the action (docs/MATH.md sections 6 and 7)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from shallow_collapse import activations, data, eos, kernels, metrics
from shallow_collapse.params import EoSParams, NetworkParams

# The paper's AK hyper-parameters (configs/adaptive_kernels*.yml) are the defaults.
PAPER = EoSParams()
SCHEDULE = (1e5, 1e4, 2e3, 1e3)


def paper(**changes) -> EoSParams:
    """The paper's EoS parameters with ``changes``."""
    return replace(PAPER, **changes)


def paper_data(N, d, seed=0, repeat=0):
    return data.gaussian_data((N // 2, N // 2), d, (-2.0, 2.0), (0.5, 0.5), seed, repeat)


def random_sigma(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(d, d, generator=g, dtype=torch.float64)
    return R @ R.T / d + 0.3 * torch.eye(d, dtype=torch.float64)


def dense_action(X, y, Sigma, chi, *, activation="erf", sigw2=1.0, siga2=1.0 / 128, sig2=1e-6):
    """S(Sigma) written independently of the solver: plain torch ops (differentiable), a dense
    solve and slogdet instead of the Cholesky path, and no closed-form gradient."""
    N, d = X.shape
    M = siga2 * activations.kernel_phi(X @ Sigma @ X.T, activation) + sig2 * torch.eye(N, dtype=torch.float64)
    prior = 0.5 * chi * ((d / sigw2) * torch.trace(Sigma) - torch.linalg.slogdet(Sigma)[1])
    return prior + 0.5 * y @ torch.linalg.solve(M, y) + 0.5 * torch.linalg.slogdet(M)[1]


def dense_derivative_1d(X, y, s, chi, **params):
    """dS/ds at Sigma = [[s]] by autograd through :func:`dense_action` (d = 1)."""
    v = torch.tensor([[s]], dtype=torch.float64, requires_grad=True)
    dense_action(X, y, v, chi, **params).backward()
    return float(v.grad)


# -- the map and its closed-form gradient ------------------------------------------------------

@pytest.mark.parametrize("activation", ["erf", "relu"])
@pytest.mark.parametrize("sig2", [0.1, 1e-6])
def test_closed_form_gradient_matches_autograd(activation, sig2):
    ds = data.gaussian_data((20, 20), 3, (-2.0, 2.0), (0.5, 0.5), 1, 0)
    ev = eos.EoSEvaluator(ds.X, ds.y, paper(siga2=0.3, sig2=sig2), activation=activation)
    S = random_sigma(3)
    state = ev.state(S)
    # Independent reference: dense inverse for A, autograd through Q(Sigma) with A held fixed.
    Q_ref = 0.3 * activations.kernel_phi(ds.X @ S @ ds.X.T, activation)
    M_inv = torch.linalg.inv(Q_ref + sig2 * torch.eye(40, dtype=torch.float64))
    alpha = M_inv @ ds.y
    A = M_inv - torch.outer(alpha, alpha)
    S_var = S.clone().requires_grad_(True)
    (A * (0.3 * activations.kernel_phi(ds.X @ S_var @ ds.X.T, activation))).sum().backward()
    grad = 0.5 * (S_var.grad + S_var.grad.T)  # the gradient on symmetric matrices
    # float64 sums of O(N^2) terms: round-off ~ N^2 eps |A||Q| relative to the largest entry; with
    # sig2 = 1e-6 the entries of A reach ~1e12 and cancel, hence a relative 1e-8 (observed ~1e-14
    # at sig2=0.1, ~1e-11 at 1e-6); a wrong term (e.g. a missing diagonal part) is O(1) relative.
    scale = grad.abs().max()
    assert torch.allclose(state.T, grad, rtol=0, atol=1e-8 * scale)
    assert torch.allclose(state.Q, Q_ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_q_matches_the_foundation_kernel_maps(activation):
    ds = paper_data(32, 4)
    S = random_sigma(4, seed=2)
    state = eos.EoSEvaluator(ds.X, ds.y, paper(siga2=0.5, sig2=1e-3), activation=activation).state(S)
    Kphi, _ = activations.get(activation).maps(ds.X @ S @ ds.X.T)
    # Same float64 formula written twice (asin vs asin, atan2 vs atan2): round-off only.
    assert torch.allclose(state.Q, 0.5 * Kphi, rtol=0, atol=1e-12)


def test_alpha_fbar_and_target_shapes():
    ds = paper_data(64, 2)
    ev = eos.EoSEvaluator(ds.X, ds.y, paper(sig2=1e-3))
    state = ev.state(ev.nngp_sigma())
    N = 64
    assert state.alpha.shape == (N,) and state.fbar.shape == (N,) and state.Q.shape == (N, N)
    assert state.T.shape == (2, 2)
    # fbar = Q alpha = y - sig2 alpha (MATH section 6); both sides are O(1), round-off ~1e-12.
    assert torch.allclose(state.Q @ state.alpha, state.fbar, atol=1e-9)
    assert torch.allclose(ds.y - 1e-3 * state.alpha, state.fbar, atol=1e-12)
    # An (N, 1) target would broadcast y - fbar into an (N, N) matrix: it must be refused.
    with pytest.raises(ValueError, match="y must be"):
        eos.EoSEvaluator(ds.X, ds.y[:, None])
    result = eos.solve_eos(ds.X, ds.y)
    assert result.alpha.shape == (N,) and result.fbar.shape == (N,) and result.fbar0.shape == (N,)


def test_label_term_is_alpha_alpha_t_not_sig2_scaled():
    """A = M^{-1} - alpha alpha^T with alpha alpha^T = (y - fbar)(y - fbar)^T / sig2^2."""
    ds = paper_data(48, 2)
    sig2 = 1e-2
    ev = eos.EoSEvaluator(ds.X, ds.y, paper(sig2=sig2, siga2=0.5))
    S = random_sigma(2, seed=4)
    state = ev.state(S)
    M_inv = torch.linalg.inv(state.Q + sig2 * torch.eye(48, dtype=torch.float64))
    residual = ds.y - state.fbar
    for A, expected in ((M_inv - torch.outer(residual, residual) / sig2**2, True),
                        (M_inv - sig2 * torch.outer(residual, residual), False)):
        S_var = S.clone().requires_grad_(True)
        (A * (0.5 * activations.kernel_phi(ds.X @ S_var @ ds.X.T, "erf"))).sum().backward()
        grad = 0.5 * (S_var.grad + S_var.grad.T)
        # tolerance as in test_closed_form_gradient_matches_autograd; the sig2-scaled variant
        # differs by O(1) relative, far outside it.
        assert torch.allclose(state.T, grad, rtol=0, atol=1e-8 * grad.abs().max()) is expected


def test_unusable_sigma_raises_evaluation_error():
    ds = paper_data(16, 2)
    ev = eos.EoSEvaluator(ds.X, ds.y)
    with pytest.raises(eos.EvaluationError):
        ev.state(-torch.eye(2, dtype=torch.float64))


# -- the action --------------------------------------------------------------------------------

@pytest.mark.parametrize("activation,sig2", [("erf", 1e-6), ("erf", 1e-2), ("relu", 1e-6), ("relu", 1e-2)])
def test_action_and_gradient_match_autograd_and_finite_differences(activation, sig2):
    ds = paper_data(40, 3, seed=2)
    params = dict(activation=activation, sigw2=1.0, siga2=0.3, sig2=sig2)
    p = paper(siga2=0.3, sig2=sig2)
    S = random_sigma(3, seed=5) / 3
    chi = 50.0
    value, grad = eos.action(ds.X, ds.y, S, chi, p, activation=activation)
    S_var = S.clone().requires_grad_(True)
    ref = dense_action(ds.X, ds.y, S_var, chi, **params)
    ref.backward()
    ref = ref.detach()
    ref_grad = 0.5 * (S_var.grad + S_var.grad.T)
    # Value: Cholesky log-diagonals against slogdet and a dense solve; |S| ~ 1e2..1e6 and both are
    # backward stable, so they agree to ~1e-12 relative (kappa(M) ~ 1e6 at sig2 = 1e-6).
    assert math.isclose(value, ref.item(), rel_tol=1e-10)
    # Gradient: the closed form (1/2)[chi((d/sigw2) I - Sigma^{-1}) + T] against autograd through
    # the whole of S (A not held fixed): equal up to the cancellation noted for T (1e-8 relative).
    assert torch.allclose(grad, ref_grad, rtol=0, atol=1e-8 * ref_grad.abs().max())
    # And against a central difference of S along a random symmetric direction: truncation
    # O(eps^2 S''') and round-off O(1e-16 |S| / eps) with eps = 1e-5 relative: ~1e-6 of the slope.
    g = torch.Generator().manual_seed(7)
    D = torch.randn(3, 3, generator=g, dtype=torch.float64)
    D = (D + D.T) * float(S.abs().max())
    eps = 1e-5
    plus, _ = eos.action(ds.X, ds.y, S + eps * D, chi, p, activation=activation)
    minus, _ = eos.action(ds.X, ds.y, S - eps * D, chi, p, activation=activation)
    slope = float((grad * D).sum())
    assert math.isclose((plus - minus) / (2 * eps), slope, rel_tol=1e-5, abs_tol=1e-9 * abs(value) / eps)


def test_stationary_points_of_the_action_solve_the_eos():
    """grad S = (chi/2)(P - Sigma^{-1}) with P the precision of the map: zero exactly where
    Sigma = Sigma_new, for any Sigma (an identity, checked at random points)."""
    ds = paper_data(32, 3)
    ev = eos.EoSEvaluator(ds.X, ds.y, paper(siga2=0.2, sig2=1e-3))
    for seed in range(3):
        state = ev.state(random_sigma(3, seed))
        chi = 20.0
        P = torch.linalg.inv(ev.sigma_new(state.T, chi))
        expected = 0.5 * chi * (P - torch.linalg.inv(state.Sigma))
        assert torch.allclose(ev.action_gradient(state, chi), expected, rtol=0, atol=1e-10 * expected.abs().max())


# -- solutions ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("N", [128, 256, 1024])
def test_d1_solution_is_the_brute_force_minimum_of_the_action(N):
    """d = 1, erf, the paper's settings: the solver's Sigma is the global minimum of S found by a
    dense log grid of S over [1e-7, 316], refined by a bracketed root of dS/ds (autograd)."""
    ds = paper_data(N, 1)
    params = dict(sigw2=1.0, siga2=1.0 / 128, sig2=1e-6)
    chi = 500.0
    grid = np.logspace(-7, 2.5, 58)
    with torch.no_grad():
        values = [float(dense_action(ds.X, ds.y, torch.tensor([[s]], dtype=torch.float64), chi, **params))
                  for s in grid]
    i = int(np.argmin(values))
    assert 0 < i < len(grid) - 1  # an interior minimum, not a collapse toward either end
    s_star = brentq(lambda s: dense_derivative_1d(ds.X, ds.y, s, chi, **params), grid[i - 1], grid[i + 1],
                    xtol=1e-14, rtol=1e-13)
    result = eos.solve_eos(ds.X, ds.y, paper(h=chi))
    assert result.status == "ok" and result.certified
    # Both points solve the same scalar equation to ~1e-9 (rtol 1e-8 of the solver, through a
    # conditioning of ~1/34 at d = 1: the map's slope is -33 there), so 1e-6 is a wide margin; a
    # collapsed Sigma ~ 1e-7 or the other end of the grid misses by orders of magnitude.
    assert math.isclose(float(result.Sigma), s_star, rel_tol=1e-6)
    # The AK collapses far more than the NNGP here (the earlier solver reported Sigma -> 0 as ok).
    assert metrics.nc1_kernel(result.Q, ds.labels) < 0.9 * metrics.nc1_kernel(result.Q0, ds.labels)


@pytest.mark.parametrize("strategy", eos.STRATEGIES)
@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_converged_solution_satisfies_the_eos(strategy, activation):
    ds = paper_data(96, 4)
    rtol = 1e-8
    # ReLU with the paper's sig2 = 1e-6 loses the annealed fixed-point branch near chi ~ 5000;
    # the fixed-point strategies are checked with sig2 = 1e-3 there (minimize handles 1e-6 below).
    params = paper(sig2=1e-6 if activation == "erf" else 1e-3)
    result = eos.solve_eos(ds.X, ds.y, replace(params, annealing_factors=SCHEDULE, strategy=strategy, rtol=rtol),
                           activation=activation)
    assert result.converged and result.status == "ok" and result.factor == 500
    # Re-evaluate from scratch with a fresh evaluator: the same float64 arithmetic on one thread,
    # so the residual is the solver's own up to run-to-run BLAS round-off (<< 1% of rtol).
    ev = eos.EoSEvaluator(ds.X, ds.y, params, activation=activation)
    state = ev.state(result.Sigma)
    assert ev.rel_residual(state, 500.0) <= 1.01 * rtol
    assert math.isclose(ev.action(state, 500.0), result.action, rel_tol=1e-12)
    # Not the trivial point: the EoS moved Sigma away from the NNGP limit and kept it positive.
    assert (result.Sigma - result.Sigma0).abs().max() > 1e-3 * result.Sigma0.abs().max()
    assert torch.linalg.eigvalsh(result.Sigma).min() > 0
    assert result.curvature > 0


@pytest.mark.parametrize("d", [1, 8, 32])
def test_relu_with_the_papers_sig2_converges(d):
    ds = paper_data(256, d)
    result = eos.solve_eos(ds.X, ds.y, activation="relu")
    assert result.status == "ok" and result.certified and result.rel_residual <= 1e-8


@pytest.mark.parametrize("strategy", ["anderson", "newton-krylov"])
@pytest.mark.parametrize("activation,d,sig2", [("erf", 2, 1e-6), ("erf", 8, 1e-6), ("erf", 32, 1e-6),
                                              ("relu", 8, 1e-3)])
def test_every_strategy_agrees_with_the_default(strategy, activation, d, sig2):
    """Cells where the earlier default (anderson) converged away from Sigma -> 0 (d >= 2)."""
    ds = paper_data(128, d, seed=1)
    params = paper(sig2=sig2)
    default = eos.solve_eos(ds.X, ds.y, params, activation=activation)
    other = eos.solve_eos(ds.X, ds.y, replace(params, annealing_factors=SCHEDULE, strategy=strategy),
                          activation=activation)
    assert default.status == "ok" and other.status == "ok"
    # Two points within rtol = 1e-8 of one fixed point; NC1 is smooth in Sigma (observed gaps
    # ~1e-9), so 1e-6 fails only for a different solution.
    nc1_default, nc1_other = (float(metrics.nc1_kernel(r.Q, ds.labels)) for r in (default, other))
    assert math.isclose(nc1_default, nc1_other, rel_tol=1e-6)
    assert math.isclose(default.action, other.action, rel_tol=1e-10)


def two_well_problem():
    """d = 1 data whose action at chi = 10 has two local minima (found by a scan of S over
    s in [1e-6, 1e3]): s ~ 0.18 (S ~ 19812.6) and s ~ 10.9 (S ~ 19679.3, the global one)."""
    ds = data.gaussian_data((32, 32), 1, (-1.0, 1.0), (1.5, 1.5), 0, 0)
    return ds, paper(sig2=1e-3, h=10.0)


def test_two_local_minima_the_least_action_wins():
    ds, params = two_well_problem()
    factors = [1e4, 1e3, 1e2, 30.0]
    # newton-krylov's annealed branch ends in the shallower well; minimize finds the deeper one.
    alone = eos.solve_eos(ds.X, ds.y, replace(params, annealing_factors=factors, strategy="newton-krylov"))
    assert alone.status == "ok" and float(alone.Sigma) < 1.0
    both = eos.solve_eos(ds.X, ds.y, replace(params, annealing_factors=factors, strategy="newton-krylov",
                                             candidates=("minimize",)))
    assert both.status == "ok" and float(both.Sigma) > 5.0 and both.action < alone.action - 100
    assert both.origin.startswith("minimize") and "least action" in both.message
    assert [c.converged for c in both.candidates] == [True, True]
    assert both.candidates[0].action == pytest.approx(alone.action, rel=1e-12)
    assert both.candidates[0].sigma_gap > 0.5
    # The deeper well is the global minimum: a brute-force scan agrees.
    grid = np.logspace(-6, 3, 200)
    with torch.no_grad():
        values = [float(dense_action(ds.X, ds.y, torch.tensor([[s]], dtype=torch.float64), 10.0,
                                     sigw2=1.0, siga2=1 / 128, sig2=1e-3)) for s in grid]
    assert abs(math.log(grid[int(np.argmin(values))] / float(both.Sigma))) < math.log(grid[1] / grid[0])


def test_certificate_tells_minima_from_the_maximum_between_them():
    ds, params = two_well_problem()
    chi = params.h
    ev = eos.EoSEvaluator(ds.X, ds.y, params)
    deriv = lambda s: dense_derivative_1d(ds.X, ds.y, s, chi, sig2=params.sig2)  # noqa: E731
    # Stationary points by bracketed roots of dS/ds: the two wells and the barrier between them.
    points = [brentq(deriv, a, b, xtol=1e-14) for a, b in ((0.05, 0.5), (0.5, 5.0), (5.0, 30.0))]
    curvatures = [eos._curvature(ev, ev.state(torch.tensor([[s]], dtype=torch.float64)), chi) for s in points]
    assert curvatures[0] > 0 and curvatures[2] > 0 and curvatures[1] < 0


def test_non_convergence_is_reported_and_never_ok():
    ds = paper_data(64, 4)
    for strategy in eos.STRATEGIES:
        result = eos.solve_eos(ds.X, ds.y, paper(annealing_factors=(1e3,), strategy=strategy, rtol=1e-14, maxiter=1,
                                                 max_subdivisions=1))
        assert not result.converged and result.status == "not_converged" and not result.certified
        assert result.rel_residual > 1e-14 and result.failed_factor is not None
        assert "did not converge" in result.message
        failed = [s for s in result.steps if not s.accepted]
        assert failed and all(s.evaluations >= 1 and s.rel_residual > 1e-14 for s in failed)
        assert max(s.depth for s in result.steps) == 1  # subdivided once before giving up


def test_subdivision_rescues_a_hard_step():
    # Straight from the NNGP limit to h fails for anderson on these data (it stalls in 5
    # iterations); inserted geometric factors make every step easy.
    ds = paper_data(128, 8)
    result = eos.solve_eos(ds.X, ds.y, paper(annealing_factors=(), strategy="anderson", rtol=1e-6, maxiter=5,
                                             max_subdivisions=6))
    assert result.converged
    assert any(not s.accepted for s in result.steps) and max(s.depth for s in result.steps) >= 1
    assert result.steps[-1].factor == 500 and result.steps[-1].accepted


def test_huge_annealing_factor_stays_at_the_nngp_limit():
    ds = paper_data(128, 8)
    chi = 1e12
    result = eos.solve_eos(ds.X, ds.y, paper(h=chi, rtol=1e-12))
    assert result.status == "ok"
    ev = eos.EoSEvaluator(ds.X, ds.y)
    T0 = ev.state(ev.nngp_sigma()).T
    # Sigma = [(d/sigw2) I + T/chi]^{-1} = Sigma0 - Sigma0 (T/chi) Sigma0 + O(chi^-2): the
    # distance is bounded by (sigw2/d)^2 max|T| d / chi (x2 margin for the O(chi^-2) term).
    bound = 2 * (1.0 / 8) ** 2 * T0.abs().max() * 8 / chi
    assert (result.Sigma - result.Sigma0).abs().max() <= bound
    assert torch.equal(result.Sigma0, torch.eye(8, dtype=torch.float64) / 8)
    nngp = kernels.limiting_kernels_nc1(ds.X, ds.labels, NetworkParams(final_weight_std=1.0))["post1"]
    assert math.isclose(float(metrics.nc1_kernel(result.Q, ds.labels)), float(nngp), rel_tol=1e-7)
    assert math.isclose(float(metrics.nc1_kernel(result.Q0, ds.labels)), float(nngp), rel_tol=1e-10)


@pytest.mark.parametrize("d", [2, 8, 32])
def test_ak_collapses_more_than_the_nngp_on_paper_data(d):
    ds = paper_data(256, d)
    result = eos.solve_eos(ds.X, ds.y)
    assert result.status == "ok"
    ak, nngp = (float(metrics.nc1_kernel(Q, ds.labels)) for Q in (result.Q, result.Q0))
    assert ak < 0.9 * nngp  # observed ratios 0.5-0.75 on these draws


def test_annealed_minimize_reports_every_accepted_step_and_a_direct_candidate():
    ds = paper_data(64, 2)
    seen = []
    result = eos.solve_eos(ds.X, ds.y, paper(annealing_factors=SCHEDULE), anneal=True,
                           on_accept=lambda chi, state, step: seen.append((chi, state, step)))
    assert [chi for chi, _, _ in seen] == [math.inf, *SCHEDULE, 500.0]
    assert seen[0][2] is None and torch.equal(seen[0][1].Sigma, result.Sigma0)
    for chi, state, step in seen[1:]:
        assert step.factor == chi and step.accepted and step.rel_residual <= 1e-8
    assert [c.origin for c in result.candidates] == ["minimize, annealed", "minimize, direct at chi=h"]
    # One minimum here: both candidates are the same point, and the result is one of them.
    assert all(c.converged and c.sigma_gap < 1e-6 for c in result.candidates)
    assert result.action == min(c.action for c in result.candidates)


def test_solves_are_reproducible():
    ds = paper_data(128, 8)
    a, b = (eos.solve_eos(ds.X, ds.y) for _ in range(2))
    assert torch.equal(a.Sigma, b.Sigma) and a.evaluations == b.evaluations


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", eos.STRATEGIES)
def test_cuda_matches_cpu(strategy):
    ds = paper_data(128, 4)
    cpu, gpu = (eos.solve_eos(ds.X, ds.y, paper(annealing_factors=SCHEDULE, strategy=strategy), device=dev)
                for dev in ("cpu", "cuda"))
    assert gpu.status == "ok" and cpu.status == "ok"
    # Both within rtol = 1e-8 of the same fixed point (conditioning ~1 at d = 4).
    assert (cpu.Sigma - gpu.Sigma).abs().max() <= 1e-6 * cpu.Sigma.abs().max()


def test_curvature_is_one_minus_the_slope_of_the_map_at_d1():
    """At a stationary point the Hessian of S is (chi/2) Sigma^{-1} (I - J) Sigma^{-1}, J the
    Jacobian of Sigma -> Sigma_new (docs/MATH.md section 7): at d = 1 the relative curvature is
    1 - J exactly. J from a central difference of the map, independent of the certificate."""
    ds = paper_data(256, 1)
    result = eos.solve_eos(ds.X, ds.y, PAPER)
    ev = eos.EoSEvaluator(ds.X, ds.y, PAPER)
    s, h = float(result.Sigma), 1e-6
    new = [float(ev.sigma_new(ev.state(torch.tensor([[v]], dtype=torch.float64)).T, 500.0)) for v in (s * (1 + h), s * (1 - h))]
    slope = (new[0] - new[1]) / (2 * h * s)
    assert slope < -1  # the unstable map that made plain iteration collapse
    # Both are finite differences with relative steps 1e-4 (certificate) and 1e-6: agreement to
    # ~1e-3 relative of a value ~30.
    assert math.isclose(result.curvature, 1 - slope, rel_tol=2e-3)


def test_a_tolerance_below_the_float64_noise_is_reported_not_met():
    """rtol = 1e-15 is below what float64 evaluations of the map can resolve: the solve stops at
    the near-solution (no subdivision of chi), says how large the noise is, and is not ok."""
    ds = paper_data(64, 2)
    result = eos.solve_eos(ds.X, ds.y, paper(rtol=1e-15))
    assert result.status == "not_converged" and not result.certified
    assert "float64 noise of the map" in result.message
    assert result.factor == 500 and all(s.depth == 0 for s in result.steps)
    # The point it stopped at is the solution that rtol = 1e-8 finds, to the accuracy of both.
    reference = eos.solve_eos(ds.X, ds.y, PAPER)
    assert result.rel_residual < 1e-9
    assert (result.Sigma - reference.Sigma).abs().max() <= 1e-6 * reference.Sigma.abs().max()

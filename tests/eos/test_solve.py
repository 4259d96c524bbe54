"""Solving the EoS: strategies, continuation, least action, status (docs/MATH.md section 7)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from shallow_collapse import eos, kernels, metrics
from shallow_collapse.config import SCHEMA
from shallow_collapse.params import EOS_STRATEGIES, NetworkParams, SolverOptions

from conftest import nc1_round_off
from eos_cases import (PAPER, SCHEDULE, action_gap_bound, action_round_off, dense_action, dense_derivative_1d,
                       kernel_jacobian, paper, paper_data, two_well_problem)


def _dense_params(params, activation="erf"):
    """The keys of :func:`dense_action` / :func:`action_round_off` from EoSParams."""
    return dict(activation=activation, sigw2=params.sigw2, siga2=params.siga2, sig2=params.sig2)


def _solution_distance_bound(Sigma, rel_residuals, curvature):
    """Bound on max|Sigma_1 - Sigma_2| for two points whose residuals Sigma - Sigma_new are within
    ``rel_residuals`` (relative to max|Sigma|) of zero, near one minimum of S. There grad S =
    (chi/2) P R Sigma^-1 (R the residual, P = Sigma_new^-1 ~ Sigma^-1), and S's Hessian is at
    least ``curvature`` times the KL term's, (chi/2) Sigma^-1 (x) Sigma^-1 (the certificate). So
    |Sigma^-1/2 dSigma Sigma^-1/2| <= |Sigma^-1/2 (R1 - R2) Sigma^-1/2| / curvature, i.e.
    max|dSigma| <= kappa(Sigma) d (r1 + r2) max|Sigma| / curvature; x2 for P ~ Sigma^-1 and for a
    certificate that samples directions. This is the conditioning of the EoS at its solution."""
    d = Sigma.shape[0]
    return 2 * float(torch.linalg.cond(Sigma)) * d * sum(rel_residuals) * float(Sigma.abs().max()) / curvature


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
    result = eos.solve_eos(ds.X, ds.y, replace(params, annealing_factors=SCHEDULE),
                           SolverOptions(strategy=strategy, rtol=rtol),
                           activation=activation)
    assert result.converged and result.status == "ok" and result.factor == 500
    # Re-evaluate from scratch with a fresh evaluator: the same float64 arithmetic on one thread
    # (deterministic on one machine), so the residual is the solver's own, rtol (the solver's
    # tolerance; 1% slack), and the action equals the reported one within two computations'
    # round-off (action_round_off: N eps kappa(M) of the data terms), far below a stale action.
    ev = eos.EoSEvaluator(ds.X, ds.y, params, activation=activation)
    state = ev.state(result.Sigma)
    assert ev.rel_residual(state, 500.0) <= 1.01 * rtol
    tol, _ = action_round_off(ds.X, ds.y, result.Sigma, 500.0, _dense_params(params, activation))
    assert abs(ev.action(state, 500.0) - result.action) <= 2 * tol
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
    other = eos.solve_eos(ds.X, ds.y, replace(params, annealing_factors=SCHEDULE), SolverOptions(strategy=strategy),
                          activation=activation)
    assert default.status == "ok" and other.status == "ok"
    # Two points within rtol = 1e-8 of one fixed point; NC1 is smooth in Sigma (observed gaps
    # ~1e-9), so 1e-6 fails only for a different solution.
    nc1_default, nc1_other = (float(metrics.nc1_kernel(r.Q, ds.labels)) for r in (default, other))
    assert math.isclose(nc1_default, nc1_other, rel_tol=1e-6)
    # The actions: first order in the points' distance (trapezoid rule) plus each one's round-off,
    # ~N eps kappa(M) (action_gap_bound: 4e-8 relative at d = 2, sig2 = 1e-6, where the fixed 1e-10
    # it replaces was below the derivable round-off; observed <= 6e-14). A different solution
    # (another well, test_two_local_minima...: ~1% of S) is far outside it.
    gap = action_gap_bound(ds.X, ds.y, _dense_params(params, activation), default.Sigma, other.Sigma, 500.0)
    assert gap < 1e-6 * abs(default.action)
    assert abs(default.action - other.action) <= gap


def test_two_local_minima_the_least_action_wins():
    ds, params = two_well_problem()
    factors = [1e4, 1e3, 1e2, 30.0]
    # newton-krylov's annealed branch ends in the shallower well; minimize finds the deeper one.
    alone = eos.solve_eos(ds.X, ds.y, replace(params, annealing_factors=factors),
                          SolverOptions(strategy="newton-krylov"))
    assert alone.status == "ok" and float(alone.Sigma) < 1.0
    both = eos.solve_eos(ds.X, ds.y, replace(params, annealing_factors=factors),
                         SolverOptions(strategy="newton-krylov", candidates=("minimize",)))
    # the wells' actions differ by ~133 (two_well_problem), far beyond any round-off
    assert both.status == "ok" and float(both.Sigma) > 5.0 and both.action < alone.action - 100
    assert both.origin.startswith("minimize") and "least action" in both.message
    assert [c.converged for c in both.candidates] == [True, True]
    # The newton-krylov candidate is the same solve as alone: equal within two computations of
    # the action at one Sigma (action_round_off); the wells differ by ~133 (two_well_problem).
    tol, _ = action_round_off(ds.X, ds.y, alone.Sigma, 10.0, _dense_params(params))
    assert abs(both.candidates[0].action - alone.action) <= 2 * tol
    assert both.candidates[0].sigma_gap > 0.5
    # The deeper well is the global minimum: a brute-force scan agrees.
    grid = np.logspace(-6, 3, 200)
    with torch.no_grad():
        values = [float(dense_action(ds.X, ds.y, torch.tensor([[s]], dtype=torch.float64), 10.0,
                                     sigw2=1.0, siga2=1 / 128, sig2=1e-3)) for s in grid]
    assert abs(math.log(grid[int(np.argmin(values))] / float(both.Sigma))) < math.log(grid[1] / grid[0])


def test_non_convergence_is_reported_and_never_ok():
    ds = paper_data(64, 4)
    for strategy in eos.STRATEGIES:
        result = eos.solve_eos(ds.X, ds.y, paper(annealing_factors=(1e3,)),
                               SolverOptions(strategy=strategy, rtol=1e-14, maxiter=1, max_subdivisions=1))
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
    result = eos.solve_eos(ds.X, ds.y, paper(annealing_factors=()),
                           SolverOptions(strategy="anderson", rtol=1e-6, maxiter=5, max_subdivisions=6))
    assert result.converged
    assert any(not s.accepted for s in result.steps) and max(s.depth for s in result.steps) >= 1
    assert result.steps[-1].factor == 500 and result.steps[-1].accepted


def test_huge_annealing_factor_stays_at_the_nngp_limit():
    ds = paper_data(128, 8)
    chi = 1e12
    result = eos.solve_eos(ds.X, ds.y, paper(h=chi), SolverOptions(rtol=1e-12))
    assert result.status == "ok"
    ev = eos.EoSEvaluator(ds.X, ds.y)
    T0 = ev.state(ev.nngp_sigma()).T
    # Sigma = [(d/sigw2) I + T/chi]^{-1} = Sigma0 - Sigma0 (T/chi) Sigma0 + O(chi^-2): the
    # distance is bounded by (sigw2/d)^2 max|T| d / chi (x2 margin for the O(chi^-2) term).
    bound = 2 * (1.0 / 8) ** 2 * T0.abs().max() * 8 / chi
    assert (result.Sigma - result.Sigma0).abs().max() <= bound
    assert torch.equal(result.Sigma0, torch.eye(8, dtype=torch.float64) / 8)
    nngp = kernels.limiting_kernels_nc1(ds.X, ds.labels, NetworkParams(final_weight_std=1.0))["post1"]
    # Q0 and the foundation's NNGP: two float64 evaluations of one kernel, whose NC1 differs by
    # nc1_round_off (~1e-12 relative here). Q at Sigma moves each entry by at most
    # sum_ab |dQ/dSigma_ab| bound (the Jacobian by autograd), carried to NC1 to first order.
    dQ = kernel_jacobian(ds.X, result.Sigma0, "erf", PAPER.siga2).abs().sum((-2, -1)) * float(bound)
    assert abs(float(metrics.nc1_kernel(result.Q, ds.labels)) - float(nngp)) <= nc1_round_off(result.Q0, ds.labels,
                                                                                               dK=dQ)
    assert abs(float(metrics.nc1_kernel(result.Q0, ds.labels)) - float(nngp)) <= nc1_round_off(result.Q0, ds.labels)


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
    # One minimum here: both candidates are the same point (within the distance their residuals
    # allow at the EoS's conditioning, _solution_distance_bound), and the result is one of them.
    gap_bound = _solution_distance_bound(result.Sigma, [c.rel_residual for c in result.candidates],
                                         result.curvature) / float(result.Sigma.abs().max())
    assert gap_bound < 1e-6
    assert all(c.converged and c.sigma_gap <= gap_bound for c in result.candidates)
    # At the same point (within SAME_POINT) the primary branch is kept, so its action may exceed
    # the other's by round-off and the first-order change over their distance only (measured
    # 5e-14 relative on an AVX-512 machine, 1.4e-14 on Haswell). Bound: each action's round-off
    # (action_round_off) plus max|grad S| sum|dSigma| with sum|dSigma| <= d^2 gap max|Sigma|, and
    # the second-order (chi/2) |Sigma^-1|^2 |dSigma|_F^2 times a relative curvature below 100.
    assert result.action in [c.action for c in result.candidates]
    gap = max(c.sigma_gap for c in result.candidates) * float(result.Sigma.abs().max())
    d, chi = result.Sigma.shape[0], 500.0
    _, grad = eos.action(ds.X, ds.y, result.Sigma, chi, paper(annealing_factors=SCHEDULE))
    inv_norm = float(torch.linalg.matrix_norm(torch.linalg.inv(result.Sigma), 2))
    tol = (2 * action_round_off(ds.X, ds.y, result.Sigma, chi, _dense_params(PAPER))[0]
           + float(grad.abs().max()) * d**2 * gap + 100 * 0.5 * chi * inv_norm**2 * (d * gap) ** 2)
    assert result.action - min(c.action for c in result.candidates) <= tol


def test_solves_are_reproducible():
    ds = paper_data(128, 8)
    a, b = (eos.solve_eos(ds.X, ds.y) for _ in range(2))
    assert torch.equal(a.Sigma, b.Sigma) and a.evaluations == b.evaluations


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", eos.STRATEGIES)
def test_cuda_matches_cpu(strategy):
    ds = paper_data(128, 4)
    cpu, gpu = (eos.solve_eos(ds.X, ds.y, paper(annealing_factors=SCHEDULE), SolverOptions(strategy=strategy),
                                device=dev)
                for dev in ("cpu", "cuda"))
    assert gpu.status == "ok" and cpu.status == "ok"
    # Both within rtol = 1e-8 of the same fixed point (conditioning ~1 at d = 4).
    assert (cpu.Sigma - gpu.Sigma).abs().max() <= 1e-6 * cpu.Sigma.abs().max()


def test_a_tolerance_below_the_float64_noise_is_reported_not_met():
    """rtol = 1e-15 is below what float64 evaluations of the map can resolve: the solve stops at
    the near-solution (no subdivision of chi), says how large the noise is, and is not ok."""
    ds = paper_data(64, 2)
    result = eos.solve_eos(ds.X, ds.y, PAPER, SolverOptions(rtol=1e-15))
    assert result.status == "not_converged" and not result.certified
    assert "float64 noise of the map" in result.message
    assert result.factor == 500 and all(s.depth == 0 for s in result.steps)
    # The point it stopped at is the solution that rtol = 1e-8 finds, to the accuracy of both:
    # it got below rtol / 10, and the distance follows from both residuals and the conditioning
    # of the EoS there (_solution_distance_bound, ~1e-11 relative; it replaces a fixed 1e-6).
    reference = eos.solve_eos(ds.X, ds.y, PAPER)
    assert result.rel_residual < 1e-9
    bound = _solution_distance_bound(reference.Sigma, (result.rel_residual, reference.rel_residual),
                                     reference.curvature)  # the unconverged result has no certificate
    assert bound < 1e-6 * float(reference.Sigma.abs().max())
    assert float((result.Sigma - reference.Sigma).abs().max()) <= bound


# -- ReLU at the paper's sig2 = 1e-6 -----------------------------------------------------------

@pytest.mark.parametrize("N", [256, 1024])
def test_relu_at_the_papers_sig2_d1_is_certified_and_homogeneous(N):
    """d = 1: Q(s) = s Q(1) for ReLU, so NC1 of the AK equals that of the NNGP exactly (NC1 is
    scale invariant); the rank-two evaluation reaches rtol where the dense one stalled at 1e-6."""
    ds = paper_data(N, 1)
    result = eos.solve_eos(ds.X, ds.y, PAPER, activation="relu")
    assert result.status == "ok" and result.certified and result.rel_residual <= SolverOptions.rtol
    nc1, nc1_0 = (float(metrics.nc1_kernel(Q, ds.labels)) for Q in (result.Q, result.Q0))
    # Q = s Q0 entrywise up to the kernel map's few roundings: nc1_round_off (~1e-11 relative)
    assert abs(nc1 - nc1_0) <= nc1_round_off(result.Q0, ds.labels)


@pytest.mark.parametrize("N", [256, 512])
def test_relu_at_the_papers_sig2_d2_is_ok_or_noise_limited_with_a_bound(N):
    """d = 2: where float64 cannot reach rtol (the map's own noise is above it), the solve says
    so with its own status, certified, and a finite NC1 error bound; never a bare not_converged."""
    ds = paper_data(N, 2)
    result = eos.solve_eos(ds.X, ds.y, PAPER, activation="relu")
    assert result.status in ("ok", "noise_limited"), result.message
    assert result.curvature > 0
    if result.status == "noise_limited":
        assert result.noise > SolverOptions.rtol and result.rel_residual <= 5.0 * result.noise
        assert not result.converged and not result.certified and "float64 noise" in result.message
        bound = eos.nc1_error_bound(result, ds.X, ds.labels, PAPER, activation="relu")
        assert 0 <= bound < 1e-2 * float(metrics.nc1_kernel(result.Q, ds.labels))



def test_newton_polish_core_reaches_known_minimum_and_rejects_bad_steps():
    """strategies.newton_steps on the gradient of a strictly convex function with a known minimum:
    a quadratic (the FD Hessian of a linear gradient is exact up to round-off, so one step lands
    on the minimum) and sum cosh(x - c) (minimum at c); a gradient that grows along every Newton
    step (a maximum) gets no step taken."""
    import numpy as np
    from shallow_collapse.eos.strategies import newton_steps
    rng = np.random.default_rng(0)
    B = rng.standard_normal((3, 3))
    A, c = B @ B.T + 3 * np.eye(3), rng.standard_normal(3)
    quad = lambda x: A @ (x - c)
    x, g, steps = newton_steps(quad, np.zeros(3), quad(np.zeros(3)), step=1e-3, maxiter=8, accept=0.5)
    # The difference A (x + h e - c) - A (x - c) cancels: the FD Hessian errs by ~eps |A| |x - c| / h
    # per entry, and the Newton step by kappa(A) times that relative, of |c|; x10 for the sums.
    tol = 10 * np.linalg.cond(A) * np.finfo(float).eps * (np.abs(c).max() + 1e-3) / 1e-3 * np.abs(c).max()
    assert steps >= 1 and np.abs(x - c).max() <= tol
    cosh = lambda x: np.sinh(x - c)
    x, g, steps = newton_steps(cosh, np.zeros(3), cosh(np.zeros(3)), step=1e-6, maxiter=8, accept=0.5)
    # Newton with a Hessian ~1e-6 off (difference step 1e-6) gains six digits a step once close:
    # 8 steps end at round-off (~1e-15); 1e-8 holds if the last step or two are lost.
    assert np.abs(x - c).max() < 1e-8
    # arctan(x - 3) from x = 0: the Newton step overshoots to where |g| is larger (Newton on
    # arctan diverges from |x - 3| > 1.39), so no step is taken.
    far = lambda x: np.arctan(x - 3.0)
    x0 = np.zeros(1)
    x, g, steps = newton_steps(far, x0, far(x0), step=1e-6, maxiter=8, accept=0.5)
    assert steps == 0 and np.array_equal(x, x0)


def test_the_strategy_names_the_config_reads_are_the_solvers():
    assert tuple(eos.STRATEGIES) == EOS_STRATEGIES
    assert SCHEMA["eos_update_strategy"].type.split("|") == list(EOS_STRATEGIES)

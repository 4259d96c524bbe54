"""The Equations-of-State solver (MATH.md section 6)."""
from __future__ import annotations

import math

import pytest
import torch

from shallow_collapse import data, eos, kernels, metrics

# The paper's AK hyper-parameters (configs/adaptive_kernels*.yml).
PAPER = dict(sigw2=1.0, siga2=1.0 / 128, sig2=1e-6, h=500)
SCHEDULE = [1e5, 1e4, 2e3, 1e3]


def paper_data(N, d, seed=0, repeat=0):
    return data.gaussian_data((N // 2, N // 2), d, (-2.0, 2.0), (0.5, 0.5), seed, repeat)


def random_sigma(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(d, d, generator=g, dtype=torch.float64)
    return R @ R.T / d + 0.3 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("activation", ["erf", "relu"])
@pytest.mark.parametrize("sig2", [0.1, 1e-6])
def test_closed_form_gradient_matches_autograd(activation, sig2):
    ds = data.gaussian_data((20, 20), 3, (-2.0, 2.0), (0.5, 0.5), 1, 0)
    ev = eos.EoSEvaluator(ds.X, ds.y, activation=activation, sigw2=1.0, siga2=0.3, sig2=sig2)
    S = random_sigma(3)
    state = ev.state(S)
    # Independent reference: dense inverse for A, autograd through Q(Sigma) with A held fixed.
    Q_ref = 0.3 * eos.kernel_phi(ds.X @ S @ ds.X.T, activation)
    M_inv = torch.linalg.inv(Q_ref + sig2 * torch.eye(40, dtype=torch.float64))
    alpha = M_inv @ ds.y
    A = M_inv - torch.outer(alpha, alpha)
    S_var = S.clone().requires_grad_(True)
    (A * (0.3 * eos.kernel_phi(ds.X @ S_var @ ds.X.T, activation))).sum().backward()
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
    state = eos.EoSEvaluator(ds.X, ds.y, activation=activation, siga2=0.5, sig2=1e-3).state(S)
    Kphi, _ = kernels.activation_maps(ds.X @ S @ ds.X.T, activation)
    # Same float64 formula written twice (asin vs asin, atan2 vs atan2): round-off only.
    assert torch.allclose(state.Q, 0.5 * Kphi, rtol=0, atol=1e-12)


def test_alpha_fbar_and_target_shapes():
    ds = paper_data(64, 2)
    ev = eos.EoSEvaluator(ds.X, ds.y, sig2=1e-3)
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
    result = eos.solve_eos(ds.X, ds.y, **PAPER, annealing_factors=[1e4], f_tol=1e-6)
    assert result.alpha.shape == (N,) and result.fbar.shape == (N,) and result.fbar0.shape == (N,)


def test_label_term_is_alpha_alpha_t_not_sig2_scaled():
    """A = M^{-1} - alpha alpha^T with alpha alpha^T = (y - fbar)(y - fbar)^T / sig2^2."""
    ds = paper_data(48, 2)
    sig2 = 1e-2
    ev = eos.EoSEvaluator(ds.X, ds.y, sig2=sig2, siga2=0.5)
    S = random_sigma(2, seed=4)
    state = ev.state(S)
    M_inv = torch.linalg.inv(state.Q + sig2 * torch.eye(48, dtype=torch.float64))
    residual = ds.y - state.fbar
    for A, expected in ((M_inv - torch.outer(residual, residual) / sig2**2, True),
                        (M_inv - sig2 * torch.outer(residual, residual), False)):
        S_var = S.clone().requires_grad_(True)
        (A * (0.5 * eos.kernel_phi(ds.X @ S_var @ ds.X.T, "erf"))).sum().backward()
        grad = 0.5 * (S_var.grad + S_var.grad.T)
        # tolerance as in test_closed_form_gradient_matches_autograd; the sig2-scaled variant
        # differs by O(1) relative, far outside it.
        assert torch.allclose(state.T, grad, rtol=0, atol=1e-8 * grad.abs().max()) is expected


def test_unusable_sigma_raises_evaluation_error():
    ds = paper_data(16, 2)
    ev = eos.EoSEvaluator(ds.X, ds.y)
    with pytest.raises(eos.EvaluationError):
        ev.state(-torch.eye(2, dtype=torch.float64))


@pytest.mark.parametrize("strategy", ["anderson", "newton-krylov"])
@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_converged_solution_satisfies_the_eos(strategy, activation):
    ds = paper_data(96, 4)
    f_tol = 1e-8
    # ReLU with the paper's sig2 = 1e-6: Sigma grows along the continuation and the branch is
    # lost near chi ~ 1000 (both strategies stall there, see the report), so ReLU uses sig2 = 1e-3.
    params = {**PAPER, "sig2": 1e-6 if activation == "erf" else 1e-3}
    result = eos.solve_eos(ds.X, ds.y, activation=activation, **params, annealing_factors=SCHEDULE,
                           strategy=strategy, f_tol=f_tol)
    assert result.converged and result.status == "ok" and result.factor == 500
    assert all(s.converged for s in result.steps if s.accepted)
    # Re-evaluate from scratch with a fresh evaluator: the same float64 arithmetic on one thread,
    # so the residual is the solver's own up to run-to-run BLAS round-off (<< 1% of f_tol).
    ev = eos.EoSEvaluator(ds.X, ds.y, activation=activation, sigw2=1.0, siga2=1 / 128, sig2=params["sig2"])
    F = ev.residual(ev.state(result.Sigma), 500.0)
    assert F.abs().max() <= 1.01 * f_tol
    # Not the trivial point: the EoS moved Sigma away from the NNGP limit and kept it positive.
    assert (result.Sigma - result.Sigma0).abs().max() > 100 * f_tol
    assert torch.linalg.eigvalsh(result.Sigma).min() > 0


def test_huge_annealing_factor_stays_at_the_nngp_limit():
    ds = paper_data(128, 8)
    chi = 1e12
    result = eos.solve_eos(ds.X, ds.y, **{**PAPER, "h": chi}, annealing_factors=[], f_tol=1e-12)
    assert result.converged
    ev = eos.EoSEvaluator(ds.X, ds.y, sigw2=1.0, siga2=1 / 128, sig2=1e-6)
    T0 = ev.state(ev.nngp_sigma()).T
    # Sigma = [(d/sigw2) I + T/chi]^{-1} = Sigma0 - Sigma0 (T/chi) Sigma0 + O(chi^-2): the
    # distance is bounded by (sigw2/d)^2 max|T| d / chi (x2 margin for the O(chi^-2) term).
    bound = 2 * (1.0 / 8) ** 2 * T0.abs().max() * 8 / chi
    assert (result.Sigma - result.Sigma0).abs().max() <= bound
    assert torch.equal(result.Sigma0, torch.eye(8, dtype=torch.float64) / 8)
    # Its NC1 is the NNGP's of the foundation kernels (sw^2 = sigw2 = 1, no bias): the same
    # kernel up to ~1e-9 relative shift of Sigma, so NC1 agrees to 1e-7 relative.
    nngp = kernels.limiting_kernels_nc1(ds.X, ds.labels, 2, "erf", 1.0, 1.0, 0.0)["post1"]
    assert math.isclose(float(metrics.nc1_kernel(result.Q, ds.labels)), float(nngp), rel_tol=1e-7)
    assert math.isclose(float(metrics.nc1_kernel(result.Q0, ds.labels)), float(nngp), rel_tol=1e-10)


@pytest.mark.parametrize("activation,d", [("erf", 2), ("erf", 8), ("relu", 8)])
def test_strategies_agree(activation, d):
    ds = paper_data(128, d, seed=1)
    f_tol = 1e-8
    params = {**PAPER, "sig2": 1e-6 if activation == "erf" else 1e-3}  # see the test above
    a, b = (eos.solve_eos(ds.X, ds.y, activation=activation, **params, annealing_factors=SCHEDULE,
                          strategy=s, f_tol=f_tol)
            for s in ("anderson", "newton-krylov"))
    assert a.converged and b.converged
    # Two points with max|F| <= f_tol differ by at most |(I - J)^{-1}| 2 f_tol; on these data the
    # observed gap is < 10 f_tol, so 100 f_tol allows for the conditioning and fails for another
    # branch (the loose default 5e-4 does allow other points: see configs/adaptive_kernels.yml).
    assert (a.Sigma - b.Sigma).abs().max() <= 100 * f_tol
    nc1_a, nc1_b = (float(metrics.nc1_kernel(r.Q, ds.labels)) for r in (a, b))
    assert math.isclose(nc1_a, nc1_b, rel_tol=1e-5)
    # The default strategy is the faster one in O(N^3) evaluations.
    assert a.evaluations < b.evaluations


@pytest.mark.parametrize("d", [2, 8, 32])
def test_ak_collapses_more_than_the_nngp_on_paper_data(d):
    ds = paper_data(256, d)
    result = eos.solve_eos(ds.X, ds.y, **PAPER, annealing_factors=SCHEDULE, f_tol=1e-6)
    assert result.status == "ok"
    ak, nngp = (float(metrics.nc1_kernel(Q, ds.labels)) for Q in (result.Q, result.Q0))
    assert ak < 0.9 * nngp  # observed ratios 0.5-0.75 on these draws


def test_d1_collapses_sigma_and_says_so():
    """With the paper's sig2 = 1e-6 and d = 1, Sigma shrinks toward 0 (no non-zero fixed point):
    the absolute criterion then holds trivially, and the result's message says so."""
    ds = paper_data(256, 1)  # (at N=128 this draw keeps a non-zero Sigma ~ 2.6)
    result = eos.solve_eos(ds.X, ds.y, **PAPER, annealing_factors=SCHEDULE, f_tol=1e-6)
    assert result.converged and float(result.Sigma) < 1e-5
    assert "collapsed" in result.message


@pytest.mark.parametrize("strategy", ["anderson", "newton-krylov"])
def test_non_convergence_is_reported(strategy):
    ds = paper_data(64, 4)
    result = eos.solve_eos(ds.X, ds.y, **PAPER, annealing_factors=[1e3], strategy=strategy,
                           f_tol=1e-12, maxiter=1, max_subdivisions=1)
    assert not result.converged and result.status == "not_converged"
    assert result.failed_factor is not None and result.residual > 1e-12
    assert "did not converge" in result.message and f"{result.residual:.3g}" in result.message
    failed = [s for s in result.steps if not s.accepted]
    assert failed and all(s.evaluations >= 1 and s.residual > 1e-12 for s in failed)
    # The failed step was subdivided once (a geometric factor inserted) before giving up.
    assert max(s.depth for s in result.steps) == 1
    assert all(math.isfinite(s.seconds) and s.seconds >= 0 for s in result.steps)


def test_subdivision_rescues_a_hard_step():
    # Straight from the NNGP limit to h fails on these data (Anderson stalls in 5 iterations);
    # inserted geometric factors make every step easy.
    ds = paper_data(128, 8)
    result = eos.solve_eos(ds.X, ds.y, **PAPER, annealing_factors=[], f_tol=1e-6, maxiter=5,
                           max_subdivisions=6)
    assert result.converged
    assert any(not s.accepted for s in result.steps) and max(s.depth for s in result.steps) >= 1
    assert result.steps[-1].factor == 500 and result.steps[-1].accepted


def test_record_steps_snapshots():
    ds = paper_data(64, 2)
    result = eos.solve_eos(ds.X, ds.y, **PAPER, annealing_factors=SCHEDULE, f_tol=1e-6,
                           record_steps=True, labels=ds.labels)
    assert [s["factor"] for s in result.snapshots] == [math.inf, *SCHEDULE, 500.0]
    first, last = result.snapshots[0], result.snapshots[-1]
    assert math.isclose(first["nc1"], float(metrics.nc1_kernel(result.Q0, ds.labels)), rel_tol=1e-12)
    assert math.isclose(last["nc1"], float(metrics.nc1_kernel(result.Q, ds.labels)), rel_tol=1e-12)
    assert math.isclose(last["mse"], float(((ds.y - result.fbar) ** 2).mean()), rel_tol=1e-12)
    assert math.isclose(last["nc1"], last["tr_w"] / last["tr_b"], rel_tol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    ds = paper_data(128, 4)
    cpu, gpu = (eos.solve_eos(ds.X, ds.y, **PAPER, annealing_factors=SCHEDULE, f_tol=1e-8, device=dev)
                for dev in ("cpu", "cuda"))
    assert gpu.converged and (cpu.Sigma - gpu.Sigma).abs().max() <= 100 * 1e-8

"""The EoS map, its closed-form gradient and the action (docs/MATH.md sections 6 and 7)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from shallow_collapse import activations, data, eos
from shallow_collapse.eos.passes import passes_for

from conftest import assert_slope_is_a_central_difference, kernel_phi, solve_round_off
from eos_cases import dense_action, paper, paper_data, random_sigma, reference_q_g, reference_state


# -- the map and its closed-form gradient ------------------------------------------------------

@pytest.mark.parametrize("activation", ["erf", "relu"])
@pytest.mark.parametrize("sig2", [0.1, 1e-6])
def test_closed_form_gradient_matches_autograd(activation, sig2):
    ds = data.gaussian_data((20, 20), 3, (-2.0, 2.0), (0.5, 0.5), 1, 0)
    ev = eos.EoSEvaluator(ds.X, ds.y, paper(siga2=0.3, sig2=sig2), activation=activation)
    S = random_sigma(3)
    state = ev.state(S)
    # Independent reference: dense inverse for A, autograd through Q(Sigma) with A held fixed.
    Q_ref = 0.3 * kernel_phi(ds.X @ S @ ds.X.T, activation)
    M_inv = torch.linalg.inv(Q_ref + sig2 * torch.eye(40, dtype=torch.float64))
    alpha = M_inv @ ds.y
    A = M_inv - torch.outer(alpha, alpha)
    S_var = S.clone().requires_grad_(True)
    (A * (0.3 * kernel_phi(ds.X @ S_var @ ds.X.T, activation))).sum().backward()
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
    Kphi, _ = activations.get(activation).kernel_map.maps(ds.X @ S @ ds.X.T)
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
        (A * (0.5 * kernel_phi(ds.X @ S_var @ ds.X.T, "erf"))).sum().backward()
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

def _action_round_off(X, y, S, chi, params):
    """``(abs_tol, rel)``: a round-off bound on the action S(Sigma) computed by two backward-stable
    paths, and ``rel = N eps kappa(M)``, the relative error bound of M^{-1} y and M^{-1}.

    A Cholesky factorisation (or LU solve) of M is exact for M + E with ||E|| <= c N eps ||M||
    (Higham, Thm 10.3/10.4; c ~ 1 normwise in practice). Then with x = M^{-1} y:
    - the data term q = y^T M^{-1} y changes by |x^T E x| <= ||E|| ||x||^2 <= ||E|| q / lambda_min,
      i.e. by at most N eps kappa(M) q;
    - log det M changes by |tr(M^{-1} E)| <= N ||E|| / lambda_min = N (N eps kappa(M)).
    The prior part (d x d, well conditioned) adds a few eps of its size, covered by the slack.
    kappa(M) is computed here (~1e7 at sig2 = 1e-6, ~1e3 at 1e-2)."""
    N = len(y)
    M = params["siga2"] * kernel_phi(X @ S @ X.T, params["activation"]) \
        + params["sig2"] * torch.eye(N, dtype=torch.float64)
    rel = solve_round_off(N, float(torch.linalg.cond(M)))
    q = float(y @ torch.linalg.solve(M, y))
    d = S.shape[0]
    prior = 0.5 * chi * ((d / params["sigw2"]) * float(torch.trace(S)) + abs(float(torch.linalg.slogdet(S)[1])))
    return rel * (0.5 * q + 0.5 * N) + 64 * torch.finfo(torch.float64).eps * prior, rel


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
    value_tol, T_rel = _action_round_off(ds.X, ds.y, S, chi, params)
    # Value: Cholesky log-diagonals and solves against slogdet and a dense solve, both backward
    # stable; the bound is derived in _action_round_off (~1e-2 absolute, 1.2e-7 relative, for ReLU
    # at sig2 = 1e-6 where kappa(M) ~ 1e7; observed 1e-3..1e-5 of it on Haswell and SkylakeX
    # OpenBLAS). It still tells a wrong formula: the noise counted twice in M moves the action by
    # over 100 times the bound in every case.
    assert abs(value - ref.item()) <= value_tol
    wrong = dense_action(ds.X, ds.y, S, chi, **{**params, "sig2": 2 * sig2}).item()
    assert abs(wrong - ref.item()) > 100 * value_tol
    # Gradient: the closed form (1/2)[chi((d/sigw2) I - Sigma^{-1}) + T] against autograd through
    # the whole of S (A not held fixed). Only T = X^T G X depends on M^{-1} and alpha, whose
    # relative errors are <= N eps kappa(M) (as for the value); the 3 x 3 prior part is exact to
    # a few eps. So the error is bounded by N eps kappa(M) max|T| (observed below 1e-2 of it).
    T_ref = 2 * ref_grad - chi * ((S.shape[0] / params["sigw2"]) * torch.eye(S.shape[0], dtype=torch.float64)
                                  - torch.linalg.inv(S))
    assert float((grad - ref_grad).abs().max()) <= T_rel * float(T_ref.abs().max())
    assert_slope_is_a_central_difference(ds.X, ds.y, S, chi, p, activation, grad, torch.Generator().manual_seed(7))


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


# -- the fast evaluation against the plain dense one -------------------------------------------

def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("activation", ["erf", "relu"])
@pytest.mark.parametrize("d", [1, 3])
def test_fast_evaluation_equals_the_dense_reference(activation, d):
    """Compiled loops + LAPACK against :func:`reference_state`, where M is well conditioned
    (sig2 = 1e-2): two backward-stable inverses then agree to ~kappa(M) eps, below 1e-12.
    d = 1: every pair of points is collinear (the ReLU cosine is snapped to +-1)."""
    ds = paper_data(96, d, seed=3)
    S = random_sigma(d, seed=1)
    p = paper(siga2=0.5, sig2=1e-2)
    state = eos.EoSEvaluator(ds.X, ds.y, p, activation=activation).state(S)
    Q, alpha, nll, T, T_scale = reference_state(ds.X, ds.y, 0.5 * (S + S.T), activation, 0.5, 1e-2)
    assert _rel(state.Q, Q) < 1e-13 and _rel(state.alpha, alpha) < 1e-12
    # T = X^T G X sums terms of both signs (at d = 1, ReLU: |T| ~ 1e-6 of the sum of their sizes):
    # its round-off is relative to that sum, T_scale.
    assert float((state.T - T).abs().max()) < 1e-12 * T_scale
    assert math.isclose(state.nll, nll, rel_tol=1e-12)


@pytest.mark.parametrize("activation", ["erf", "relu"])
@pytest.mark.parametrize("d", [1, 3])
def test_compiled_q_and_g_equal_the_dense_forms_at_the_papers_sig2(activation, d):
    """The activation's fused forms on CPU (compiled) against :func:`reference_q_g` on the same K
    and the same A = M^{-1} - alpha alpha^T (entries ~1e12 at sig2 = 1e-6): round-off only."""
    ds = paper_data(96, d, seed=4)
    S = random_sigma(d, seed=2)
    K = ds.X @ S @ ds.X.T
    passes = passes_for(activations.get(activation).kernel_map)
    Q, ctx = passes.q(K.clone(), K.diagonal().clone(), 1 / 128)
    Q_ref, _ = reference_q_g(K, torch.zeros_like(K), activation, 1 / 128)
    M_inv = torch.linalg.inv(Q_ref + 1e-6 * torch.eye(96, dtype=torch.float64))
    alpha = M_inv @ ds.y
    A = M_inv - torch.outer(alpha, alpha)
    A = 0.5 * (A + A.T)
    G, scale = passes.g(A.clone(), ctx, 1 / 128)
    _, G_ref = reference_q_g(K, A, activation, 1 / 128)
    assert _rel(Q, Q_ref) < 1e-13 and torch.equal(Q, Q.T)
    assert _rel(scale * G, G_ref) < 1e-12 and torch.equal(G, G.T)


def test_collinear_relu_state_equals_the_dense_reference():
    """ReLU at d = 1 (Q of rank two, Woodbury in O(N)) against the dense Cholesky path where M
    is well conditioned (sig2 = 1e-2); at sig2 = 1e-6 the dense path loses ~1e-6 of T."""
    ds = paper_data(128, 1, seed=5)
    S = torch.tensor([[0.7]], dtype=torch.float64)
    state = eos.EoSEvaluator(ds.X, ds.y, paper(siga2=0.5, sig2=1e-2), activation="relu").state(S)
    Q, alpha, nll, T, T_scale = reference_state(ds.X, ds.y, S, "relu", 0.5, 1e-2)
    assert _rel(state.Q, Q) < 1e-13 and _rel(state.alpha, alpha) < 1e-10
    assert _rel(state.fbar, ds.y - 1e-2 * alpha) < 1e-10
    assert float((state.T - T).abs().max()) < 1e-12 * T_scale and math.isclose(state.nll, nll, rel_tol=1e-12)


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_reused_scratch_matrices_leave_earlier_states_intact(activation):
    """Every evaluation reuses the evaluator's two N x N scratch matrices (K, and M with its factor,
    inverse, A and G): a later evaluation must not change an earlier state, and evaluating the same
    Sigma again gives the same bits."""
    ds = paper_data(64, 3, seed=6)
    ev = eos.EoSEvaluator(ds.X, ds.y, paper(siga2=0.5, sig2=1e-3), activation=activation)
    S1, S2 = random_sigma(3, seed=1), random_sigma(3, seed=2)
    first = ev.state(S1)
    kept = [t.clone() for t in (first.Q, first.T, first.alpha, first.fbar)]
    second = ev.state(S2)
    again = ev.state(S1)
    assert not torch.equal(second.Q, first.Q)
    for t, k in zip((first.Q, first.T, first.alpha, first.fbar), kept):
        assert torch.equal(t, k)
    for t, k in zip((again.Q, again.T, again.alpha, again.fbar), kept):
        assert torch.equal(t, k)
    assert again.nll == first.nll


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_g_pass_is_given_the_full_symmetric_a(activation, monkeypatch):
    """The contract of the ``g`` pass (shallow_collapse/eos/passes.py): A = M^{-1} - alpha alpha^T in
    full (a fused form may read either triangle), whatever the evaluator's linear algebra leaves behind."""
    ds = paper_data(48, 2, seed=3)
    ev = eos.EoSEvaluator(ds.X, ds.y, paper(siga2=0.5, sig2=1e-2), activation=activation)
    seen = []
    g = ev.passes.g

    def spy(A, ctx, siga2):
        seen.append(A.clone())
        return g(A, ctx, siga2)

    monkeypatch.setattr(ev, "passes", dataclasses.replace(ev.passes, g=spy))
    state = ev.state(random_sigma(2, seed=5))
    M_inv = torch.linalg.inv(state.Q + 1e-2 * torch.eye(48, dtype=torch.float64))
    A_ref = M_inv - torch.outer(state.alpha, state.alpha)
    (A,) = seen
    # M is well conditioned at sig2 = 1e-2: two inverses agree to ~1e-13 of max|A|.
    assert torch.equal(A, A.T) and _rel(A, A_ref) < 1e-10

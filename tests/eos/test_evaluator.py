"""The EoS map, its closed-form gradient and the action (docs/MATH.md sections 6 and 7)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from shallow_collapse import activations, data, eos
from shallow_collapse.eos.passes import passes_for

from conftest import assert_slope_is_a_central_difference, kernel_phi, solve_round_off
from eos_cases import (EPS, action_round_off, dense_action, kernel_map_round_off, paper, paper_data, random_sigma,
                       reference_q_g, reference_state, t_round_off)


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
    # Two factorisations of M and two sums of N^2 terms whose sizes exceed |T| by up to 5e6 (ReLU,
    # sig2 = 1e-6: A's entries reach ~1e12 and cancel): the bound is derived and computed in
    # t_round_off, ~kappa(M) (1e-13 of max|T| at sig2 = 0.1, 2e-8 (erf) and 2e-6 (ReLU) at 1e-6,
    # where the fixed 1e-8 it replaces was below the derivable bound; observed 4e-10 for ReLU on
    # Haswell OpenBLAS). A wrong or missing term of T (e.g. the diagonal part) is O(1) relative.
    bound, _ = t_round_off(ds.X, ds.y, S, activation, 0.3, sig2)
    assert bound < 1e-2 * float(grad.abs().max())
    assert float((state.T - grad).abs().max()) <= bound
    assert float((state.Q - Q_ref).abs().max()) <= kernel_map_round_off(ds.X @ S @ ds.X.T, Q_ref)


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_q_matches_the_foundation_kernel_maps(activation):
    ds = paper_data(32, 4)
    S = random_sigma(4, seed=2)
    state = eos.EoSEvaluator(ds.X, ds.y, paper(siga2=0.5, sig2=1e-3), activation=activation).state(S)
    K = ds.X @ S @ ds.X.T
    Kphi, _ = activations.get(activation).kernel_map.maps(K)
    # Same float64 formula written twice (asin vs asin, atan2 vs atan2): entrywise round-off only.
    assert float((state.Q - 0.5 * Kphi).abs().max()) <= kernel_map_round_off(K, 0.5 * Kphi)


def test_alpha_fbar_and_target_shapes():
    ds = paper_data(64, 2)
    ev = eos.EoSEvaluator(ds.X, ds.y, paper(sig2=1e-3))
    state = ev.state(ev.nngp_sigma())
    N = 64
    assert state.alpha.shape == (N,) and state.fbar.shape == (N,) and state.Q.shape == (N, N)
    assert state.T.shape == (2, 2)
    # fbar = Q alpha = y - sig2 alpha (MATH section 6). The evaluator forms y - sig2 alpha (one
    # multiply and subtract: equal up to an FMA's single rounding, 2 eps of the larger term);
    # Q alpha - fbar = M alpha - y is the residual of a backward-stable solve: <= N eps ||M|| ||alpha||
    # (Higham, Thm 10.3/10.4), plus as much again for the product Q alpha (a wrong sig2 in fbar
    # would leave 1e-3 |alpha| ~ 0.1).
    M = state.Q + 1e-3 * torch.eye(N, dtype=torch.float64)
    solve_residual = 2 * N * EPS * float(torch.linalg.matrix_norm(M, 2)) * float(torch.linalg.vector_norm(state.alpha))
    assert float((state.Q @ state.alpha - state.fbar).abs().max()) <= solve_residual
    assert float((ds.y - 1e-3 * state.alpha - state.fbar).abs().max()) <= 2 * EPS * float(
        torch.maximum(ds.y.abs(), 1e-3 * state.alpha.abs()).max())
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
    bound, _ = t_round_off(ds.X, ds.y, S, "erf", 0.5, sig2)
    for A, expected in ((M_inv - torch.outer(residual, residual) / sig2**2, True),
                        (M_inv - sig2 * torch.outer(residual, residual), False)):
        S_var = S.clone().requires_grad_(True)
        (A * (0.5 * kernel_phi(ds.X @ S_var @ ds.X.T, "erf"))).sum().backward()
        grad = 0.5 * (S_var.grad + S_var.grad.T)
        # the bound of test_closed_form_gradient_matches_autograd (here ~1e-13 of max|T|); the
        # sig2-scaled variant differs by O(1) relative, far outside it.
        assert (float((state.T - grad).abs().max()) <= bound) is expected


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
    value_tol, T_rel = action_round_off(ds.X, ds.y, S, chi, params)
    # Value: Cholesky log-diagonals and solves against slogdet and a dense solve, both backward
    # stable; the bound is derived in action_round_off (~1e-2 absolute, 1.2e-7 relative, for ReLU
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
    assert_slope_is_a_central_difference(ds.X, ds.y, S, chi, p, activation, grad, torch.Generator().manual_seed(7),
                                         value_tol=value_tol)


def test_stationary_points_of_the_action_solve_the_eos():
    """grad S = (chi/2)(P - Sigma^{-1}) with P the precision of the map: zero exactly where
    Sigma = Sigma_new, for any Sigma (an identity, checked at random points)."""
    ds = paper_data(32, 3)
    ev = eos.EoSEvaluator(ds.X, ds.y, paper(siga2=0.2, sig2=1e-3))
    for seed in range(3):
        state = ev.state(random_sigma(3, seed))
        chi = 20.0
        Sigma_new = ev.sigma_new(state.T, chi)
        P, Sigma_inv = torch.linalg.inv(Sigma_new), torch.linalg.inv(state.Sigma)
        expected = 0.5 * chi * (P - Sigma_inv)
        # Two d x d inverses (backward stable: d eps kappa relative each) and a difference that may
        # cancel: bounded by the sizes of both terms, not of the difference; 10 covers the few
        # products on top (observed ~1e-15 of max|expected|).
        d = state.Sigma.shape[0]
        tol = 0.5 * chi * 10 * d * EPS * (float(torch.linalg.cond(Sigma_new)) * float(P.abs().max())
                                          + float(torch.linalg.cond(state.Sigma)) * float(Sigma_inv.abs().max()))
        assert float((ev.action_gradient(state, chi) - expected).abs().max()) <= tol


# -- the fast evaluation against the plain dense one -------------------------------------------

def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _assert_state_within_round_off(state, reference, ds, S, activation, siga2, sig2):
    """The fast state against :func:`reference_state` within bounds computed from kappa(M):
    Q entrywise (:func:`kernel_map_round_off`); alpha = M^-1 y, two backward-stable solves, each
    within N eps kappa(M) relative (``solve_round_off``); fbar = y - sig2 alpha, so sig2 times
    alpha's error (plus N eps max|y| for a path that forms fbar by a sum of N terms, as the
    collinear one does); nll = y^T alpha / 2 + log det M / 2, each solve within N eps kappa(M) (q/2 + N/2)
    (see ``action_round_off``); T by :func:`t_round_off`. A wrong factor anywhere (sig2 or siga2
    counted twice, a missing term of G) is O(1e-2) relative or more, far outside all of these."""
    Q, alpha, nll, T = reference
    N = len(ds.y)
    assert float((state.Q - Q).abs().max()) <= kernel_map_round_off(ds.X @ S @ ds.X.T, Q)
    t_bound, kappa = t_round_off(ds.X, ds.y, S, activation, siga2, sig2)
    rel = solve_round_off(N, kappa, c=2)  # two solves
    assert _rel(state.alpha, alpha) <= rel
    assert float((state.fbar - (ds.y - sig2 * alpha)).abs().max()) <= sig2 * rel * float(alpha.abs().max()) \
        + N * EPS * float(ds.y.abs().max())
    assert abs(state.nll - nll) <= rel * (0.5 * abs(float(ds.y @ alpha)) + 0.5 * N)
    assert float((state.T - T).abs().max()) <= t_bound


@pytest.mark.parametrize("activation", ["erf", "relu"])
@pytest.mark.parametrize("d", [1, 3])
def test_fast_evaluation_equals_the_dense_reference(activation, d):
    """Compiled loops + LAPACK against :func:`reference_state`, where M is well conditioned
    (sig2 = 1e-2, kappa(M) ~ 3e3..7e3): two backward-stable factorisations then agree to the
    bounds of :func:`_assert_state_within_round_off`. d = 1: every pair of points is collinear (the ReLU cosine
    is snapped to +-1)."""
    ds = paper_data(96, d, seed=3)
    S = random_sigma(d, seed=1)
    p = paper(siga2=0.5, sig2=1e-2)
    state = eos.EoSEvaluator(ds.X, ds.y, p, activation=activation).state(S)
    S = 0.5 * (S + S.T)  # as the evaluator symmetrises it
    _assert_state_within_round_off(state, reference_state(ds.X, ds.y, S, activation, 0.5, 1e-2), ds, S, activation,
                                   0.5, 1e-2)


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
    # The same K and A go into both: no solve in between, so kappa(M) does not enter. Q is
    # entrywise (kernel_map_round_off); an off-diagonal G entry is a few products (a few eps of its
    # size), a diagonal one sums N terms of both signs: N eps of the sum of their sizes (Higham,
    # section 4.2), from reference_q_g's envelope; 4 covers the products around each term.
    assert float((Q - Q_ref).abs().max()) <= kernel_map_round_off(K, Q_ref) and torch.equal(Q, Q.T)
    _, G_env = reference_q_g(K, A, activation, 1 / 128, envelope=True)
    assert float((scale * G - G_ref).abs().max()) <= 4 * 96 * EPS * float(G_env.abs().max()) and torch.equal(G, G.T)


def test_collinear_relu_state_equals_the_dense_reference():
    """ReLU at d = 1 (Q of rank two, Woodbury in O(N)) against the dense Cholesky path where M
    is well conditioned (sig2 = 1e-2, kappa(M) ~ 5e3); at sig2 = 1e-6 the dense path loses ~1e-6
    of T. The Woodbury path is backward stable too (two orthogonal columns): the dense path's
    bounds of :func:`_assert_state_within_round_off` cover both."""
    ds = paper_data(128, 1, seed=5)
    S = torch.tensor([[0.7]], dtype=torch.float64)
    state = eos.EoSEvaluator(ds.X, ds.y, paper(siga2=0.5, sig2=1e-2), activation="relu").state(S)
    _assert_state_within_round_off(state, reference_state(ds.X, ds.y, S, "relu", 0.5, 1e-2), ds, S, "relu", 0.5,
                                   1e-2)


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
    # Two backward-stable inverses of M (each exact for M + E, ||E|| <= N eps ||M||): to first
    # order dA = -M^-1 E M^-1 + M^-1 E a a^T + a a^T E M^-1, so ||dA||_2 <= N eps kappa(M)
    # (||M^-1|| + 2 |alpha|^2) per inverse (kappa(M) computed, ~1e3 here).
    kappa = float(torch.linalg.cond(state.Q + 1e-2 * torch.eye(48, dtype=torch.float64)))
    a_bound = solve_round_off(48, kappa, c=2) * (float(torch.linalg.matrix_norm(M_inv, 2))
                                                 + 2 * float(state.alpha @ state.alpha))
    assert torch.equal(A, A.T) and float((A - A_ref).abs().max()) <= a_bound

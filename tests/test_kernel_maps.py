"""Kernel maps of any activation from phi alone (shallow_collapse.kernel_maps, docs/MATH.md section 8)."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_slope_is_a_central_difference, dense_action, solve_round_off
from shallow_collapse import activations, data, eos
from shallow_collapse.eos.passes import generic, passes_for
from shallow_collapse.kernel_maps import NumericalMaps
from shallow_collapse.params import EoSParams

SMOOTH = ["erf", "gelu", "sin", "cos"]
KINKED = ["relu", "leaky_relu", "abs"]
EPS = torch.finfo(torch.float64).eps
# Relative accuracy of the numerical path against the closed forms (error / largest entry). Smooth
# phi: the table stops at trailing coefficients of 1e-14 and a rho-derivative costs ~degree^2 of
# that (bench/bench_activations.py: Kphi <= 5e-14, Kdphi <= 1.1e-10, G <= 3.2e-11). Kinked phi: the
# rho-expansion of E|u||v| has a (1 - rho^2)^(3/2) singularity, its coefficients fall as m^-4 and
# Kdphi's as m^-2 at the cap of 160 degrees (measured: Kphi ~1e-6, Kdphi ~1e-4 next to |rho| = 1).
# The kinked bounds sit above the worst cases that bench/bench_activations.py measured on paper
# kernels (docs/ACTIVATIONS.md: relu Kdphi 2.1e-3, G 2.7e-3; abs, whose two kinks add up, 4.3e-3 and
# 5.2e-3); the pair at 1 - rho = 1e-9 below reaches them (abs Kdphi 4.2e-3).
TOL = {**{a: (1e-11, 1e-9, 1e-9) for a in SMOOTH}, **{a: (1e-5, 3e-3, 3e-3) for a in ("relu", "leaky_relu")},
       "abs": (1e-5, 6e-3, 6e-3)}


def kernel_with_collinear_pairs(d, seed=0):
    """A pre-activation kernel of paper-like points (variances ~0.5..15) with an exact duplicate, an
    exact negative, and a pair at 1 - rho = 1e-9 (near-collinear): the cases that need care."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, d, generator=g, dtype=torch.float64) * 0.8 + 1.5 * torch.sign(torch.randn(40, 1, generator=g,
                                                                                                 dtype=torch.float64))
    # K = Z Z^T with Z = [X / sqrt(d), sqrt(0.3)] (the constant 0.3 only at d > 1, as a bias would add
    # it), so that the appended rows are exactly collinear in the space K lives in.
    Z = torch.cat([X / math.sqrt(d), torch.full((40, 1), math.sqrt(0.3) * (d > 1), dtype=torch.float64)], 1)
    # near-collinear: a step of angle theta = sqrt(2e-9) orthogonal to Z[2], so that 1 - rho = 1e-9
    step = torch.randn(Z.shape[1], generator=g, dtype=torch.float64)
    step -= (step @ Z[2]) / (Z[2] @ Z[2]) * Z[2]
    if d == 1:  # one direction only (plus no bias): no orthogonal step exists, rho = 1 exactly
        near = Z[2:3] * (1 + 1e-9)
    else:
        near = (Z[2] + math.sqrt(2e-9) * Z[2].norm() * step / step.norm())[None]
    Z = torch.cat([Z, Z[:1], -Z[1:2], near])
    return Z @ Z.T


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", SMOOTH + KINKED)
@pytest.mark.parametrize("d", [1, 3, 16])
def test_numerical_path_matches_closed_forms(name, d):
    act = activations.get(name, slope=0.2) if name == "leaky_relu" else activations.get(name)
    assert act.closed_form
    K = kernel_with_collinear_pairs(d)
    tol_f, tol_d, tol_g = TOL[name]
    (F, Kd), (Fn, Kdn) = act.kernel_map.maps(K), act.numerical.maps(K)
    assert rel_err(Fn, F) < tol_f and rel_err(Kdn, Kd) < tol_d
    # The EoS derivatives: G = dTr(A Q)/dK for a random symmetric A, the EoS passes of both maps
    # (fused for erf and ReLU).
    g = torch.Generator().manual_seed(1)
    A = torch.randn(K.shape, generator=g, dtype=torch.float64)
    A = A + A.T
    closed, numerical = passes_for(act.kernel_map), generic(act.numerical)
    Q, ctx = closed.q(K.clone(), K.diagonal().clone(), 0.5)
    Qn, ctxn = numerical.q(K.clone(), K.diagonal().clone(), 0.5)
    G, s = closed.g(A.clone(), ctx, 0.5)
    Gn, sn = numerical.g(A.clone(), ctxn, 0.5)
    assert rel_err(Qn, Q) < tol_f and rel_err(Gn * sn, G * s) < tol_g


@pytest.mark.parametrize("name", SMOOTH + KINKED)
def test_closed_form_terms_are_f_and_its_derivatives(name):
    """``terms`` -> (F, Kdphi, P) of every closed form: Kdphi = dF/dc and P = 2 dF/da against central
    differences (step h = 1e-5 on entries ~1: truncation ~h^2 times F's third derivative ~ 1e-10,
    round-off ~eps |F| / h ~ 1e-11; pairs away from |rho| = 1, where the kinked maps are smooth),
    and ``maps`` is (F, Kdphi) of the same terms."""
    act = activations.get(name, slope=0.2) if name == "leaky_relu" else activations.get(name)
    km = act.kernel_map
    g = torch.Generator().manual_seed(3)
    a = 0.5 + 2.0 * torch.rand(30, 1, generator=g, dtype=torch.float64)
    b = 0.5 + 2.0 * torch.rand(1, 30, generator=g, dtype=torch.float64)
    c = (2.0 * torch.rand(30, 30, generator=g, dtype=torch.float64) - 1.0) * 0.9 * (a * b).sqrt()
    F, Kd, P = km.terms(c, a, b)
    h = 1e-5
    dc = (km.terms(c + h, a, b)[0] - km.terms(c - h, a, b)[0]) / (2 * h)
    da = (km.terms(c, a + h, b)[0] - km.terms(c, a - h, b)[0]) / (2 * h)
    torch.testing.assert_close(Kd, dc, rtol=0, atol=1e-8)
    torch.testing.assert_close(P, 2 * da, rtol=0, atol=1e-8)
    Fm, Kdm = km.maps(c, a, b)
    assert torch.equal(Fm, F) and torch.equal(Kdm, Kd)


def test_relu_family_matches_the_arcsine_form_of_e_abs_abs():
    """abs and leaky ReLU are written in ReLU's arc-cosine form (closed_forms.ReluFamilyMap);
    against the other textbook form, phi = p x + q |x| with E|u||v| = (2/pi) n (sqrt(1 - rho^2) +
    rho asin rho) (p = (1 + alpha)/2, q = (1 - alpha)/2). Both form rho = K / sqrt(K_ii K_jj) by the
    same operations; ReluFamilyMap then takes theta = atan2(sin, cos) with sin = sqrt(1 - cos^2),
    whose rounding moves theta by <= eps (1 / (4 sin) + 1) (1 - cos^2 loses eps cos^2 / 2 to
    cancellation), and the rest is a handful of roundings of O(1) terms: 16 eps (1 + 1 / (4 sin_min))
    of the largest entry, sin_min over the pairs not snapped to +-1 (computed here: ~0.06, so
    ~1.7e-14; the old fixed 1e-14 was below it; measured <= 2 eps). A wrong p, q or sign is O(1)."""
    K = kernel_with_collinear_pairs(3)
    d = K.diagonal()
    n = (d[:, None] * d[None, :]).sqrt()
    rho = (K / n).clamp(-1.0, 1.0)
    e_abs = (2.0 / math.pi) * n * ((1.0 - rho * rho).clamp_min(0.0).sqrt() + rho * torch.asin(rho))
    sin = (1.0 - rho * rho).clamp_min(0.0).sqrt()
    tol = 16 * EPS * (1 + 1 / (4 * float(sin[rho.abs() < 1.0].min())))
    for alpha in (-1.0, 0.0, 0.2, 0.01):
        p, q = (1.0 + alpha) / 2.0, (1.0 - alpha) / 2.0
        F, Kd = activations.leaky_relu(alpha).kernel_map.maps(K)
        assert rel_err(F, p * p * K + q * q * e_abs) <= tol
        assert rel_err(Kd, p * p + q * q * (2.0 / math.pi) * torch.asin(rho)) <= tol


@pytest.mark.parametrize("name", ["tanh", "softplus", "gelu"])
@pytest.mark.parametrize("d", [1, 4])
def test_fused_gradient_is_the_derivative_of_kernel_phi(name, d):
    # G (entries of K independent) against autograd through the differentiable kernel_phi along
    # K = X Sigma X^T: T = X^T G X equals d Tr(A Kphi(X Sigma X^T)) / dSigma.
    act = activations.get(name)
    g = torch.Generator().manual_seed(d)
    X = torch.randn(30, d, generator=g, dtype=torch.float64) + 1.0
    S = torch.eye(d, dtype=torch.float64) * 0.7 + 0.1
    A = torch.randn(30, 30, generator=g, dtype=torch.float64)
    A = A + A.T
    K = X @ S @ X.T
    numerical = generic(act.numerical)
    Q, ctx = numerical.q(K.clone(), K.diagonal().clone(), 1.0)
    G, scale = numerical.g(A.clone(), ctx, 1.0)
    T = scale * X.T @ G @ X
    Sv = S.clone().requires_grad_(True)
    (A * act.numerical.kernel_phi(X @ Sv @ X.T)).sum().backward()
    ref = 0.5 * (Sv.grad + Sv.grad.T)
    # One table, two derivatives: G from the derivative coefficients, autograd through Clenshaw on
    # the coefficients themselves. They differ by the rounding of a series of degree n_rho <= 160
    # (MAX_DEGREES), ~n_rho^2 eps = 6e-12 of its size; T sums N^2 = 900 terms of O(1) (<= N^2 eps
    # of their sizes, 2e-13). 1e-10 leaves ~15; a wrong chain-rule term (dsigma/dlog a, the rho
    # shift of P) is O(1) and a table error is ~1e-10 of Kdphi only for the kinked maps (not here).
    assert rel_err(0.5 * (T + T.T), ref) < 1e-10
    # Q: the same Clenshaw sums of the same table in place and out of place, O(1) entries (Kphi of
    # variances ~1..10): a degree-160 recurrence rounds to ~160 eps (4e-14) of its size; 1e-13 = 450 eps.
    torch.testing.assert_close(Q, act.numerical.kernel_phi(K), rtol=0, atol=1e-13)


def test_collinear_pairs_are_one_dimensional_expectations():
    # At d = 1 every pair has rho = +-1: E[phi(s_i z) phi(+-s_j z)] by the 1-D rule, checked against
    # scipy's adaptive quadrature for tanh.
    from scipy.integrate import quad

    nm = activations.get("tanh").numerical
    x = torch.tensor([[0.7], [-1.9], [3.0]], dtype=torch.float64)
    K = x @ x.T
    F, Kd = nm.maps(K)
    for i in range(3):
        for j in range(3):
            si, sj = float(x[i]), float(x[j])
            dens = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
            ref = quad(lambda z: math.tanh(si * z) * math.tanh(sj * z) * dens(z), -12, 12, epsabs=1e-15, limit=200)[0]
            refd = quad(lambda z: (1 - math.tanh(si * z) ** 2) * (1 - math.tanh(sj * z) ** 2) * dens(z), -12, 12,
                        epsabs=1e-15, limit=200)[0]
            # the 1-D rule against adaptive quadrature (epsabs 1e-15 on smooth integrands <= 1). The
            # rule: trapezoid, step 0.05 on [-9, 9] (kernel_maps.QUAD_*), spectrally accurate for
            # tanh(s z) (poles at |Im z| = pi / (2 s) >= 0.5 here: error ~exp(-2 pi 0.5 / 0.05) ~ 1e-27),
            # the cut tail < 1e-17, and weights normalised by a sum of 360 terms (~360 eps = 8e-14 worst
            # case, ~sqrt(360) eps typical). 1e-12 relative / 1e-14 absolute (values 0.1..0.9) covers
            # that; a wrong sign (rho = -1) or scale (s_i s_j) is O(1)
            assert math.isclose(float(F[i, j]), ref, rel_tol=1e-12, abs_tol=1e-14)
            assert math.isclose(float(Kd[i, j]), refd, rel_tol=1e-12, abs_tol=1e-14)


def test_tables_are_cached_per_box_and_report_their_tail():
    nm = NumericalMaps(torch.tanh)
    a = nm.table(4.1, 4.6)  # both in the box [2^2, 2^2.25]
    # tail: the largest trailing Chebyshev coefficient relative to the table's scale; tanh is
    # analytic near the real line, so its coefficients fall geometrically below the tol 1e-14 long
    # before the degree caps: 1e-12 tells a table stopped at the cap (kinked-map tails are ~1e-6)
    assert nm.table(4.2, 4.5) is a and a.tail < 1e-12
    assert nm.table(3.0, 4.6) is not a
    with pytest.raises(ValueError, match="positive variances"):
        nm.table(0.0, 1.0)


def test_blocks_and_the_diagonal_give_the_full_map():
    # kernels.py maps row blocks with their own variances, and the diagonal elementwise.
    act = activations.get("silu")
    K = kernel_with_collinear_pairs(5)
    F, Kd = act.kernel_map.maps(K)
    diag = K.diagonal()
    Fb, Kdb = act.kernel_map.maps(K[10:20], diag[10:20, None], diag[None, :])
    # one table (same box of variances), the same Clenshaw sums per entry in another block shape (and
    # elementwise for the diagonal): entries O(1) (silu's Kphi at variances ~0.5..15 is <= ~10), a
    # degree-160 recurrence rounds to ~160 eps of its size, so 1e-13 (~450 eps); wrong variances O(1)
    torch.testing.assert_close(Fb, F[10:20], rtol=0, atol=1e-13)
    torch.testing.assert_close(Kdb, Kd[10:20], rtol=0, atol=1e-13)
    Fd, _ = act.kernel_map.maps(diag[:, None], diag[:, None], diag[:, None])
    torch.testing.assert_close(Fd[:, 0], F.diagonal(), rtol=0, atol=1e-13)


# -- the EoS with numerical maps -----------------------------------------------------------------

def paper_data(N, d, seed=0):
    return data.gaussian_data((N // 2, N // 2), d, (-2.0, 2.0), (0.5, 0.5), seed, 0)


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
@pytest.mark.parametrize("d,sig2", [(1, 1e-2), (3, 1e-6), (3, 1e-2)])
def test_action_and_gradient_match_autograd_and_finite_differences(activation, d, sig2):
    ds = paper_data(40, d, seed=2)
    p = EoSParams(siga2=0.3, sig2=sig2)
    g = torch.Generator().manual_seed(5)
    R = torch.randn(d, d, generator=g, dtype=torch.float64)
    S = (R @ R.T / d + 0.3 * torch.eye(d, dtype=torch.float64)) / d
    chi = 50.0
    value, grad = eos.action(ds.X, ds.y, S, chi, p, activation=activation)
    Sv = S.clone().requires_grad_(True)
    ref = dense_action(ds.X, ds.y, Sv, chi, activation=activation, sigw2=1.0, siga2=0.3, sig2=sig2)
    ref.backward()
    ref_grad = 0.5 * (Sv.grad + Sv.grad.T)
    # As for erf/ReLU in tests/eos/test_evaluator.py (action_round_off there): the solver's Q and
    # kernel_phi's agree to round-off, and the data terms y^T M^-1 y and log det M of two
    # backward-stable factorisations of M = Q + sig2 I differ by <= N eps kappa(M) (q + N) / 2;
    # kappa(M) is computed here (~1e6 at sig2 = 1e-6, where the fixed 1e-9 relative was measured
    # at 1.1e-10). The 3 x 3 prior part is exact to 64 eps of its size.
    K = ds.X @ S @ ds.X.T
    M = 0.3 * activations.get(activation).numerical.kernel_phi(K) + sig2 * torch.eye(len(ds.y), dtype=torch.float64)
    rel = solve_round_off(len(ds.y), float(torch.linalg.cond(M)))
    prior = 0.5 * chi * (d * float(torch.trace(S)) + abs(float(torch.linalg.slogdet(S)[1])))
    value_tol = rel * 0.5 * (float(ds.y @ torch.linalg.solve(M, ds.y)) + len(ds.y)) + 64 * EPS * prior
    assert abs(value - ref.item()) <= value_tol
    # and it tells a wrong formula: the noise counted twice moves the action far outside it
    wrong = dense_action(ds.X, ds.y, S, chi, activation=activation, sigw2=1.0, siga2=0.3, sig2=2 * sig2).item()
    assert abs(wrong - ref.item()) > 100 * value_tol
    # Gradient: only T = X^T G X depends on M^-1 and alpha, whose relative errors are <= N eps
    # kappa(M) (rel); the prior part is exact to a few eps. So the error is <= rel max|T|.
    T_ref = 2 * ref_grad - chi * (d * torch.eye(d, dtype=torch.float64) - torch.linalg.inv(S))
    assert float((grad - ref_grad).abs().max()) <= rel * float(T_ref.abs().max())
    assert_slope_is_a_central_difference(ds.X, ds.y, S, chi, p, activation, grad, g, value_tol=value_tol)


@pytest.mark.slow
@pytest.mark.parametrize("activation,sig2", [("tanh", 1e-6), ("softplus", 1e-3)])
@pytest.mark.parametrize("d", [1, 8, 32])
def test_paper_solves_are_ok_and_certified(activation, sig2, d):
    # softplus with the paper's sig2 = 1e-6 stops at d = 1 as noise_limited (rel_residual 3.3e-7, the
    # float64 noise of the map above rtol): at its solution (Sigma ~ 5.5) the GP cannot fit y
    # (nll ~ 7e6), A has entries ~ 1/sig2^2 and T cancels; with sig2 = 1e-3 every d is solved.
    # Recorded in docs/ACTIVATIONS.md.
    ds = paper_data(256, d)
    result = eos.solve_eos(ds.X, ds.y, EoSParams(sig2=sig2), activation=activation)
    # not a round-off comparison: status "ok" means rel_residual <= the solver's rtol (EoSParams
    # default 1e-8), which is what the assert restates; certified is the solver's own check
    assert result.status == "ok" and result.certified and result.rel_residual <= 1e-8
    assert result.curvature > 0


# -- adding an activation touches one call -------------------------------------------------------

def x_erf(z):
    return z * torch.erf(z)


@pytest.mark.slow
def test_a_new_activation_runs_a_sweep_and_an_ak_solve(write_config, out_root):
    from shallow_collapse.cli import main
    from shallow_collapse.sweeps import read_table

    if "x_erf" not in activations.ACTIVATIONS:
        activations.register("x_erf", x_erf)  # phi' by autograd
    # NNGP sweep through the command line, in this process (workers: 1 sees the registration).
    path = write_config(activation="x_erf", N_list=[16], in_features_list=[1, 4], repeat=1)
    assert main("limiting_kernels_bulk_balanced", [str(path), "--out", str(out_root)]) == 0
    (folder,) = list((out_root / "tiny").iterdir())
    rows = read_table(folder / "results.csv")
    assert {r["method"] for r in rows} == {"nngp", "ntk"} and all(r["status"] == "ok" for r in rows)
    # x erf(x) is even: its kernel map against Monte Carlo at one pair.
    K = torch.tensor([[1.2, 0.5], [0.5, 0.8]], dtype=torch.float64)
    F, _ = activations.get("x_erf").kernel_map.maps(K)
    u = torch.randn(400_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = u @ torch.linalg.cholesky(K).T
    prod = x_erf(u[:, 0]) * x_erf(u[:, 1])
    assert abs(float(prod.mean() - F[0, 1])) < 4 * float(prod.std()) / math.sqrt(len(prod))
    ds = paper_data(32, 2)
    result = eos.solve_eos(ds.X, ds.y, EoSParams(sig2=1e-3), activation="x_erf")
    assert result.status == "ok" and result.certified


def test_leaky_relu_slope_reaches_every_method(write_config):
    from shallow_collapse.config import load_config
    from shallow_collapse.params import NetworkParams

    cfg = load_config(write_config(activation="leaky_relu", leaky_relu_slope=0.2), [])
    act = NetworkParams.from_config(cfg).act
    z = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    # phi = p z + q |z| with p, q = (1 +- 0.2) / 2 rounded: at z < 0 the sum cancels to 0.2 |z|, so
    # its few roundings of size |z| become (p + q) / (q - p) = 1 / 0.2 times larger relative: 8 eps / 0.2
    torch.testing.assert_close(act.phi(z), torch.tensor([-0.2, 2.0], dtype=torch.float64), rtol=8 * EPS / 0.2, atol=0)
    # E[phi(u)^2] at unit variance: (1 + alpha^2) / 2 (cosine snapped at 1: the closed form's few
    # roundings of O(1) terms, condition ~1; 1e-14 ~ 45 eps).
    F, Kd = act.kernel_map.maps(torch.ones(1, 1, dtype=torch.float64))
    assert math.isclose(float(F), (1 + 0.04) / 2, rel_tol=1e-14) and math.isclose(float(Kd), (1 + 0.04) / 2, rel_tol=1e-14)

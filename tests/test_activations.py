"""The activation registry: phi, phi' and one kernel map per activation (MATH.md section 5)."""
import math

import pytest
import torch

from shallow_collapse import activations
from shallow_collapse.closed_forms import ErfMap, ReluFamilyMap
from shallow_collapse.data import gaussian_data
from shallow_collapse.eos import solve_eos
from shallow_collapse.eos.passes import passes_for
from shallow_collapse.fast_gradients import fast_forms
from shallow_collapse.kernel_maps import NumericalMaps
from shallow_collapse.kernels import input_kernel, limiting_kernels
from shallow_collapse.params import NetworkParams

from conftest import PHI, assert_within_standard_errors, kernel_phi, paper_points

EPS = torch.finfo(torch.float64).eps


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_maps_match_monte_carlo_on_a_random_covariance(activation):
    # Any PSD K (as met in deeper layers), variances from ~0.3 to ~6: draw u ~ N(0, K) 400k times.
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(6, 8, generator=gen, dtype=torch.float64) * torch.linspace(0.3, 1.2, 6)[:, None]
    K = A @ A.T
    u = torch.randn(400_000, 6, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(K).T
    Kphi, Kdphi = activations.get(activation).kernel_map.maps(K)
    for f, exact in zip(PHI[activation], (Kphi, Kdphi)):
        v = f(u)
        prod = v[:, :, None] * v[:, None, :]
        assert_within_standard_errors(prod.mean(0), prod.std(0) / math.sqrt(len(u)), exact)


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_derivative_kernel_is_the_derivative_of_the_nngp_map(activation):
    # Price's theorem: dE[phi(u)phi(v)]/dK_uv = E[phi'(u)phi'(v)] at fixed variances. Central
    # differences with eps=1e-6 carry O(eps^2) truncation and ~1e-10 round-off.
    K = input_kernel(paper_points(8, 2, seed=5), NetworkParams(bias_std=0.3))
    maps = activations.get(activation).kernel_map.maps
    k_row, k_col = K.diagonal()[:, None], K.diagonal()[None, :]
    off = ~torch.eye(8, dtype=torch.bool)  # the diagonal sits on the kink |cos| = 1 for ReLU
    eps = 1e-6
    numeric = (maps(K + eps, k_row, k_col)[0]
               - maps(K - eps, k_row, k_col)[0]) / (2 * eps)
    torch.testing.assert_close(numeric[off], maps(K)[1][off], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_every_form_of_kphi_agrees(activation):
    """The kernel map, the tests' differentiable oracle and the fused EoS pass: one Kphi (O(1)
    entries computed by a handful of roundings each: 1e-12 is ~50 eps)."""
    act = activations.get(activation)
    K = input_kernel(paper_points(12, 3, seed=1), NetworkParams(bias_std=0.2))
    Kphi = act.kernel_map.maps(K)[0]
    torch.testing.assert_close(kernel_phi(K, activation), Kphi, rtol=0, atol=1e-12)
    Q, _ = passes_for(act.kernel_map).q(K.clone(), K.diagonal().clone(), 0.5)
    torch.testing.assert_close(Q, 0.5 * Kphi, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_network_phi_and_its_derivative(activation):
    act = activations.get(activation)
    z = torch.linspace(-3, 3, 13, dtype=torch.float64, requires_grad=True)
    act.phi(z).sum().backward()
    # Elementwise, no sums: phi is torch.erf / torch.relu on both sides, phi' is (2/sqrt pi)
    # exp(-z^2) or 1[z > 0] with the multiplications in another order; exp within a few ulp (a
    # vectorised and a scalar kernel may differ), z^2 <= 9 (|z| <= 3) puts <= 9 eps / 2 into the
    # exponent. So <= 16 eps relative; a wrong constant or sign is O(1).
    tol = dict(rtol=16 * EPS, atol=0.0)
    torch.testing.assert_close(act.phi(z), PHI[activation][0](z), **tol)
    torch.testing.assert_close(z.grad, PHI[activation][1](z.detach()), **tol)
    torch.testing.assert_close(act.dphi(z.detach()), PHI[activation][1](z.detach()), **tol)
    # the trainer's in-place forms (shallow_collapse/fast_gradients.py)
    forms = fast_forms(act)
    out = torch.empty(13, dtype=torch.float64)
    torch.testing.assert_close(forms.phi_out(z.detach(), out), PHI[activation][0](z.detach()), **tol)
    slope = forms.dphi_(z.detach().clone(), torch.zeros((), dtype=torch.float64)) * forms.slope
    torch.testing.assert_close(slope, PHI[activation][1](z.detach()), **tol)


def test_custom_erf_gradient_is_erf_gradient():
    z = torch.randn(50, dtype=torch.float64, requires_grad=True) * 3
    z = z.detach().requires_grad_()
    torch.autograd.gradcheck(activations.erf, (z,))
    g = torch.randn(50, dtype=torch.float64)
    (a,) = torch.autograd.grad(activations.erf(z), z, g)
    (b,) = torch.autograd.grad(torch.erf(z), z, g)
    # (2/sqrt pi) exp(-z^2) g both, in another order: z^2 rounded (or fused) differently moves the
    # exponent by <= z^2 eps / 2, exp and the products add a few ulp: per entry (z^2 / 2 + 16) eps
    # relative (|z| up to ~9 here: z^2 / 2 ~ 40), computed here; a wrong constant is O(1)
    assert bool(((a - b).abs() <= (z.detach() ** 2 / 2 + 16) * EPS * b.abs()).all())


def test_unknown_activation_names_the_known_ones():
    with pytest.raises(ValueError, match="erf"):
        activations.get("swish2")


def test_an_activation_is_phi_dphi_and_one_kernel_map():
    erf, relu, tanh = (activations.get(n) for n in ("erf", "relu", "tanh"))
    assert isinstance(erf.kernel_map, ErfMap) and erf.closed_form
    assert isinstance(relu.kernel_map, ReluFamilyMap) and relu.kernel_map.alpha == 0.0
    assert isinstance(tanh.kernel_map, NumericalMaps) and not tanh.closed_form and tanh.numerical is tanh.kernel_map
    # a closed form also carries the numerical map of its phi (built once, for comparisons)
    assert isinstance(erf.numerical, NumericalMaps) and erf.numerical is erf.numerical
    assert activations.get("leaky_relu", slope=0.3).kernel_map.alpha == 0.3
    assert activations.get("abs").kernel_map.alpha == -1.0


def test_register_builds_an_activation_from_phi_alone():
    name = "test_register_cube"
    if name not in activations.ACTIVATIONS:
        act = activations.register(name, lambda z: z**3)  # phi' by autograd, kernel map numerical
    else:
        act = activations.get(name)
    assert activations.get(name) is act and isinstance(act.kernel_map, NumericalMaps)
    z = torch.linspace(-2, 2, 9, dtype=torch.float64)
    # autograd's 3 z^2 and this one: two roundings each (z^2, times 3), <= 2 eps apart: 1e-15 = 4.5 eps
    torch.testing.assert_close(act.dphi(z), 3 * z**2, rtol=1e-15, atol=0)
    # E[u^3 v^3] = 9 ab c + 6 c^3 (Isserlis) at a = 1.2, b = 0.8, c = 0.5; its c-derivative is
    # 9 E[u^2 v^2] = 9 (ab + 2 c^2). The table stops at trailing coefficients of 1e-14 relative
    # (a cubic is 4 Chebyshev terms in rho, exactly represented), so 1e-12 is round-off.
    K = torch.tensor([[1.2, 0.5], [0.5, 0.8]], dtype=torch.float64)
    F, Kd = act.kernel_map.maps(K)
    assert math.isclose(float(F[0, 1]), 9 * 1.2 * 0.8 * 0.5 + 6 * 0.5**3, rel_tol=1e-12)
    assert math.isclose(float(Kd[0, 1]), 9 * (1.2 * 0.8 + 2 * 0.5**2), rel_tol=1e-12)
    with pytest.raises(ValueError, match="already registered"):
        activations.register(name, torch.tanh)
    # the trainer copies phi and phi' for an activation without written in-place forms
    forms = fast_forms(act)
    out = torch.empty(9, dtype=torch.float64)
    torch.testing.assert_close(forms.phi_out(z, out), z**3, rtol=0, atol=0)  # a copy of phi: the same operation
    assert forms.slope == 1.0


def test_register_takes_a_closed_form_kernel_map():
    name = "test_register_scaled_relu"
    if name not in activations.ACTIVATIONS:
        activations.register(name, lambda z: torch.relu(z) - 0.5 * torch.relu(-z), kernel_map=ReluFamilyMap(0.5))
    act = activations.get(name)
    assert act.closed_form and isinstance(act.kernel_map, ReluFamilyMap)
    # a registered ReLU-family map with alpha != 0 takes the generic EoS passes, and the trainer
    # the copies of phi: the fast forms of ReLU are for the ReLU map (alpha = 0) alone
    assert passes_for(act.kernel_map).q is not passes_for(activations.get("relu").kernel_map).q
    assert fast_forms(act).slope == 1.0


def test_activations_and_kernel_maps_import_nothing_from_the_layers_above():
    """The activation layer (activations, closed_forms, kernel_maps) is imported by eos/ and the
    trainer and imports neither, not even lazily inside a function."""
    import ast
    from pathlib import Path

    package = Path(activations.__file__).parent
    for module in ("activations.py", "closed_forms.py", "kernel_maps.py"):
        tree = ast.parse((package / module).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        above = {m for m in imported if m.lstrip(".").split(".")[0] in ("eos", "training", "fast_gradients")
                 or m.startswith("shallow_collapse.")}
        assert not above, (module, above)
        assert imported  # the walk saw the imports (torch at least)


@pytest.mark.parametrize("d", [1, 2])
def test_leaky_relu_with_slope_0_gives_relus_numbers_bit_for_bit(d):
    # The fast paths (fused EoS passes, the rank-two EoS state at d = 1, the trainer's forms) key on
    # the kernel map alone, so a leaky ReLU of slope 0 takes every one of ReLU's: equal bits, not a tolerance.
    relu, leaky = activations.get("relu"), activations.get("leaky_relu", slope=0.0)
    assert leaky is not relu and fast_forms(leaky) is fast_forms(relu)
    ds = gaussian_data((32, 32), d, (-2.0, 2.0), (0.5, 0.5), seed=3, repeat=0)
    a, b = (solve_eos(ds.X, ds.y, activation=act) for act in (relu, leaky))
    assert a.status in ("ok", "noise_limited") and b.status == a.status  # ReLU at d = 2: noise_limited
    assert torch.equal(a.Q, b.Q) and torch.equal(a.Sigma, b.Sigma)
    nets = [NetworkParams(activation=name, leaky_relu_slope=0.0) for name in ("relu", "leaky_relu")]
    lk_a, lk_b = (limiting_kernels(ds.X, net) for net in nets)
    assert torch.equal(lk_a.nngp, lk_b.nngp) and torch.equal(lk_a.ntk, lk_b.ntk)

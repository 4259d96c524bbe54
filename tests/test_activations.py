"""The activation registry: each activation's kernel maps (MATH.md section 5) in all their forms."""
import math

import pytest
import torch

from shallow_collapse import activations
from shallow_collapse.kernels import input_kernel
from shallow_collapse.params import NetworkParams

from conftest import PHI, assert_within_standard_errors, paper_points


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_maps_match_monte_carlo_on_a_random_covariance(activation):
    # Any PSD K (as met in deeper layers), variances from ~0.3 to ~6: draw u ~ N(0, K) 400k times.
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(6, 8, generator=gen, dtype=torch.float64) * torch.linspace(0.3, 1.2, 6)[:, None]
    K = A @ A.T
    u = torch.randn(400_000, 6, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(K).T
    Kphi, Kdphi = activations.get(activation).maps(K)
    for f, exact in zip(PHI[activation], (Kphi, Kdphi)):
        v = f(u)
        prod = v[:, :, None] * v[:, None, :]
        assert_within_standard_errors(prod.mean(0), prod.std(0) / math.sqrt(len(u)), exact)


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_derivative_kernel_is_the_derivative_of_the_nngp_map(activation):
    # Price's theorem: dE[phi(u)phi(v)]/dK_uv = E[phi'(u)phi'(v)] at fixed variances. Central
    # differences with eps=1e-6 carry O(eps^2) truncation and ~1e-10 round-off.
    K = input_kernel(paper_points(8, 2, seed=5), NetworkParams(bias_std=0.3))
    maps = activations.get(activation).maps
    k_row, k_col = K.diagonal()[:, None], K.diagonal()[None, :]
    off = ~torch.eye(8, dtype=torch.bool)  # the diagonal sits on the kink |cos| = 1 for ReLU
    eps = 1e-6
    numeric = (maps(K + eps, k_row, k_col)[0]
               - maps(K - eps, k_row, k_col)[0]) / (2 * eps)
    torch.testing.assert_close(numeric[off], maps(K)[1][off], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_every_form_of_kphi_agrees(activation):
    """The blocked maps, the plain differentiable form and the fused EoS form: one Kphi."""
    act = activations.get(activation)
    K = input_kernel(paper_points(12, 3, seed=1), NetworkParams(bias_std=0.2))
    Kphi = act.maps(K)[0]
    torch.testing.assert_close(act.kernel_phi(K), Kphi, rtol=0, atol=1e-12)
    Q, _ = act.eos_q(K.clone(), K.diagonal().clone(), 0.5)
    torch.testing.assert_close(Q, 0.5 * Kphi, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_network_phi_and_its_derivative(activation):
    act = activations.get(activation)
    z = torch.linspace(-3, 3, 13, dtype=torch.float64, requires_grad=True)
    act.phi(z).sum().backward()
    torch.testing.assert_close(act.phi(z), PHI[activation][0](z))
    torch.testing.assert_close(z.grad, PHI[activation][1](z.detach()))
    out = torch.empty(13, dtype=torch.float64)
    torch.testing.assert_close(act.phi_out(z.detach(), out), PHI[activation][0](z.detach()))
    slope = act.dphi_(z.detach().clone(), torch.zeros((), dtype=torch.float64)) * act.slope
    torch.testing.assert_close(slope, PHI[activation][1](z.detach()))


def test_custom_erf_gradient_is_erf_gradient():
    z = torch.randn(50, dtype=torch.float64, requires_grad=True) * 3
    z = z.detach().requires_grad_()
    torch.autograd.gradcheck(activations.erf, (z,))
    g = torch.randn(50, dtype=torch.float64)
    (a,) = torch.autograd.grad(activations.erf(z), z, g)
    (b,) = torch.autograd.grad(torch.erf(z), z, g)
    torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_unknown_activation_names_the_known_ones():
    with pytest.raises(ValueError, match="erf"):
        activations.get("swish2")

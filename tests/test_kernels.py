import math

import pytest
import torch

from shallow_collapse import activations
from shallow_collapse.data import class_labels, gaussian_data
from shallow_collapse.kernels import kernel_names, limiting_kernels, limiting_kernels_nc1
from shallow_collapse.metrics import nc1_kernel
from shallow_collapse.params import NetworkParams

from conftest import PHI, assert_within_standard_errors, nc1_round_off, paper_points

EPS = torch.finfo(torch.float64).eps


def ntk_param_network(h, d, activation, sw, so, sb, gen):
    """f(x) = sb c + (so/sqrt h) a . phi((sw/sqrt d) W x + sb b), all parameters N(0, 1): the
    parameterisation whose empirical tangent kernel converges to MATH's Theta^2."""
    params = {k: torch.randn(*s, generator=gen, dtype=torch.float64)
              for k, s in {"W": (h, d), "b": (h,), "a": (h,), "c": (1,)}.items()}
    phi = PHI[activation][0]

    def f(p, x):
        hidden = phi((sw / math.sqrt(d)) * p["W"] @ x + sb * p["b"])
        return sb * p["c"][0] + (so / math.sqrt(h)) * p["a"] @ hidden
    return f, params


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_ntk_and_nngp_match_a_wide_random_network(activation):
    # Width h = 100k. The empirical NTK is an average over hidden units of i.i.d. per-unit terms
    # (plus the output bias), so its standard error per entry is std(per-unit term)/sqrt(h).
    sw, so, sb, h = 1.3, 1.97, 0.4, 100_000
    gen = torch.Generator().manual_seed(2)
    X = paper_points()
    f, params = ntk_param_network(h, X.shape[1], activation, sw, so, sb, gen)
    jac = torch.func.vmap(torch.func.jacrev(f), in_dims=(None, 0))(params, X)  # per-sample gradients
    per_unit = sum(torch.einsum("ik...,jk...->kij", jac[k], jac[k]) for k in ("W", "b", "a")) * h
    empirical = per_unit.mean(0) + jac["c"] @ jac["c"].T
    exact = limiting_kernels(X, NetworkParams(activation=activation, hidden_weight_std=sw, final_weight_std=so,
                                              bias_std=sb))
    assert_within_standard_errors(empirical, per_unit.std(0) / math.sqrt(h), exact.ntk)
    # NNGP of the output at init, from the same units: sb^2 + so^2 mean_k phi_k(x_i) phi_k(x_j).
    hidden = PHI[activation][0]((sw / math.sqrt(X.shape[1])) * X @ params["W"].T + sb * params["b"])
    prod = hidden[:, None, :] * hidden[None, :, :]
    assert_within_standard_errors(sb**2 + so**2 * prod.mean(-1), so**2 * prod.std(-1) / math.sqrt(h), exact.pre[-1])


def test_relu_ntk_is_twice_its_nngp_in_one_dimension():
    lk = limiting_kernels(paper_points(10, 1), NetworkParams(activation="relu"))
    # an identity of entrywise kernel maps (cosine snapped at +-1 at d = 1, condition ~1): a few
    # roundings per layer of O(1) entries, ~1e-15; 1e-12 does not depend on N or any solve
    torch.testing.assert_close(lk.ntk, 2 * lk.pre[-1], rtol=1e-12, atol=1e-12)


# Per-entry relative round-off of one layer's kernel maps. erf: a few roundings, condition ~1
# (64 eps). ReLU: arccos near cos = 1 turns a round-off of 8 eps in cos (the snap threshold) into
# theta <= sqrt(16 eps) = 6e-8, and Kdphi = (pi - theta) / (2 pi) errs by theta / pi relative; the
# blocked path forms K_ii in another summation order, so this is what the NTK entries may differ by.
ENTRY_REL = {"erf": 64 * EPS, "relu": math.sqrt(16 * EPS) / math.pi}


@pytest.mark.parametrize("activation", ["erf", "relu"])
@pytest.mark.parametrize("L,sb,sizes", [(2, 0.0, [40, 88]), (3, 0.3, [10, 30, 20, 40])])
def test_blocked_nc1_equals_nc1_of_full_kernels(activation, L, sb, sizes):
    # the blocked NC1 against NC1 of the full kernels: round-off of L layers of kernel maps
    # (ENTRY_REL each), carried to NC1 by nc1_round_off (erf ~1e-12, ReLU ~1e-6 relative)
    C = len(sizes)
    X = torch.stack([gaussian_data(sizes, 5, [-2, 2, 0, 1][:C], [0.5, 0.5, 1, 2][:C], 0, r).X for r in range(2)])
    labels = class_labels(sizes)
    net = NetworkParams(L=L, activation=activation, bias_std=sb)
    full = limiting_kernels(X, net)
    blocked = limiting_kernels_nc1(X, labels, net, block_elements=500)
    kernels = [*full.pre, *full.post, full.ntk]
    assert list(blocked) == kernel_names(L) and len(kernels) == len(blocked)
    for name, K in zip(kernel_names(L), kernels):
        for r in range(2):
            bound = nc1_round_off(K[r], labels, L * ENTRY_REL[activation])
            assert abs(float(blocked[name][r]) - float(nc1_kernel(K[r], labels))) <= bound, name


def paper_nc1(activation):
    X = [gaussian_data([128, 128], d, [-2, 2], [0.5, 0.5], 0, 0).X for d in (1, 2, 8, 32, 128)]
    return [limiting_kernels_nc1(x, class_labels([128, 128]), NetworkParams(activation=activation)) for x in X]


def test_paper_data_ordering_of_methods():
    erf, relu = paper_nc1("erf"), paper_nc1("relu")
    for e, r in zip(erf, relu):
        # NC1(NTK) >= NC1(NNGP); for ReLU at d=1 they are equal (NTK = 2 x NNGP), up to round-off.
        assert e["ntk"] >= e["post1"] * (1 - 1e-9) and r["ntk"] >= r["post1"] * (1 - 1e-9)
        assert e["post1"] < r["post1"]  # erf collapses more than ReLU


@pytest.mark.slow
@pytest.mark.parametrize("activation", sorted(activations.ACTIVATIONS))
def test_every_activation_matches_a_wide_random_network(activation):
    # One hidden layer of width h = 200k with phi of the registry and phi' by autograd (independent
    # of the kernel maps' own derivative). Per hidden unit k the output's NNGP term is
    # so^2 phi_ik phi_jk and its tangent-kernel term so^2 [phi_ik phi_jk + a_k^2 phi'_ik phi'_jk
    # (sw^2/d x_i.x_j + sb^2)] (gradients in a, W, b); the network's kernels are their means plus
    # sb^2 (the output bias), each within 4 standard errors std/sqrt(h) of the limiting kernels.
    sw, so, sb, h = 1.3, 1.97, 0.4, 200_000
    gen = torch.Generator().manual_seed(3)
    X = paper_points(5, 3, seed=4)
    d = X.shape[1]
    net = NetworkParams(activation=activation, hidden_weight_std=sw, final_weight_std=so, bias_std=sb)
    W = torch.randn(h, d, generator=gen, dtype=torch.float64)
    b, a = torch.randn(h, generator=gen, dtype=torch.float64), torch.randn(h, generator=gen, dtype=torch.float64)
    z = ((sw / math.sqrt(d)) * X @ W.T + sb * b).requires_grad_(True)
    hidden = net.act.phi(z)
    (dphi,) = torch.autograd.grad(hidden.sum(), z)
    hidden = hidden.detach()
    nngp_terms = so**2 * hidden[:, None, :] * hidden[None, :, :]
    ntk_terms = nngp_terms + so**2 * (a**2) * dphi[:, None, :] * dphi[None, :, :] * (
        (sw**2 / d) * X @ X.T + sb**2)[:, :, None]
    exact = limiting_kernels(X, net)
    for terms, kernel in ((nngp_terms, exact.pre[-1]), (ntk_terms, exact.ntk)):
        assert_within_standard_errors(sb**2 + terms.mean(-1), terms.std(-1) / math.sqrt(h), kernel, k=4.0)

"""The activation-dependent passes of one EoS evaluation (shallow_collapse/eos/passes.py): which
passes a kernel map gets, and the fused forms of erf and ReLU against the one closed form."""
from __future__ import annotations

import pytest
import torch

from shallow_collapse import activations, data
from shallow_collapse.closed_forms import ReluFamilyMap
from shallow_collapse.eos import passes
from shallow_collapse.kernel_maps import NumericalMaps

EPS = torch.finfo(torch.float64).eps


def test_erf_and_relu_get_fused_passes_and_every_other_map_the_generic_ones():
    assert passes.passes_for(activations.get("erf").kernel_map) is passes.ERF
    assert passes.passes_for(activations.get("relu").kernel_map) is passes.RELU
    # leaky ReLU and abs share ReLU's closed form but not its fused passes (alpha != 0)
    for name in ("leaky_relu", "abs", "gelu", "sin", "tanh"):
        p = passes.passes_for(activations.get(name).kernel_map)
        assert p.q not in (passes.ERF.q, passes.RELU.q) and p.g not in (passes.ERF.g, passes.RELU.g)
    assert passes.passes_for(ReluFamilyMap(0.0), fused=False).q is not passes.RELU.q
    assert isinstance(activations.get("tanh").kernel_map, NumericalMaps)


def _case(d, sig2, N=96):
    """K = X Sigma X^T of the paper's data and A = M^{-1} - alpha alpha^T at noise ``sig2`` (entries
    of A up to ~1/sig2^2), from the generic passes of the ``erf`` map."""
    ds = data.gaussian_data((N // 2, N // 2), d, (-2.0, 2.0), (0.5, 0.5), 4, 0)
    g = torch.Generator().manual_seed(2)
    B = torch.randn(d, d, generator=g, dtype=torch.float64)
    K = ds.X @ (B @ B.T / d + 0.1 * torch.eye(d, dtype=torch.float64)) @ ds.X.T
    Q, _ = passes.generic(activations.get("erf").kernel_map).q(K.clone(), K.diagonal().clone(), 1 / 128)
    M_inv = torch.linalg.inv(Q + sig2 * torch.eye(N, dtype=torch.float64))
    alpha = M_inv @ ds.y
    A = M_inv - torch.outer(alpha, alpha)
    return K, 0.5 * (A + A.T)


@pytest.mark.parametrize("activation", ["erf", "relu"])
@pytest.mark.parametrize("form", ["loops", "torch"])
@pytest.mark.parametrize("d,sig2", [(1, 1e-6), (3, 1e-6), (3, 1e-2), (16, 1e-6)])
def test_fused_passes_equal_the_closed_form_to_1e13(activation, form, d, sig2):
    """Each fused form (compiled loops: CPU; torch: CUDA, run here on CPU tensors) against Q and G
    built from the kernel map's ``terms`` (ErfMap / ReluFamilyMap: the one written closed form).

    Both evaluate the same float64 expressions in another order: per entry of Q a handful of
    roundings (< 16 eps) of F and of its argument, which the map amplifies by its condition in K,
    amp = max|Kdphi o K| / max|F| (the arcsine's or arctangent's slope; computed here: up to ~8 on
    these kernels, variances up to ~20), so <= 16 eps (1 + amp) of max|Q|. The diagonal of G is a
    sum of N = 96 products A_ij P_ij whose rounding is <= N eps times the sum of their sizes: G's
    error is measured against ``size`` = max|A o Kdphi| + max_i sum_j |A_ij P_ij|, bound (N + 16
    (1 + amp)) eps. Both bounds stay below the issue's 1e-13 (asserted); measured <= 0.1 of them.
    A wrong or missing term is O(1)."""
    K, A = _case(d, sig2)
    reference = passes.generic(activations.get(activation).kernel_map)
    Q_ref, (Kd, P) = reference.q(K.clone(), K.diagonal().clone(), 1 / 128)
    G_ref, s_ref = reference.g(A.clone(), (Kd, P), 1 / 128)
    q, g = getattr(passes, f"{activation}_q_{form}"), getattr(passes, f"{activation}_g_{form}")
    Q, ctx = q(K.clone(), K.diagonal().clone(), 1 / 128)
    G, s = g(A.clone(), ctx, 1 / 128)
    F, Kdphi = activations.get(activation).kernel_map.maps(K)
    amp = float((Kdphi * K).abs().max() / F.abs().max())
    q_rel, g_rel = 16 * (1 + amp) * EPS, (K.shape[0] + 16 * (1 + amp)) * EPS
    assert q_rel < 1e-13 and g_rel < 1e-13
    assert float((Q - Q_ref).abs().max()) <= q_rel * float(Q_ref.abs().max())
    size = s_ref * float((A.abs() * Kd.abs()).max() + (A.abs() * P.abs()).sum(1).max())
    assert float((s * G - s_ref * G_ref).abs().max()) <= g_rel * size
    assert form == "torch" or torch.equal(G, G.T)  # the loops write both triangles from one

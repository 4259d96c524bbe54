import math

import numpy as np
import pytest
import torch

from shallow_collapse.model import FCNEnsemble, network_seed
from shallow_collapse.params import NetworkParams


def _check_normal(x: torch.Tensor, var: float):
    """Entries of ``x`` ~ N(0, var)? With n i.i.d. entries the sample mean has std sqrt(var/n) and
    the sample variance has relative std sqrt(2/(n-1)); we allow 5 of those standard deviations
    (a false alarm for a correct init has probability < 1e-6; the seeds are fixed anyway)."""
    x = x.detach().double().flatten()
    n = x.numel()
    assert abs(x.mean().item()) < 5 * math.sqrt(var / n)
    assert abs(x.var().item() / var - 1) < 5 * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("L", [2, 3])
def test_init_variances_follow_math_section_2(L):
    d, h, sw, so, sb = 40, 300, 1.3, 1.97, 0.4
    m = FCNEnsemble(range(8), d, h, net=NetworkParams(L=L, hidden_weight_std=sw, final_weight_std=so, bias_std=sb))
    _check_normal(m.weights[0], sw**2 / d)
    for l in range(1, L - 1):
        _check_normal(m.weights[l], sw**2 / h)
    _check_normal(m.weights[L - 1], so**2 / h)
    for b in m.biases:
        _check_normal(b, sb**2)
    assert [tuple(w.shape) for w in m.weights] == [(8, h, d)] + [(8, h, h)] * (L - 2) + [(8, 1, h)]


def test_init_variances_would_catch_a_wrong_fan_in():
    # the check has teeth: readout weights drawn with 1/d instead of 1/h fail it
    d, h = 40, 300
    m = FCNEnsemble(range(8), d, h)  # the paper's network: so = 1.97
    with pytest.raises(AssertionError):
        _check_normal(m.weights[1], 1.97**2 / d)


def test_zero_bias_std_gives_zero_biases_and_float32_default():
    m = FCNEnsemble([1, 2], 3, 7, out_features=2)
    assert all(torch.count_nonzero(b) == 0 for b in m.biases)
    assert m.weights[0].dtype == torch.float32


def test_each_network_is_drawn_from_its_own_seed():
    net = NetworkParams(L=3, bias_std=0.5)
    big = FCNEnsemble([11, 22, 33], 5, 9, net=net, dtype=torch.float64)
    for r, seed in enumerate([11, 22, 33]):
        alone = FCNEnsemble([seed], 5, 9, net=net, dtype=torch.float64)
        for p, q in zip(big.parameters(), alone.parameters()):
            assert torch.equal(p[r], q[0])
    assert not torch.equal(big.weights[0][0], big.weights[0][1])


def _reference(model: FCNEnsemble, r: int, activation):
    """Network r rebuilt from torch.nn.Linear (and BatchNorm1d in training mode)."""
    layers = []
    for l in range(model.num_layers):
        W = model.weights[l][r].detach().double()
        lin = torch.nn.Linear(W.shape[1], W.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(model.biases[l][r].detach().double())
        layers.append(lin)
        if l < model.num_layers - 1:
            if model.use_batch_norm:
                layers.append(torch.nn.BatchNorm1d(W.shape[0], eps=1e-5).double().train())
            layers.append(activation)
    return torch.nn.Sequential(*layers)


class _Act(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("activation,fn", [("erf", torch.erf), ("relu", torch.relu)])
@pytest.mark.parametrize("bn", [False, True])
def test_forward_matches_torch_linear_layers(activation, fn, bn):
    torch.manual_seed(0)
    net = NetworkParams(L=3, activation=activation, final_weight_std=1.5, bias_std=0.3)
    m = FCNEnsemble([5, 6], 4, 16, out_features=3, net=net, use_batch_norm=bn, dtype=torch.float64)
    X = torch.randn(2, 30, 4, dtype=torch.float64)
    f, feats = m(X, features=True)
    assert sorted(feats) == sorted(m.feature_names()) == ["post1", "post2", "pre1", "pre2", "pre3"]
    assert f.shape == (2, 30, 3) and torch.equal(feats["pre3"], f)
    for r in range(2):
        ref = _reference(m, r, _Act(fn))
        # float64, 3 layers of width <= 16 with O(1) weights, inputs and (batch-norm) stds: each
        # output is a few sums of <= 16 products, so within ~3 x 16 eps ~ 1e-14 of O(1) term sizes,
        # whatever the summation order; 1e-12 leaves x100 and depends on no data-dependent condition
        torch.testing.assert_close(f[r], ref(X[r]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(feats["post2"][r], ref[:-1](X[r]), rtol=1e-12, atol=1e-12)
    # a shared (N, d) input equals the same input given to every network
    torch.testing.assert_close(m(X[0]), m(X[0].expand(2, -1, -1)))


def test_float64_evaluation_leaves_parameters_alone():
    m = FCNEnsemble([1], 3, 8)
    X = torch.randn(10, 3)
    f64 = m(X, dtype=torch.float64)
    assert f64.dtype == torch.float64 and not f64.requires_grad
    assert m.weights[0].dtype == torch.float32
    # the float32 forward against float64 rounded once: 2 layers of sums of <= 8 products in
    # float32 (eps32 = 6e-8): ~2 x 8 x 6e-8 ~ 1e-6 of O(1) term sizes; 1e-5 leaves x10
    torch.testing.assert_close(f64.float(), m(X), rtol=1e-5, atol=1e-5)


def test_network_seed_is_a_function_of_the_cell_and_repeat():
    s = network_seed(0, (8, 8), 4, 1)
    assert s == network_seed(0, (8, 8), 4, 1) and 0 <= s < 2**63
    others = {network_seed(1, (8, 8), 4, 1), network_seed(0, (4, 12), 4, 1), network_seed(0, (8, 8), 2, 1),
              network_seed(0, (8, 8), 4, 0)}
    assert s not in others and len(others) == 4


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        FCNEnsemble([0], 2, 4, net=NetworkParams(L=1))
    with pytest.raises(ValueError):
        FCNEnsemble([0], 2, 4, net=NetworkParams(activation="swish2"))
    with pytest.raises(ValueError):
        FCNEnsemble([], 2, 4)


def test_state_dict_round_trip():
    m = FCNEnsemble([3, 4], 2, 5, use_batch_norm=True)
    other = FCNEnsemble([7, 8], 2, 5, use_batch_norm=True)
    other.load_state_dict(m.state_dict())
    X = torch.randn(6, 2)
    assert torch.equal(other(X), m(X))
    # a copy of one slice: equal bits (allclose's default tolerance is never needed)
    assert np.allclose(m.network_state(1)["weights.0"].numpy(), m.weights[0][1].detach().numpy())

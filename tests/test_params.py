"""Parameter groups: the paper's defaults in one place, shared by the config and the Python API."""
from dataclasses import fields

import pytest
import torch

from shallow_collapse import metrics
from shallow_collapse.config import SCHEMA, resolve
from shallow_collapse.eos import solve_eos
from shallow_collapse.experiments import adaptive_kernel, fcn, limiting_kernels
from shallow_collapse.kernels import limiting_kernels_nc1
from shallow_collapse.model import FCNEnsemble, network_seed
from shallow_collapse.params import EoSParams, PosteriorParams, NetworkParams, ProbeParams, SGDParams
from shallow_collapse.sweeps import Cell, cell_datasets
from shallow_collapse.training import make_targets, train

GROUPS = (NetworkParams, EoSParams, SGDParams, PosteriorParams, ProbeParams)


def test_defaults_are_the_papers():
    assert NetworkParams() == NetworkParams(L=2, activation="erf", leaky_relu_slope=0.01, hidden_weight_std=1.0,
                                            final_weight_std=1.97, bias_std=0.0)
    assert EoSParams() == EoSParams(sigw2=1.0, siga2=1 / 128, sig2=1e-6, h=500,
                                    annealing_factors=(1e5, 1e4, 2000.0, 1000.0, 500.0), strategy="minimize",
                                    candidates=(), rtol=1e-8, maxiter=500, inner_maxiter=100, max_subdivisions=4)


@pytest.mark.parametrize("group", GROUPS)
def test_schema_defaults_are_the_groups_defaults(group):
    for f in fields(group):
        default = SCHEMA[group.CONFIG_KEYS.get(f.name, f.name)].default
        assert (tuple(default) if isinstance(default, list) else default) == f.default, f.name


@pytest.mark.parametrize("group", GROUPS)
def test_from_config_round_trip(group):
    assert group.from_config(resolve({})) == group()
    changed = {"L": 3, "final_weight_std": 0.5, "siga2": 0.25, "eos_update_strategy": "anderson",
               "eos_candidates": ["minimize"], "annealing_factors": [1e3, 500], "lr": 0.1, "batch_size": 8,
               "probing_frequency": 7}
    params = group.from_config(resolve(changed))
    for f in fields(group):
        key = group.CONFIG_KEYS.get(f.name, f.name)
        if key in changed:
            value = changed[key]
            assert getattr(params, f.name) == (tuple(value) if isinstance(value, list) else value)
    hash(params)  # frozen: usable as a key


def test_fields_are_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        NetworkParams(2, "erf", 1.0, 1.97)
    with pytest.raises(AttributeError):
        EoSParams().siga2 = 1.0


@pytest.fixture
def tiny():
    cfg = resolve({"seed": 2, "workers": 1})  # every science key at its default
    cell = Cell((16, 16), 4, (0, 1))
    return cfg, cell, cell_datasets(cfg, cell)


def test_config_and_api_give_the_same_kernel_numbers(tiny):
    cfg, cell, datasets = tiny
    rows = limiting_kernels.evaluate_cell(cfg, cell, datasets)
    api = limiting_kernels_nc1(torch.stack([ds.X for ds in datasets]), datasets[0].labels)
    assert [r["nc1"] for r in rows if r["method"] == "nngp"] == api["post1"].tolist()
    assert [r["nc1"] for r in rows if r["method"] == "ntk"] == api["ntk"].tolist()


def test_config_and_api_give_the_same_adaptive_kernel(tiny):
    cfg, cell, datasets = tiny
    rows = adaptive_kernel.evaluate_cell(cfg, cell, datasets[:1])
    result = solve_eos(datasets[0].X, datasets[0].y)
    assert rows[0]["status"] == result.status == "ok"
    assert rows[0]["nc1"] == float(metrics.nc1_kernel(result.Q, datasets[0].labels))
    assert rows[0]["action"] == result.action


def test_config_and_api_train_the_same_network(tiny):
    cfg, cell, datasets = tiny
    cfg = {**cfg, "hidden_features": 16, "num_epochs": 20}
    rows = fcn.evaluate_cell(cfg, Cell(cell.class_sizes, cell.in_features, (0,)), datasets[:1])
    ds = datasets[0]
    model = FCNEnsemble([network_seed(cfg["seed"], cell.class_sizes, cell.in_features, 0)], 4, 16)
    result = train(model, ds.X, make_targets(ds.labels, 2, 1), ds.labels, SGDParams(num_epochs=20),
                   ProbeParams(probing_frequency=None, probe_weights=False), probe_init=False)
    assert rows[0]["nc1"] == float(result.final_nc1["post1"][0])
    assert rows[0]["final_loss"] == float(result.final_loss[0])

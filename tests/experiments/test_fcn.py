import json
import math

import numpy as np
import pytest
import torch

from shallow_collapse import kernels
from shallow_collapse.cli import main
from shallow_collapse.config import load_config
from shallow_collapse.data import gaussian_data
from shallow_collapse.experiments import fcn, limiting_kernels
from shallow_collapse.model import FCNEnsemble
from shallow_collapse.params import NetworkParams, SGDParams
from shallow_collapse.training import train
from shallow_collapse.sweeps import Cell, cell_datasets, read_table

from conftest import nc1_round_off

SMALL_NET = {"hidden_features": 16, "num_epochs": 30, "lr": 0.01, "momentum": 0.9, "batch_size": 64}


def _folder(out_root, name):
    (folder,) = (out_root / name).iterdir()
    return folder


@pytest.mark.parametrize("job,groups", [("fcn_bulk_balanced", {"8-8", "16-16"}),
                                        ("fcn_bulk_imbalanced", {"8-8", "4-12"})])
def test_tiny_sweep_writes_fcn_nngp_and_ntk_rows(write_config, out_root, job, groups):
    assert main(job, [str(write_config(**SMALL_NET)), "--out", str(out_root)]) == 0
    folder = _folder(out_root, "tiny")
    rows = read_table(folder / "results.csv")
    assert len(rows) == 2 * 2 * 2 * 3  # groups x d x repeats x {fcn, nngp, ntk}
    assert {r["class_sizes"] for r in rows} == groups
    assert sorted({r["method"] for r in rows}) == ["fcn", "nngp", "ntk"]
    assert all(r["status"] == "ok" for r in rows)
    for r in (r for r in rows if r["method"] == "fcn"):
        assert r["nc1"] > 0 and r["final_loss"] >= 0 and 0 <= r["accuracy"] <= 1
        # one log10 of the same number (libm: within 1 ulp of the result); 1e-12 is slack
        assert math.isclose(r["log10_nc1"], math.log10(r["nc1"]), rel_tol=1e-12)
    summary = read_table(folder / "summary.csv")
    assert {s["method"] for s in summary} == {"fcn", "nngp", "ntk"}
    for name in ("fcn_nc1.png", "nngp_nc1.png", "ntk_nc1.png", "methods_side_by_side.png"):
        assert (folder / "plots" / name).stat().st_size > 10_000


def test_cell_rows_use_the_same_draw_for_every_method(write_config):
    cfg = load_config(write_config(**SMALL_NET))
    cell = Cell((4, 12), 3, (0, 1))
    datasets = cell_datasets(cfg, cell)
    rows = fcn.evaluate_cell(cfg, cell, datasets)
    kernel_rows = limiting_kernels.evaluate_cell(cfg, cell, datasets)
    assert [r for r in rows if r["method"] != "fcn"] == kernel_rows
    fcn_rows = [r for r in rows if r["method"] == "fcn"]
    assert [r["repeat"] for r in fcn_rows] == [0, 1]
    # repeat 1 trained inside the ensemble equals the same network trained alone on its draw.
    # Training is float32: the ensemble's batched products may round differently from one
    # network's (~h eps32 = 16 x 6e-8 ~ 1e-6 relative per step), carried over 30 steps of lr 0.01
    # (growth <= (1 + lr |H|)^30 ~ 1.35 for a loss Hessian |H| <~ 1) and through NC1 (condition
    # ~10: Tr B is ~1/10 of the term sizes here): ~1e-5, so 1e-4 (equal bits on this machine); a
    # network trained on the wrong draw or seed differs by O(1).
    alone = fcn.evaluate_cell(cfg, Cell((4, 12), 3, (1,)), datasets[1:])
    np.testing.assert_allclose(alone[0]["nc1"], fcn_rows[1]["nc1"], rtol=1e-4)
    assert alone[0]["network_seed"] == fcn_rows[1]["network_seed"] != fcn_rows[0]["network_seed"]


def test_divergence_is_reported_in_the_table_not_raised(write_config, out_root):
    path = write_config(**{**SMALL_NET, "lr": 100.0, "activation": "relu", "in_features_list": [4]})
    assert main("fcn_bulk_balanced", [str(path), "--out", str(out_root)]) == 0
    rows = read_table(_folder(out_root, "tiny") / "results.csv")
    fcn_rows = [r for r in rows if r["method"] == "fcn"]
    assert len(fcn_rows) == 2 * 2 and all(r["status"] == "diverged" for r in fcn_rows)
    assert all(isinstance(r["diverged_epoch"], int) for r in fcn_rows)
    assert all(r["status"] == "ok" for r in rows if r["method"] != "fcn")


PLOTS = ["loss.png", "nc1.png", "spectrum_W1.png", "spectrum_W2.png", "predictions.png", "data.png",
         "kernels_heatmaps.png", "kernels_spectra.png", "kernels_nc1.png"]


def test_single_run_writes_results_weights_and_every_plot(write_config, out_root):
    path = write_config(name="single", N=48, in_features=5, hidden_features=24, num_epochs=40, lr=0.01,
                        momentum=0.9, probing_frequency=10, probe_kernels=True)
    assert main("fcn", [str(path), "--out", str(out_root)]) == 0
    folder = _folder(out_root, "single")
    res = json.loads((folder / "results.json").read_text())
    assert res["epochs"] == [0, 10, 20, 30, 40] and res["status"] == "ok"
    assert len(res["train_loss"]) == 40 and len(res["loss"]) == 5
    assert sorted(res["nc1"]) == sorted(res["nc1_pinv"]) == ["post1", "pre1", "pre2"]
    assert all(len(v) == 5 for v in res["nc1"].values())
    assert [len(s) for s in res["spectra"]["W1"]] == [5] * 5 and len(res["spectra"]["W2"][0]) == 1
    assert sorted(res["kernels"]) == ["ntk", "post1", "pre1", "pre2"]
    assert len(res["kernels"]["ntk"]["eigenvalues"]) == 48
    assert res["loss"][-1] < res["loss"][0]
    state = torch.load(folder / "weights.pt", weights_only=True)
    cfg = load_config(path)
    model = fcn.build_ensemble(cfg, [res["network_seed"]], 5, device="cpu")
    model.load_state_dict(state)
    assert state["weights.0"].shape == (1, 24, 5)
    init = torch.load(folder / "initial_weights.pt", weights_only=True)
    fresh = fcn.build_ensemble(cfg, [res["network_seed"]], 5, device="cpu")
    assert all(torch.equal(init[k], v) for k, v in fresh.state_dict().items())
    for name in PLOTS:
        assert (folder / "plots" / name).stat().st_size > 10_000, name


def test_single_run_matches_sweep_repeat_zero(write_config, out_root):
    keys = dict(name="single", N=32, in_features=3, hidden_features=16, num_epochs=25, lr=0.01, momentum=0.9,
                probing_frequency=25, probe_weights=False)
    path = write_config(**keys)
    assert main("fcn", [str(path), "--out", str(out_root)]) == 0
    res = json.loads((_folder(out_root, "single") / "results.json").read_text())
    cfg = load_config(path)
    cell = Cell((16, 16), 3, (0,))
    rows = fcn.evaluate_cell(cfg, cell, cell_datasets(cfg, cell))
    # the same float32 training (one network, same seed, draw and batches): the same operations
    # in the same order, so equal bits; 1e-10 is slack for nothing but the float64 NC1 of its features
    np.testing.assert_allclose(rows[0]["nc1"], res["final_nc1"]["post1"], rtol=1e-10)
    assert rows[0]["network_seed"] == res["network_seed"]


def test_kernel_probe_gives_the_limiting_kernels_of_the_data():
    ds = gaussian_data((12, 20), 5, (-1.0, 1.0), (0.7, 0.7), 1)
    net = NetworkParams(L=3, bias_std=0.1)
    probe = fcn.kernel_probe(ds.X, ds.labels, net)
    for name, v in kernels.limiting_kernels_nc1(ds.X, ds.labels, net).items():
        # the full kernels and the blocked NC1: round-off only, carried to NC1 by nc1_round_off
        # with one kernel map (entrywise, condition ~1) per layer: 3 x 64 eps per entry
        bound = nc1_round_off(probe[name]["kernel"], ds.labels, 3 * 64 * 2.0**-52)
        assert abs(probe[name]["nc1"] - float(v)) <= bound
        assert probe[name]["kernel"].shape == (32, 32) and probe[name]["eigenvalues"].shape == (32,)


def test_plot_record_carries_the_predicted_classes():
    ds = gaussian_data((6, 10), 3, (-1.0, 1.0), (0.7, 0.7), 1)
    result = train(FCNEnsemble([4], 3, 8), ds.X, ds.y, ds.labels, SGDParams(num_epochs=5))
    record = fcn.plot_record(result, None)
    assert "kernels" not in record and "spectra" in record
    for key in ("initial", "final"):
        f = record[f"{key}_output"][0, :, 0]
        np.testing.assert_array_equal(record[f"{key}_prediction"][0], (f > 0).astype(int))


def test_ensemble_state_shapes_match_the_config():
    m = FCNEnsemble([1, 2], 3, 8, out_features=2, net=NetworkParams(L=3))
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        "weights.0": (2, 8, 3), "weights.1": (2, 8, 8), "weights.2": (2, 2, 8),
        "biases.0": (2, 8), "biases.1": (2, 8), "biases.2": (2, 2)}


@pytest.mark.slow
def test_entry_script_runs_from_the_command_line(write_config, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    path = write_config(name="cli", N=16, in_features=2, hidden_features=8, num_epochs=5, probing_frequency=5)
    out = subprocess.run([sys.executable, str(root / "fcn.py"), str(path), "lr=0.01", "--out", str(tmp_path / "o")],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    folder = Path(out.stdout.strip().splitlines()[-1])
    assert (folder / "results.json").is_file() and (folder / "plots" / "nc1.png").is_file()
    bad = subprocess.run([sys.executable, str(root / "fcn_bulk_balanced.py"), str(path), "lr=-1"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "lr" in bad.stderr

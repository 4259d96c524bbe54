"""Adaptive-kernel sweep cells, the single run and the AK sweeps through the command line."""
from __future__ import annotations

import json
import math

import pytest

from shallow_collapse import kernels, metrics
from shallow_collapse.cli import main
from shallow_collapse.config import load_config
from shallow_collapse.experiments import adaptive_kernel
from shallow_collapse.params import NetworkParams
from shallow_collapse.plots.adaptive_kernel import SINGLE_RUN_PLOTS
from shallow_collapse.sweeps import Cell, cell_datasets, read_table

from conftest import nc1_round_off, only_folder

EPS = 2.0**-52

AK_KEYS = {"h": 500, "sigw2": 1.0, "siga2": 0.0078125, "sig2": 1e-6, "rtol": 1e-8,
           "annealing_factors": [1e5, 1e4, 2e3, 1e3, 500.0], "eos_update_strategy": "minimize"}


def test_evaluate_cell_rows(write_config):
    cfg = load_config(write_config(**AK_KEYS), [])
    cell = Cell((32, 32), 4, (0, 1))
    datasets = cell_datasets(cfg, cell)
    rows = adaptive_kernel.evaluate_cell(cfg, cell, datasets)
    assert [(r["method"], r["repeat"]) for r in rows] == [("ak", 0), ("nngp", 0), ("ak", 1), ("nngp", 1)]
    for ak, nngp, ds in zip(rows[::2], rows[1::2], datasets):
        assert ak["status"] == "ok" and nngp["status"] == "ok"
        assert ak["evaluations"] >= 1 and ak["rel_residual"] <= cfg["rtol"] and ak["seconds"] >= 0
        assert ak["certified"] and ak["curvature"] > 0 and math.isfinite(ak["action"])
        assert ak["factor"] == 500 and ak["failed_factor"] is None
        # The nngp row is the foundation's NNGP of the same draw (sw^2 = sigw2 = 1, no bias);
        # two float64 evaluations of the same kernel: round-off only, carried to NC1 by
        # nc1_round_off (~1e-12 relative here).
        ref = kernels.limiting_kernels_nc1(ds.X, ds.labels, NetworkParams())["post1"]
        K = kernels.limiting_kernels(ds.X, NetworkParams()).post[0]
        assert abs(nngp["nc1"] - float(ref)) <= nc1_round_off(K, ds.labels)
        assert 0 < ak["nc1"] < nngp["nc1"]


def test_evaluate_cell_reports_non_convergence_without_raising(write_config):
    cfg = load_config(write_config(**{**AK_KEYS, "rtol": 1e-14, "maxiter": 1, "max_subdivisions": 0}), [])
    cell = Cell((16, 16), 2, (0,))
    rows = adaptive_kernel.evaluate_cell(cfg, cell, cell_datasets(cfg, cell))
    ak = rows[0]
    assert ak["method"] == "ak" and ak["status"] == "not_converged"
    assert ak["rel_residual"] > 1e-14 and ak["failed_factor"] is not None and "did not converge" in ak["message"]
    assert not ak["certified"]
    assert math.isfinite(ak["nc1"])  # NC1 at the last accepted factor, named in the factor column
    assert rows[1]["method"] == "nngp" and rows[1]["status"] == "ok"


@pytest.mark.slow
def test_single_run_writes_every_plot_and_result(write_config, out_root):
    path = write_config(**AK_KEYS, N=128, class_sizes=[64, 64], in_features=4, lightweight=False)
    assert main("adaptive_kernels", [str(path), "--out", str(out_root)]) == 0
    folder = only_folder(out_root / "tiny")
    for name in SINGLE_RUN_PLOTS:
        assert (folder / "plots" / name).stat().st_size > 10_000, name
    record = json.loads((folder / "results.json").read_text())
    assert record["status"] == "ok" and record["ak_nc1"] < record["nngp_nc1"]
    factors = ["inf", 1e5, 1e4, 2e3, 1e3, 500.0]
    assert [s["factor"] for s in record["per_step"]] == factors
    assert record["certified"] and record["rel_residual"] <= 1e-8  # the solver's rtol (AK_KEYS)
    assert [c["origin"] for c in record["candidates"]] == ["minimize, annealed", "minimize, direct at chi=h"]
    for step in record["per_step"]:
        assert set(step) == {"factor", "nc1", "tr_w", "tr_b", "fbar_nc1", "mse", "trace_sigma", "action",
                             "rel_residual"}
        # one correctly rounded division of the same two numbers (JSON keeps every bit): <= 1 ulp
        assert math.isclose(step["nc1"], step["tr_w"] / step["tr_b"], rel_tol=2 * EPS)
    # The same Q, from the same state: the last accepted step of the primary (annealed) branch,
    # kept as the result at the same point (as is the NNGP start), so equal but for the division
    # above; 1e-12 is slack, not round-off. (Had the direct candidate been chosen, the two actions
    # would differ by its round-off, ~N eps kappa(M) of the data terms.)
    assert math.isclose(record["per_step"][-1]["nc1"], record["ak_nc1"], rel_tol=1e-12)
    assert math.isclose(record["per_step"][0]["nc1"], record["nngp_nc1"], rel_tol=1e-12)
    assert all(s["rel_residual"] <= 1e-8 for s in record["per_step"])  # the solver's rtol
    assert math.isclose(record["per_step"][-1]["action"], record["action"], rel_tol=1e-9)
    assert len(record["steps"]) >= 5 and {"factor", "iterations", "evaluations", "rel_residual", "action", "converged",
                                          "seconds"} <= set(record["steps"][0])
    assert len(record["fbar_end"]) == 128 and len(record["fbar_gp"]) == 128
    assert len(record["sigma_end"]) == 4 and len(record["q_spectrum_end"]) == 128
    # MSE is the mean of a vector, not of an (N, N) broadcast.
    mse = sum((y - f) ** 2 for y, f in zip(record["y"], record["fbar_end"])) / 128
    # sums of N = 128 non-negative terms: each within N eps relative (Higham, section 4.2)
    assert math.isclose(record["ak_mse"], mse, rel_tol=2 * 128 * EPS)
    # NC1 of the features X against NC1 of K = X X^T (dot products of d = 4 terms): round-off only,
    # carried to NC1 by nc1_round_off (the centred feature sums have terms no larger)
    K, labels = _data_kernel(record)
    assert abs(record["data_nc1"] - float(metrics.nc1_kernel(K, labels))) <= nc1_round_off(K, labels, 2 * 4 * EPS)


def _data_kernel(record):
    import torch

    from shallow_collapse.data import gaussian_data
    ds = gaussian_data([64, 64], 4, [-2.0, 2.0], [0.5, 0.5], 3, repeat=0)
    assert ds.y.tolist() == record["y"]
    return ds.X @ ds.X.T, torch.as_tensor(record["labels"])


def test_lightweight_single_run_skips_plots_and_per_step_metrics(write_config, out_root):
    path = write_config(**AK_KEYS, N=64, in_features=2, lightweight=True)
    assert main("adaptive_kernels", [str(path), "--out", str(out_root)]) == 0
    folder = only_folder(out_root / "tiny")
    record = json.loads((folder / "results.json").read_text())
    assert "per_step" not in record and record["steps"] and record["status"] == "ok"
    assert not list((folder / "plots").glob("*.png"))


@pytest.mark.parametrize("job", ["adaptive_kernels_bulk_balanced", "adaptive_kernels_bulk_imbalanced"])
def test_ak_sweeps_write_tables_with_solver_columns(job, write_config, out_root):
    assert main(job, [str(write_config(**AK_KEYS)), "--out", str(out_root)]) == 0
    folder = only_folder(out_root / "tiny")
    rows = read_table(folder / "results.csv")
    assert len(rows) == 2 * 2 * 2 * 2  # groups x d x repeats x {ak, nngp}
    assert {r["method"] for r in rows} == {"ak", "nngp"}
    ak = [r for r in rows if r["method"] == "ak"]
    assert all(r["status"] in ("ok", "not_converged") for r in ak)
    assert all(r["evaluations"] >= 1 and r["seconds"] >= 0 for r in ak)
    # rtol 1e-8: the solver's tolerance (AK_KEYS)
    assert all(math.isfinite(r["action"]) and r["rel_residual"] <= 1e-8 for r in ak if r["status"] == "ok")
    assert (folder / "plots" / "methods_side_by_side.png").stat().st_size > 10_000

"""The mean-field adaptive kernel as a sweep method: rows, reproducibility, seeds, hash keys, refusals,
the memory estimate, the command line."""
from __future__ import annotations

import math

import pytest

from shallow_collapse.cli import main
from shallow_collapse.config import load_config
from shallow_collapse.experiments import mean_field, posterior
from shallow_collapse.jobs import JOBS
from shallow_collapse.methods import METHODS, ROWS
from shallow_collapse.runs import run_hash
from shallow_collapse.sweeps import Cell, cell_datasets, read_table

from conftest import only_folder

# small and quick: a wide noise and a narrow net, few walkers and iterations
FAST = {"h": 8, "sig2": 0.05, "siga2": 0.5, "mean_field_walkers": 200, "mean_field_iterations": 20,
        "mean_field_averaging": 10, "mean_field_burn_in": 5, "mean_field_replicates": 2}
COLUMNS = {"method", "repeat", "nc1", "status", "se_log10_nc1", "sigma_trace", "kurtosis", "residual", "noise",
           "kappa_min", "iterations", "solver", "seconds", "ak_seconds", "message"}


def same(a: list[dict], b: list[dict], rel: float = 1e-8) -> bool:
    """The same rows but for timings, numbers to ``rel`` (the AK start is converged to its rtol, and
    the quadrature's fixed point to mean_field_rtol, from it), NaN equal to NaN."""
    def close(x, y):
        if isinstance(x, float) and isinstance(y, float):
            return (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=rel, abs=1e-9)
        return x == y
    drop = ("seconds", "ak_seconds")
    return len(a) == len(b) and all(r.keys() == s.keys() and all(close(r[k], s[k]) for k in r if k not in drop)
                                    for r, s in zip(a, b))


def test_rows_per_repeat_quadrature_and_walkers_the_same_twice(write_config):
    cfg = load_config(write_config(**FAST), [])
    for d, solver in [(1, "quadrature"), (4, "walkers")]:
        cell = Cell((8, 8), d, (0, 1))
        rows = mean_field.evaluate_cell(cfg, cell, cell_datasets(cfg, cell))
        assert [(r["method"], r["repeat"]) for r in rows] == [("mean_field", 0), ("mean_field", 1), ("nngp", 0),
                                                              ("nngp", 1)]
        for r in rows[:2]:
            assert set(r) == COLUMNS and r["solver"] == solver
            assert r["status"] in ("ok", "not_converged") and math.isfinite(r["nc1"]) and r["nc1"] > 0
            assert r["sigma_trace"] > 0 and r["kurtosis"] > 0 and r["iterations"] >= 1
            assert (r["se_log10_nc1"] == 0) if solver == "quadrature" else (r["se_log10_nc1"] > 0)
        again = mean_field.evaluate_cell(cfg, cell, cell_datasets(cfg, cell))
        assert same(again, rows)  # the seeds are the config's: a rerun gives the same numbers


def test_the_quadrature_cell_is_the_solver_from_the_aks_solution(write_config):
    """The row is solve_mean_field started from the AK experiment's EoS solution of the same draw."""
    from shallow_collapse.experiments import adaptive_kernel
    from shallow_collapse.mean_field import solve_mean_field

    cfg = load_config(write_config(**FAST), [])
    cell = Cell((8, 8), 2, (0,))
    (ds,) = cell_datasets(cfg, cell)
    (row, _) = mean_field.evaluate_cell(cfg, cell, [ds])
    direct = solve_mean_field(ds.X, ds.y, activation="erf", sigw2=1.0, siga2=0.5, sig2=0.05, h=8,
                              params=mean_field.params_from_config(cfg), start=adaptive_kernel.solve(cfg, ds),
                              labels=ds.labels)
    assert row["nc1"] == pytest.approx(direct.nc1, rel=1e-12) and row["status"] == direct.status


def test_seeds_are_the_draws_children_and_not_the_posteriors():
    seeds = {mean_field.walker_seed(0, (8, 8), 4, r) for r in range(3)}
    assert len(seeds) == 3 and all(0 <= s < 2**39 for s in seeds)
    assert mean_field.walker_seed(0, (8, 8), 4, 0) == mean_field.walker_seed(0, (8, 8), 4, 0)
    assert mean_field.walker_seed(0, (8, 8), 4, 0) != mean_field.walker_seed(1, (8, 8), 4, 0)
    chains = set(posterior.chain_seeds(0, (8, 8), 4, 0, 4))
    assert not {s for s in seeds} & {c >> 24 for c in chains}


def test_a_failed_solve_is_a_status_never_an_exception(write_config):
    cfg = load_config(write_config(**{**FAST, "mean_field_iterations": 1, "mean_field_averaging": 0}), [])
    cell = Cell((8, 8), 4, (0,))
    rows = mean_field.evaluate_cell({**cfg, "mean_field_rtol": 1e-15, "mean_field_mc_tol": 1e-9}, cell,
                                    cell_datasets(cfg, cell))
    assert rows[0]["status"] == "not_converged" and rows[0]["message"]
    broken = mean_field.evaluate_cell({**cfg, "mean_field_walkers": -5}, cell, cell_datasets(cfg, cell))
    assert broken[0]["status"] == "error" and math.isnan(broken[0]["nc1"]) and broken[1]["method"] == "nngp"


def test_the_method_is_registered_with_its_row():
    assert mean_field.METHOD in METHODS
    assert ROWS["mean_field"].versus == ("posterior", "ak") and "mean_field_bulk_imbalanced" in JOBS


def test_the_hash_holds_its_keys_and_no_others():
    cfg = load_config("configs/mean_field_bulk_balanced.yml")
    job = JOBS["mean_field_bulk_balanced"]
    digest = run_hash(cfg, "mean_field_bulk_balanced", job.keys_for(cfg))
    for key, value in [("lr", 0.5), ("hidden_features", 7), ("final_weight_std", 3.0), ("L", 3),
                       ("posterior_samples", 10), ("lightweight", True), ("workers", 1)]:
        assert run_hash({**cfg, key: value}, "mean_field_bulk_balanced", job.keys_for(cfg)) == digest, key
    for key, value in [("h", 64), ("sig2", 1e-3), ("sigw2", 2.0), ("siga2", 0.5), ("activation", "relu"),
                       ("rtol", 1e-6), ("annealing_factors", [1e4, 500.0]), ("mean_field_walkers", 100),
                       ("mean_field_replicates", 2), ("mean_field_damping", 0.3), ("mean_field_method", "walkers")]:
        assert run_hash({**cfg, key: value}, "mean_field_bulk_balanced", job.keys_for(cfg)) != digest, key
    ak = JOBS["adaptive_kernels_bulk_balanced"]
    ak_cfg = load_config("configs/adaptive_kernels_bulk_balanced.yml")
    assert run_hash({**ak_cfg, "mean_field_walkers": 10}, "x", ak.keys_for(ak_cfg)) == run_hash(
        ak_cfg, "x", ak.keys_for(ak_cfg))


@pytest.mark.parametrize("keys, words", [({"mean_field_walkers": 1}, ("'mean_field_walkers'", "integer >= 2")),
                                         ({"mean_field_damping": 1.5}, ("'mean_field_damping'", "between 0 and 1")),
                                         ({"mean_field_method": "grid"}, ("'mean_field_method'", "walkers")),
                                         ({"mean_field_walker": 10}, ("'mean_field_walker'",)),
                                         ({"mean_field_method": "quadrature"}, ("'mean_field_method'", "d > 2"))])
def test_bad_keys_stop_before_any_work(write_config, out_root, refused, keys, words):
    path = write_config(**keys)
    refused(lambda: main("mean_field_bulk_balanced", [str(path), "--out", str(out_root)]), *words)


def test_the_memory_estimate_follows_the_solver():
    cfg = load_config("configs/mean_field_bulk_balanced.yml")
    quad, walk = mean_field.cell_bytes(cfg, 256, 2, 1), mean_field.cell_bytes(cfg, 256, 8, 1)
    assert quad >= 3 * cfg["mean_field_max_points"] * 256 * 8 and walk >= 12 * cfg["mean_field_walkers"] * 256 * 8
    assert mean_field.cell_bytes({**cfg, "mean_field_walkers": 8 * 4000}, 256, 8, 1) > walk


def test_the_sweep_runs_from_the_command_line(write_config, out_root):
    path = write_config(**FAST, N_list=[16], in_features_list=[2], repeat=1)
    assert main("mean_field_bulk_balanced", [str(path), "--out", str(out_root)]) == 0
    folder = only_folder(out_root / "tiny")
    rows = read_table(folder / "results.csv")
    assert sorted(r["method"] for r in rows) == ["mean_field", "nngp"]
    assert (folder / "report.html").is_file()

"""optimizer: langevin in the FCN sweeps: rows, statuses, hash keys, refusals, the matched study."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from shallow_collapse.cli import main
from shallow_collapse.compare import paired_differences
from shallow_collapse.config import load_config
from shallow_collapse.experiments import langevin
from shallow_collapse.jobs import JOBS
from shallow_collapse.matched_study import run_study
from shallow_collapse.runs import run_hash
from shallow_collapse.sweeps import Cell, cell_datasets, read_table

FAST = {"optimizer": "langevin", "hidden_features": 8, "h": 8, "sig2": 0.05, "langevin_burn_in": 40,
        "langevin_samples": 8, "langevin_thin": 4, "langevin_chains": 2}


def _cfg(write_config, **keys):
    return load_config(write_config(**{**FAST, **keys}))


def test_cell_rows_langevin_map_nngp_ntk_per_repeat(write_config):
    cfg = _cfg(write_config)
    cell = Cell((8, 8), 2, (0, 1))
    rows = langevin.evaluate_cell(cfg, cell, cell_datasets(cfg, cell))
    assert sorted((r["method"], r["repeat"]) for r in rows) == sorted(
        (m, r) for m in langevin.METHODS for r in (0, 1))
    for r in (r for r in rows if r["method"] == "langevin"):
        assert r["status"] in ("ok", "not_converged") and r["nc1"] > 0 and r["se_log10_nc1"] > 0
        assert len(r["log10_nc1_by_step"].split(";")) == cfg["langevin_levels"] and r["steps"] > 0
    again = langevin.evaluate_cell(cfg, cell, cell_datasets(cfg, cell))
    assert [r["nc1"] for r in again] == [r["nc1"] for r in rows]  # the seeds of the config fix every draw


def test_a_diverging_step_is_a_status_and_the_sweep_goes_on(write_config):
    cfg = {**_cfg(write_config), "langevin_step": 60.0}  # beyond the schema's bound, to force it
    cell = Cell((8, 8), 2, (0,))
    rows = {r["method"]: r for r in langevin.evaluate_cell(cfg, cell, cell_datasets(cfg, cell))}
    assert rows["langevin"]["status"] == "diverged" and "langevin_step" in rows["langevin"]["message"]
    assert rows["map"]["status"] != "ok"
    assert rows["nngp"]["status"] == "ok"


def test_sgd_hash_is_blind_to_the_sampler_keys_and_langevin_to_sgds(write_config):
    job = "fcn_bulk_balanced"
    base = load_config(write_config())
    sgd = run_hash(base, job, JOBS[job].keys_for(base))
    assert run_hash({**base, "langevin_step": 0.5, "sig2": 0.3}, job, JOBS[job].keys_for(base)) == sgd
    lang = {**base, **_cfg(write_config)}
    h = run_hash(lang, job, JOBS[job].keys_for(lang))
    for key, value in [("lr", 0.5), ("num_epochs", 3), ("hidden_weight_std", 2.0), ("momentum", 0.5)]:
        assert run_hash({**lang, key: value}, job, JOBS[job].keys_for(lang)) == h, key
    for key, value in [("langevin_step", 0.5), ("sig2", 0.3), ("siga2", 0.1), ("hidden_features", 9)]:
        assert run_hash({**lang, key: value}, job, JOBS[job].keys_for(lang)) != h, key


@pytest.mark.parametrize("keys, words", [({"h": 9}, ("'h'", "hidden_features=8")),
                                         ({"sig2": 0.0}, ("'sig2'", "positive")),
                                         ({"langevin_step": 2.5}, ("'langevin_step'", "between 0 and 2"))])
def test_langevin_config_that_cannot_be_honoured_stops(write_config, out_root, refused, keys, words):
    path = write_config(**{**FAST, **keys})
    refused(lambda: main("fcn_bulk_balanced", [str(path), "--out", str(out_root)]), *words)


def test_single_fcn_run_refuses_langevin(write_config, out_root, refused):
    path = write_config(**FAST)
    refused(lambda: main("fcn", [str(path), "--out", str(out_root)]), "'optimizer'", "fcn_bulk_balanced")


@pytest.mark.slow
def test_matched_study_pairs_the_sampler_with_the_ak_draw_by_draw(write_config, out_root):
    path = write_config(**FAST, N_list=[16], in_features_list=[2], repeat=1, hidden_features_list=[4, 8],
                        sig2_list=[0.05], annealing_factors=[1000.0, 100.0],
                        langevin_rhat_max=100.0, langevin_ess_min=0)  # short chains: let them pass as ok
    folder = run_study(path, out_root=out_root)
    table = read_table(folder / "table.csv")
    assert [(r["h"], r["in_features"]) for r in table] == [(4, 2), (8, 2)]
    for r in table:
        assert math.isclose(r["ak_minus_langevin"], r["ak"] - r["langevin"], abs_tol=1e-12)
        assert r["se_langevin"] > 0 and r["nngp"] < 0
    assert (folder / "plots" / "matched_nc1.png").is_file()
    study = json.loads((folder / "study.json").read_text())
    assert "torch" in study["versions"] and yaml.safe_load((folder / "config.yaml").read_text())["hidden_features_list"] == [4, 8]
    first = study["points"][0]["folders"]
    rows = [r for job in ("fcn_bulk_balanced", "adaptive_kernels_bulk_balanced")
            for r in read_table(Path(first[job]) / "results.csv")]
    pairs = {d["pair"]: d for d in paired_differences(rows)}
    assert {"langevin-nngp", "ak-langevin"} <= set(pairs), [r["status"] for r in rows]
    assert math.isclose(pairs["ak-langevin"]["diff_log10_nc1"], table[0]["ak_minus_langevin"], abs_tol=1e-12)

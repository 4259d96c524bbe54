"""The posterior network as a sweep method: rows, reproducibility, hash keys, refusals, the command line."""
from __future__ import annotations

import math

import pytest

from shallow_collapse import kernels
from shallow_collapse.cli import main
from shallow_collapse.config import load_config
from shallow_collapse.experiments import posterior
from shallow_collapse.jobs import JOBS
from shallow_collapse.params import NetworkParams
from shallow_collapse.runs import run_hash
from shallow_collapse.sweeps import Cell, cell_datasets, read_table

from conftest import nc1_round_off, only_folder

FAST = {"h": 8, "sig2": 0.05, "siga2": 0.5, "posterior_burn_in": 20, "posterior_samples": 60,
        "posterior_chains": 2, "posterior_ess_min": 0}


def test_cell_rows_posterior_and_nngp_per_repeat_the_same_twice(write_config):
    cfg = load_config(write_config(**FAST), [])
    cell = Cell((8, 8), 2, (0, 1))
    rows = posterior.evaluate_cell(cfg, cell, cell_datasets(cfg, cell))
    assert [(r["method"], r["repeat"]) for r in rows] == [("posterior", 0), ("posterior", 1), ("nngp", 0), ("nngp", 1)]
    for r in rows[:2]:
        assert r["status"] in ("ok", "not_converged") and r["se_log10_nc1"] > 0 and r["evaluations"] >= 1
        assert r["sweeps"] == 80 and r["seconds"] >= 0 and math.isfinite(r["rhat"]) and r["cuts"] == 0
        assert set(r["traces"]) == {"tr_w", "tr_b", "nc1", "sigma_trace"} and r["traces"]["nc1"].shape == (60, 2)
        assert "prior" not in r["message"]  # the AK gave Sigma: half the chains started there
    again = posterior.evaluate_cell(cfg, cell, cell_datasets(cfg, cell))
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "traces")} for r in rs]  # noqa: E731
    assert strip(again) == strip(rows)  # the seeds are the config's: a rerun gives the same numbers


def test_the_nngp_row_is_the_aks_of_the_same_draw(write_config):
    from shallow_collapse.experiments import adaptive_kernel

    cfg = load_config(write_config(**FAST, annealing_factors=[100.0]), [])
    cell = Cell((8, 8), 2, (0,))
    datasets = cell_datasets(cfg, cell)
    ours = [r for r in posterior.evaluate_cell(cfg, cell, datasets) if r["method"] == "nngp"]
    theirs = [r for r in adaptive_kernel.evaluate_cell(cfg, cell, datasets) if r["method"] == "nngp"]
    # two float64 evaluations of siga2 Kphi(X Sigma_0 X^T): round-off only, carried to NC1 by
    # nc1_round_off (NC1 is scale invariant: the NNGP of sigw2 = 1 stands for the kernel)
    K = kernels.limiting_kernels(datasets[0].X, NetworkParams()).post[0]
    assert abs(ours[0]["nc1"] - theirs[0]["nc1"]) <= nc1_round_off(K, datasets[0].labels)


def test_the_posterior_hash_holds_its_keys_and_no_others():
    cfg = load_config("configs/posterior_bulk_balanced.yml")
    job = JOBS["posterior_bulk_balanced"]
    digest = run_hash(cfg, "posterior_bulk_balanced", job.keys_for(cfg))
    for key, value in [("lr", 0.5), ("hidden_features", 7), ("final_weight_std", 3.0), ("L", 3)]:  # SGD's, FCN's
        assert run_hash({**cfg, key: value}, "posterior_bulk_balanced", job.keys_for(cfg)) == digest, key
    # the AK solver's keys enter: half the chains start from the AK's Sigma, so they move the numbers
    for key, value in [("h", 64), ("sig2", 1e-3), ("sigw2", 2.0), ("siga2", 0.5), ("activation", "relu"),
                       ("posterior_samples", 10), ("posterior_chains", 6), ("rtol", 1e-6),
                       ("annealing_factors", [1e4, 500.0])]:
        assert run_hash({**cfg, key: value}, "posterior_bulk_balanced", job.keys_for(cfg)) != digest, key
    ak = JOBS["adaptive_kernels_bulk_balanced"]
    ak_cfg = load_config("configs/adaptive_kernels_bulk_balanced.yml")
    assert run_hash({**ak_cfg, "posterior_samples": 10}, "x", ak.keys_for(ak_cfg)) == run_hash(ak_cfg, "x", ak.keys_for(ak_cfg))


def test_a_width_beyond_the_aks_schedule_is_refused_by_the_ak_only(write_config, out_root, refused):
    path = write_config(**{**FAST, "h": 1024, "annealing_factors": [1e4, 1000.0]})
    load_config(path)  # the posterior job reads h but not the schedule
    refused(lambda: main("adaptive_kernels_bulk_balanced", [str(path), "--out", str(out_root)]),
            "'annealing_factors'", "h=1024")


@pytest.mark.parametrize("keys, words", [({"optimizer": "langevin"}, ("'optimizer'", "posterior_bulk_balanced")),
                                         ({"langevin_step": 0.5}, ("'langevin_step'", "posterior_")),
                                         ({"posterior_chains": 3}, ("'posterior_chains'", "even integer >= 2")),
                                         ({"posterior_proposal": "pcnl"}, ("'posterior_proposal'", "elliptical"))])
def test_retired_and_bad_keys_stop_before_any_work(write_config, out_root, refused, keys, words):
    path = write_config(**keys)
    refused(lambda: main("fcn_bulk_balanced", [str(path), "--out", str(out_root)]), *words)


def test_optimizer_sgd_still_passes(write_config):
    assert "optimizer" not in load_config(write_config(optimizer="sgd"))


def test_the_sweep_runs_from_the_command_line(write_config, out_root):
    path = write_config(**FAST, N_list=[16], in_features_list=[2], repeat=1)
    assert main("posterior_bulk_balanced", [str(path), "--out", str(out_root)]) == 0
    folder = only_folder(out_root / "tiny")
    rows = read_table(folder / "results.csv")
    assert sorted(r["method"] for r in rows) == ["nngp", "posterior"]
    assert (folder / "report.html").is_file()

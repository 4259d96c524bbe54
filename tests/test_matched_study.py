"""The matched study: draws paired across the posterior, AK and SGD sweeps; cells averaged; refusals; a tiny run."""
from __future__ import annotations

import json
import math

import pytest

from shallow_collapse.config import ConfigError, resolve
from shallow_collapse.matched_study import cell_table, check_shared, main, plan, run_study, study_table
from shallow_collapse.sweeps import read_table


def _rows(method, values, status="ok", **extra):
    """Sweep rows of ``method`` at N = 16, d = 2, one per repeat, with log10 NC1 ``values``."""
    return [{"method": method, "N": 16, "in_features": 2, "repeat": r, "log10_nc1": v, "status": status, **extra}
            for r, v in enumerate(values)]


def _point(post, ak, ak_status="ok", post_status="ok", se=0.01, mf=None, mf_status="ok", mf_se=0.0):
    mf = [v - 0.01 for v in post] if mf is None else mf
    return {"activation": "erf", "rows": {
        "posterior_bulk_balanced": _rows("posterior", post, post_status, se_log10_nc1=se) + _rows("nngp", [-0.5] * len(post)),
        "adaptive_kernels_bulk_balanced": _rows("ak", ak, ak_status) + _rows("nngp", [-0.5] * len(ak)),
        "mean_field_bulk_balanced": _rows("mean_field", mf, mf_status, se_log10_nc1=mf_se) + _rows("nngp", [-0.5] * len(mf)),
        "fcn_bulk_balanced": _rows("fcn", [-2.0] * len(ak)) + _rows("nngp", [-0.4] * len(ak))}}


# The tables' numbers are a few IEEE operations (differences, means of <= 3, a square root) of
# the rows' O(1) values: each correctly rounded, so within a few ulps (~1e-15) on any CPU; the
# tolerances below (1e-12 absolute or relative, or approx's default) are slack, not round-off,
# and a wrong pairing or formula moves the numbers by >= 0.01.


def test_draws_are_paired_and_the_gap_is_in_standard_errors():
    table = study_table([_point([-1.0, -1.2], [-0.9, -1.25])])
    assert [r["repeat"] for r in table] == [0, 1]
    assert table[0]["ak_minus_posterior"] == pytest.approx(0.1, abs=1e-12)
    assert table[0]["gap_in_se"] == pytest.approx(10.0) and table[0]["ak_outside"]
    assert table[1]["ak_minus_posterior"] == pytest.approx(-0.05, abs=1e-12) and table[1]["ak_outside"]
    # the NNGP of the row is the posterior sweep's (the AK's prior), not the SGD network's
    assert table[0]["nngp"] == -0.5 and table[0]["fcn"] == -2.0


def test_a_cell_averages_its_draws_and_its_standard_error_is_the_spread_of_the_gaps():
    cells = cell_table(study_table([_point([-1.0, -1.2, -1.1], [-0.9, -1.25, -1.0])]))
    (cell,) = cells
    gaps = [0.1, -0.05, 0.1]
    mean = sum(gaps) / 3
    std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / 2)
    assert cell["draws"] == cell["draws_compared"] == 3
    assert cell["ak_minus_posterior"] == pytest.approx(mean, abs=1e-12)
    assert cell["se_ak_minus_posterior"] == pytest.approx(std / math.sqrt(3), rel=1e-12)
    assert cell["se_posterior"] == pytest.approx(math.sqrt(3 * 0.01 ** 2) / 3, rel=1e-12)


def test_the_mean_field_column_beside_the_ak_per_draw_and_per_cell():
    table = study_table([_point([-1.0, -1.2, -1.1], [-0.9, -1.25, -1.0], mf=[-1.02, -1.19, -1.1], mf_se=0.005)])
    assert [r["mean_field_minus_posterior"] for r in table] == pytest.approx([-0.02, 0.01, 0.0], abs=1e-12)
    assert table[0]["mean_field"] == -1.02 and table[0]["se_mean_field"] == 0.005
    assert table[0]["mean_field_gap_in_se"] == pytest.approx(-0.02 / math.hypot(0.01, 0.005))
    assert table[0]["ak_minus_posterior"] == pytest.approx(0.1, abs=1e-12)  # the AK's columns unchanged
    (cell,) = cell_table(table)
    gaps = [-0.02, 0.01, 0.0]
    mean = sum(gaps) / 3
    std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / 2)
    assert cell["draws_compared_mean_field"] == 3 and cell["mean_field"] == pytest.approx(-1.103333333333, abs=1e-9)
    assert cell["mean_field_minus_posterior"] == pytest.approx(mean, abs=1e-12)
    assert cell["se_mean_field_minus_posterior"] == pytest.approx(std / math.sqrt(3), rel=1e-12)
    assert cell["se_mean_field"] == pytest.approx(math.sqrt(3 * 0.005 ** 2) / 3, rel=1e-12)


def test_a_mean_field_without_a_number_is_not_compared_and_the_ak_still_is():
    (cell,) = cell_table(study_table([_point([-1.0], [-0.9], mf=[float("nan")], mf_status="not_normalisable")]))
    assert cell["draws_compared"] == 1 and cell["draws_compared_mean_field"] == 0
    assert math.isnan(cell["mean_field"]) and math.isnan(cell["mean_field_minus_posterior"])
    # one draw: the SE of the gap is the sampler's and the replicates' together (the quadrature's is 0)
    (one,) = cell_table(study_table([_point([-1.0], [-0.9], se=0.02, mf=[-1.03], mf_se=float("nan"))]))
    assert one["se_mean_field_minus_posterior"] == pytest.approx(0.02) and one["mean_field_gap_in_se"] == pytest.approx(-1.5)
    # a study whose mean-field sweep is missing still pairs the others
    point = _point([-1.0], [-0.9])
    del point["rows"]["mean_field_bulk_balanced"]
    (row,) = study_table([point])
    assert row["mean_field_status"] == "missing" and row["ak_minus_posterior"] == pytest.approx(0.1)


def test_one_draw_takes_the_samplers_standard_error():
    (cell,) = cell_table(study_table([_point([-1.0], [-0.97], se=0.02)]))
    assert cell["se_ak_minus_posterior"] == 0.02 and cell["gap_in_se"] == pytest.approx(1.5)


def test_a_noise_limited_ak_is_compared_and_an_unconverged_posterior_is_not():
    (certified,) = cell_table(study_table([_point([-1.0], [-0.9], ak_status="noise_limited")]))
    assert certified["draws_compared"] == 1 and certified["ak_minus_posterior"] == pytest.approx(0.1)
    (unusable,) = cell_table(study_table([_point([-1.0], [-0.9], post_status="not_converged")]))
    assert unusable["draws_compared"] == 0 and math.isnan(unusable["ak_minus_posterior"])
    (failed_ak,) = cell_table(study_table([_point([-1.0], [-0.9], ak_status="not_converged")]))
    assert failed_ak["draws_compared"] == 0


def test_the_study_plans_one_set_of_sweeps_per_activation(write_config):
    cfg, points = plan(write_config(activation_list=["erf", "relu"], h=8, hidden_features=8,
                                    annealing_factors=[100.0]))
    assert [p["activation"] for p in points] == ["erf", "relu"]
    for job in points[0]["hashes"]:  # the activation enters every sweep's hash
        assert points[0]["hashes"][job] != points[1]["hashes"][job]


@pytest.mark.parametrize("keys, words", [({"hidden_features": 16, "h": 8, "annealing_factors": [100.0]},
                                          ("'hidden_features'", "h=8")),
                                         ({"activation_list": ["erf", "tanhh"]}, ("'activation_list'", "erf")),
                                         ({"hidden_weight_std": 2.0}, ("'hidden_weight_std'", "sigw2=1.0")),
                                         ({"bias_std": 0.1}, ("'bias_std'", "no bias"))])
def test_a_config_the_study_cannot_honour_stops_before_any_work(write_config, out_root, refused, keys, words):
    path = write_config(**keys)
    refused(lambda: main([str(path), "--out", str(out_root)]), *words)


def test_the_sgd_network_shares_the_eos_prior_but_its_readout_scale():
    # sigw2 = 2 written as a 13-digit hidden_weight_std (relative error 3e-14 < the check's 1e-12);
    # the readout's initial scale (the paper's so = 1.97) is not compared with siga2.
    cfg = resolve({"sigw2": 2.0, "hidden_weight_std": 1.4142135623731, "final_weight_std": 1.97, "siga2": 1 / 128})
    check_shared(cfg)
    with pytest.raises(ConfigError, match="'hidden_weight_std'"):
        check_shared({**cfg, "hidden_weight_std": 1.414})


@pytest.mark.slow
def test_a_tiny_study_writes_its_tables_figure_page_and_index_entry(write_config, out_root):
    path = write_config(N_list=[16], in_features_list=[2], repeat=1, activation_list=["erf"], h=8,
                        hidden_features=8, annealing_factors=[100.0], sig2=0.05, num_epochs=20,
                        posterior_chains=2, posterior_burn_in=100, posterior_samples=200,
                        posterior_rhat_max=100.0, posterior_ess_min=0,
                        posterior_se_max=1.0,  # short chains: let them pass as ok
                        mean_field_walkers=200, mean_field_iterations=20, mean_field_averaging=10,
                        mean_field_replicates=2)
    folder = run_study(path, out_root=out_root)
    (row,) = read_table(folder / "table.csv")
    assert row["posterior_status"] == "ok" and row["ak_status"] in ("ok", "noise_limited")
    # one subtraction of the same two floats (the CSV keeps every bit): equal; 1e-12 is slack
    assert math.isclose(row["ak_minus_posterior"], row["ak"] - row["posterior"], abs_tol=1e-12)
    assert row["se_posterior"] > 0 and math.isfinite(row["fcn"]) and math.isfinite(row["nngp"])
    assert row["mean_field_status"] == "ok" and row["se_mean_field"] == 0  # d = 2: the quadrature
    assert math.isclose(row["mean_field_minus_posterior"], row["mean_field"] - row["posterior"], abs_tol=1e-12)
    (cell,) = read_table(folder / "cells.csv")
    assert cell["draws_compared"] == 1 and cell["draws_compared_mean_field"] == 1
    study = json.loads((folder / "study.json").read_text())
    assert "torch" in study["versions"] and set(study["sweeps"][0]["folders"]) == {
        "posterior_bulk_balanced", "adaptive_kernels_bulk_balanced", "mean_field_bulk_balanced", "fcn_bulk_balanced"}
    assert (folder / "plots" / "matched_nc1.png").is_file() and (folder / "report.html").is_file()
    assert f"{folder.parent.name}/{folder.name}" in (out_root / "index.html").read_text()
    assert {p.name for p in out_root.iterdir() if p.is_dir()} >= set(study["sweeps"][0]["folders"])
    assert run_study(path, out_root=out_root) == folder  # a rerun resumes into the same folder

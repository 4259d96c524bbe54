"""paper.py on a tiny grid: every folder, failures reported, resume, Ctrl-C, one progress bar."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from shallow_collapse import sweeps
from shallow_collapse.cli import main as cli_main
from shallow_collapse.jobs import JOBS
from shallow_collapse.paper import PAPER_SWEEPS, main, plan
from shallow_collapse.progress import Study
from conftest import parse_report

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# A tiny grid (one N, one class-size tuple), and a small, fast network for the FCN sweeps.
SHARED = {"seed": 3, "N_list": [16], "class_sizes_list": [[4, 12]], "in_features_list": [1, 4],
          "repeat": 2, "workers": 1, "hidden_features": 16, "num_epochs": 20, "lr": 0.01}
ALL_SWEEPS = [job for jobs in PAPER_SWEEPS.values() for job in jobs]


def run_paper(tmp) -> tuple[int, dict, Path, str]:
    """Exit status, paper.json, the paper folder and its report.html as this run left them."""
    config = tmp / "paper.yml"
    config.write_text(yaml.safe_dump(SHARED))
    code = main([str(config), "--out", str(tmp / "out"), "--configs", str(CONFIGS)])
    (folder,) = (tmp / "out" / "paper").iterdir()
    return code, json.loads((folder / "paper.json").read_text()), folder, (folder / "report.html").read_text()


def failing(cfg, run):
    raise RuntimeError("made to fail")


def refuse_work(*args, **kwargs):
    raise AssertionError("a rerun must not compute any cell")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study run three times: with fcn_bulk_balanced made to fail, then again (it
    resumes), then once more with cell computation forbidden."""
    tmp = tmp_path_factory.mktemp("paper")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(JOBS, "fcn_bulk_balanced", replace(JOBS["fcn_bulk_balanced"], target=failing))
        first = run_paper(tmp)
    second = run_paper(tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweeps, "compute_cell", refuse_work)
        third = run_paper(tmp)
    return tmp, first, second, third


@pytest.mark.slow
def test_a_failing_sweep_is_reported_and_the_others_finish(study):
    tmp, (code, record, _, html), _, _ = study
    assert code == 1 and record["status"] == "failed"
    fcn = record["sweeps"]["fcn_bulk_balanced"]
    assert fcn["status"] == "failed" and "made to fail" in fcn["message"]
    for job in ALL_SWEEPS:
        if job != "fcn_bulk_balanced":
            assert record["sweeps"][job]["status"] == "ok", job
            assert (tmp / "out" / record["sweeps"][job]["folder"] / "results.csv").is_file()
    balanced = record["comparisons"]["balanced"]
    assert balanced["status"] == "incomplete" and "fcn_bulk_balanced" in balanced["message"]
    assert balanced["inputs"] == ["limiting_kernels_bulk_balanced", "adaptive_kernels_bulk_balanced"]
    assert record["comparisons"]["imbalanced"]["status"] == "ok"
    assert "made to fail" in html and '<tr class="bad"><td>fcn_bulk_balanced</td><td>failed</td>' in html


@pytest.mark.slow
def test_paper_folder_names_every_sweep_and_comparison(study):
    tmp, (_, _, first_folder, _), (code, record, folder, _), _ = study
    assert code == 0 and record["status"] == "ok" and folder == first_folder
    out = tmp / "out"
    named = {record["sweeps"][job]["folder"] for job in ALL_SWEEPS}
    assert named == {f"{job}/{p.name}" for job in ALL_SWEEPS for p in (out / job).iterdir()}
    for job in ALL_SWEEPS:
        entry = record["sweeps"][job]
        assert entry["status"] == "ok" and entry["rows"] > 0 and entry["rows_not_ok"] == 0
        assert (out / entry["folder"] / "report.html").is_file()
    for grid in PAPER_SWEEPS:
        entry = record["comparisons"][grid]
        assert entry["status"] == "ok" and entry["inputs"] == PAPER_SWEEPS[grid]
        rows = sweeps.read_table(out / entry["folder"] / "results.csv")
        assert {r["method"] for r in rows} == {"fcn", "nngp", "ntk", "ak"}
    page = parse_report(folder, root=out)  # the paper's page links the sweep folders beside it
    html = (folder / "report.html").read_text()
    for entry in [*record["sweeps"].values(), *record["comparisons"].values()]:
        assert f"../../{entry['folder']}/report.html" in page.links
    # the comparison figures come first
    assert [Path(s).name for s in page.images] == ["compare_nc1.png", "compare_rel_nc1.png"] * 2
    assert html.index("compare_nc1.png") < html.index("Sweeps")


@pytest.mark.slow
def test_rerun_computes_nothing_and_the_single_script_reuses_the_folder(study, capsys):
    tmp, _, (_, second, folder, _), (code, third, third_folder, _) = study
    assert code == 0 and third_folder == folder and third["sweeps"] == {
        job: {**entry, "seconds": third["sweeps"][job]["seconds"]} for job, entry in second["sweeps"].items()}
    # The entry script with the same keys lands in the paper's folder: its cells are all stored.
    capsys.readouterr()
    overrides = [f"{k}={json.dumps(v)}" for k, v in SHARED.items()]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweeps, "compute_cell", refuse_work)
        assert cli_main("limiting_kernels_bulk_imbalanced", [str(CONFIGS / "limiting_kernels_bulk_imbalanced.yml"),
                                                             *overrides, "--out", str(tmp / "out")]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == tmp / "out" / second["sweeps"]["limiting_kernels_bulk_imbalanced"]["folder"]


def test_ctrl_c_keeps_what_finished(tmp_path):
    def interrupted(cfg, run):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(JOBS, "fcn_bulk_balanced", replace(JOBS["fcn_bulk_balanced"], target=interrupted))
        code, record, folder, _ = run_paper(tmp_path)
    assert code == 130 and record["status"] == "interrupted"
    states = [record["sweeps"][job]["status"] for job in ALL_SWEEPS]
    assert states == ["ok", "interrupted"] + ["not run"] * 4
    assert (tmp_path / "out" / record["sweeps"]["limiting_kernels_bulk_balanced"]["folder"] / "results.csv").is_file()
    parse_report(folder, root=tmp_path / "out")


def test_bad_shared_key_stops_before_any_work(tmp_path, capsys):
    config = tmp_path / "paper.yml"
    config.write_text(yaml.safe_dump({**SHARED, "activation": "swish2"}))
    assert main([str(config), "--out", str(tmp_path / "out"), "--configs", str(CONFIGS)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paper.py: error:") and "'activation'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_study_bar_counts_only_the_cells_computed():
    study = Study({"a": 4, "b": 3, "c": 2}, "test")
    study.start("a", 1)  # three cells of a already stored
    study.advance()
    study.finish("a")
    study.start("b", 3)
    study.advance()
    study.finish("b")  # b failed after one cell
    study.finish("c")  # c never started
    assert (study.bar.n, study.bar.total) == (2, 2)
    study.bar.close()


def test_unusable_out_is_refused_with_one_line(tmp_path, capsys):
    """The paper's own folder is made like every run folder: a regular file as --out stops with
    one line and exit 2, and nothing is written."""
    out = tmp_path / "a_file"
    out.write_text("not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    config = Path(__file__).resolve().parents[1] / "configs" / "paper_quick.yml"
    assert main([str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("paper.py: error:") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and out.read_text() == "not a folder"


def test_bad_matched_study_config_stops_before_any_work(tmp_path, capsys):
    config, matched = tmp_path / "paper.yml", tmp_path / "matched.yml"
    config.write_text(yaml.safe_dump(SHARED))
    matched.write_text(yaml.safe_dump({"posterior_stepp": 0.5}))
    assert main([str(config), "--out", str(tmp_path / "out"), "--configs", str(CONFIGS), "--matched", str(matched)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "posterior_stepp" in err and "posterior_step" in err
    assert not (tmp_path / "out").exists()


PAPER_FCN = {"lr": 1e-3, "batch_size": None, "num_epochs": 1000, "hidden_features": 500, "activation": "erf", "L": 2}


def test_paper_yml_trains_the_fcn_as_the_paper_and_the_tuned_config_its_own():
    _, _, paper = plan(CONFIGS / "paper.yml")
    _, _, tuned = plan(CONFIGS / "paper_tuned.yml")
    for grid in PAPER_SWEEPS:
        job = f"fcn_bulk_{grid}"
        for sweeps_of, momentum, weight_decay in ((paper, 0.0, 1e-6), (tuned, 0.9, 0.0)):
            cfg = sweeps_of[job]["cfg"]
            assert (cfg["momentum"], cfg["weight_decay"]) == (momentum, weight_decay), job
            assert {key: cfg[key] for key in PAPER_FCN} == PAPER_FCN, job
        assert paper[job]["hash"] != tuned[job]["hash"]
    # the optimiser keys enter only the FCN hashes: the kernel and AK sweeps are shared
    for job in ALL_SWEEPS:
        if not job.startswith("fcn"):
            assert paper[job]["hash"] == tuned[job]["hash"], job

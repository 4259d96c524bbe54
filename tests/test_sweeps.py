import json

import pytest

from shallow_collapse.cli import main
from shallow_collapse.experiments import limiting_kernels
from shallow_collapse.jobs import JOBS, with_evaluate
from shallow_collapse.sweeps import RESULT_COLUMNS, SUMMARY_COLUMNS, grid_cells, read_table

JOB = "limiting_kernels_bulk_imbalanced"


def run_folder(out_root):
    (folder,) = (out_root / "tiny").iterdir()
    return folder


def test_sweep_writes_table_summary_and_plots(write_config, out_root):
    assert main(JOB, [str(write_config()), "--out", str(out_root)]) == 0
    folder = run_folder(out_root)
    rows = read_table(folder / "results.csv")
    assert list(rows[0])[: len(RESULT_COLUMNS)] == RESULT_COLUMNS
    assert len(rows) == 2 * 2 * 2 * 2  # class-size tuples x d x repeats x {nngp, ntk}
    assert {r["method"] for r in rows} == {"nngp", "ntk"} and all(r["status"] == "ok" for r in rows)
    assert {r["class_sizes"] for r in rows} == {"8-8", "4-12"}
    summary = read_table(folder / "summary.csv")
    assert list(summary[0]) == SUMMARY_COLUMNS and len(summary) == 2 * 2 * 2
    for name in ("nngp_nc1.png", "ntk_nc1.png", "methods_side_by_side.png"):
        assert (folder / "plots" / name).stat().st_size > 10_000


def test_same_seed_same_numbers_other_seed_other_numbers(write_config, tmp_path):
    path = write_config()
    for out in ("a", "b"):
        main(JOB, [str(path), "--out", str(tmp_path / out)])
    main(JOB, [str(path), "seed=4", "--out", str(tmp_path / "c")])
    a, b, c = (read_table(run_folder(tmp_path / o) / "results.csv") for o in "abc")
    assert a == b and [r["nc1"] for r in a] != [r["nc1"] for r in c]


def test_resume_after_interruption_gives_the_full_table(write_config, tmp_path, monkeypatch):
    path = write_config(repeat=3)
    assert main(JOB, [str(path), "--out", str(tmp_path / "full")]) == 0
    calls = []

    def interrupted(cfg, cell, datasets):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(cell.key)
        return limiting_kernels.evaluate_cell(cfg, cell, datasets)

    job = JOBS[JOB]
    monkeypatch.setitem(JOBS, JOB, with_evaluate(job, interrupted))
    assert main(JOB, [str(path), "--out", str(tmp_path / "resumed")]) == 130
    folder = run_folder(tmp_path / "resumed")
    assert len(list((folder / "cells").glob("*.json"))) == 2 and not (folder / "results.csv").exists()
    monkeypatch.undo()
    assert main(JOB, [str(path), "--out", str(tmp_path / "resumed")]) == 0
    assert read_table(folder / "results.csv") == read_table(run_folder(tmp_path / "full") / "results.csv")


def test_grid_cells_follow_the_config(write_config):
    from shallow_collapse.config import load_config
    cfg = load_config(write_config())
    assert [c.key for c in grid_cells(cfg, "balanced")] == ["n8-8_d1", "n8-8_d4", "n16-16_d1", "n16-16_d4"]
    with pytest.raises(ValueError):
        grid_cells(cfg, "diagonal")


MALFORMED = {"empty object": "{}", "a list": "[]", "rows without status": None, "another cell's record": None,
             "no rows": '{"cell": "n8-8_d1", "rows": []}',
             "torn file": '{"cell": "n8-8_d1", "rows": [', "not UTF-8": b"\xff\xfe{}", "a number": "3"}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_cell_file_is_computed_again(case, write_config, out_root, capsys):
    # issue 9, case 13: any cell file that is not a record of its cell counts as not done
    path = write_config()
    assert main(JOB, [str(path), "--out", str(out_root)]) == 0
    folder = run_folder(out_root)
    expected = read_table(folder / "results.csv")
    cell = folder / "cells" / "n8-8_d1.json"
    record = json.loads(cell.read_text())
    content = MALFORMED[case]
    if case == "rows without status":
        content = json.dumps({**record, "rows": [{k: v for k, v in r.items() if k != "status"} for r in record["rows"]]})
    elif case == "another cell's record":
        content = (folder / "cells" / "n4-12_d1.json").read_text()
    cell.write_bytes(content if isinstance(content, bytes) else content.encode())
    capsys.readouterr()
    assert main(JOB, [str(path), "--out", str(out_root)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert json.loads(cell.read_text())["rows"] == record["rows"] and read_table(folder / "results.csv") == expected


def test_a_cell_that_runs_out_of_memory_is_an_error_row_and_the_sweep_goes_on(write_config, out_root, monkeypatch):
    # issue 9, case 6 within a sweep: a failure while drawing a cell's data stays in that cell
    from shallow_collapse import sweeps

    draw = sweeps.cell_datasets

    def hungry(cfg, cell):
        if cell.key == "n8-8_d4":
            raise MemoryError("cannot allocate 8 TiB")
        return draw(cfg, cell)

    monkeypatch.setattr(sweeps, "cell_datasets", hungry)
    assert main(JOB, [str(write_config()), "--out", str(out_root)]) == 0
    rows = read_table(run_folder(out_root) / "results.csv")
    bad = [r for r in rows if r["status"] == "error"]
    assert {(r["class_sizes"], r["in_features"]) for r in bad} == {("8-8", 4)} and len(bad) == 2 * 2
    assert all(r["message"] == "MemoryError: cannot allocate 8 TiB" for r in bad)
    assert sum(r["status"] == "ok" for r in rows) == len(rows) - len(bad)

"""OUT/index.html and ``python -m shallow_collapse runs``: every run folder, kept current, safe at once."""
from __future__ import annotations

import threading
from dataclasses import replace

from shallow_collapse import index
from shallow_collapse.__main__ import main as package_main
from shallow_collapse.cli import main
from shallow_collapse.jobs import JOBS
from conftest import parse_page


def sweep(write_config, out_root, filename, **keys) -> int:
    return main("limiting_kernels_bulk_balanced", [str(write_config(filename, **keys)), "--out", str(out_root)])


def test_two_runs_appear_with_the_keys_that_tell_them_apart(write_config, out_root, capsys):
    assert sweep(write_config, out_root, "erf.yml") == 0
    assert sweep(write_config, out_root, "relu.yml", activation="relu") == 0
    rows = index.entries(out_root)
    assert [r.job for r in rows] == ["limiting_kernels_bulk_balanced"] * 2
    assert all(r.ok and r.status == "ok, 16 rows" for r in rows)
    differs = sorted(rows, key=lambda r: "activation" in r.differs)
    # the tiny grid differs from the shipped config in both; the activation only in the second
    assert differs[0].differs == {"seed": 3, "N_list": [16, 32], "in_features_list": [1, 4], "repeat": 2}
    assert differs[1].differs == {**differs[0].differs, "activation": "relu"}
    page = parse_page(out_root / "index.html", root=out_root)
    assert sorted(page.links) == sorted(f"tiny/{r.hash}/report.html" for r in rows)
    html = (out_root / "index.html").read_text()
    assert "activation=relu" in html and "repeat=2" in html
    capsys.readouterr()
    assert package_main(["runs", "--out", str(out_root)]) == 0
    printed = capsys.readouterr().out
    assert all(r.hash in printed for r in rows) and "activation=relu" in printed


def test_deleted_index_is_rebuilt_by_the_next_run_and_by_runs(write_config, out_root, capsys):
    assert sweep(write_config, out_root, "a.yml") == 0
    (out_root / "index.html").unlink()
    assert package_main(["runs", "--out", str(out_root)]) == 0
    assert (out_root / "index.html").is_file()
    (out_root / "index.html").unlink()
    assert sweep(write_config, out_root, "b.yml", repeat=1) == 0
    assert len(parse_page(out_root / "index.html", root=out_root).links) == 2


def test_not_ok_rows_stand_out(write_config, out_root):
    assert sweep(write_config, out_root, "a.yml", class_stds=[0.0, 0.0], in_features_list=[1]) == 0
    (row,) = index.entries(out_root)
    assert not row.ok and "rows not ok" in row.status  # zero within-class scatter: NC1 is 0, log10 -inf
    assert '<tr class="bad">' in (out_root / "index.html").read_text()


def test_runs_without_an_output_folder_is_one_line(tmp_path, capsys):
    assert package_main(["runs", "--out", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("runs: error:")


def test_two_runs_finishing_at_once_both_appear(write_config, out_root, monkeypatch):
    """Both runs finish together (a barrier), and the first to read the folders is held until the
    second is about to rebuild the index too: without the lock the first would write a page that
    misses the second's results after the second wrote its own."""
    finish = threading.Barrier(2, timeout=60)
    second_waiting = threading.Event()
    count = threading.Lock()
    state = {"finishing": False, "locks": 0, "scans": 0}

    def target(cfg, run):
        finish.wait()  # both folders exist and both runs finish now
        state["finishing"] = True
        run.write_json("results.json", {"status": "ok", "nc1": 0.5})

    real_entries, real_locked = index.entries, index._locked

    def locked(out):
        with count:
            if state["finishing"]:
                state["locks"] += 1
                if state["locks"] == 2:  # the other run is about to take the lock
                    second_waiting.set()
        return real_locked(out)

    def entries(out):
        rows = real_entries(out)
        with count:
            first = state["finishing"] and state["scans"] == 0
            state["scans"] += state["finishing"]
        if first:  # the first rebuild after the barrier holds the lock until the other run waits for it
            assert second_waiting.wait(timeout=60)
        return rows

    monkeypatch.setitem(JOBS, "fcn", replace(JOBS["fcn"], target=target))
    monkeypatch.setattr(index, "entries", entries)
    monkeypatch.setattr(index, "_locked", locked)
    codes = {}
    threads = [threading.Thread(target=lambda s=s: codes.update(
        {s: main("fcn", [str(write_config(f"s{s}.yml", seed=s, N=16)), "--out", str(out_root)])})) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert codes == {1: 0, 2: 0}
    html = (out_root / "index.html").read_text()
    rows = real_entries(out_root)
    assert len(rows) == 2 and all(r.ok for r in rows)
    assert html.count('<tr class="bad">') == 0 and all(r.hash in html for r in rows)


def test_the_index_says_what_it_compares_with(monkeypatch, tmp_path):
    # a source checkout compares with its configs/; an installed package (no configs/ beside it)
    # with the schema's defaults, and its column says so instead of falling back silently
    assert index.baseline() == "differs from the shipped config"
    monkeypatch.setattr(index, "CONFIGS", tmp_path / "configs")
    row = index.Entry("fcn", "0123456789", "", "ok", True, {"seed": 3}, "fcn/0123456789")
    assert "differs from the defaults" in index._page([row])

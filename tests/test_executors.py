"""Parallel and distributed execution give the same table; interruption loses nothing finished."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shallow_collapse.cli import main
from shallow_collapse.sweeps import read_table

ROOT = Path(__file__).resolve().parents[1]
JOB = "limiting_kernels_bulk_balanced"


def table(out_root):
    (folder,) = (out_root / "tiny").iterdir()
    return read_table(folder / "results.csv")


@pytest.fixture
def reference(write_config, tmp_path):
    """The table of an uninterrupted in-process run of the tiny sweep."""
    assert main(JOB, [str(write_config()), "workers=1", "--out", str(tmp_path / "reference")]) == 0
    return table(tmp_path / "reference")


def numbers(rows):
    """Rows without timing columns (names ending in 'seconds'), which differ run to run."""
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("job,overrides", [
    ("limiting_kernels_bulk_balanced", []),
    ("fcn_bulk_imbalanced", ["hidden_features=16", "num_epochs=20", "lr=0.01"]),
    ("adaptive_kernels_bulk_balanced", []),
])
def test_two_local_workers_give_the_same_numbers(write_config, tmp_path, job, overrides):
    # Every cell runs on one thread wherever it runs, so the numbers agree to the last bit.
    for workers in (1, 2):
        argv = [str(write_config()), *overrides, f"workers={workers}", "--out", str(tmp_path / str(workers))]
        assert main(job, argv) == 0
    assert numbers(table(tmp_path / "1")) == numbers(table(tmp_path / "2"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dask_cluster_gives_the_same_table(write_config, tmp_path, reference):
    dask = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                               "--no-dashboard"], env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([dask, "worker", address, "--nworkers", "2", "--nthreads", "1",
                                       "--no-dashboard"], env=env, cwd=tmp_path, stderr=subprocess.DEVNULL))
        from distributed import Client
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        argv = [str(write_config()), "executor=dask", f"scheduler_address={address}", "--out", str(tmp_path / "dask")]
        assert main(JOB, argv) == 0
        assert table(tmp_path / "dask") == reference
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_dask_without_address_stops_before_work(write_config, out_root, monkeypatch, capsys):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert main(JOB, [str(write_config()), "executor=dask", "--out", str(out_root)]) == 2
    assert "'scheduler_address'" in capsys.readouterr().err and not out_root.exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_sweep_resumes_to_the_same_table(write_config, tmp_path, sig):
    # 15 cells of N=2048 x 4 repeats (~0.1 s each): the signal lands while cells are still to run.
    path = write_config(N_list=[2048, 1536, 1024], in_features_list=[1, 2, 8, 32, 128], repeat=4, workers=1)
    command = [sys.executable, "limiting_kernels_bulk_balanced.py", str(path)]
    subprocess.run([*command, "--out", str(tmp_path / "full")], cwd=ROOT, check=True, capture_output=True)
    proc = subprocess.Popen([*command, "--out", str(tmp_path / "cut")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    cells = tmp_path / "cut" / "tiny"
    deadline = time.time() + 120
    while len(list(cells.glob("*/cells/*.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    stored = len(list(cells.glob("*/cells/*.json")))
    assert 2 <= stored < 15, stored
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    subprocess.run([*command, "--out", str(tmp_path / "cut")], cwd=ROOT, check=True, capture_output=True)
    assert table(tmp_path / "cut") == table(tmp_path / "full")


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(write_config, tmp_path, monkeypatch):
    from dataclasses import replace
    from functools import partial

    from shallow_collapse.experiments import limiting_kernels
    from shallow_collapse.jobs import JOBS

    def flaky(cfg, cell, datasets):
        if cell.in_features == 4 and sum(cell.class_sizes) == 32:
            raise FloatingPointError("singular matrix\nsecond line")
        return limiting_kernels.evaluate_cell(cfg, cell, datasets)

    job = JOBS[JOB]
    monkeypatch.setitem(JOBS, JOB, replace(job, target=partial(job.target, evaluate=flaky)))
    assert main(JOB, [str(write_config()), "--out", str(tmp_path / "o")]) == 0
    rows = table(tmp_path / "o")
    bad = [r for r in rows if r["status"] == "error"]
    assert len(bad) == 2 * 2 and all(r["message"] == "FloatingPointError: singular matrix" for r in bad)
    assert sum(r["status"] == "ok" for r in rows) == len(rows) - len(bad)
    (folder,) = (tmp_path / "o" / "tiny").iterdir()
    summary = read_table(folder / "summary.csv")
    assert sorted(r["n_failed"] for r in summary) == [0] * (len(summary) - 2) + [2, 2]
    monkeypatch.undo()  # a rerun retries the failed cell only, and it now succeeds
    assert main(JOB, [str(write_config()), "--out", str(tmp_path / "o")]) == 0
    assert all(r["status"] == "ok" for r in table(tmp_path / "o"))

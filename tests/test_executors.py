"""Parallel and distributed execution give the same table; interruption loses nothing finished."""
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from shallow_collapse import executors
from shallow_collapse.cli import main
from shallow_collapse.experiments import limiting_kernels
from shallow_collapse.sweeps import read_table

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = (ROOT / "docs" / "CLUSTER.md").read_text()
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


def readme_dask_recipe() -> dict:
    """The commands of the Dask recipe in docs/CLUSTER.md, continuation lines joined, by what they start."""
    block = CLUSTER.split("dask-jobqueue")[0].split("```bash")[-1].split("```")[0]
    lines = [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    return {"install": commands[0], "scheduler": commands[1], "worker": commands[2], "submit": commands[3]}


def on_localhost(command: str, ports: tuple, replace: dict = ()) -> list[str]:
    """A command of docs/CLUSTER.md run here: the example address becomes 127.0.0.1 and free ports, the
    environment is this one, and ``replace`` swaps further words."""
    text = command.replace("10.0.0.5", "127.0.0.1").replace("8786", str(ports[0])).replace("8787", str(ports[1]))
    text = text.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")
    for old, new in dict(replace).items():
        text = text.replace(old, new)
    return shlex.split(text)


@contextmanager
def processes():
    """Popen objects started in the block, stopped at its end."""
    started = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for_workers(address: str, count: int) -> None:
    from distributed import Client

    with Client(address, timeout="120s") as client:
        client.wait_for_workers(count, timeout=120)


def clean_env(**extra) -> dict:
    """This environment without PYTHONPATH: the package must come from its installation."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **extra}


@pytest.mark.slow
def test_the_readme_dask_recipe_works_as_written(write_config, tmp_path):
    # issue 9, case 16: scheduler and workers started the way docs/CLUSTER.md says, outside the clone
    recipe, ports = readme_dask_recipe(), (free_port(), free_port())
    assert recipe["install"].endswith("pip install --no-deps -e .")
    config = write_config()
    job = recipe["submit"].split()[1].removesuffix(".py")
    assert main(job, [str(config), "workers=1", "--out", str(tmp_path / "reference")]) == 0
    with processes() as started:
        for name in ("scheduler", "worker"):
            started.append(subprocess.Popen(on_localhost(recipe[name], ports, {"--nworkers 4": "--nworkers 2"}),
                                            cwd=tmp_path, env=clean_env(), stderr=subprocess.DEVNULL))
        wait_for_workers(f"tcp://127.0.0.1:{ports[0]}", 2)
        submit = on_localhost(recipe["submit"], ports, {"configs/adaptive_kernels_bulk_imbalanced.yml": str(config)})
        proc = subprocess.run([*submit, "--out", str(tmp_path / "dask")], cwd=ROOT, env=clean_env(),
                              capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert numbers(table(tmp_path / "dask")) == numbers(table(tmp_path / "reference"))


def test_dask_without_address_stops_before_work(write_config, out_root, monkeypatch, refused):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    path = write_config()
    refused(lambda: main(JOB, [str(path), "executor=dask", "--out", str(out_root)]), "'scheduler_address'")


@pytest.mark.parametrize("address", ["not a scheduler", "tcp://127.0.0.1:99999", "closed port"])
def test_an_unusable_dask_scheduler_is_refused_within_the_timeout(address, write_config, out_root, monkeypatch,
                                                                   refused):
    # issue 9, case 9: malformed or unreachable address
    monkeypatch.setattr(executors, "DASK_TIMEOUT", 3)
    address = f"tcp://127.0.0.1:{free_port()}" if address == "closed port" else address
    path = write_config()
    refused(lambda: main(JOB, [str(path), "executor=dask", f"scheduler_address={address}", "--out", str(out_root)]),
            "config key 'scheduler_address'", "expected a reachable Dask scheduler")


@pytest.mark.slow
def test_workers_that_cannot_import_the_package_fail_the_submitter_with_one_line(write_config, tmp_path, out_root,
                                                                                  monkeypatch, refused):
    # issue 9, case 17: such a worker dies on the task, which would then wait forever
    broken = tmp_path / "broken" / "shallow_collapse"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('not importable here')\n")
    recipe, ports = readme_dask_recipe(), (free_port(), free_port())
    monkeypatch.setattr(executors, "DASK_TIMEOUT", 10)
    path = write_config()
    with processes() as started:
        started.append(subprocess.Popen(on_localhost(recipe["scheduler"], ports), cwd=tmp_path, env=clean_env(),
                                        stderr=subprocess.DEVNULL))
        started.append(subprocess.Popen(on_localhost(recipe["worker"], ports, {"--nworkers 4": "--nworkers 1"}),
                                        cwd=tmp_path, env=clean_env(PYTHONPATH=str(broken.parent)),
                                        stderr=subprocess.DEVNULL))
        wait_for_workers(f"tcp://127.0.0.1:{ports[0]}", 1)
        argv = [str(path), "executor=dask", f"scheduler_address=tcp://127.0.0.1:{ports[0]}", "--out", str(out_root)]
        refused(lambda: main(JOB, argv), "config key 'scheduler_address'", "none ran a test task within 10 s",
                "pip install -e .")


# Interrupts (issue 9, cases 11, 12, 18). The cells of N=HELD never finish, so a signal sent once
# every other cell is stored always lands mid-sweep, whatever the speed of the machine; the
# driver runs the real command line with that method and prints each cell key as it is stored.
HELD = 16
INTERRUPTED = {"N_list": [16, 32], "in_features_list": [1, 2, 3, 4, 5, 6], "repeat": 2}  # 6 held cells: some wait in the pool
DRIVER = """
import sys

import test_executors
from shallow_collapse import sweeps
from shallow_collapse.cli import main
from shallow_collapse.jobs import JOBS, with_evaluate

job = JOBS[test_executors.JOB]
JOBS[test_executors.JOB] = with_evaluate(job, test_executors.held_evaluate)
real_log_cell = sweeps.log_cell
def announce(run, record):
    real_log_cell(run, record)
    print(record["cell"], flush=True)
sweeps.log_cell = announce
sys.exit(main(test_executors.JOB, sys.argv[1:]))
"""


def held_evaluate(cfg, cell, datasets):
    """The limiting-kernel method, except that cells of N=HELD wait until the process is stopped."""
    if cell.N == HELD:
        threading.Event().wait()
    return limiting_kernels.evaluate_cell(cfg, cell, datasets)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def wait_until_gone(pid: int, timeout: float = 60) -> bool:
    """Block until process ``pid`` has exited (a pidfd becomes readable), at most ``timeout`` s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


@pytest.fixture
def busy_cores():
    """Two processes spinning for the duration of the test: both cores of the CI machine busy."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for proc in spinners:
        proc.kill()
        proc.wait()


def interrupt_and_resume(write_config, tmp_path, workers, sig):
    path = write_config(**INTERRUPTED, workers=workers)
    assert main(JOB, [str(path), "workers=1", "--out", str(tmp_path / "full")]) == 0
    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(path), "--out", str(cut)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
    finished = {f"n16-16_d{d}" for d in INTERRUPTED["in_features_list"]}  # N=32: every cell but the held ones
    stored = set()
    while stored != finished:
        line = proc.stdout.readline()
        assert line, (tmp_path / "stderr").read_text()  # the driver ended before the signal
        stored.add(line.strip())
    workers_pids = descendants(proc.pid)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    else:
        proc.send_signal(sig)  # only the main process
    code = proc.wait(timeout=120)
    assert all(wait_until_gone(pid) for pid in workers_pids), "worker processes outlived the main process"
    err = (tmp_path / "stderr").read_text()
    assert code == (130 if sig == signal.SIGINT else -sig), err
    assert "Traceback" not in err and "InvalidStateError" not in err, err
    (folder,) = (cut / "tiny").iterdir()
    assert {p.stem for p in (folder / "cells").glob("*.json")} == finished
    resumed = subprocess.run([sys.executable, "limiting_kernels_bulk_balanced.py", str(path), "--out", str(cut)],
                             cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert table(cut) == table(tmp_path / "full")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL, signal.SIGTERM], ids=["SIGINT", "SIGKILL", "SIGTERM"])
def test_interrupted_sweep_resumes_to_the_same_table(write_config, tmp_path, workers, sig):
    interrupt_and_resume(write_config, tmp_path, workers, sig)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_sweep_on_busy_cores(write_config, tmp_path, busy_cores, sig):
    interrupt_and_resume(write_config, tmp_path, 2, sig)


def die(item):
    os._exit(3)


def wait_forever():
    threading.Event().wait()


def test_an_interrupt_stops_the_pool_without_cancelling_futures(monkeypatch):
    # issue 9, case 12: Python 3.11's pool thread raises InvalidStateError (printed as a thread
    # traceback) when it fails a future that was cancelled, so an interrupt must cancel none.
    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    futures = []
    with pytest.raises(KeyboardInterrupt):
        with executors.cell_executor({"executor": "local", "workers": 2}) as pool:
            futures += [pool.submit(wait_forever) for _ in range(8)]  # more than the pool's queue holds
            raise KeyboardInterrupt
    assert errors == [] and all(f.done() and not f.cancelled() for f in futures)


def test_a_cell_whose_worker_dies_becomes_an_error_row():
    with executors.cell_executor({"executor": "local", "workers": 2}) as pool:
        got = list(executors.completed(pool, die, [1, 2], on_error=lambda item, exc: (item, type(exc).__name__)))
    assert sorted(got) == [(1, "BrokenProcessPool"), (2, "BrokenProcessPool")]


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(write_config, tmp_path, monkeypatch):
    from shallow_collapse.experiments import limiting_kernels
    from shallow_collapse.jobs import JOBS, with_evaluate

    def flaky(cfg, cell, datasets):
        if cell.in_features == 4 and sum(cell.class_sizes) == 32:
            raise FloatingPointError("singular matrix\nsecond line")
        return limiting_kernels.evaluate_cell(cfg, cell, datasets)

    job = JOBS[JOB]
    monkeypatch.setitem(JOBS, JOB, with_evaluate(job, flaky))
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

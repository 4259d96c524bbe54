"""Where sweep cells run: in this process, in local worker processes, or on a Dask cluster.

All three look the same to the sweep engine: :func:`cell_executor` yields ``None`` (run in
process) or a ``concurrent.futures.Executor`` (a process pool, or Dask's ``Client.get_executor()``),
and :func:`completed` yields results as they finish. Every cell runs on one torch/BLAS thread
(:func:`shallow_collapse.sweeps.compute_cell`), so ``workers`` processes do not fight over
``workers`` cores and the numbers do not depend on where a cell ran; the table is assembled in
grid order from per-cell files.

Local workers exit as soon as the main process is gone, however it died (each watches the pipe
that ties it to its parent). A Dask cluster is checked before any work: the scheduler must answer
within :data:`DASK_TIMEOUT` seconds and run a test task that imports this package there.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from .config import ConfigError, show

__all__ = ["resolve_workers", "scheduler_address", "check_execution", "cell_executor", "completed",
           "DASK_TIMEOUT"]

DASK_TIMEOUT = 15  # seconds to reach a scheduler, and for its workers to run the test task

def resolve_workers(workers) -> int:
    """``auto`` -> the number of cores this process may use; an integer as given."""
    if workers == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return int(workers)


def scheduler_address(cfg: dict) -> str | None:
    """The Dask scheduler address: config key ``scheduler_address`` or ``DASK_SCHEDULER_ADDRESS``."""
    return cfg["scheduler_address"] or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


def check_execution(cfg: dict) -> None:
    """Fail before any work when the execution settings cannot work."""
    if cfg["executor"] == "dask":
        if not scheduler_address(cfg):
            raise ConfigError("config key 'scheduler_address': expected a Dask scheduler address "
                              "(e.g. tcp://127.0.0.1:8786) with executor: dask, or set DASK_SCHEDULER_ADDRESS")
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ConfigError("config key 'executor': dask needs the 'distributed' package "
                              "(pip install -r requirements.txt)") from None
        _check_cluster(scheduler_address(cfg))


def cluster_probe() -> bool:
    """The test task: it reaches a worker only if the scheduler and that worker import this package."""
    return True


def _check_cluster(address: str) -> None:
    """Connect to the scheduler and run :func:`cluster_probe` there, each within DASK_TIMEOUT."""
    from distributed import Client

    where = f"config key 'scheduler_address': {show(address)}"
    try:
        client = Client(address, timeout=f"{DASK_TIMEOUT}s")
    except Exception as exc:  # noqa: BLE001 -- malformed, unreachable, not a scheduler: one line
        raise ConfigError(f"{where}: expected a reachable Dask scheduler ({_one_line(exc)})") from None
    with client:
        try:
            client.submit(cluster_probe, pure=False).result(timeout=DASK_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 -- a worker that cannot import us dies or errs
            raise ConfigError(f"{where}: expected workers that run shallow_collapse tasks, but none ran a test "
                              f"task within {DASK_TIMEOUT} s ({_one_line(exc)}); start workers where "
                              f"shallow_collapse is installed (pip install -e .)") from None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())[:200]


def _exit_with_parent() -> None:
    """Block until the parent process is gone (its end of the spawn pipe closes), then exit."""
    multiprocessing.connection.wait([multiprocessing.parent_process().sentinel])
    os._exit(1)


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    threading.Thread(target=_exit_with_parent, daemon=True, name="exit-with-parent").start()


@contextmanager
def cell_executor(cfg: dict) -> Iterator[Executor | None]:
    """``None`` for in-process work (``workers: 1``), else an executor for the cells."""
    if cfg["executor"] == "dask":
        from distributed import Client

        with Client(scheduler_address(cfg), timeout=f"{DASK_TIMEOUT}s") as client:
            yield client.get_executor()
        return
    workers = resolve_workers(cfg["workers"])
    if workers <= 1:
        yield None
        return
    # spawn, not fork: a forked child of a process whose OpenMP pool is running can deadlock.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
    try:
        yield pool
    except BaseException:
        # Stop the workers first (in-flight cells are lost, by design), then let the pool's own
        # thread see them gone. No future is cancelled: on Python 3.11 that thread raises
        # InvalidStateError (a thread traceback) when it fails a future that was cancelled.
        for child in multiprocessing.active_children():
            child.terminate()
        pool.shutdown(wait=True)
        raise
    else:
        pool.shutdown(wait=True)


def completed(pool: Executor | None, fn: Callable, items: Iterable, *args, on_error: Callable) -> Iterator:
    """``fn(item, *args)`` for every item, yielded as each finishes (in order when in-process);
    ``on_error(item, exception)`` stands in for an item whose worker failed (died, or could not
    run it)."""
    if pool is None:
        for item in items:
            yield fn(item, *args)
        return
    futures = {pool.submit(fn, item, *args): item for item in items}
    for future in as_completed(futures):
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 -- e.g. BrokenProcessPool, Dask's KilledWorker
            result = on_error(futures[future], exc)
        yield result

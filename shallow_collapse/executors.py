"""Where sweep cells run: in this process, in local worker processes, or on a Dask cluster.

All three look the same to the sweep engine: :func:`cell_executor` yields ``None`` (run in
process) or a ``concurrent.futures.Executor`` (a process pool, or Dask's ``Client.get_executor()``),
and :func:`completed` yields results as they finish. Every cell runs on one torch/BLAS thread
(:func:`shallow_collapse.sweeps.compute_cell`), so ``workers`` processes do not fight over
``workers`` cores and the numbers do not depend on where a cell ran; the table is assembled in
grid order from per-cell files.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from .config import ConfigError

__all__ = ["resolve_workers", "scheduler_address", "check_execution", "cell_executor", "completed"]

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


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool


@contextmanager
def cell_executor(cfg: dict) -> Iterator[Executor | None]:
    """``None`` for in-process work (``workers: 1``), else an executor for the cells."""
    if cfg["executor"] == "dask":
        from distributed import Client

        with Client(scheduler_address(cfg), timeout="30s") as client:
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
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():  # in-flight cells are lost, by design
            child.terminate()
        raise
    else:
        pool.shutdown(wait=True)


def completed(pool: Executor | None, fn: Callable, items: Iterable, *args) -> Iterator:
    """``fn(item, *args)`` for every item, yielded as each finishes (in order when in-process)."""
    if pool is None:
        for item in items:
            yield fn(item, *args)
        return
    futures = [pool.submit(fn, item, *args) for item in items]
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        for future in futures:
            future.cancel()

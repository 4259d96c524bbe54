"""Memory a job needs, estimated from its config keys and checked before any work.

The estimates are upper-bound rules of thumb for the peak of one sweep cell (all its repeats) or
of one single run, from the sizes that drive the allocations: N, d, the width h, the depth L,
the repeats R. A local sweep runs up to ``workers`` cells at once (largest first), each worker
process with torch loaded (:data:`WORKER_BYTES`). A job whose estimate exceeds the memory this
machine has available is refused with one line naming the keys and both amounts. A Dask cluster's
memory is not this machine's, so Dask sweeps are not checked here (a cell that fails there is an
``error`` row).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .executors import resolve_workers
from .sweeps import GRID_KEYS, grid_groups

__all__ = ["Need", "sweep_need", "single_need", "no_extra", "available_memory", "check_memory", "WORKER_BYTES"]

WORKER_BYTES = 400 * 2**20  # a spawned worker process with torch, numpy and scipy imported


@dataclass(frozen=True)
class Need:
    """``bytes`` needed by ``what`` (e.g. "the largest cell (N=2048, d=128) on 2 workers"), set by
    the config ``keys``."""

    bytes: int
    keys: tuple
    what: str


def sweep_need(cfg: dict, method, grid: str) -> Need | None:
    """The memory of a local sweep of ``method`` (an :class:`~shallow_collapse.experiments.Method`):
    ``workers`` (at most one per cell) times its largest cell, plus each worker process's own."""
    if cfg["executor"] == "dask":
        return None
    cells = [(sum(g), d) for g in grid_groups(cfg, grid) for d in cfg["in_features_list"]]
    N, d = max(cells, key=lambda nd: method.cell_bytes(cfg, *nd, cfg["repeat"]))
    workers = min(resolve_workers(cfg["workers"]), len(cells))  # the pool starts no more than it has cells
    per_worker = method.cell_bytes(cfg, N, d, cfg["repeat"]) + (WORKER_BYTES if workers > 1 else 0)
    keys = (GRID_KEYS[grid], "in_features_list", "repeat", *method.memory_keys, "workers")
    return Need(workers * per_worker, keys, f"the largest cell (N={N}, d={d}) on {workers} worker(s)")


def no_extra(cfg: dict) -> int:
    """A single run that records nothing beyond its cell and its N x N plots."""
    return 0


def single_need(cfg: dict, method, extra=no_extra) -> Need:
    """The memory of a single run: one draw, plus the kernels it plots (N x N) and ``extra(cfg)``
    bytes of what it records."""
    N, d = cfg["N"], cfg["in_features"]
    plots = 3 * N * N * 8  # plots of N x N kernels; the AK's per-step kernel of fbar
    keys = ("N", "in_features", *method.memory_keys)
    return Need(method.cell_bytes(cfg, N, d, 1) + plots + extra(cfg), keys, f"one run (N={N}, d={d})")


def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup v2 limit."""
    available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines())
        available = int(fields.get("MemAvailable", f"{available // 1024} kB").split()[0]) * 1024
    limit, used = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    if limit.exists() and used.exists() and limit.read_text().strip().isdigit():
        available = min(available, int(limit.read_text()) - int(used.read_text()))
    return available


def _size(n: int) -> str:
    n = float(min(n, 2**120))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def check_memory(need: Need | None, available: int | None = None) -> None:
    """Raise :class:`ConfigError` when ``need`` exceeds the memory available."""
    available = available_memory() if available is None else available
    if need is not None and need.bytes > available:
        raise ConfigError(f"config keys {', '.join(need.keys)}: expected sizes that fit in the {_size(available)} "
                          f"of memory available, but {need.what} needs about {_size(need.bytes)}")

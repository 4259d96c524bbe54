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
from .sweeps import grid_groups

__all__ = ["Need", "cell_bytes", "sweep_need", "single_need", "available_memory", "check_memory", "WORKER_BYTES"]

F32, F64 = 4, 8
WORKER_BYTES = 400 * 2**20  # a spawned worker process with torch, numpy and scipy imported
GRID_KEYS = {"balanced": "N_list", "imbalanced": "class_sizes_list"}
METHOD_KEYS = {"limiting_kernels": ("L",), "fcn": ("hidden_features", "L", "num_epochs"),
               "adaptive_kernels": ("inner_maxiter",), "posterior": ("h", "posterior_chains", "posterior_samples", "inner_maxiter")}


@dataclass(frozen=True)
class Need:
    """``bytes`` needed by ``what`` (e.g. "the largest cell (N=2048, d=128) on 2 workers"), set by
    the config ``keys``."""

    bytes: int
    keys: tuple
    what: str


def _data(N, d, R):
    return 3 * R * N * d * F64  # the draws, their noise and means


def _limiting_kernels(cfg, N, d, R):
    block = max(8 * N, 2**17)  # elements of one row block (kernels.limiting_kernels_nc1)
    return _data(N, d, R) + R * N * d * F64 + block * F64 * (2 * cfg["L"] + 4)


def _fcn(cfg, N, d, R):
    h, layers = cfg["hidden_features"], cfg["L"] - 1
    params = d * h + (layers - 1) * h * h + h * cfg["out_features"] + layers * h
    training = R * params * F32 * 4 + layers * R * N * h * (4 * F32 + 4 * F64)  # weights, grads, features
    probes = layers * R * h * h * F64 * 3 + R * cfg["num_epochs"] * F64
    return _limiting_kernels(cfg, N, d, R) + training + probes


def _posterior(cfg, N, d, R):
    """The Gibbs sampler (float64): R * chains chains, each with C_W^-1 and the refactorisation's
    kernel, factor and inverse (4 of (N, N)), its features (F and a scaled copy, 2 of (N, h)), the
    sweep's noise (h (d + 66) numbers), the readout's O(N^2 + N h) and per retained sweep four
    scalars; plus the AK solve of each draw for the starts."""
    B, h = R * cfg["posterior_chains"], cfg["h"]
    per_chain = 4 * N * N + 2 * N * h + h * (d + 66) + 4 * N + d * d * 2 + 4 * cfg["posterior_samples"]
    return max(_limiting_kernels(cfg, N, d, R) + B * per_chain * F64, _adaptive_kernels(cfg, N, d, R))


def _adaptive_kernels(cfg, N, d, R):
    return _data(N, d, R) + 12 * N * N * F64 + (cfg["inner_maxiter"] + 20) * d * d * F64


METHODS = {"limiting_kernels": _limiting_kernels, "fcn": _fcn, "adaptive_kernels": _adaptive_kernels,
           "posterior": _posterior}


def cell_bytes(method: str, cfg: dict, N: int, d: int, R: int) -> int:
    """Peak bytes of one cell of ``method`` with N samples in d dimensions and R repeats."""
    return METHODS[method](cfg, N, d, R)


def sweep_need(cfg: dict, method: str, grid: str) -> Need | None:
    """The memory of a local sweep: ``workers`` (at most one per cell) times its largest cell, plus
    each worker process's own."""
    if cfg["executor"] == "dask":
        return None
    cells = [(sum(g), d) for g in grid_groups(cfg, grid) for d in cfg["in_features_list"]]
    N, d = max(cells, key=lambda nd: cell_bytes(method, cfg, *nd, cfg["repeat"]))
    workers = min(resolve_workers(cfg["workers"]), len(cells))  # the pool starts no more than it has cells
    per_worker = cell_bytes(method, cfg, N, d, cfg["repeat"]) + (WORKER_BYTES if workers > 1 else 0)
    keys = (GRID_KEYS[grid], "in_features_list", "repeat", *METHOD_KEYS[method], "workers")
    return Need(workers * per_worker, keys, f"the largest cell (N={N}, d={d}) on {workers} worker(s)")


def single_need(cfg: dict, method: str) -> Need:
    """The memory of a single run: one draw, plus the probes, kernels and snapshots it records."""
    N, d = cfg["N"], cfg["in_features"]
    extra = 3 * N * N * F64  # plots of N x N kernels; the AK's per-step kernel of fbar
    if method == "fcn":
        probes = cfg["num_epochs"] // cfg["probing_frequency"] + 2
        extra += probes * (cfg["L"] - 1) * cfg["hidden_features"] * F64 * 8
        extra += (3 * cfg["L"] + 2) * N * N * F64 if cfg["probe_kernels"] else 0
    keys = ("N", "in_features", *METHOD_KEYS[method])
    return Need(cell_bytes(method, cfg, N, d, 1) + extra, keys, f"one run (N={N}, d={d})")


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

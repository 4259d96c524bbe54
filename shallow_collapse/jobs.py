"""What each entry script runs: its description, the config keys it reads (exactly those enter its
run hash), the check of keys it cannot honour, the function ``target(cfg, run)`` that does the
work and the memory it needs. Every sweep method of the registry (:data:`methods.METHODS`) makes
two jobs, ``<prefix>_bulk_balanced`` and ``<prefix>_bulk_imbalanced``."""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

from . import data, memory
from .config import ConfigError, keys_of, used_keys
from .experiments import Method, adaptive_kernel, fcn, no_check
from .methods import METHODS, label
from .plots.sweep import plot_sweep
from .sweeps import GRID_KEYS, grid_groups, run_sweep

__all__ = ["Job", "JOBS", "GRID_SCOPES", "with_evaluate"]

GRID_SCOPES = {grid: ("data", "grid", f"grid_{grid}") for grid in GRID_KEYS}


@dataclass(frozen=True)
class Job:
    description: str
    keys: tuple  # the config keys the job reads: exactly these (less used_keys' exceptions) enter its run hash
    target: Callable  # target(cfg, run) -> None
    memory: Callable  # memory(cfg) -> memory.Need | None, checked before any work
    check: Callable = no_check  # check(cfg) raises ConfigError for a value the job cannot honour

    def keys_for(self, cfg: dict) -> tuple:
        """The keys that enter the run hash of ``cfg``: :func:`config.used_keys` of ``keys``."""
        return used_keys(self.keys, cfg)


def check_data_grid(cfg: dict, grid: str) -> None:
    """A file or digits pool fills every cell of the sweep's grid, and d never exceeds it
    (:func:`data.check_cells`); checked before any work, by the entry script and by paper.py's plan."""
    try:
        data.check_cells(cfg, grid_groups(cfg, grid), cfg["in_features_list"], GRID_KEYS[grid], "in_features_list")
    except data.DataError as exc:
        raise ConfigError(str(exc)) from None


def check_data_single(cfg: dict) -> None:
    """The pool fills a single run's class sizes and has at least its d components."""
    try:
        data.check_cells(cfg, [cfg["class_sizes"]], [cfg["in_features"]], "class_sizes", "in_features")
    except data.DataError as exc:
        raise ConfigError(str(exc)) from None


def _both(first: Callable, second: Callable) -> Callable:
    def check(cfg: dict) -> None:
        first(cfg)
        second(cfg)
    return check


def sweep_job(method: Method, grid: str) -> Job:
    """The sweep of ``method`` over the ``grid`` cells, with sweep plots."""
    labels = {row: label(row) for row in method.reports}
    return Job(f"{method.description} ({grid} classes)", keys_of(*GRID_SCOPES[grid], *method.scopes),
               partial(run_sweep, evaluate=method.evaluate_cell, grid=grid, methods=method.reports,
                       plot=partial(plot_sweep, labels=labels)),
               partial(memory.sweep_need, method=method, grid=grid),
               _both(method.check, partial(check_data_grid, grid=grid)))


def single_job(description: str, method: Method, run: Callable, scopes: tuple, extra=memory.no_extra) -> Job:
    """A single run of ``method`` (``run(cfg, run)``), reading its scopes and ``scopes``."""
    return Job(description, keys_of("data", "single", *method.scopes, *scopes), run,
               partial(memory.single_need, method=method, extra=extra), _both(method.check, check_data_single))


JOBS: dict[str, Job] = {f"{m.prefix}_bulk_{grid}": sweep_job(m, grid) for m in METHODS for grid in GRID_SCOPES}
JOBS["fcn"] = single_job("Train one fully-connected network with SGD and probe NC1 of its features along the way",
                         fcn.METHOD, fcn.run, ("probe",), fcn.probe_bytes)
JOBS["adaptive_kernels"] = single_job("Solve the adaptive-kernel Equations of State for one dataset and plot the "
                                      "continuation", adaptive_kernel.METHOD, adaptive_kernel.run, ("ak_single",))


def with_evaluate(job: Job, evaluate: Callable) -> Job:
    """The sweep ``job`` with its per-cell function replaced by ``evaluate(cfg, cell, datasets) ->
    rows``: the grid, run folder, resume and plots stay the job's. A hook for trying a method
    before it is a job, and for tests that hold or fail a cell."""
    return replace(job, target=partial(job.target, evaluate=evaluate))

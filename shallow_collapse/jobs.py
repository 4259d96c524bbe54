"""What each entry script runs: its description, the config scopes that enter its run hash, and
the function ``target(cfg, run)`` that does the work."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from .experiments import limiting_kernels
from .plots.sweep import plot_sweep
from .sweeps import run_sweep

__all__ = ["Job", "JOBS"]


@dataclass(frozen=True)
class Job:
    description: str
    scopes: tuple  # config scopes hashed into the run folder name (see config.SCHEMA)
    target: Callable  # target(cfg, run) -> None


GRID_SCOPES = {"balanced": ("data", "grid", "grid_balanced"), "imbalanced": ("data", "grid", "grid_imbalanced")}


def sweep_job(description: str, evaluate: Callable, grid: str, scopes: tuple) -> Job:
    """A sweep of ``evaluate`` over the ``grid`` cells, with the paper-style sweep plots."""
    return Job(f"{description} ({grid} classes)", GRID_SCOPES[grid] + scopes,
               partial(run_sweep, evaluate=evaluate, grid=grid, plot=plot_sweep))


JOBS: dict[str, Job] = {
    f"limiting_kernels_bulk_{grid}": sweep_job(
        "NC1 of the infinite-width NNGP and NTK over a grid of dataset sizes and input dimensions",
        limiting_kernels.evaluate_cell, grid, ("network",))
    for grid in ("balanced", "imbalanced")
}

"""What each entry script runs: its description, the config scopes that enter its run hash, and
the function ``target(cfg, run)`` that does the work."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from .experiments import adaptive_kernel, fcn, limiting_kernels
from .plots.sweep import plot_sweep
from .sweeps import run_sweep

__all__ = ["Job", "JOBS"]


@dataclass(frozen=True)
class Job:
    description: str
    scopes: tuple  # config scopes hashed into the run folder name (see config.SCHEMA)
    target: Callable  # target(cfg, run) -> None


GRID_SCOPES = {"balanced": ("data", "grid", "grid_balanced"), "imbalanced": ("data", "grid", "grid_imbalanced")}


def sweep_job(description: str, evaluate: Callable, methods: tuple, grid: str, scopes: tuple) -> Job:
    """A sweep of ``evaluate`` (reporting ``methods``) over the ``grid`` cells, with sweep plots."""
    return Job(f"{description} ({grid} classes)", GRID_SCOPES[grid] + scopes,
               partial(run_sweep, evaluate=evaluate, grid=grid, methods=methods, plot=plot_sweep))


JOBS: dict[str, Job] = {
    f"limiting_kernels_bulk_{grid}": sweep_job(
        "NC1 of the infinite-width NNGP and NTK over a grid of dataset sizes and input dimensions",
        limiting_kernels.evaluate_cell, ("nngp", "ntk"), grid, ("network",))
    for grid in ("balanced", "imbalanced")
}
JOBS.update({
    f"fcn_bulk_{grid}": sweep_job(
        "NC1 of trained fully-connected networks, with the NNGP and NTK of the same draws, over a grid of "
        "dataset sizes and input dimensions", fcn.evaluate_cell, ("fcn", "nngp", "ntk"), grid, ("network", "fcn"))
    for grid in ("balanced", "imbalanced")
})
JOBS["fcn"] = Job("Train one fully-connected network with SGD and probe NC1 of its features along the way",
                  ("data", "single", "network", "fcn", "probe"), fcn.run)
JOBS.update({
    f"adaptive_kernels_bulk_{grid}": sweep_job(
        "NC1 of the adaptive kernel (Equations of State), with the NNGP of the same draws, over a grid of "
        "dataset sizes and input dimensions", adaptive_kernel.evaluate_cell, ("ak", "nngp"), grid, ("network", "ak"))
    for grid in ("balanced", "imbalanced")
})
JOBS["adaptive_kernels"] = Job("Solve the adaptive-kernel Equations of State for one dataset and plot the continuation",
                               ("data", "single", "network", "ak"), adaptive_kernel.run)

"""What each entry script runs: its description, the config scopes that enter its run hash, the
function ``target(cfg, run)`` that does the work and the memory it needs."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from . import memory
from .experiments import adaptive_kernel, fcn, limiting_kernels
from .plots.sweep import plot_sweep
from .sweeps import run_sweep

__all__ = ["Job", "JOBS"]


@dataclass(frozen=True)
class Job:
    description: str
    scopes: tuple  # config scopes hashed into the run folder name (see config.SCHEMA)
    target: Callable  # target(cfg, run) -> None
    memory: Callable  # memory(cfg) -> memory.Need | None, checked before any work


GRID_SCOPES = {"balanced": ("data", "grid", "grid_balanced"), "imbalanced": ("data", "grid", "grid_imbalanced")}


def sweep_job(prefix: str, description: str, evaluate: Callable, methods: tuple, grid: str, scopes: tuple) -> Job:
    """A sweep of ``evaluate`` (reporting ``methods``) over the ``grid`` cells, with sweep plots."""
    return Job(f"{description} ({grid} classes)", GRID_SCOPES[grid] + scopes,
               partial(run_sweep, evaluate=evaluate, grid=grid, methods=methods, plot=plot_sweep),
               partial(memory.sweep_need, method=prefix, grid=grid))


GRID_OF = "over a grid of dataset sizes and input dimensions"
SWEEPS = {  # script prefix: (description, evaluate_cell, methods it reports, config scopes)
    "limiting_kernels": (f"NC1 of the infinite-width NNGP and NTK {GRID_OF}", limiting_kernels.evaluate_cell,
                         ("nngp", "ntk"), ("network",)),
    "fcn": (f"NC1 of trained fully-connected networks, with the NNGP and NTK of the same draws, {GRID_OF}",
            fcn.evaluate_cell, ("fcn", "nngp", "ntk"), ("network", "fcn")),
    "adaptive_kernels": (f"NC1 of the adaptive kernel (Equations of State), with the NNGP of the same draws, "
                         f"{GRID_OF}", adaptive_kernel.evaluate_cell, ("ak", "nngp"), ("network", "ak")),
}

JOBS: dict[str, Job] = {
    f"{prefix}_bulk_{grid}": sweep_job(prefix, description, evaluate, methods, grid, scopes)
    for prefix, (description, evaluate, methods, scopes) in SWEEPS.items() for grid in GRID_SCOPES
}
JOBS["fcn"] = Job("Train one fully-connected network with SGD and probe NC1 of its features along the way",
                  ("data", "single", "network", "fcn", "probe"), fcn.run, partial(memory.single_need, method="fcn"))
JOBS["adaptive_kernels"] = Job("Solve the adaptive-kernel Equations of State for one dataset and plot the continuation",
                               ("data", "single", "network", "ak"), adaptive_kernel.run,
                               partial(memory.single_need, method="adaptive_kernels"))

"""What each entry script runs: its description, the config keys it uses (exactly those enter its
run hash), the check of keys it cannot honour, the function ``target(cfg, run)`` that does the
work and the memory it needs."""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

from . import data, memory
from .config import SCHEMA, ConfigError, show
from .experiments import adaptive_kernel, fcn, limiting_kernels, posterior
from .plots.sweep import plot_sweep
from .sweeps import grid_groups, run_sweep

__all__ = ["Job", "JOBS", "with_evaluate"]


def _no_check(cfg: dict) -> None:
    """Every value of the keys a job uses is one it can honour."""


@dataclass(frozen=True)
class Job:
    description: str
    keys: tuple  # the config keys the job uses: exactly these enter its run hash
    target: Callable  # target(cfg, run) -> None
    memory: Callable  # memory(cfg) -> memory.Need | None, checked before any work
    check: Callable = _no_check  # check(cfg) raises ConfigError for a value the job cannot honour

    def keys_for(self, cfg: dict) -> tuple:
        """The keys that enter the run hash of ``cfg``: ``keys``, less ``leaky_relu_slope`` unless
        the activation is leaky_relu (no other activation reads it), less the data keys of the other
        data sources (:func:`data.unused_keys`: Gaussian runs hash exactly the keys they always did)."""
        unused = data.unused_keys(cfg)
        return tuple(k for k in self.keys if (k != "leaky_relu_slope" or cfg["activation"] == "leaky_relu")
                     and k not in unused)


def keys_of(*scopes: str, drop=()) -> tuple:
    """The keys of ``config.SCHEMA`` in ``scopes``, less ``drop``, sorted."""
    return tuple(sorted(k for k, spec in SCHEMA.items() if spec.scope in scopes and k not in drop))


def check_adaptive_kernel(cfg: dict) -> None:
    """The EoS describe one hidden layer (L = 2) with their own prior (sigw2, no bias), and their
    continuation ends at the width h."""
    if cfg["L"] != 2:
        raise ConfigError(f"config key 'L': expected 2 for the adaptive kernel (the Equations of State "
                          f"describe one hidden layer), got {show(cfg['L'])}")
    if cfg["annealing_factors"][-1] < cfg["h"]:
        raise ConfigError(f"config key 'annealing_factors': expected factors no smaller than h={cfg['h']} "
                          f"(the schedule ends at h), got {show(cfg['annealing_factors'])}")


# The network keys the adaptive kernel does not use: L is fixed (checked above), the EoS prior is
# sigw2 and their readout siga2, and they have no bias.
AK_UNUSED = ("L", "bias_std", "hidden_weight_std", "final_weight_std")
GRID_SCOPES = {"balanced": ("data", "grid", "grid_balanced"), "imbalanced": ("data", "grid", "grid_imbalanced")}


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


GRID_KEYS = {"balanced": "N_list", "imbalanced": "class_sizes_list"}


def sweep_job(prefix: str, description: str, evaluate: Callable, methods: tuple, grid: str, scopes: tuple,
              drop=(), check=_no_check) -> Job:
    """A sweep of ``evaluate`` (reporting ``methods``) over the ``grid`` cells, with sweep plots."""
    return Job(f"{description} ({grid} classes)", keys_of(*GRID_SCOPES[grid], *scopes, drop=drop),
               partial(run_sweep, evaluate=evaluate, grid=grid, methods=methods, plot=plot_sweep),
               partial(memory.sweep_need, method=prefix, grid=grid),
               _both(check, partial(check_data_grid, grid=grid)))


FCN_METHODS = ("fcn", "nngp", "ntk")
# The keys of the posterior network besides its grid and its own (posterior_*): the network the EoS
# describe (width h, priors sigw2 and siga2, noise sig2, the activation) and the EoS solver's (half
# the chains start from the AK's Sigma of the same draw); none of SGD's or of the FCN's init.
POSTERIOR_USES = ("activation", "leaky_relu_slope", "h", "sigw2", "siga2", "sig2")


GRID_OF = "over a grid of dataset sizes and input dimensions"
SWEEPS = {  # script prefix: (description, evaluate_cell, methods it reports, config scopes, keys dropped, check)
    "limiting_kernels": (f"NC1 of the infinite-width NNGP and NTK {GRID_OF}", limiting_kernels.evaluate_cell,
                         ("nngp", "ntk"), ("network",), (), _no_check),
    "fcn": (f"NC1 of trained fully-connected networks, with the NNGP and NTK of the same draws, {GRID_OF}",
            fcn.evaluate_cell, FCN_METHODS, ("network", "fcn"), (), _no_check),
    "adaptive_kernels": (f"NC1 of the adaptive kernel (Equations of State), with the NNGP of the same draws, "
                         f"{GRID_OF}", adaptive_kernel.evaluate_cell, ("ak", "nngp"), ("network", "ak"),
                         (*AK_UNUSED, "lightweight"), check_adaptive_kernel),
    "posterior": (f"NC1 of the posterior network the EoS describe (readout integrated out, exact MCMC), with the "
                  f"NNGP of the same draws, {GRID_OF}", posterior.evaluate_cell, posterior.METHODS,
                  ("network", "ak", "posterior"),
                  (*(k for k in keys_of("network") if k not in POSTERIOR_USES), *AK_UNUSED, "lightweight"), _no_check),
}

JOBS: dict[str, Job] = {  # every sweep, balanced and imbalanced
    f"{prefix}_bulk_{grid}": sweep_job(prefix, description, evaluate, methods, grid, scopes, drop, check)
    for prefix, (description, evaluate, methods, scopes, drop, check) in SWEEPS.items() for grid in GRID_SCOPES
}
JOBS["fcn"] = Job("Train one fully-connected network with SGD and probe NC1 of its features along the way",
                  keys_of("data", "single", "network", "fcn", "probe"), fcn.run,
                  partial(memory.single_need, method="fcn"), check_data_single)
JOBS["adaptive_kernels"] = Job("Solve the adaptive-kernel Equations of State for one dataset and plot the continuation",
                               keys_of("data", "single", "network", "ak", drop=AK_UNUSED), adaptive_kernel.run,
                               partial(memory.single_need, method="adaptive_kernels"),
                               _both(check_adaptive_kernel, check_data_single))


def with_evaluate(job: Job, evaluate: Callable) -> Job:
    """The sweep ``job`` with its per-cell function replaced by ``evaluate(cfg, cell, datasets) ->
    rows``: the grid, run folder, resume and plots stay the job's. A hook for trying a method
    before it is a job, and for tests that hold or fail a cell."""
    return replace(job, target=partial(job.target, evaluate=evaluate))

"""The mean-field adaptive kernel (docs/MATH.md section 11, docs/THEORIES.md): the sweep method
``mean_field``.

Glue only: the solver is :func:`shallow_collapse.mean_field.solve_mean_field`. It starts from the
EoS solution of the same draw, computed by the AK experiment's own call
(:func:`~shallow_collapse.experiments.adaptive_kernel.solve`), so it reads the AK's keys (``h``,
``sigw2``, ``siga2``, ``sig2``, ``activation`` and the EoS solver's) and its own ``mean_field_*``.
The walkers' seeds are children of the draw's seed (:func:`walker_seed`), disjoint from the data
stream, the SGD network's seed and the posterior's chains.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import torch

from ..config import ConfigError, show
from ..data import draw_seed
from ..mean_field import MeanFieldParams, solve_mean_field
from ..model import seed_int
from ..params import EoSParams, NetworkParams
from . import Method, Row, data_bytes, error_rows
from . import adaptive_kernel as adaptive_kernel_experiment
from . import limiting_kernels as limiting_kernels_experiment
from .posterior import prior_network_config

__all__ = ["params_from_config", "walker_seed", "start_of", "evaluate_cell", "check", "cell_bytes", "METHOD",
           "CONFIG_FIELDS"]

# MeanFieldParams' fields a config sets (key mean_field_<field>); the others keep their defaults
CONFIG_FIELDS = ("method", "damping", "iterations", "averaging", "rtol", "mc_tol", "walkers", "sweeps", "burn_in",
                 "replicates", "max_points")


def params_from_config(cfg: dict) -> MeanFieldParams:
    """The solver's knobs from the config's ``mean_field_*`` keys."""
    return replace(MeanFieldParams(), **{name: cfg[f"mean_field_{name}"] for name in CONFIG_FIELDS})


def walker_seed(seed: int, class_sizes, d: int, repeat: int) -> int:
    """The solver's seed for one draw: a function of (seed, class sizes, d, repeat) only, child 2 of
    the draw's seed (child 0 is the data stream's, child 1 the posterior's chains'). 39 bits, as the
    solver derives one seed per replicate from it (seed * 1000003 + r, within torch's 64 bits)."""
    return seed_int(draw_seed(seed, class_sizes, d, repeat).spawn(3)[2]) >> 24


def start_of(cfg: dict, ds):
    """(start, note): the AK's EoS result of the draw ``ds`` when its Q and Sigma are finite, else
    the NNGP's Sigma_0 = (sigw2/d) I, with a note saying why."""
    try:
        result = adaptive_kernel_experiment.solve(cfg, ds)
    except Exception as err:  # noqa: BLE001 -- a failed AK solve only costs the warm start
        return None, f"the AK solve failed ({type(err).__name__}: {err}): started from the NNGP"
    ok = (result.Q is not None and result.Sigma is not None and bool(torch.isfinite(result.Q).all())
          and bool(torch.isfinite(result.Sigma).all())
          and int(torch.linalg.cholesky_ex(result.Sigma.to(torch.float64))[1]) == 0)
    if not ok:
        return None, f"the AK ({result.status}) gave no usable Sigma: started from the NNGP"
    return result, "" if result.status == "ok" else f"started from the AK's last point ({result.status})"


def _row(repeat: int, result, note: str, ak_seconds: float) -> dict:
    value = result.log10_nc1
    finite = math.isfinite(value) and result.status in ("ok", "not_converged")
    sigma = result.sigma
    return {"method": "mean_field", "repeat": repeat, "nc1": 10.0**value if finite else math.nan,
            "status": result.status, "se_log10_nc1": result.se_log10_nc1,
            "sigma_trace": float(torch.trace(sigma)) if sigma is not None else math.nan,
            "kurtosis": result.kurtosis, "residual": result.residual, "noise": result.noise,
            "kappa_min": result.kappa_min, "iterations": result.iterations, "solver": result.method,
            "seconds": round(result.seconds, 4), "ak_seconds": round(ak_seconds, 4),
            "message": "; ".join(m for m in (result.message, note) if m)}


def evaluate_cell(cfg: dict, cell, datasets) -> list[dict]:
    """Rows ``mean_field`` (NC1 of Q = siga2 Phi at the mean-field fixed point, started from the EoS
    solution of the same draw) and ``nngp`` (of the EoS prior, as the AK's and the posterior's) per
    repeat of ``cell``.

    ``mean_field`` columns: ``nc1`` (NaN unless ok or not_converged), ``status`` (ok /
    not_converged / not_normalisable: the tilted single-neuron density has no finite integral, no
    number is returned / nan / error), ``se_log10_nc1`` (Monte Carlo SE from the replicates; 0 for
    the quadrature), ``sigma_trace`` = Tr E_p[w w^T] (what the AK's Sigma approximates),
    ``kurtosis`` of the density along its leading direction (3 for a Gaussian), ``residual``,
    ``noise`` (its Monte Carlo SE, walkers), ``kappa_min`` (homogeneous phi), ``iterations``,
    ``solver`` (quadrature or walkers), ``seconds`` (the mean-field solve), ``ak_seconds`` (the
    EoS start), ``message``. A numerical failure is a status, never an exception."""
    prm = params_from_config(cfg)
    eos = EoSParams.from_config(cfg)
    act = NetworkParams.from_config(cfg).act
    rows = []
    for repeat, ds in zip(cell.repeats, datasets):
        t0 = time.perf_counter()
        try:
            start, note = start_of(cfg, ds)
            ak_seconds = time.perf_counter() - t0
            if start is None:
                start = torch.eye(ds.X.shape[1], dtype=torch.float64) * (eos.sigw2 / ds.X.shape[1])
            result = solve_mean_field(ds.X, ds.y, activation=act, sigw2=eos.sigw2, siga2=eos.siga2, sig2=eos.sig2,
                                      h=eos.h, params=prm, start=start, labels=ds.labels,
                                      seed=walker_seed(cfg["seed"], cell.class_sizes, cell.in_features, repeat))
            rows.append(_row(repeat, result, note, ak_seconds))
        except Exception as err:  # noqa: BLE001 -- e.g. out of memory: a status, never an exception
            (row,) = error_rows(["mean_field"], [repeat], err)
            rows.append({**row, "seconds": round(time.perf_counter() - t0, 4)})
    nngp = limiting_kernels_experiment.evaluate_cell(prior_network_config(cfg), cell, datasets)
    return rows + [row for row in nngp if row["method"] == "nngp"]


def check(cfg: dict) -> None:
    """The quadrature is for d <= 2: ``mean_field_method: quadrature`` with a larger d is refused."""
    if cfg["mean_field_method"] == "quadrature":
        big = [d for d in cfg["in_features_list"] if d > 2]
        if big:
            raise ConfigError(f"config key 'mean_field_method': expected auto or walkers for d > 2 (the "
                              f"quadrature is for d <= 2), got {show(cfg['mean_field_method'])} with "
                              f"in_features_list {show(cfg['in_features_list'])}")


def cell_bytes(cfg: dict, N: int, d: int, R: int) -> int:
    """The draws, plus the larger of the AK start (its own estimate) and the mean-field solve:
    quadrature (d <= 2 under ``auto``): up to three node sets of ``mean_field_max_points`` rows of N
    features (the working level, the refined one, their products); walkers: about a dozen
    ``(mean_field_walkers, N)`` arrays (features of the walkers, of the elliptical slice's
    candidates, their whitened copies and the four estimates of the residual), and the tilt's
    factors (8 of (N, N)). Replicates run one after another."""
    method = cfg["mean_field_method"]
    quadrature = method == "quadrature" or (method == "auto" and d <= 2)
    solve = 3 * cfg["mean_field_max_points"] * N if quadrature else 12 * cfg["mean_field_walkers"] * N
    nngp = limiting_kernels_experiment.cell_bytes(prior_network_config(cfg), N, d, R)
    return max(data_bytes(N, d, R) + (solve + 8 * N * N) * 8, adaptive_kernel_experiment.cell_bytes(cfg, N, d, R),
               nngp)


METHOD = Method(
    prefix="mean_field", description=f"NC1 of the mean-field adaptive kernel (the EoS without their Gaussian "
                                     f"single-neuron density), with the NNGP of the same draws, "
                                     f"{limiting_kernels_experiment.GRID_OF}",
    owns=(Row("mean_field", "Mean-field kernel", ("network", "ak", "mean_field"), versus=("posterior", "ak")),),
    reports=("mean_field", "nngp"), evaluate_cell=evaluate_cell, scopes=("network", "ak", "mean_field"),
    cell_bytes=cell_bytes, memory_keys=("inner_maxiter", "mean_field_method", "mean_field_max_points",
                                        "mean_field_walkers"),
    check=check)

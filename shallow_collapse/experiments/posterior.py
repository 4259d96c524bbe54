"""The posterior network the EoS describe (readout integrated out): the sweep method ``posterior``.

Glue only: the sampler is :mod:`shallow_collapse.posterior`. Chain seeds are children of the
draw's seed (:func:`chain_seeds`), disjoint from the data stream and from the SGD network's seed
(:func:`~shallow_collapse.model.network_seed`). The network is the AK's: width ``h``, priors
``sigw2``, ``siga2``, noise ``sig2``, scalar targets y (MATH section 1), no bias.
"""
from __future__ import annotations

import math

import torch

from ..data import draw_seed
from ..devices import resolve_device
from ..model import seed_int
from ..params import EoSParams, NetworkParams, PosteriorParams
from ..posterior import sample_posterior
from . import Method, Row, error_rows
from . import adaptive_kernel as adaptive_kernel_experiment
from . import limiting_kernels as limiting_kernels_experiment

__all__ = ["evaluate_cell", "chain_seeds", "prior_network_config", "cell_bytes", "METHOD"]


def chain_seeds(seed: int, class_sizes, d: int, repeat: int, chains: int) -> list[int]:
    """Seeds of the ``chains`` chains of one draw: a function of (seed, class sizes, d, repeat) only,
    disjoint from the data stream (child 0 of the draw's seed) and from the SGD network's seed."""
    return [seed_int(s) for s in draw_seed(seed, class_sizes, d, repeat).spawn(2)[1].spawn(chains)]


def prior_network_config(cfg: dict) -> dict:
    """``cfg`` with the network keys of the EoS prior (:meth:`EoSParams.network`: sw^2 = sigw2,
    so^2 = siga2, no bias, one hidden layer; its NNGP is the AK's starting kernel)."""
    prior = EoSParams.from_config(cfg).network(cfg["activation"], cfg["leaky_relu_slope"])
    return {**cfg, **prior.to_config()}


def _row(repeat: int, result) -> dict:
    value = result.log10_nc1
    return {"method": "posterior", "repeat": repeat, "nc1": 10**value if math.isfinite(value) else math.nan,
            "status": result.status, "message": result.message, "se_log10_nc1": result.se_log10_nc1,
            "sigma_trace": result.sigma_trace, "se_sigma_trace": result.se_sigma_trace,
            "readout_sq_norm": result.a2, "rhat": result.rhat, "ess_bulk": result.ess_bulk,
            "ess_tail": result.ess_tail, "log10_nc1_prior_start": result.halves[0],
            "log10_nc1_sigma_start": result.halves[1], "evaluations": result.evaluations, "cuts": result.cuts,
            "drift": result.drift, "sweeps": result.sweeps, "seconds": round(result.seconds, 3),
            "traces": result.traces}


def start_sigmas(cfg: dict, datasets) -> torch.Tensor | None:
    """The AK's Sigma ``(R, d, d)`` of each draw (the second half of the chains starts there), or None
    when a solve fails or gives a matrix that is not positive definite (all chains then start from
    the prior, and the result's message says so)."""
    sigmas = []
    for ds in datasets:
        try:
            sigma = adaptive_kernel_experiment.solve(cfg, ds).Sigma.detach().cpu().to(torch.float64)
        except Exception:  # noqa: BLE001 -- a failed solve only loses the overdispersed start
            return None
        if not bool(torch.isfinite(sigma).all()) or torch.linalg.cholesky_ex(sigma)[1] != 0:
            return None
        sigmas.append(sigma)
    return torch.stack(sigmas)


def evaluate_cell(cfg: dict, cell, datasets) -> list[dict]:
    """Rows ``posterior`` (NC1 of the posterior-averaged kernel E[K_W], :func:`sample_posterior`) and
    ``nngp`` (of the EoS prior) per repeat of ``cell``. All chains of all repeats run as one batch
    in float64 on the config's ``device``. A numerical failure is a status (nan, not_converged,
    error), never an exception."""
    prior, params = EoSParams.from_config(cfg), PosteriorParams.from_config(cfg)
    labels = datasets[0].labels  # shared by the draws of a cell (sweeps.cell_datasets)
    device = resolve_device(cfg["device"])
    X = torch.stack([ds.X for ds in datasets]).to(device, torch.float64)
    Y = torch.stack([ds.y for ds in datasets]).to(device, torch.float64).unsqueeze(-1)
    seeds = [s for r in cell.repeats
             for s in chain_seeds(cfg["seed"], cell.class_sizes, cell.in_features, r, params.chains)]
    act = NetworkParams.from_config(cfg).act
    sigmas = start_sigmas(cfg, datasets)
    try:
        results = sample_posterior(X, Y, labels.to(device), act, prior, params, seeds=seeds,
                                   homogeneous=act.homogeneous, start_sigma=sigmas)
        rows = [_row(r, res) for r, res in zip(cell.repeats, results)]
        if sigmas is None:
            for row in rows:
                row["message"] = "; ".join(m for m in (row["message"], "the AK gave no Sigma: every chain "
                                                       "started from the prior") if m)
    except (RuntimeError, FloatingPointError, ValueError) as exc:  # e.g. out of memory
        rows = error_rows(["posterior"], cell.repeats, exc)
    nngp = limiting_kernels_experiment.evaluate_cell(prior_network_config(cfg), cell, datasets)
    return rows + [row for row in nngp if row["method"] == "nngp"]


def cell_bytes(cfg: dict, N: int, d: int, R: int) -> int:
    """The Gibbs sampler (float64): R * chains chains, each with C_W^-1 and the refactorisation's
    kernel, factor and inverse (4 of (N, N)), its features (F and a scaled copy, 2 of (N, h)), the
    sweep's noise (h (d + 66) numbers), the readout's O(N^2 + N h) and per retained sweep four
    scalars; or the AK solve of each draw for the starts, whichever is larger."""
    B, h = R * cfg["posterior_chains"], cfg["h"]
    per_chain = 4 * N * N + 2 * N * h + h * (d + 66) + 4 * N + d * d * 2 + 4 * cfg["posterior_samples"]
    return max(limiting_kernels_experiment.cell_bytes(prior_network_config(cfg), N, d, R) + B * per_chain * 8,
               adaptive_kernel_experiment.cell_bytes(cfg, N, d, R))


METHOD = Method(
    prefix="posterior", description=f"NC1 of the posterior network the EoS describe (readout integrated out, exact "
                                    f"MCMC), with the NNGP of the same draws, {limiting_kernels_experiment.GRID_OF}",
    owns=(Row("posterior", "Posterior network (readout integrated out, exact MCMC)", ("network", "ak", "posterior")),),
    reports=("posterior", "nngp"), evaluate_cell=evaluate_cell, scopes=("network", "ak", "posterior"),
    cell_bytes=cell_bytes, memory_keys=("h", "posterior_chains", "posterior_samples", "inner_maxiter"))

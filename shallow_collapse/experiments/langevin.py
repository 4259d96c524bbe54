"""The posterior network the EoS describe (MATH.md section 9): the sweep method of ``optimizer: langevin``.

Glue only: the sampler is :mod:`shallow_collapse.posterior`. Chain seeds are children of the
draw's seed (:func:`chain_seeds`), disjoint from the SGD network's (:func:`~shallow_collapse.model.network_seed`).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..data import draw_seed
from ..devices import resolve_device
from ..kernels import limiting_kernels, limiting_kernels_nc1
from ..model import seed_int
from ..params import EoSParams, LangevinParams, NetworkParams
from ..posterior import PosteriorTarget, map_point, sample_posterior

__all__ = ["evaluate_cell", "chain_seeds", "prior_network", "METHODS"]

METHODS = ("langevin", "map", "nngp", "ntk")


def chain_seeds(seed: int, class_sizes, d: int, repeat: int, chains: int) -> list[int]:
    """Seeds of the ``chains`` Langevin chains of one draw: a function of (seed, class sizes, d,
    repeat) only, disjoint from the data stream and from the SGD network's seed."""
    return [seed_int(s) for s in draw_seed(seed, class_sizes, d, repeat).spawn(2)[1].spawn(chains)]


def prior_network(cfg: dict) -> NetworkParams:
    """The network of the EoS prior in the convention of MATH.md section 2: sw^2 = sigw2,
    so^2 = siga2, no bias (its NNGP is the AK's starting kernel)."""
    return NetworkParams(L=2, activation=cfg["activation"], leaky_relu_slope=cfg["leaky_relu_slope"],
                         hidden_weight_std=math.sqrt(cfg["sigw2"]),
                         final_weight_std=math.sqrt(cfg["siga2"]), bias_std=0.0)


def _gp_mse(X: torch.Tensor, y: torch.Tensor, net: NetworkParams, sig2: float) -> float:
    """Training MSE of the GP posterior mean Q (Q + sig2 I)^{-1} y, Q = siga2 Kphi(X Sigma_0 X^T)."""
    Q = net.final_weight_std**2 * limiting_kernels(X, net).nngp
    fbar = Q @ torch.linalg.solve(Q + sig2 * torch.eye(len(y), dtype=Q.dtype), y)
    return float(((fbar - y) ** 2).mean())


def _langevin_row(repeat: int, result, gp_mse: float, chains: int) -> dict:
    est, lv = result.estimates, result.levels
    log_nc1 = est["log10_nc1"][0]
    return {"method": "langevin", "repeat": repeat, "nc1": 10**log_nc1 if math.isfinite(log_nc1) else math.nan,
            "status": result.status, "message": result.message,
            "se_log10_nc1": est["log10_nc1"][1],
            "log10_nc1_by_step": ";".join(f"{v[0]:.5g}" for v in (x["log10_nc1"] for x in lv)),
            "se_log10_nc1_by_step": ";".join(f"{v[1]:.3g}" for v in (x["log10_nc1"] for x in lv)),
            "step_sizes": ";".join(f"{s:g}" for s in result.steps), "step_misfit": result.z,
            "log10_sample_nc1": est["log10_sample_nc1"][0], "se_log10_sample_nc1": est["log10_sample_nc1"][1],
            "mse": est["mse"][0], "se_mse": est["mse"][1], "gp_mse": gp_mse,
            "sigma_trace": est["sigma_trace"][0], "se_sigma_trace": est["sigma_trace"][1],
            "sigma_top": float(np.linalg.eigvalsh(result.sigma)[-1]) if np.all(np.isfinite(result.sigma)) else math.nan,
            "rhat": result.rhat, "ess": result.ess, "chains": chains, "steps": result.total_steps,
            "seconds": round(result.seconds, 3)}


MAP_GRAD_RATIO = 1e-3  # the MAP point counts as reached when the preconditioned gradient fell this much


def _map_rows(cell, mp: dict, seconds: float) -> list[dict]:
    rows = []
    for i, r in enumerate(cell.repeats):
        nc1 = 10 ** mp["log10_nc1"][i] if math.isfinite(mp["log10_nc1"][i]) else math.nan
        status = ("diverged" if mp["diverged"][i] else "ok" if mp["grad_ratio"][i] <= MAP_GRAD_RATIO
                  else "not_converged")
        rows.append({"method": "map", "repeat": r, "nc1": nc1, "status": status, "mse": float(mp["mse"][i]),
                     "grad_ratio": float(mp["grad_ratio"][i]), "seconds": round(seconds, 3)})
    return rows


def evaluate_cell(cfg: dict, cell, datasets) -> list[dict]:
    """Rows ``langevin`` (the posterior network, :func:`~shallow_collapse.posterior.sample_posterior`),
    ``map`` (its MAP point from the first chain's prior draw: SGD at the matched initialisation,
    weight decay equal to the priors, no noise) and ``nngp``, ``ntk`` of :func:`prior_network`,
    per repeat of ``cell``.

    The width is ``hidden_features`` (equal to the AK's ``h``, checked by the job). All repeats'
    chains run as one batch in float64 on the config's ``device`` (the noise is drawn on the CPU
    from each chain's generator, so a chain is the same on any device up to round-off). A
    numerical failure is a status (diverged, not_converged, error), never an exception.
    """
    eos, lp = EoSParams.from_config(cfg), LangevinParams.from_config(cfg)
    h, M, R = cfg["hidden_features"], lp.chains, len(datasets)
    labels = datasets[0].labels
    if any(not torch.equal(ds.labels, labels) for ds in datasets):
        raise ValueError("every draw of a cell must have the same labels")
    X = torch.stack([ds.X for ds in datasets]).to(torch.float64)
    y = torch.stack([ds.y for ds in datasets]).to(torch.float64)
    seeds = [s for r in cell.repeats for s in chain_seeds(cfg["seed"], cell.class_sizes, cell.in_features, r, M)]
    net = prior_network(cfg)
    phi = net.act.phi
    rows = []
    device = resolve_device(cfg["device"])
    try:
        target = PosteriorTarget(X.repeat_interleave(M, 0).to(device), y.repeat_interleave(M, 0).to(device), phi,
                                 eos.sigw2, eos.siga2, eos.sig2)
        results = sample_posterior(target, labels, h, lp, seeds, groups=R)
        for r, ds, res in zip(cell.repeats, datasets, results):
            rows.append(_langevin_row(r, res, _gp_mse(ds.X.to(torch.float64), ds.y.to(torch.float64), net, eos.sig2), M))
    except (RuntimeError, FloatingPointError, ValueError) as exc:  # e.g. out of memory, a failed eigensolver
        message = " ".join(str(exc).split())[:300]
        rows = [{"method": "langevin", "repeat": r, "nc1": math.nan, "status": "error", "message": message}
                for r in cell.repeats]
    start = time.perf_counter()
    try:
        mp = map_point(PosteriorTarget(X.to(device), y.to(device), phi, eos.sigw2, eos.siga2, eos.sig2), labels, h, seeds[::M],
                       step=lp.step, steps=lp.burn_in + lp.samples * lp.thin)
        rows += _map_rows(cell, mp, (time.perf_counter() - start) / R)
    except (RuntimeError, FloatingPointError, ValueError) as exc:
        message = " ".join(str(exc).split())[:300]
        rows += [{"method": "map", "repeat": r, "nc1": math.nan, "status": "error", "message": message}
                 for r in cell.repeats]
    nc1 = limiting_kernels_nc1(X, labels, net)
    for method, name in (("nngp", "post1"), ("ntk", "ntk")):
        rows += [{"method": method, "repeat": r, "nc1": float(v), "status": "ok"} for r, v in zip(cell.repeats, nc1[name])]
    return rows

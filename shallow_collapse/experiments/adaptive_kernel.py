"""Adaptive kernel (MATH.md section 6): sweep cells and the single run ``adaptive_kernels.py``.

Glue only: the numerics are in :mod:`shallow_collapse.eos` and :mod:`shallow_collapse.metrics`,
the figures in :mod:`shallow_collapse.plots.adaptive_kernel`.
"""
from __future__ import annotations

import math
import time

import torch

from .. import metrics
from ..data import gaussian_data
from ..devices import resolve_device
from ..eos import EoSResult, solve_eos

__all__ = ["solver_options", "evaluate_cell", "run", "result_record"]


def solver_options(cfg: dict) -> dict:
    """Keyword arguments of :func:`~shallow_collapse.eos.solve_eos` taken from a config."""
    return dict(activation=cfg["activation"], sigw2=cfg["sigw2"], siga2=cfg["siga2"], sig2=cfg["sig2"],
                h=cfg["h"], annealing_factors=cfg["annealing_factors"],
                strategy=cfg["eos_update_strategy"], f_tol=cfg["f_tol"], maxiter=cfg["maxiter"],
                inner_maxiter=cfg["inner_maxiter"], max_subdivisions=cfg["max_subdivisions"],
                device=resolve_device(cfg["device"]))


def _solver_columns(result: EoSResult) -> dict:
    return {"evaluations": result.evaluations, "residual": result.residual,
            "seconds": round(result.seconds, 4), "steps": len(result.steps),
            "factor": result.factor, "failed_factor": result.failed_factor, "message": result.message}


def evaluate_cell(cfg: dict, cell, datasets) -> list[dict]:
    """Rows ``ak`` and ``nngp`` for every repeat of ``cell``, on the same draw.

    ``ak``: NC1 (MATH section 4, :func:`metrics.nc1_kernel`) of Q at the last accepted EoS
    solution, ``status`` ok / not_converged (the continuation gave up before chi = h: ``nc1`` is
    then that of the last accepted factor, given in ``factor``, and ``failed_factor``,
    ``residual`` and ``message`` say where and by how much) / nan / error, plus the solver
    columns ``evaluations`` (O(N^3) evaluations), ``residual`` (max|F| of the final attempt),
    ``seconds``, ``steps`` (attempted continuation steps).

    ``nngp``: NC1 of ``Q0 = siga2 Kphi(X Sigma_0 X^T)`` with ``Sigma_0 = (sigw2/d) I``, the
    solver's own starting kernel (chi = infinity). It equals the NNGP kernel of
    :mod:`shallow_collapse.kernels` with ``hidden_weight_std^2 = sigw2`` and zero bias (NC1 is
    scale invariant, so siga2 drops out).
    """
    options = solver_options(cfg)
    rows = []
    for repeat, ds in zip(cell.repeats, datasets):
        start = time.perf_counter()
        try:
            result = solve_eos(ds.X, ds.y, **options)
        except Exception as err:  # numerical failure of any kind is a status, never an exception
            message = f"{type(err).__name__}: {err}"
            rows.append({"method": "ak", "repeat": repeat, "nc1": math.nan, "status": "error",
                         "seconds": round(time.perf_counter() - start, 4), "message": message})
            rows.append({"method": "nngp", "repeat": repeat, "nc1": math.nan, "status": "error",
                         "message": message})
            continue
        nc1 = float(metrics.nc1_kernel(result.Q, ds.labels))
        nc1_0 = float(metrics.nc1_kernel(result.Q0, ds.labels))
        rows.append({"method": "ak", "repeat": repeat, "nc1": nc1, "status": result.status,
                     **_solver_columns(result)})
        rows.append({"method": "nngp", "repeat": repeat, "nc1": nc1_0,
                     "status": "ok" if math.isfinite(nc1_0) else "nan"})
    return rows


def _spectrum(K: torch.Tensor) -> list[float]:
    """Eigenvalues of a symmetric matrix, largest first."""
    return torch.linalg.eigvalsh(0.5 * (K + K.T)).flip(0).tolist()


def result_record(cfg: dict, ds, result: EoSResult, lightweight: bool) -> dict:
    """The content of ``results.json`` of a single run (lists, numbers and strings only).

    Always: summary numbers (NC1 of the data, NNGP and AK kernels, status, residual, ...) and the
    solver record of every attempted step. Unless ``lightweight``: ``per_step`` (one entry per
    accepted factor, starting with the NNGP limit ``factor: inf`` written as ``"inf"``:
    nc1, tr_w, tr_b of Q, fbar_nc1 of fbar fbar^T, mse of fbar, trace of Sigma), Sigma at start
    and end, spectra of Q, Sigma, XX^T, and fbar at the GP limit and at the end.
    """
    labels = ds.labels
    tr_w, tr_b = metrics.kernel_traces(result.Q, labels)
    tr_w0, tr_b0 = metrics.kernel_traces(result.Q0, labels)
    mse = float(((ds.y - result.fbar) ** 2).mean())
    mse0 = float(((ds.y - result.fbar0) ** 2).mean())
    record = {
        "status": result.status, "converged": result.converged, "strategy": result.strategy,
        "N": len(labels), "class_sizes": [int(v) for v in torch.bincount(labels)],
        "in_features": ds.X.shape[1], "activation": cfg["activation"], "h": cfg["h"],
        "sigw2": cfg["sigw2"], "siga2": cfg["siga2"], "sig2": cfg["sig2"], "f_tol": cfg["f_tol"],
        "final_factor": result.factor, "failed_factor": result.failed_factor, "message": result.message,
        "residual": result.residual, "evaluations": result.evaluations, "seconds": result.seconds,
        "data_nc1": float(metrics.nc1_features(ds.X, labels)),
        "nngp_nc1": float(tr_w0 / tr_b0), "ak_nc1": float(tr_w / tr_b),
        "ak_tr_w": float(tr_w), "ak_tr_b": float(tr_b), "nngp_tr_w": float(tr_w0), "nngp_tr_b": float(tr_b0),
        "ak_mse": mse, "nngp_mse": mse0,
        "steps": [{k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in s.items()}
                  for s in result.steps_table()],
    }
    if lightweight:
        return record
    record["per_step"] = [
        {"factor": "inf" if math.isinf(s["factor"]) else s["factor"], "nc1": s["nc1"], "tr_w": s["tr_w"],
         "tr_b": s["tr_b"], "fbar_nc1": s["fbar_nc1"], "mse": s["mse"],
         "trace_sigma": float(torch.trace(s["Sigma"]))}
        for s in result.snapshots]
    record.update(
        sigma_start=result.Sigma0.tolist(), sigma_end=result.Sigma.tolist(),
        sigma_spectrum_start=_spectrum(result.Sigma0), sigma_spectrum_end=_spectrum(result.Sigma),
        q_spectrum_gp=_spectrum(result.Q0), q_spectrum_end=_spectrum(result.Q),
        data_kernel_spectrum=_spectrum(ds.X @ ds.X.T),
        y=ds.y.tolist(), labels=labels.tolist(), fbar_gp=result.fbar0.tolist(), fbar_end=result.fbar.tolist())
    return record


def _dataset(cfg: dict):
    sizes = cfg.get("class_sizes")
    if sizes is None:
        C = cfg["num_classes"]
        sizes = [cfg["N"] // C] * C
    return gaussian_data(sizes, cfg["in_features"], cfg["class_means"], cfg["class_stds"], cfg["seed"], repeat=0)


def run(cfg: dict, run) -> None:
    """Single AK run: solve, write ``results.json`` and (unless ``lightweight``) the plots."""
    ds = _dataset(cfg)
    lightweight = cfg["lightweight"]
    run.log.info("AK solve: N=%d d=%d activation=%s strategy=%s h=%s factors=%s", len(ds.y), ds.X.shape[1],
                 cfg["activation"], cfg["eos_update_strategy"], cfg["h"], cfg["annealing_factors"])
    result = solve_eos(ds.X, ds.y, **solver_options(cfg), record_steps=not lightweight,
                       labels=None if lightweight else ds.labels, log=run.log)
    for step in result.steps:
        run.log.info("step chi=%g depth=%d: %d iterations, %d evaluations, residual %.3g, converged %s, %.2fs%s",
                     step.factor, step.depth, step.iterations, step.evaluations, step.residual,
                     step.converged, step.seconds, f" ({step.message})" if step.message else "")
    if result.status != "ok":
        run.log.warning("AK solve %s: %s", result.status, result.message)
    record = result_record(cfg, ds, result, lightweight)
    run.log.info("AK NC1 %.6g (NNGP %.6g, data %.6g), %d evaluations, %.2fs", record["ak_nc1"],
                 record["nngp_nc1"], record["data_nc1"], result.evaluations, result.seconds)
    run.write_json("results.json", record)
    if not lightweight:
        from ..plots.adaptive_kernel import plot_single_run

        plot_single_run(record, {"data_kernel": ds.X @ ds.X.T, "q_gp": result.Q0, "q_end": result.Q},
                        run.plots)

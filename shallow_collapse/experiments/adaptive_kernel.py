"""Adaptive kernel (MATH.md section 6): sweep cells and the single run ``adaptive_kernels.py``.

Glue only: the numerics are in :mod:`shallow_collapse.eos` and :mod:`shallow_collapse.metrics`,
the figures in :mod:`shallow_collapse.plots.adaptive_kernel`.
"""
from __future__ import annotations

import math
import time

import torch

from .. import metrics
from . import Method, Row, data_bytes, error_rows
from ..config import ConfigError, show
from ..eos import EoSResult, nc1_error_bound, solve_eos
from ..params import EoSParams, NetworkParams, SolverOptions
from . import limiting_kernels as limiting_kernels_experiment
from . import single_run_data

__all__ = ["solve", "evaluate_cell", "run", "result_record", "StepProbe", "check", "cell_bytes", "METHOD"]


def solve(cfg: dict, ds, **options) -> EoSResult:
    """:func:`~shallow_collapse.eos.solve_eos` on the draw ``ds`` with the config's EoS keys
    (:class:`~shallow_collapse.params.EoSParams`, :class:`~shallow_collapse.params.SolverOptions`),
    activation and device; ``options`` are solve_eos's keywords (``anneal``, ``on_accept``, ``log``)."""
    return solve_eos(ds.X, ds.y, EoSParams.from_config(cfg), SolverOptions.from_config(cfg),
                     activation=NetworkParams.from_config(cfg).act, device=cfg["device"], **options)


def _solver_columns(result: EoSResult) -> dict:
    return {"action": result.action, "rel_residual": result.rel_residual, "certified": result.certified,
            "curvature": result.curvature, "evaluations": result.evaluations,
            "seconds": round(result.seconds, 4), "steps": len(result.steps), "factor": result.factor,
            "failed_factor": result.failed_factor, "message": result.message}


def evaluate_cell(cfg: dict, cell, datasets) -> list[dict]:
    """Rows ``ak`` and ``nngp`` for every repeat of ``cell``, on the same draw.

    ``ak``: NC1 (MATH section 4, :func:`metrics.nc1_kernel`) of Q at the EoS solution of least
    action at chi = h, ``status`` ok (converged to ``rtol`` and certified a local minimum of the
    action) / noise_limited (stalled next to the solution below the float64 noise of the map,
    S curving upward there; ``nc1_error_bound`` estimates how far ``nc1`` may be from that of the
    exact solution, empty for other statuses) / not_converged (``nc1`` is then that of the last
    point reached, at chi = ``factor``;
    ``failed_factor`` and ``message`` say where and why) / not_minimum / nan / error, plus the
    solver columns ``action`` (S at the answer), ``rel_residual`` (max|Sigma - Sigma_new| /
    max|Sigma|), ``certified``, ``curvature`` (least relative curvature of S found there),
    ``evaluations`` (O(N^3) evaluations, certification included), ``seconds``, ``steps``.

    ``nngp``: NC1 of ``Q0 = siga2 Kphi(X Sigma_0 X^T)`` with ``Sigma_0 = (sigw2/d) I``, the
    solver's own starting kernel (chi = infinity). It equals the NNGP kernel of
    :mod:`shallow_collapse.kernels` with ``hidden_weight_std^2 = sigw2`` and zero bias (NC1 is
    scale invariant, so siga2 drops out).
    """
    rows = []
    for repeat, ds in zip(cell.repeats, datasets):
        start = time.perf_counter()
        try:
            result = solve(cfg, ds)
        except Exception as err:  # numerical failure of any kind is a status, never an exception
            ak, nngp = error_rows(["ak", "nngp"], [repeat], err)
            rows += [{**ak, "seconds": round(time.perf_counter() - start, 4)}, nngp]
            continue
        nc1 = float(metrics.nc1_kernel(result.Q, ds.labels))
        nc1_0 = float(metrics.nc1_kernel(result.Q0, ds.labels))
        bound = (nc1_error_bound(result, ds.X, ds.labels, EoSParams.from_config(cfg),
                                 activation=NetworkParams.from_config(cfg).act)
                 if result.status == "noise_limited" else None)  # None: an empty cell, like failed_factor
        rows.append({"method": "ak", "repeat": repeat, "nc1": nc1, "status": result.status,
                     "nc1_error_bound": bound, **_solver_columns(result)})
        rows.append({"method": "nngp", "repeat": repeat, "nc1": nc1_0,
                     "status": "ok" if math.isfinite(nc1_0) else "nan"})
    return rows


def _spectrum(K: torch.Tensor) -> list[float]:
    """Eigenvalues of a symmetric matrix, largest first."""
    return torch.linalg.eigvalsh(0.5 * (K + K.T)).flip(0).tolist()


def _json_number(v):
    """Floats as JSON allows them: inf and nan as the strings "inf", "-inf", "nan"."""
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


def _json_dict(d: dict) -> dict:
    return {k: _json_number(v) for k, v in d.items()}


class StepProbe:
    """``on_accept`` callback of :func:`solve_eos`: NC1 and the other per-step numbers of every
    accepted annealing step (and of the NNGP start, factor inf), computed from the solver's state."""

    def __init__(self, y, labels):
        self.y, self.labels, self.rows = y, labels, []

    def __call__(self, chi, state, step):
        Q, f = state.Q.cpu(), state.fbar.cpu()
        tr_w, tr_b = metrics.kernel_traces(Q, self.labels)
        self.rows.append({
            "factor": "inf" if math.isinf(chi) else chi, "nc1": float(tr_w / tr_b), "tr_w": float(tr_w),
            "tr_b": float(tr_b), "fbar_nc1": float(metrics.nc1_kernel(f[:, None] * f[None, :], self.labels)),
            "mse": float(((self.y - f) ** 2).mean()), "trace_sigma": float(torch.trace(state.Sigma)),
            # The NNGP start is the exact solution at chi = inf, where S itself is infinite.
            "action": None if step is None else step.action,
            "rel_residual": 0.0 if step is None else step.rel_residual})


def result_record(cfg: dict, ds, result: EoSResult, per_step: list[dict] | None) -> dict:
    """The content of ``results.json`` of a single run (lists, numbers and strings only).

    Always: summary numbers (NC1 of the data, NNGP and AK kernels, status, action, rel_residual,
    certification, every candidate solution, ...) and the solver record of every attempted step.
    With ``per_step`` (the rows of a :class:`StepProbe`, one per accepted factor starting with the
    NNGP limit ``factor: "inf"``: nc1, tr_w, tr_b of Q, fbar_nc1 of fbar fbar^T, mse of fbar, trace of
    Sigma, action, rel_residual): also Sigma at start and end, spectra of Q, Sigma, XX^T, and fbar at
    the GP limit and at the end.
    """
    labels = ds.labels
    tr_w, tr_b = metrics.kernel_traces(result.Q, labels)
    tr_w0, tr_b0 = metrics.kernel_traces(result.Q0, labels)
    mse = float(((ds.y - result.fbar) ** 2).mean())
    mse0 = float(((ds.y - result.fbar0) ** 2).mean())
    record = {
        "status": result.status, "converged": result.converged, "certified": result.certified,
        "strategy": result.strategy, "origin": result.origin,
        "N": len(labels), "class_sizes": [int(v) for v in torch.bincount(labels)],
        "in_features": ds.X.shape[1], "activation": cfg["activation"], "h": cfg["h"],
        "sigw2": cfg["sigw2"], "siga2": cfg["siga2"], "sig2": cfg["sig2"], "rtol": cfg["rtol"],
        "final_factor": result.factor, "failed_factor": result.failed_factor, "message": result.message,
        "action": _json_number(result.action), "rel_residual": _json_number(result.rel_residual),
        "curvature": _json_number(result.curvature),
        "evaluations": result.evaluations, "seconds": result.seconds,
        "data_nc1": float(metrics.nc1_features(ds.X, labels)),
        "nngp_nc1": float(tr_w0 / tr_b0), "ak_nc1": float(tr_w / tr_b),
        "ak_tr_w": float(tr_w), "ak_tr_b": float(tr_b), "nngp_tr_w": float(tr_w0), "nngp_tr_b": float(tr_b0),
        "ak_mse": mse, "nngp_mse": mse0,
        "candidates": [_json_dict(vars(c)) for c in result.candidates],
        "steps": [_json_dict(s) for s in result.steps_table()],
    }
    if per_step is None:
        return record
    record["per_step"] = per_step
    record.update(
        sigma_start=result.Sigma0.tolist(), sigma_end=result.Sigma.tolist(),
        sigma_spectrum_start=_spectrum(result.Sigma0), sigma_spectrum_end=_spectrum(result.Sigma),
        q_spectrum_gp=_spectrum(result.Q0), q_spectrum_end=_spectrum(result.Q),
        data_kernel_spectrum=_spectrum(ds.X @ ds.X.T),
        y=ds.y.tolist(), labels=labels.tolist(), fbar_gp=result.fbar0.tolist(), fbar_end=result.fbar.tolist())
    return record


def run(cfg: dict, run) -> None:
    """Single AK run: solve, write ``results.json`` and (unless ``lightweight``) the plots.

    Unless ``lightweight`` the solve follows the annealing schedule (one point per factor for the
    per-step plots) and a direct solve at chi = h competes with it; lightweight runs solve at
    chi = h only, as sweep cells do.
    """
    ds = single_run_data(cfg)
    lightweight = cfg["lightweight"]
    probe = None if lightweight else StepProbe(ds.y, ds.labels)
    run.log.info("AK solve: N=%d d=%d activation=%s strategy=%s h=%s factors=%s", len(ds.y), ds.X.shape[1],
                 cfg["activation"], cfg["eos_update_strategy"], cfg["h"], cfg["annealing_factors"])
    result = solve(cfg, ds, anneal=not lightweight, on_accept=probe, log=run.log)
    for step in result.steps:
        run.log.info("step chi=%g depth=%d: %d iterations, %d evaluations, rel_residual %.3g, action %.12g, "
                     "converged %s, %.2fs%s", step.factor, step.depth, step.iterations, step.evaluations,
                     step.rel_residual, step.action, step.converged, step.seconds,
                     f" ({step.message})" if step.message else "")
    for c in result.candidates:
        run.log.info("candidate %s: converged %s, action %.12g, rel_residual %.3g, Sigma gap %.3g",
                     c.origin, c.converged, c.action, c.rel_residual, c.sigma_gap)
    if result.status != "ok":
        run.log.warning("AK solve %s: %s", result.status, result.message)
    record = result_record(cfg, ds, result, None if probe is None else probe.rows)
    run.log.info("AK NC1 %.6g (NNGP %.6g, data %.6g), action %.12g, rel_residual %.3g, curvature %.3g, "
                 "%d evaluations, %.2fs", record["ak_nc1"], record["nngp_nc1"], record["data_nc1"],
                 result.action, result.rel_residual, result.curvature, result.evaluations, result.seconds)
    run.write_json("results.json", record)
    if not lightweight:
        from ..plots.adaptive_kernel import plot_single_run

        plot_single_run(record, {"data_kernel": ds.X @ ds.X.T, "q_gp": result.Q0, "q_end": result.Q},
                        run.plots)


def check(cfg: dict) -> None:
    """The EoS describe one hidden layer (L = 2), and their continuation ends at the width h."""
    if cfg["L"] != 2:
        raise ConfigError(f"config key 'L': expected 2 for the adaptive kernel (the Equations of State "
                          f"describe one hidden layer), got {show(cfg['L'])}")
    if cfg["annealing_factors"][-1] < cfg["h"]:
        raise ConfigError(f"config key 'annealing_factors': expected factors no smaller than h={cfg['h']} "
                          f"(the schedule ends at h), got {show(cfg['annealing_factors'])}")


def cell_bytes(cfg: dict, N: int, d: int, R: int) -> int:
    """The draws, a dozen (N, N) float64 matrices of one solve and the solver's (d, d) history."""
    return data_bytes(N, d, R) + 12 * N * N * 8 + (cfg["inner_maxiter"] + 20) * d * d * 8


METHOD = Method(
    prefix="adaptive_kernels", description=f"NC1 of the adaptive kernel (Equations of State), with the NNGP of the "
                                           f"same draws, {limiting_kernels_experiment.GRID_OF}",
    owns=(Row("ak", "Adaptive kernel", ("network", "ak"), versus=("fcn", "posterior")),), reports=("ak", "nngp"),
    evaluate_cell=evaluate_cell, scopes=("network", "ak"), cell_bytes=cell_bytes, memory_keys=("inner_maxiter",),
    check=check, paper=True)

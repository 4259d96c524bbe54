"""The matched study: the adaptive kernel against the posterior network it describes, at the paper's settings.

``python -m shallow_collapse matched_study configs/matched_study.yml [key=value ...] [--out DIR]``

One config describes every method. For each activation of ``activation_list`` it runs, through
:func:`cli.run_job` (so each sweep lands in its usual run folder and resumes), four balanced
sweeps on the same draws with ``activation`` set: the posterior network
(``posterior_bulk_balanced``: rows ``posterior``, ``nngp``), the adaptive kernel
(``adaptive_kernels_bulk_balanced``: rows ``ak``, ``nngp``), the mean-field adaptive kernel
(``mean_field_bulk_balanced``: rows ``mean_field``, ``nngp``; docs/THEORIES.md) and the
SGD-trained network (``fcn_bulk_balanced``: rows ``fcn``, ``nngp``, ``ntk``). Then it pairs the rows draw by draw
(:func:`study_table`), averages them per cell (:func:`cell_table`) and writes
``OUT/matched_study/<hash>/``: ``table.csv`` (one row per draw), ``cells.csv`` (one row per
(activation, N, d): AK - posterior and mean-field - posterior with their standard errors), ``study.json`` (the sweep folders
used, the software versions), ``config.yaml`` (the resolved config), the figure ``matched_nc1``
(:mod:`shallow_collapse.plots.matched`) and ``report.html``. The folder is named by the run
hashes of its sweeps, read from the folders the sweeps wrote.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import cli
from .config import ConfigError, format_override, load_config
from .executors import check_execution
from .index import update_index
from .jobs import JOBS
from .params import EoSParams, NetworkParams
from .plots import figure_formats
from .report import write_report
from .runs import (OutputError, atomic_write_json, atomic_write_text, config_text, make_folder, run_hash,
                   software_versions)
from .sweeps import read_table, write_table

__all__ = ["SWEEPS", "USABLE_AK", "check_shared", "plan", "study_table", "cell_table", "run_study", "main", "TABLE_COLUMNS",
           "CELL_COLUMNS", "USABLE_MEAN_FIELD"]

SWEEPS = ("posterior_bulk_balanced", "adaptive_kernels_bulk_balanced", "mean_field_bulk_balanced", "fcn_bulk_balanced")
USABLE_AK = ("ok", "noise_limited")  # certified AK statuses (docs/SOLVER.md): both are compared
USABLE_MEAN_FIELD = ("ok",)  # converged mean-field solves; not_normalisable has no number
TABLE_COLUMNS = ["activation", "N", "in_features", "repeat", "posterior", "se_posterior", "posterior_status",
                 "ak", "ak_status", "mean_field", "se_mean_field", "mean_field_status", "nngp", "fcn", "fcn_status",
                 "ak_minus_posterior", "gap_in_se", "ak_outside", "mean_field_minus_posterior",
                 "mean_field_gap_in_se", "rhat", "ess_bulk", "ess_tail", "posterior_seconds", "ak_seconds",
                 "mean_field_seconds"]
CELL_COLUMNS = ["activation", "N", "in_features", "draws", "draws_compared", "posterior", "se_posterior", "ak",
                "nngp", "fcn", "ak_minus_posterior", "se_ak_minus_posterior", "gap_in_se",
                "draws_compared_mean_field", "mean_field", "se_mean_field", "mean_field_minus_posterior",
                "se_mean_field_minus_posterior", "mean_field_gap_in_se"]


def check_shared(cfg: dict) -> None:
    """The SGD network is the network the AK and the posterior describe: its width is h, and its
    initialisation is the EoS prior (:meth:`EoSParams.network`) in depth, bias and hidden weights
    (hidden_weight_std = sqrt(sigw2), to the relative 1e-12 that a decimal YAML value of a square root keeps).
    The activation is one key of all three. Its readout's initial scale (final_weight_std, the
    paper's so = 1.97) is not a prior under SGD and may differ from siga2 (docs/POSTERIOR.md)."""
    if cfg["hidden_features"] != cfg["h"]:
        raise ConfigError(f"config key 'hidden_features': expected the AK's width h={cfg['h']} (the SGD "
                          f"network is the one the AK and the posterior describe), got {cfg['hidden_features']}")
    prior, net = EoSParams.from_config(cfg).network(), NetworkParams.from_config(cfg)
    for key in ("L", "bias_std", "hidden_weight_std"):
        mine, theirs = getattr(net, key), getattr(prior, key)
        if not math.isclose(mine, theirs, rel_tol=1e-12, abs_tol=0.0):
            raise ConfigError(f"config key '{key}': expected {theirs!r}, the EoS prior's (sigw2={cfg['sigw2']}, one "
                              f"hidden layer, no bias; the SGD network is the one the AK and the posterior "
                              f"describe), got {mine!r}")


def plan(config, overrides=()) -> tuple[dict, list[dict]]:
    """Validate the study's config and every sweep it runs, before any work.

    Returns ``(cfg, points)``: the resolved study config and one point per activation,
    ``{"activation": a, "overrides": [...], "hashes": {job: run hash}}``. Raises
    :class:`ConfigError` when a sweep would refuse its config.
    """
    cfg = load_config(config, overrides, defaults={"name": "matched_study"})
    check_shared(cfg)
    points = []
    for activation in cfg["activation_list"]:
        extra = [*overrides, format_override("activation", activation)]
        point = {"activation": activation, "overrides": extra, "hashes": {}}
        for job in SWEEPS:
            job_cfg = load_config(config, extra, defaults={"name": job})
            JOBS[job].check(job_cfg)
            check_execution(job_cfg)
            point["hashes"][job] = run_hash(job_cfg, job, JOBS[job].keys_for(job_cfg))
        points.append(point)
    return cfg, points


def _by_draw(rows: list[dict]) -> dict:
    return {(r["method"], r["N"], r["in_features"], r["repeat"]): r for r in rows}


def _number(value) -> float:
    """A table cell as a float: NaN for an empty cell."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _value(row: dict | None) -> float:
    return float(row["log10_nc1"]) if row else math.nan


def study_table(points: list[dict]) -> list[dict]:
    """One row per (activation, N, d, repeat): log10 NC1 of the posterior-averaged kernel
    (``posterior``, with ``se_posterior`` from the chains), of the AK, the NNGP and the SGD FCN of
    the same draw, and the gap AK - posterior in log10 and in standard errors. ``ak_outside`` when
    both are usable and the AK lies more than 2 standard errors from the posterior (the sampler's
    SE only: the AK is a deterministic solve). ``mean_field`` (with ``se_mean_field``, the Monte
    Carlo SE of its replicates, 0 for the quadrature) and ``mean_field_minus_posterior``, in
    standard errors of both (``mean_field_gap_in_se``)."""
    table = []
    for point in points:
        post, ak, mf, fcn = (_by_draw(point["rows"].get(job, [])) for job in SWEEPS)
        for (method, N, d, rep), row in post.items():
            if method != "posterior":
                continue
            a, f, nngp = ak.get(("ak", N, d, rep)), fcn.get(("fcn", N, d, rep)), post.get(("nngp", N, d, rep))
            m = mf.get(("mean_field", N, d, rep))
            se = float(row.get("se_log10_nc1", math.nan))
            se_m = _number(m.get("se_log10_nc1")) if m else math.nan
            gap = _value(a) - _value(row)
            gap_m = _value(m) - _value(row)
            se_gap_m = math.sqrt(se * se + se_m * se_m)
            usable = row["status"] == "ok" and a is not None and a["status"] in USABLE_AK
            table.append({
                "activation": point["activation"], "N": N, "in_features": d, "repeat": rep,
                "posterior": _value(row), "se_posterior": se, "posterior_status": row["status"],
                "ak": _value(a), "ak_status": a["status"] if a else "missing", "mean_field": _value(m),
                "se_mean_field": se_m, "mean_field_status": m["status"] if m else "missing", "nngp": _value(nngp),
                "fcn": _value(f), "fcn_status": f["status"] if f else "missing", "ak_minus_posterior": gap,
                "gap_in_se": gap / se if se > 0 else math.nan, "ak_outside": bool(usable and abs(gap) > 2 * se),
                "mean_field_minus_posterior": gap_m,
                "mean_field_gap_in_se": gap_m / se_gap_m if se_gap_m > 0 else math.nan,
                "rhat": row.get("rhat"), "ess_bulk": row.get("ess_bulk"), "ess_tail": row.get("ess_tail"),
                "posterior_seconds": row.get("seconds"), "ak_seconds": a.get("seconds") if a else None,
                "mean_field_seconds": m.get("seconds") if m else None})
    return sorted(table, key=lambda r: (r["activation"], r["N"], r["in_features"], r["repeat"]))


def _mean(values) -> float:
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def _finite(value) -> float:
    """A standard error, 0 where it is not a finite number (the quadrature's is 0, one replicate's NaN)."""
    value = float(value)
    return value if math.isfinite(value) else 0.0


def cell_table(table: list[dict]) -> list[dict]:
    """One row per (activation, N, d): means over the draws whose posterior is ok and whose AK is
    certified (``draws_compared`` of ``draws``). The standard error of the mean gap AK - posterior
    is the spread of the paired gaps over draws (std / sqrt(R), which holds the sampler's noise and
    the draw-to-draw variation); with a single draw it is that draw's sampler SE. The mean-field
    columns average the draws whose posterior is ok and whose mean-field solve is ok
    (``draws_compared_mean_field``); with a single draw the SE of mean_field - posterior combines
    the sampler's and the mean-field replicates' SEs."""
    cells = []
    for key in sorted({(r["activation"], r["N"], r["in_features"]) for r in table}):
        rows = [r for r in table if (r["activation"], r["N"], r["in_features"]) == key]
        used = [r for r in rows if r["posterior_status"] == "ok" and r["ak_status"] in USABLE_AK]
        gaps = [r["ak_minus_posterior"] for r in used]
        if len(used) >= 2:
            se = float(np.std(gaps, ddof=1) / math.sqrt(len(gaps)))
        else:
            se = float(used[0]["se_posterior"]) if used else math.nan
        post_se = [r["se_posterior"] for r in used]
        gap = _mean(gaps)
        used_m = [r for r in rows if r["posterior_status"] == "ok" and r["mean_field_status"] in USABLE_MEAN_FIELD]
        gaps_m = [r["mean_field_minus_posterior"] for r in used_m]
        if len(used_m) >= 2:
            se_m = float(np.std(gaps_m, ddof=1) / math.sqrt(len(gaps_m)))
        else:  # one draw: the sampler's and the replicates' standard errors together
            se_m = float(math.hypot(used_m[0]["se_posterior"], _finite(used_m[0]["se_mean_field"]))) if used_m \
                else math.nan
        gap_m = _mean(gaps_m)
        mf_se = [_finite(r["se_mean_field"]) for r in used_m]
        cells.append({"activation": key[0], "N": key[1], "in_features": key[2], "draws": len(rows),
                      "draws_compared": len(used), "posterior": _mean([r["posterior"] for r in used]),
                      "se_posterior": float(math.sqrt(sum(s * s for s in post_se)) / len(post_se)) if used else math.nan,
                      "ak": _mean([r["ak"] for r in used]), "nngp": _mean([r["nngp"] for r in rows]),
                      "fcn": _mean([r["fcn"] for r in rows if r["fcn_status"] == "ok"]), "ak_minus_posterior": gap,
                      "se_ak_minus_posterior": se, "gap_in_se": gap / se if se > 0 else math.nan,
                      "draws_compared_mean_field": len(used_m), "mean_field": _mean([r["mean_field"] for r in used_m]),
                      "se_mean_field": float(math.sqrt(sum(s * s for s in mf_se)) / len(mf_se)) if used_m else math.nan,
                      "mean_field_minus_posterior": gap_m, "se_mean_field_minus_posterior": se_m,
                      "mean_field_gap_in_se": gap_m / se_m if se_m > 0 else math.nan})
    return cells


def run_study(config, overrides=(), out_root="out", command=()) -> Path:
    """Run (or resume) every sweep of the study, then write its tables, figure and page; returns its folder."""
    from .plots.matched import plot_matched

    cfg, points = plan(config, overrides)
    out_root = Path(out_root)
    for point in points:
        point["folders"], point["rows"] = {}, {}
        for job in SWEEPS:
            argv = [str(config), *point["overrides"], format_override("name", job), "--out", str(out_root)]
            outcome = cli.run_job(job, argv)
            if outcome.code == 130:
                raise KeyboardInterrupt
            if outcome.code != 0:
                raise RuntimeError(f"{job} with activation={point['activation']} ended with exit status {outcome.code}")
            point["folders"][job] = str(outcome.folder)
            point["rows"][job] = read_table(outcome.folder / "results.csv")
    # named by the run hashes of its sweeps, which are their folders' names (--out does not change it)
    names = [{job: Path(folder).name for job, folder in p["folders"].items()} for p in points]
    digest = hashlib.sha256(json.dumps(names, sort_keys=True).encode()).hexdigest()[:10]
    folder = make_folder(out_root, cfg["name"], digest)
    table = study_table(points)
    cells = cell_table(table)
    write_table(folder / "table.csv", table, TABLE_COLUMNS)
    write_table(folder / "cells.csv", cells, CELL_COLUMNS)
    atomic_write_text(folder / "config.yaml", config_text(cfg, cfg))
    with figure_formats(cfg["plot_formats"]):
        plot_matched(cells, folder / "plots")
    atomic_write_json(folder / "study.json", {
        "job": "matched_study", "hash": digest, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(command), "overrides": list(overrides), "versions": software_versions(),
        "sweeps": [{"activation": p["activation"], "folders": p["folders"]} for p in points],
        "status": "ok" if all(r["posterior_status"] == "ok" and r["ak_status"] in USABLE_AK for r in table)
        else "some draws not compared"})
    write_report(folder)
    update_index(out_root)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="matched_study", description="The adaptive kernel and the "
                                     "mean-field kernel against the posterior network they describe and the "
                                     "SGD-trained network, per activation.",
                                     epilog="Every config key, its default and meaning: docs/CONFIG.md.")
    parser.add_argument("config", help="YAML config, e.g. configs/matched_study.yml")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--out", default="out", metavar="DIR")
    args = parser.parse_intermixed_args(argv)
    command = ["matched_study", *(argv if argv is not None else [])]
    try:
        return cli.finish("matched_study", lambda: run_study(args.config, args.overrides, args.out, command),
                          (ConfigError, OutputError, RuntimeError))
    except KeyboardInterrupt:
        return 130

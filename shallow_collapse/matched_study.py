"""The matched study: the adaptive kernel against the posterior network it describes.

``python -m shallow_collapse matched_study configs/matched_study.yml [key=value ...] [--out DIR]``

For every width h of ``hidden_features_list`` and noise sig2 of ``sig2_list`` it runs, through
:func:`cli.main` (so each lands in its usual run folder and resumes), the balanced FCN sweep with
``optimizer=langevin hidden_features=h h=h sig2=sig2`` (rows ``langevin``, ``map``, ``nngp``,
``ntk``) and the balanced AK sweep with the same keys (rows ``ak``, ``nngp``), both from the one
config; the AK's annealing factors are those of the config above h. Then it pairs the rows draw
by draw (:func:`study_table`) and writes ``OUT/matched_study/<hash>/``: ``table.csv``,
``study.json`` (the run hashes and folders used, the software versions), ``config.yaml`` (the
resolved config) and the figure ``matched_nc1`` (:mod:`shallow_collapse.plots.matched`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import yaml

from . import cli
from .config import ConfigError, load_config
from .jobs import JOBS
from .plots import figure_formats
from .runs import atomic_write_json, atomic_write_text, make_folder, run_hash, software_versions
from .sweeps import read_table, write_table

__all__ = ["plan", "study_table", "run_study", "main", "TABLE_COLUMNS"]

SWEEPS = ("fcn_bulk_balanced", "adaptive_kernels_bulk_balanced")
AK_USABLE = ("ok", "noise_limited")  # certified AK statuses (docs/SOLVER.md)
TABLE_COLUMNS = ["N", "in_features", "h", "sig2", "repeat", "langevin", "se_langevin", "langevin_status", "ak",
                 "ak_status", "nngp", "map", "map_status", "ak_minus_langevin", "gap_in_se", "ak_outside",
                 "rhat", "ess", "step_misfit", "steps", "seconds"]


def _override(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"


def plan(cfg: dict) -> list[dict]:
    """One entry per (h, sig2): its overrides of the config for the FCN-langevin and the AK sweep."""
    points = []
    for h in cfg["hidden_features_list"]:
        factors = [f for f in cfg["annealing_factors"] if f > h]
        for sig2 in cfg["sig2_list"]:
            common = {"hidden_features": h, "h": h, "sig2": sig2}
            points.append({"h": h, "sig2": sig2,
                           "fcn_bulk_balanced": {**common, "optimizer": "langevin"},
                           "adaptive_kernels_bulk_balanced": {**common, "annealing_factors": factors or [float(h)]}})
    return points


def _by_draw(rows):
    return {(r["method"], r["N"], r["in_features"], r["repeat"]): r for r in rows}


def study_table(points: list[dict]) -> list[dict]:
    """Per (N, d, h, sig2, repeat): log10 NC1 of the posterior-averaged kernel (``langevin``, with
    ``se_langevin`` from the chains), of the AK, the NNGP and the MAP network, and the gap AK -
    langevin in log10 and in standard errors; ``ak_outside`` when both are ok and the AK lies more
    than 2 standard errors from the sampler's value (the sampler's SE only: the AK is exact)."""
    table = []
    for point in points:
        fcn, ak = (_by_draw(point["rows"][job]) for job in SWEEPS)
        for (method, N, d, rep), row in fcn.items():
            if method != "langevin":
                continue
            a, nngp, mp = ak.get(("ak", N, d, rep), {}), fcn.get(("nngp", N, d, rep), {}), fcn.get(("map", N, d, rep), {})
            gap = a.get("log10_nc1", math.nan) - row["log10_nc1"]
            se = row.get("se_log10_nc1", math.nan)
            # noise_limited AK answers are certified too (docs/SOLVER.md: stalled below the float64
            # noise of the map, S curving upward, with an NC1 error bound): usable like ok.
            both_ok = row["status"] == "ok" and a.get("status") in AK_USABLE
            table.append({
                "N": N, "in_features": d, "h": point["h"], "sig2": point["sig2"], "repeat": rep,
                "langevin": row["log10_nc1"], "se_langevin": se, "langevin_status": row["status"],
                "ak": a.get("log10_nc1", math.nan), "ak_status": a.get("status", "missing"),
                "nngp": nngp.get("log10_nc1", math.nan), "map": mp.get("log10_nc1", math.nan),
                "map_status": mp.get("status", "missing"), "ak_minus_langevin": gap,
                "gap_in_se": gap / se if se and math.isfinite(se) else math.nan,
                "ak_outside": bool(both_ok and abs(gap) > 2 * se), "rhat": row.get("rhat"), "ess": row.get("ess"),
                "step_misfit": row.get("step_misfit"), "steps": row.get("steps"), "seconds": row.get("seconds")})
    return sorted(table, key=lambda r: (r["sig2"], r["N"], r["in_features"], r["h"], r["repeat"]))


def run_study(config, overrides=(), out_root="out") -> Path:
    """Run (or resume) every sweep of the study, then write its table and figure; returns its folder."""
    from .plots.matched import plot_matched

    cfg = load_config(config, overrides, defaults={"name": "matched_study"})
    points = plan(cfg)
    out_root = Path(out_root)
    for point in points:
        point["folders"], point["rows"] = {}, {}
        for job in SWEEPS:
            argv = [str(config), *overrides, *(_override(k, v) for k, v in point[job].items()),
                    "name=" + job, "--out", str(out_root)]
            code = cli.main(job, argv)
            if code != 0:
                raise RuntimeError(f"{job} with {point[job]} ended with exit status {code}")
            job_cfg = load_config(config, argv[1:-2], defaults={"name": job})
            digest = run_hash(job_cfg, job, JOBS[job].keys_for(job_cfg))
            point.setdefault("hashes", {})[job] = digest
            point["folders"][job] = str(out_root / job / digest)
            point["rows"][job] = read_table(out_root / job / digest / "results.csv")
    # the study is named by the run hashes of its sweeps (not by their paths: --out does not change it)
    digest = hashlib.sha256(json.dumps([p["hashes"] for p in points], sort_keys=True).encode()).hexdigest()[:10]
    folder = make_folder(out_root, cfg["name"], digest)
    table = study_table(points)
    write_table(folder / "table.csv", table, TABLE_COLUMNS)
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    atomic_write_json(folder / "study.json", {"points": [{k: v for k, v in p.items() if k != "rows"} for p in points],
                                              "versions": software_versions(), "overrides": list(overrides)})
    with figure_formats(cfg["plot_formats"]):
        plot_matched(table, folder / "plots")
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="matched_study", description="The adaptive kernel against the "
                                     "posterior network it describes, over widths and noise levels.")
    parser.add_argument("config", help="YAML config, e.g. configs/matched_study.yml")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--out", default="out", metavar="DIR")
    args = parser.parse_intermixed_args(argv)
    try:
        folder = run_study(args.config, args.overrides, args.out)
    except (ConfigError, RuntimeError) as exc:
        print(f"matched_study: error: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0

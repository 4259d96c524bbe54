"""Merge sweeps run on the same grid and seed, and pair the methods draw by draw.

Because a draw depends only on (seed, class sizes, d, repeat), the FCN, NNGP, NTK and AK rows of
sweeps with the same seed, data keys and grid are evaluated on identical data. :func:`merge`
checks that, and refuses tables that do not match; :func:`paired_differences` then gives, per
draw, the difference of log10 NC1 between two methods (e.g. AK - NNGP), and
:func:`paired_summary` its mean and standard error per (pair, group, d).

Sweeps may differ in keys that change the numbers (the network, EoS and training keys: every key
of a sweep's run hash other than the data and grid keys). A method held by sweeps that disagree
on a key both use becomes one labelled method per setting, ``nngp[activation=relu]``, each with
all its rows; the pairs are formed between methods of agreeing settings (``ntk[...] - nngp[...]``
of one activation) and between the settings of one method (``nngp[activation=relu] -
nngp[activation=erf]``). Copies of a method with agreeing settings (the NNGP of the kernel and of
the FCN sweep) are one method: the first copy is kept and their largest disagreement reported.

Command line (``compare.py``): ``python compare.py RUN_DIR [RUN_DIR ...] [--out DIR]``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from .cli import finish
from .config import PLOT_FORMATS, SCHEMA, keys_of, used_keys
from .index import update_index
from .methods import ROWS
from .plots import figure_formats
from .plots.compare import plot_comparison
from .report import write_report
from .runs import OutputError, atomic_write_json, make_folder
from .sweeps import RESULT_COLUMNS, SUMMARY_COLUMNS, read_table, summarise, write_table

__all__ = ["CompareError", "load_sweep", "merge", "paired_differences", "paired_summary", "grid_kind", "main"]

# Keys of a run hash that are not a method's setting: the data (checked equal) and the grid
# (checked through the rows), and the job itself.
NOT_SETTING = ("job", *keys_of("data", "grid", "grid_balanced", "grid_imbalanced"))
PAIR_COLUMNS = ["pair", "N", "class_sizes", "in_features", "repeat", "diff_log10_nc1", "diff_log10_rel_nc1"]
PAIR_SUMMARY_COLUMNS = ["pair", "N", "class_sizes", "in_features", "n", "mean_diff_log10_nc1",
                        "stderr_diff_log10_nc1", "mean_diff_log10_rel_nc1", "stderr_diff_log10_rel_nc1"]


class CompareError(ValueError):
    """Tables that cannot be compared (different grid, seed or data); one line."""


NUMBER_COLUMNS = ("N", "in_features", "repeat", "nc1", "log10_nc1", "data_nc1", "log10_rel_nc1")


def load_sweep(folder) -> tuple[dict, list[dict]]:
    """The resolved config and the result rows of a sweep's run folder; anything else (a missing
    or unreadable file, YAML that is not a plain mapping, a table without the result columns or
    with text where numbers belong) raises :class:`CompareError` naming the file."""
    folder = Path(folder)
    if not (folder / "results.csv").is_file() or not (folder / "config.yaml").is_file():
        raise CompareError(f"{folder}: not a finished sweep folder (needs config.yaml and results.csv)")
    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        rows = read_table(folder / "results.csv")
    except (OSError, ValueError, TypeError, yaml.YAMLError, csv.Error) as exc:  # UnicodeDecodeError: a ValueError
        raise CompareError(f"{folder}: expected a readable config.yaml and results.csv ({type(exc).__name__})") from None
    if not isinstance(cfg, dict):
        raise CompareError(f"{folder / 'config.yaml'}: expected a mapping of config keys")
    _check_rows(rows, folder / "results.csv")
    return cfg, rows


def sweep_setting(folder, cfg: dict) -> dict:
    """The keys that set a sweep's numbers beyond its data and grid: its run hash's keys (from
    ``meta.json``; every key of ``cfg`` where that file is missing) less :data:`NOT_SETTING`."""
    meta = Path(folder) / "meta.json"
    try:
        keys = json.loads(meta.read_text())["hashed_config"]
    except (OSError, ValueError, KeyError, TypeError):
        keys = cfg
    return {k: cfg[k] for k in keys if k in cfg and k not in NOT_SETTING}


def _check_rows(rows: list[dict], path: Path) -> None:
    if not rows:
        raise CompareError(f"{path}: expected result rows, got none")
    missing = [c for c in RESULT_COLUMNS if c not in rows[0]]
    if missing:
        raise CompareError(f"{path}: expected the result columns, missing {', '.join(missing)}")
    for i, row in enumerate(rows, start=1):
        bad = [c for c in NUMBER_COLUMNS if not isinstance(row[c], (int, float))]
        if bad:
            raise CompareError(f"{path}, row {i}: expected numbers in {', '.join(bad)}")


def _grid(rows) -> set:
    return {(r["class_sizes"], r["in_features"], r["repeat"]) for r in rows}


def _agree(a: dict, b: dict) -> bool:
    """Two settings agree on every key both use."""
    return all(a[k] == b[k] for k in a.keys() & b.keys())


def _label(method: str, setting: dict, keys) -> str:
    return f"{method}[{','.join(f'{k}={_text(setting[k])}' for k in keys if k in setting)}]" if keys else method


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def method_setting(method: str, setting: dict) -> dict:
    """The part of a sweep's setting that the numbers of the row ``method`` depend on: the keys of
    its scopes (:attr:`Row.scopes`; every key for a row no method owns). The NNGP of an FCN sweep
    is the NNGP of the kernel sweep whatever the learning rate."""
    if method not in ROWS:
        return dict(setting)
    return {k: v for k, v in setting.items() if k not in SCHEMA or SCHEMA[k].scope in ROWS[method].scopes}


def data_identity(cfg: dict) -> dict:
    """The keys that say which data (and draws) a run saw: equal identities, equal draws. A file is
    identified by its content (data_sha256), not where it lies."""
    return {k: cfg.get(k) for k in used_keys(keys_of("data"), cfg) if k != "data_path"}


def _variants(sources: list[dict]) -> list[dict]:
    """The settings of one method over the sweeps holding it: a sweep joins the first variant it
    agrees with, else starts a new one. Each variant: ``setting`` and the ``inputs`` (indices)."""
    variants = []
    for i, setting in enumerate(sources):
        if setting is None:
            continue
        for v in variants:
            if _agree(v["setting"], setting):
                v["inputs"].append(i)
                break
        else:
            variants.append({"setting": dict(setting), "inputs": [i]})
    return variants


def merge(folders) -> tuple[list[dict], dict]:
    """Rows of all ``folders``, one per (method, cell, repeat); refuses mismatched grids or seeds.

    A method held by sweeps whose settings disagree (:func:`sweep_setting`) becomes one labelled
    method per setting, ``method[key=value,...]`` naming the keys that differ, with all its rows.
    Copies of a method with one setting are merged: the first is kept; the largest relative
    disagreement among the copies is returned in the report. ``report["methods"]`` maps each
    method's name to its ``base`` method, ``setting`` and ``inputs`` (folders).
    """
    if len(folders) < 1:
        raise CompareError("give at least one sweep folder")
    loaded = [load_sweep(f) for f in folders]
    (cfg0, rows0), *others = loaded
    for folder, (cfg, rows) in zip(folders[1:], others):
        mine, first = data_identity(cfg), data_identity(cfg0)  # the keys of each one's data source
        for key in dict.fromkeys([*first, *mine]):
            if mine.get(key) != first.get(key):
                raise CompareError(f"{folder}: {key} is {mine.get(key)!r}, but {folders[0]} has {first.get(key)!r}")
        if _grid(rows) != _grid(rows0):
            raise CompareError(f"{folder}: its grid (class sizes x d x repeats) differs from {folders[0]}'s")
    settings = [sweep_setting(f, cfg) for f, (cfg, _) in zip(folders, loaded)]
    bases = list(dict.fromkeys(r["method"] for _, rows in loaded for r in rows))
    name_of, methods = {}, {}  # (base method, sweep index) -> method name; name -> its description
    for base in bases:
        held = [method_setting(base, settings[i]) if any(r["method"] == base for r in rows) else None
                for i, (_, rows) in enumerate(loaded)]
        variants = _variants(held)
        differing = sorted({k for v in variants for w in variants for k in v["setting"].keys() & w["setting"].keys()
                            if v["setting"][k] != w["setting"][k]}) if len(variants) > 1 else []
        for v in variants:
            name = _label(base, v["setting"], differing)
            methods[name] = {"base": base, "setting": v["setting"], "inputs": [str(folders[i]) for i in v["inputs"]]}
            name_of.update({(base, i): name for i in v["inputs"]})
    report = {"inputs": [str(f) for f in folders], "methods": methods, "duplicate_max_rel_diff": {}}
    merged = {}
    for i, (_, rows) in enumerate(loaded):
        for r in rows:
            r = {**r, "method": name_of[(r["method"], i)]}
            key = (r["method"], r["class_sizes"], r["in_features"], r["repeat"])
            if key in merged:
                a, b = merged[key]["nc1"], r["nc1"]
                diff = abs(a - b) / abs(a) if a else float("inf")
                if math.isfinite(diff):
                    worst = report["duplicate_max_rel_diff"].get(r["method"], 0.0)
                    report["duplicate_max_rel_diff"][r["method"]] = max(worst, diff)
            else:
                merged[key] = r
    return list(merged.values()), report


def _pairs(methods) -> list[tuple[str, str]]:
    """The pairs (a, b) of base methods whose difference a - b is reported: every method - nngp,
    then each row's :attr:`Row.versus` (ak - fcn, ak - posterior)."""
    pairs = [(m, "nngp") for m in methods if m != "nngp" and "nngp" in methods]
    return pairs + [(a, b) for a in methods if a in ROWS for b in ROWS[a].versus if b in methods]


def labelled_pairs(methods: dict) -> list[tuple[str, str]]:
    """The pairs of method names: :func:`_pairs` of their base methods between every two methods
    whose settings agree, then each further setting of a method against its first setting.
    ``methods`` maps a name to ``{"base": ..., "setting": {...}}`` (as ``merge`` reports)."""
    bases = list(dict.fromkeys(m["base"] for m in methods.values()))
    out = [(a, b) for base_a, base_b in _pairs(bases) for a, ma in methods.items() if ma["base"] == base_a
           for b, mb in methods.items() if mb["base"] == base_b and _agree(ma["setting"], mb["setting"])]
    for base in bases:
        names = [name for name, m in methods.items() if m["base"] == base]
        out += [(name, names[0]) for name in names[1:]]
    return out


def paired_differences(rows, methods: dict | None = None) -> list[dict]:
    """Per draw: log10 NC1 (and relative NC1) of method a minus method b, for the pairs of
    :func:`labelled_pairs` (every method - nngp, ak - fcn, ak - posterior, each setting - the first setting of its
    method); only draws where both statuses are ok. Without ``methods`` (``merge``'s report),
    every method of ``rows`` is its own base with one setting."""
    index = {(r["method"], r["class_sizes"], r["in_features"], r["repeat"]): r for r in rows}
    if methods is None:
        methods = {m: {"base": m, "setting": {}} for m in dict.fromkeys(r["method"] for r in rows)}
    out = []
    for a, b in labelled_pairs(methods):
        for (m, sizes, d, rep), ra in index.items():
            rb = index.get((b, sizes, d, rep))
            if m != a or rb is None or ra["status"] != "ok" or rb["status"] != "ok":
                continue
            out.append({"pair": f"{a}-{b}", "N": ra["N"], "class_sizes": sizes, "in_features": d, "repeat": rep,
                        "diff_log10_nc1": ra["log10_nc1"] - rb["log10_nc1"],
                        "diff_log10_rel_nc1": ra["log10_rel_nc1"] - rb["log10_rel_nc1"]})
    return out


def paired_summary(diffs) -> list[dict]:
    """Mean and standard error (std with ddof=1 over sqrt(n); NaN for n=1) per (pair, group, d)."""
    groups: dict[tuple, list[dict]] = {}
    for r in diffs:
        groups.setdefault((r["pair"], r["N"], r["class_sizes"], r["in_features"]), []).append(r)
    out = []
    for (pair, N, sizes, d), group in groups.items():
        row = {"pair": pair, "N": N, "class_sizes": sizes, "in_features": d, "n": len(group)}
        for col in ("diff_log10_nc1", "diff_log10_rel_nc1"):
            x = np.array([r[col] for r in group], dtype=float)
            row[f"mean_{col}"] = x.mean()
            row[f"stderr_{col}"] = x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
        out.append(row)
    return out


def grid_kind(rows) -> str:
    """``imbalanced`` when several class-size tuples share one N, else ``balanced``."""
    sizes = {r["class_sizes"] for r in rows}
    return "imbalanced" if len({r["N"] for r in rows}) == 1 and len(sizes) > 1 else "balanced"


def compare(folders, out_root="out", plot_formats=("png",)) -> Path:
    """Merge ``folders``, write tables, figures (in each of ``plot_formats``) and ``report.html``
    to ``out_root/compare/<hash>/``; returns it."""
    rows, report = merge(folders)
    digest = hashlib.sha256("\n".join(sorted(str(Path(f).resolve()) for f in folders)).encode()).hexdigest()[:10]
    path = make_folder(out_root, "compare", digest)
    make_folder(path, "plots")
    diffs = paired_differences(rows, report["methods"])
    summary = summarise(rows)
    write_table(path / "results.csv", rows)
    write_table(path / "summary.csv", summary, SUMMARY_COLUMNS)
    write_table(path / "paired_differences.csv", diffs, PAIR_COLUMNS)
    write_table(path / "paired_summary.csv", paired_summary(diffs), PAIR_SUMMARY_COLUMNS)
    atomic_write_json(path / "compare.json", {**report, "pairs": labelled_pairs(report["methods"]), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    with figure_formats(plot_formats):
        labels = {name: row.label for name, row in ROWS.items()}  # in the registry's order
        plot_comparison(summary, path / "plots", grid_kind(rows), labels)
    write_report(path)
    update_index(out_root)
    return path


def _formats(text: str) -> list[str]:
    formats = text.split(",")
    if any(f not in PLOT_FORMATS for f in formats):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(PLOT_FORMATS)}, got {text!r}")
    return formats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="compare.py", description="Compare sweeps run on the same grid and seed: FCN vs NNGP vs NTK vs AK "
        "on identical draws, with paired differences.")
    parser.add_argument("folders", nargs="+", metavar="RUN_DIR", help="sweep run folders (out/<name>/<hash>)")
    parser.add_argument("--out", default="out", metavar="DIR", help="output root (default: out/)")
    parser.add_argument("--plot-formats", type=_formats, default=["png"], metavar="FMT[,FMT]",
                        help="figure formats, any of png, pdf, svg (default: png)")
    args = parser.parse_args(argv)
    return finish("compare.py", lambda: compare(args.folders, args.out, args.plot_formats), (CompareError, OutputError))

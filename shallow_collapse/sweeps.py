"""The one sweep engine: a grid of cells, each evaluated by a method, stored as it finishes.

A *cell* is one (class sizes, d) point of the grid with all its repeats; its data are drawn from
(seed, class sizes, d, repeat) alone (:mod:`shallow_collapse.data`), so any method sees the same
draws in any order. A *method* is ``evaluate_cell(cfg, cell, datasets) -> rows`` (see
CONTRIBUTING.md). Each finished cell is written atomically to ``cells/<key>.json``; a rerun skips
cells already there (``use_cache``), so an interrupted sweep resumes and ends with the same table;
cells run in process, in local worker processes or on Dask (:mod:`shallow_collapse.executors`).
``results.csv`` (one row per method, cell and repeat) and ``summary.csv`` (mean and std of log10
NC1 per method, group and d) are rebuilt from the cell files.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import metrics
from .data import Dataset, draw
from .devices import torch_threads
from .executors import cell_executor, completed
from .progress import cell_progress
from .runs import Run, atomic_write_json, atomic_write_text, make_folder

__all__ = ["Cell", "GRID_KEYS", "grid_groups", "grid_cells", "cell_datasets", "compute_cell", "failed_cell", "run_sweep", "log_cell",
           "read_table", "summarise", "RESULT_COLUMNS", "SUMMARY_COLUMNS"]

RESULT_COLUMNS = ["method", "N", "class_sizes", "in_features", "repeat", "seed", "nc1", "log10_nc1",
                  "data_nc1", "log10_rel_nc1", "status"]
SUMMARY_COLUMNS = ["method", "N", "class_sizes", "in_features", "count", "n_ok", "n_failed",
                   "mean_log10_nc1", "std_log10_nc1", "mean_log10_rel_nc1", "std_log10_rel_nc1"]


@dataclass(frozen=True)
class Cell:
    """One grid point: ``class_sizes`` (tuple), ``in_features`` d, and the ``repeats`` it holds."""

    class_sizes: tuple
    in_features: int
    repeats: tuple

    @property
    def N(self) -> int:
        return sum(self.class_sizes)

    @property
    def key(self) -> str:
        """File-name key, e.g. ``n512-512_d8``."""
        return f"n{'-'.join(map(str, self.class_sizes))}_d{self.in_features}"


GRID_KEYS = {"balanced": "N_list", "imbalanced": "class_sizes_list"}  # the key of each grid's groups


def grid_groups(cfg: dict, grid: str) -> list[tuple]:
    """Class-size tuples of a ``balanced`` (from N_list) or ``imbalanced`` (class_sizes_list) sweep."""
    C = cfg["num_classes"]
    if grid == "balanced":
        return [(n // C,) * C for n in cfg["N_list"]]
    if grid == "imbalanced":
        return [tuple(sizes) for sizes in cfg["class_sizes_list"]]
    raise ValueError(f"unknown grid {grid!r}; expected 'balanced' or 'imbalanced'")


def grid_cells(cfg: dict, grid: str) -> list[Cell]:
    """Cells of a ``balanced`` (N_list x d) or ``imbalanced`` (class_sizes_list x d) sweep."""
    repeats = tuple(range(cfg["repeat"]))
    return [Cell(sizes, d, repeats) for sizes in grid_groups(cfg, grid) for d in cfg["in_features_list"]]


def cell_datasets(cfg: dict, cell: Cell) -> list[Dataset]:
    """The draws of ``cell``, one per repeat, from the config's data source (:func:`data.draw`):
    what every method of the cell evaluates. Every draw holds the same labels (class 0 first), so
    the methods batch the repeats of a cell over one label vector."""
    datasets = [draw(cfg, cell.class_sizes, cell.in_features, r) for r in cell.repeats]
    if any(not torch.equal(ds.labels, datasets[0].labels) for ds in datasets):
        raise ValueError(f"the draws of cell {cell.key} do not share their labels")
    return datasets


def _complete_row(row: dict, cfg: dict, cell: Cell, data_nc1: dict) -> dict:
    """Add the grid columns, log10 NC1 and relative NC1; a non-finite NC1 never passes as ok."""
    nc1 = float(row["nc1"])
    status = row.get("status", "ok")
    if status == "ok" and not (math.isfinite(nc1) and nc1 > 0):
        status = "nan"
    base = {"N": cell.N, "class_sizes": "-".join(map(str, cell.class_sizes)),
            "in_features": cell.in_features, "seed": cfg["seed"], "data_nc1": data_nc1[row["repeat"]],
            "nc1": nc1, "log10_nc1": metrics.log10(nc1),
            "log10_rel_nc1": metrics.relative_nc1(nc1, data_nc1[row["repeat"]], cfg["tau"])}
    return {**row, **base, "status": status}


def compute_cell(cell: Cell, cfg: dict, evaluate: Callable, methods: tuple) -> dict:
    """Draw the cell's data and run ``evaluate`` on it; returns ``{cell, seconds, rows}``.

    Runs wherever the executor puts it (this process, a local worker, a Dask worker), on one
    torch thread, so the numbers do not depend on where it ran; it touches no file. An exception
    (in the method or in drawing the data, e.g. out of memory) becomes :func:`failed_cell`.
    """
    with torch_threads(1):
        start = time.perf_counter()
        try:
            datasets = cell_datasets(cfg, cell)
            data_nc1 = {r: float(metrics.nc1_features(ds.X, ds.labels)) for r, ds in zip(cell.repeats, datasets)}
            rows = [_complete_row(row, cfg, cell, data_nc1) for row in evaluate(cfg, cell, datasets)]
        except Exception as exc:  # noqa: BLE001 -- a failing cell must not stop the sweep
            return failed_cell(cell, exc, cfg, methods)
        return {"cell": cell.key, "seconds": time.perf_counter() - start, "rows": rows}


def failed_cell(cell: Cell, exc: BaseException, cfg: dict, methods: tuple) -> dict:
    """The record of a cell that raised (or whose worker failed): one ``error`` row per method and
    repeat, with the first line of the message."""
    message = f"{type(exc).__name__}: {exc}".splitlines()[0]
    nan = {r: float("nan") for r in cell.repeats}
    rows = [_complete_row({"method": m, "repeat": r, "nc1": float("nan"), "status": "error", "message": message},
                          cfg, cell, nan) for m in methods for r in cell.repeats]
    return {"cell": cell.key, "seconds": 0.0, "rows": rows}


def _load_cell(path: Path, cell: Cell) -> dict | None:
    """The stored record of ``cell``, or None when it is missing, a link, or not a record of it
    (any other JSON, a torn or foreign file): such a cell is computed again."""
    try:
        record = None if path.is_symlink() else json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(record, dict) and record.get("cell") == cell.key and isinstance(record.get("rows"), list)
          and record["rows"] and all(isinstance(row, dict) and set(RESULT_COLUMNS) <= set(row) for row in record["rows"]))
    return record if ok else None


def _stored(cells_dir: Path, cell: Cell) -> bool:
    """A cell counts as done when its file is a record of it and none of its rows is an ``error``."""
    record = _load_cell(cells_dir / f"{cell.key}.json", cell)
    return record is not None and all(row["status"] != "error" for row in record["rows"])


def run_sweep(cfg: dict, run: Run, evaluate: Callable, grid: str, methods: tuple,
              plot: Callable | None = None) -> list[dict]:
    """Evaluate every cell of ``grid`` not already stored, then write results, summary and plots.

    ``methods`` names the methods ``evaluate`` reports (for the rows of a cell that raised).
    Cells run through :func:`executors.cell_executor` and are stored as each finishes.
    """
    cells_dir = make_folder(run.path, "cells")
    cells = grid_cells(cfg, grid)
    todo = [c for c in cells if not (cfg["use_cache"] and _stored(cells_dir, c))]
    run.log.info("sweep over %d cells (%d already stored, %d to run)", len(cells), len(cells) - len(todo), len(todo))
    todo.sort(key=lambda c: (c.N, c.in_features), reverse=True)  # largest first: no long tail
    with cell_executor(cfg) as pool, cell_progress(run.job, len(todo)) as advance:
        failed = partial(failed_cell, cfg=cfg, methods=methods)
        for record in completed(pool, compute_cell, todo, cfg, evaluate, methods, on_error=failed):
            write_traces(run.path, record)
            atomic_write_json(cells_dir / f"{record['cell']}.json", record)
            log_cell(run, record)
            advance()
    rows = [row for c in cells for row in _load_cell(cells_dir / f"{c.key}.json", c)["rows"]]
    write_table(run.path / "results.csv", rows)
    summary = summarise(rows)
    write_table(run.path / "summary.csv", summary, SUMMARY_COLUMNS)
    if plot is not None:
        plot(rows, summary, run.plots, grid=grid)
    return rows


def write_traces(folder: Path, record: dict) -> None:
    """Move each row's ``traces`` (name -> draws ``(S, M)``, a sampler's series) out of the cell's
    record into ``traces/<cell>-<method>-r<repeat>.nc``, a netCDF file ArviZ opens."""
    for row in record["rows"]:
        traces = row.pop("traces", None)
        if traces:
            from .posterior.diagnostics import save_traces  # arviz and xarray load only here
            name = f"{record['cell']}-{row['method']}-r{row['repeat']}.nc"
            save_traces(make_folder(folder, "traces") / name, traces,
                        {"cell": record["cell"], "method": row["method"], "repeat": row["repeat"]})


def log_cell(run: Run, record: dict) -> None:
    rows = record["rows"]
    run.log.info("cell %s: %d rows in %.2f s", record["cell"], len(rows), record["seconds"])
    for r in rows:
        if r["status"] == "ok":
            continue
        run.log.warning("cell %s repeat %s method %s: status %s (nc1=%s)%s", record["cell"], r["repeat"],
                        r["method"], r["status"], r["nc1"], f" {r['message']}" if r.get("message") else "")


def write_table(path: Path, rows: list[dict], columns=None) -> None:
    """Write ``rows`` as CSV atomically; ``columns`` first, then any extra keys in first-seen order."""
    columns = list(columns or RESULT_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_table(path: Path) -> list[dict]:
    """Rows of a CSV written by :func:`write_table`, numbers parsed back."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and (population) std of log10 NC1 and relative NC1 over the ok repeats of each
    (method, class sizes, d), with counts of ok and failed repeats."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["N"], row["class_sizes"], row["in_features"]), []).append(row)
    summary = []
    for (method, N, sizes, d), group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        nc1 = np.array([r["log10_nc1"] for r in ok], dtype=float)
        rel = np.array([r["log10_rel_nc1"] for r in ok], dtype=float)
        summary.append({
            "method": method, "N": N, "class_sizes": sizes, "in_features": d, "count": len(group),
            "n_ok": len(ok), "n_failed": len(group) - len(ok),
            "mean_log10_nc1": nc1.mean() if ok else float("nan"), "std_log10_nc1": nc1.std() if ok else float("nan"),
            "mean_log10_rel_nc1": rel.mean() if ok else float("nan"),
            "std_log10_rel_nc1": rel.std() if ok else float("nan"),
        })
    return summary

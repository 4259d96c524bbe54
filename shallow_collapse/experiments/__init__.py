"""One module per method: the glue between the numerics, run folders, sweeps and plots.

Each sweep method's module exports one :class:`Method` record, ``METHOD``; the registry
(:data:`shallow_collapse.methods.METHODS`) lists them, and the jobs, memory checks, comparisons,
plots and the paper read everything about a method from its record.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..data import Dataset, draw

__all__ = ["Row", "Method", "no_check", "data_bytes", "single_run_data", "error_rows"]


def no_check(cfg: dict) -> None:
    """Every value of the keys a method reads is one it can honour."""


@dataclass(frozen=True)
class Row:
    """A kind of result row: ``name`` (its ``method`` column), its figure ``label``, the config
    ``scopes`` its numbers depend on (a comparison labels rows by the keys of these scopes only),
    and ``versus``: rows b whose difference name - b a comparison reports (besides name - nngp)."""

    name: str
    label: str
    scopes: tuple[str, ...]
    versus: tuple[str, ...] = ()


@dataclass(frozen=True)
class Method:
    """A sweep method: the jobs ``<prefix>_bulk_balanced`` and ``<prefix>_bulk_imbalanced``.

    ``evaluate_cell(cfg, cell, datasets) -> rows`` reports the rows named in ``reports``; ``owns``
    are the kinds of row it defines. ``scopes``: the config scopes it reads besides the data and
    the grid (exactly their keys enter its run hash). ``cell_bytes(cfg, N, d, R)``: peak bytes of
    one cell, set by the keys ``memory_keys`` (checked before any work). ``check(cfg)`` raises
    ``ConfigError`` for a value it cannot honour. ``paper``: one of paper.py's sweeps."""

    prefix: str
    description: str
    owns: tuple[Row, ...]
    reports: tuple[str, ...]
    evaluate_cell: Callable
    scopes: tuple[str, ...]
    cell_bytes: Callable
    memory_keys: tuple[str, ...]
    check: Callable = no_check
    paper: bool = False


def data_bytes(N: int, d: int, R: int) -> int:
    """Bytes of R draws of N points in d dimensions: the points, their noise and means (float64)."""
    return 3 * R * N * d * 8


def single_run_data(cfg: dict) -> Dataset:
    """The draw of a single run: ``class_sizes``, ``in_features`` and repeat 0 of the config's data
    (the same draw as repeat 0 of the sweep cell with these sizes and d)."""
    return draw(cfg, cfg["class_sizes"], cfg["in_features"], repeat=0)


def error_rows(methods, repeats, exc: BaseException, **columns) -> list[dict]:
    """Rows of status ``error`` (NaN NC1) for each of ``methods`` and ``repeats`` of a cell whose
    computation raised ``exc``: the message is its type and text on one line, at most 300
    characters. ``columns``: further columns, a value or a list with one value per repeat."""
    message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    rows = []
    for method in methods:
        for i, repeat in enumerate(repeats):
            extra = {k: v[i] if isinstance(v, list) else v for k, v in columns.items()}
            rows.append({"method": method, "repeat": repeat, "nc1": math.nan, "status": "error",
                         "message": message, **extra})
    return rows

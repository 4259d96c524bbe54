"""One module per method: the glue between the numerics, run folders, sweeps and plots."""
from __future__ import annotations

import math

from ..data import Dataset, draw

__all__ = ["single_run_data", "error_rows"]


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

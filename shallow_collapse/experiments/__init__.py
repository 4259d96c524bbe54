"""One module per method: the glue between the numerics, run folders, sweeps and plots."""
from __future__ import annotations

from ..data import Dataset, draw

__all__ = ["single_run_data"]


def single_run_data(cfg: dict) -> Dataset:
    """The draw of a single run: ``class_sizes``, ``in_features`` and repeat 0 of the config's data
    (the same draw as repeat 0 of the sweep cell with these sizes and d)."""
    return draw(cfg, cfg["class_sizes"], cfg["in_features"], repeat=0)

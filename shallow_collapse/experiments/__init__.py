"""One module per method: the glue between the numerics, run folders, sweeps and plots."""
from __future__ import annotations

from ..data import Dataset, gaussian_data

__all__ = ["single_run_data"]


def single_run_data(cfg: dict) -> Dataset:
    """The draw of a single run: ``class_sizes``, ``in_features`` and repeat 0 of the config's data
    (the same draw as repeat 0 of the sweep cell with these sizes and d)."""
    return gaussian_data(cfg["class_sizes"], cfg["in_features"], cfg["class_means"], cfg["class_stds"],
                         cfg["seed"], repeat=0)

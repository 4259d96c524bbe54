"""The registry of sweep methods: one :class:`~shallow_collapse.experiments.Method` record per
experiment module, in the order the studies run them (the cheapest first). The jobs, memory
checks, comparisons, figures and the paper iterate this list; a new method is its module and
one entry here (CONTRIBUTING.md)."""
from __future__ import annotations

from .experiments import Method, Row, adaptive_kernel, fcn, limiting_kernels, mean_field, posterior

__all__ = ["METHODS", "ROWS", "label"]

METHODS: tuple[Method, ...] = (limiting_kernels.METHOD, fcn.METHOD, adaptive_kernel.METHOD, mean_field.METHOD,
                               posterior.METHOD)
ROWS: dict[str, Row] = {row.name: row for m in METHODS for row in m.owns}  # every kind of row, by name


def label(row: str) -> str:
    """The figure label of a row name (the name itself for a row no method owns)."""
    return ROWS[row].label if row in ROWS else row

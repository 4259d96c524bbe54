"""NNGP and NTK NC1 of sweep cells (MATH.md section 5)."""
from __future__ import annotations

import torch

from ..kernels import limiting_kernels_nc1
from ..params import NetworkParams

__all__ = ["evaluate_cell"]


def evaluate_cell(cfg: dict, cell, datasets) -> list[dict]:
    """Rows ``nngp`` (last hidden layer's post-activation kernel) and ``ntk`` (output tangent
    kernel) for every repeat of ``cell``; all repeats are evaluated as one batch in float64."""
    X = torch.stack([ds.X for ds in datasets])  # (R, N, d)
    nc1 = limiting_kernels_nc1(X, datasets[0].labels, NetworkParams.from_config(cfg))
    rows = []
    for method, name in (("nngp", f"post{cfg['L'] - 1}"), ("ntk", "ntk")):
        rows += [{"method": method, "repeat": r, "nc1": float(v), "status": "ok"}
                 for r, v in zip(cell.repeats, nc1[name])]
    return rows


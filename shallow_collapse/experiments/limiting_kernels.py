"""NNGP and NTK NC1 of sweep cells (MATH.md section 5)."""
from __future__ import annotations

import torch

from ..kernels import limiting_kernels_nc1
from ..params import NetworkParams
from . import Method, Row, data_bytes

__all__ = ["evaluate_cell", "cell_bytes", "METHOD", "GRID_OF"]

GRID_OF = "over a grid of dataset sizes and input dimensions"
# The NNGP and NTK of whichever prior a sweep sets: the network's initialisation, or the EoS prior.
PRIOR_SCOPES = ("network", "init", "ak")


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



def cell_bytes(cfg: dict, N: int, d: int, R: int) -> int:
    """The draws, their copy and the row blocks of :func:`~shallow_collapse.kernels.limiting_kernels_nc1`."""
    block = max(8 * N, 2**17)  # elements of one row block
    return data_bytes(N, d, R) + R * N * d * 8 + block * 8 * (2 * cfg["L"] + 4)


METHOD = Method(
    prefix="limiting_kernels", description=f"NC1 of the infinite-width NNGP and NTK {GRID_OF}",
    owns=(Row("nngp", "NNGP", PRIOR_SCOPES), Row("ntk", "NTK", PRIOR_SCOPES)), reports=("nngp", "ntk"),
    evaluate_cell=evaluate_cell, scopes=("network", "init"), cell_bytes=cell_bytes, memory_keys=("L",), paper=True)

"""Device selection shared by training, the EoS solver and run folders."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits

__all__ = ["resolve_device", "torch_threads"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cpu``/``cuda`` as given (cuda must exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


@contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` threads in torch and in the BLAS/OpenMP pools numpy and scipy
    load (through threadpoolctl), then restore the previous settings.

    A fixed thread count also fixes the order of floating-point reductions, so a sweep cell gives
    bit-identical numbers in this process, in a worker process or on a Dask worker.

    Loops of many small tensor operations run fastest on one thread: on a loaded machine each
    OpenMP parallel region can wait a scheduler tick for a descheduled thread (measured here:
    13 s instead of 0.2 s for one N=2048 cell's kernel NC1 with two threads beside other work).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        torch.set_num_threads(previous)

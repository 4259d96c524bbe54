"""Wall time of the full paper grids of both limiting-kernel sweeps, plots included.

    python bench/bench_limiting_kernels.py

Runs the two entry scripts on their shipped configs (4 N or 4 class-size tuples x 5 d x 10
repeats x {NNGP, NTK}) in a temporary output root, as a user would, and prints their wall times
(target: together under 30 s on a 2-core machine). It then times one N=2048 cell's kernel NC1 by
the blocked fast path and by forming the full N x N kernels, on the same data, and prints the ratio.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shallow_collapse.data import class_labels, gaussian_data  # noqa: E402
from shallow_collapse.kernels import limiting_kernels, limiting_kernels_nc1  # noqa: E402
from shallow_collapse.metrics import nc1_kernel  # noqa: E402


def time_scripts() -> float:
    total = 0.0
    with tempfile.TemporaryDirectory() as out:
        for grid in ("balanced", "imbalanced"):
            script = f"limiting_kernels_bulk_{grid}"
            start = time.perf_counter()
            subprocess.run([sys.executable, f"{script}.py", f"configs/{script}.yml", "--out", out],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            total += seconds
            print(f"{script:36s} {seconds:6.1f} s  (200 kernel pairs, plots included)")
    print(f"{'both sweeps':36s} {total:6.1f} s  (target < 30 s)")
    return total


def time_fast_path(repeats=10, d=128, sizes=(1024, 1024)) -> None:
    X = torch.stack([gaussian_data(sizes, d, [-2, 2], [0.5, 0.5], 0, r).X for r in range(repeats)])
    labels = class_labels(sizes)
    start = time.perf_counter()
    fast = limiting_kernels_nc1(X, labels)  # the paper's network (NetworkParams())
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    full = limiting_kernels(X)
    nngp, ntk = nc1_kernel(full.nngp, labels), nc1_kernel(full.ntk, labels)
    t_full = time.perf_counter() - start
    err = max(((fast["post1"] - nngp) / nngp).abs().max().item(), ((fast["ntk"] - ntk) / ntk).abs().max().item())
    print(f"one cell N={sum(sizes)} d={d} x {repeats} repeats: blocked {t_fast:.2f} s, full matrices "
          f"{t_full:.2f} s, ratio {t_full / t_fast:.1f}x, max relative NC1 difference {err:.1e}")


if __name__ == "__main__":
    time_scripts()
    time_fast_path()

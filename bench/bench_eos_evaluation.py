"""Cost of one EoS evaluation against the floor of its linear algebra, in one process, one thread.

    python bench/bench_eos_evaluation.py               # N in (1024, 2048), erf and ReLU, d = 8
    python bench/bench_eos_evaluation.py --N 512 --d 1

The floors are the bare Cholesky factorisation + inverse of the same M = Q + sig2 I (the O(N^3)
part an evaluation cannot avoid): torch's (``cholesky_ex`` + ``cholesky_inverse``) and scipy's
LAPACK (``dpotrf`` + ``dpotri`` on the same memory, no copy). The evaluation is
``EoSEvaluator.state`` at the NNGP point (what the solver calls). Printed: the best of ``--reps``
wall-clock seconds of each, and the evaluation's ratio to the faster floor. The compiled loops
are warmed up (compiled) before timing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.linalg import lapack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shallow_collapse import data  # noqa: E402
from shallow_collapse.devices import torch_threads  # noqa: E402
from shallow_collapse.eos import EoSEvaluator  # noqa: E402
from shallow_collapse.params import EoSParams  # noqa: E402


def best_of(reps, setup, run):
    times = []
    for _ in range(reps):
        arg = setup()
        t0 = time.perf_counter()
        run(arg)
        times.append(time.perf_counter() - t0)
    return min(times)


def torch_floor(M):
    L, info = torch.linalg.cholesky_ex(M)
    assert int(info) == 0
    torch.cholesky_inverse(L, out=M)


def lapack_floor(M):
    c, info = lapack.dpotrf(M.numpy().T, lower=1, clean=0, overwrite_a=1)
    assert info == 0 and np.shares_memory(c, M.numpy())
    inv, info = lapack.dpotri(c, lower=1, overwrite_c=1)
    assert info == 0 and np.shares_memory(inv, M.numpy())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"{'act':5s} {'N':>5s} {'torch floor':>12s} {'LAPACK floor':>13s} {'evaluation':>11s} "
          f"{'eval/faster floor':>18s}")
    with torch_threads(1):
        for N in args.N:
            ds = data.gaussian_data((N // 2, N // 2), args.d, (-2.0, 2.0), (0.5, 0.5), 0, 0)
            for activation in ("erf", "relu"):
                ev = EoSEvaluator(ds.X, ds.y, EoSParams(), activation=activation)
                Sigma = ev.nngp_sigma()
                Q = ev.state(Sigma).Q  # also compiles the loops
                M0 = Q.clone()
                M0.diagonal().add_(ev.sig2)
                t_torch = best_of(args.reps, M0.clone, torch_floor)
                t_lapack = best_of(args.reps, M0.clone, lapack_floor)
                t_eval = best_of(args.reps, lambda: Sigma, ev.state)
                print(f"{activation:5s} {N:5d} {t_torch:12.4f} {t_lapack:13.4f} {t_eval:11.4f} "
                      f"{t_eval / min(t_torch, t_lapack):18.2f}", flush=True)


if __name__ == "__main__":
    main()

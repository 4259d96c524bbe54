"""Speed of the EoS solvers on the paper's data: the default (minimize: least action) against
the ``anderson`` strategy and against a plain reference, on the same draw.

    python bench/bench_eos.py            # (N, d) in (256, 1), (1024, 1), (512, 8), (1024, 32), (2048, 128)
    python bench/bench_eos.py --quick    # (256, 1), (256, 8), (512, 32)

The reference is written here, independently of ``shallow_collapse.eos``: dense
``torch.linalg.inv`` of M, the gradient of Tr(A Q(Sigma)) by autograd, ``scipy.optimize.newton_krylov``
on the d x d residual scaled by d/sigw2 (so its tolerance is relative to Sigma_0), float64, over the
continuation schedule of the shipped configs. ``anderson`` follows the same schedule; the default
minimises the action directly at chi = h. All stop at rel_residual <= rtol.
Printed per size: seconds and O(N^3) evaluations of each solver (the default's include its
certification), its status, the agreement of the solutions (max|dSigma| / max|Sigma|, |dNC1|),
and the ratios anderson / default and reference / default in seconds, measured in this run.
Timings are wall-clock seconds of one run each with ``--threads`` BLAS threads.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import NoConvergence, newton_krylov

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shallow_collapse import data, metrics  # noqa: E402
from shallow_collapse.eos import solve_eos  # noqa: E402
from shallow_collapse.params import EoSParams, SolverOptions  # noqa: E402

PARAMS = dict(sigw2=1.0, siga2=1.0 / 128, sig2=1e-6, h=500.0)
FACTORS = [1e5, 1e4, 2e3, 1e3]  # configs/adaptive_kernels*.yml (h = 500 appended)


def reference_solve(X, y, *, sigw2, siga2, sig2, h, factors, rtol, maxiter, inner_maxiter):
    """Plain continuation: dense inverse, autograd gradient, scipy newton_krylov per factor."""
    N, d = X.shape
    eye_n = torch.eye(N, dtype=torch.float64)
    eye_d = torch.eye(d, dtype=torch.float64)
    count = [0]

    def q_of(S):
        K = X @ S @ X.T
        D = 1.0 + 2.0 * torch.diagonal(K)
        return siga2 * (2.0 / math.pi) * torch.asin(2.0 * K / torch.sqrt(D[:, None] * D[None, :]))

    def residual(x, chi):
        count[0] += 1
        S = torch.as_tensor(x, dtype=torch.float64)
        S = 0.5 * (S + S.T)
        with torch.no_grad():
            M_inv = torch.linalg.inv(q_of(S) + sig2 * eye_n)
            alpha = M_inv @ y
            A = M_inv - torch.outer(alpha, alpha)
        S_var = S.clone().requires_grad_(True)
        (A * q_of(S_var)).sum().backward()
        T = 0.5 * (S_var.grad + S_var.grad.T)
        S_new = torch.linalg.inv((d / sigw2) * eye_d + T / chi)
        return ((torch.as_tensor(x) - S_new) * (d / sigw2)).numpy()

    x = (sigw2 / d) * np.eye(d)
    failures = []
    for chi in [*factors, h]:
        try:
            x = newton_krylov(lambda v: residual(v, chi), x, f_tol=rtol, maxiter=maxiter,
                              inner_maxiter=inner_maxiter)
        except NoConvergence as err:
            x = np.asarray(err.args[0])
            failures.append(chi)
    S = torch.as_tensor(0.5 * (x + x.T))
    final = float(np.abs(residual(S.numpy(), h)).max()) * (sigw2 / d) / float(S.abs().max())
    count[0] -= 1  # the check above is not part of the solve
    return S, q_of(S).detach(), count[0], failures, final


def _rel_gap(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (256, 1), (256, 8), (512, 32)")
    parser.add_argument("--rtol", type=float, default=1e-8, help="relative residual tolerance (configs: 1e-8)")
    parser.add_argument("--maxiter", type=int, default=100, help="iterations per step (reference, anderson)")
    parser.add_argument("--inner-maxiter", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine, 2 threads beside other "
                             "work oversubscribe the cores and OpenMP waits slow everything down many times)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [(256, 1), (256, 8), (512, 32)] if args.quick else [(256, 1), (1024, 1), (512, 8), (1024, 32), (2048, 128)]
    print(f"EoS benchmark: erf, sigw2=1, siga2=1/128, sig2=1e-6, h=500, schedule {FACTORS}+[h] (reference, "
          f"anderson), rtol={args.rtol:g}, {args.threads} thread(s)", flush=True)
    print(f"{'N':>5} {'d':>4} | {'ref s':>7} {'ev':>4} | {'anderson s':>10} {'ev':>4} {'status':>13} | "
          f"{'default s':>9} {'ev':>4} {'status':>6} {'NC1':>8} | {'dSig ref':>8} {'dSig and':>8} "
          f"{'dNC1 and':>8} | {'and/def':>7} {'ref/def':>7}", flush=True)
    for N, d in sizes:
        ds = data.gaussian_data((N // 2, N // 2), d, (-2.0, 2.0), (0.5, 0.5), args.seed, 0)
        params, options = EoSParams(**PARAMS), SolverOptions(rtol=args.rtol, inner_maxiter=args.inner_maxiter)
        common = dict(device="cpu", threads=args.threads)
        t0 = time.perf_counter()
        default = solve_eos(ds.X, ds.y, params, options, **common)
        t_default = time.perf_counter() - t0
        t0 = time.perf_counter()
        anderson = solve_eos(ds.X, ds.y, replace(params, annealing_factors=FACTORS),
                             replace(options, strategy="anderson", maxiter=args.maxiter), **common)
        t_anderson = time.perf_counter() - t0
        t0 = time.perf_counter()
        S_ref, Q_ref, ev_ref, failures, res_ref = reference_solve(
            ds.X, ds.y, **PARAMS, factors=FACTORS, rtol=args.rtol, maxiter=args.maxiter,
            inner_maxiter=args.inner_maxiter)
        t_ref = time.perf_counter() - t0
        nc1 = float(metrics.nc1_kernel(default.Q, ds.labels))
        nc1_and = float(metrics.nc1_kernel(anderson.Q, ds.labels))
        print(f"{N:>5} {d:>4} | {t_ref:>7.2f} {ev_ref:>4d} | {t_anderson:>10.2f} {anderson.evaluations:>4d} "
              f"{anderson.status:>13} | {t_default:>9.2f} {default.evaluations:>4d} {default.status:>6} {nc1:>8.5f} | "
              f"{_rel_gap(S_ref, default.Sigma):>8.1e} {_rel_gap(anderson.Sigma, default.Sigma):>8.1e} "
              f"{abs(nc1_and - nc1):>8.1e} | {t_anderson / t_default:>7.1f} {t_ref / t_default:>7.1f}", flush=True)
        notes = []
        if failures:
            notes.append(f"reference: steps not converged at chi={failures}; final rel_residual {res_ref:.2e}")
        elif not res_ref <= args.rtol:
            notes.append(f"reference: every step met its tolerance (relative to Sigma_0), but at its answer "
                         f"rel_residual = {res_ref:.2e} (relative to Sigma), max|Sigma_ref| = {float(S_ref.abs().max()):.2e}")
        for name, r in (("default", default), ("anderson", anderson)):
            if r.status != "ok" or r.message:
                notes.append(f"{name}: {r.status}, rel_residual {r.rel_residual:.2e}, action {r.action:.10g} "
                             f"{r.message}")
        if not math.isclose(anderson.action, default.action, rel_tol=1e-9):
            notes.append(f"actions differ: anderson {anderson.action:.12g}, default {default.action:.12g}")
        for note in notes:
            print(f"      note: {note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

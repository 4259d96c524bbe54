"""The mean-field adaptive kernel beside the NNGP and the AK (EoS) on the project's draws.

For erf and ReLU at N = 128 and d in {1, 2, 8} (seed 0, repeat 0; h = 500, sigw2 = 1,
siga2 = 1/128, sig2 = 1e-6): log10 NC1 of the NNGP, the AK and the mean-field kernel (with its
Monte Carlo SE where walkers are used), seconds per solve, the single-neuron density's kurtosis
along its leading direction, Tr E[w w^T] against the AK's Tr Sigma, the status, and the issue's
prototype value of the same cell (issue 29). At d = 1 the ReLU family is also compared with the
exact posterior of the network (shallow_collapse/posterior/exact.py).

    python bench/bench_mean_field.py [--walkers 8000] [--replicates 4] [--d 1 2 8] [--act erf relu]
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from shallow_collapse import data, metrics
from shallow_collapse.eos import solve_eos
from shallow_collapse.mean_field import MeanFieldParams, solve_mean_field
from shallow_collapse.params import EoSParams
from shallow_collapse.posterior.exact import relu_d1_posterior

PAPER = dict(sigw2=1.0, siga2=1.0 / 128, sig2=1e-6, h=500)
PROTOTYPE = {("erf", 1): -2.183, ("erf", 2): -1.439, ("erf", 8): -1.276, ("relu", 1): -0.901,
             ("relu", 8): -0.66}  # issue 29's table (ReLU d = 8: "about -0.66, still drifting")


def log10_nc1(Q, labels) -> float:
    return math.log10(float(metrics.nc1_kernel(Q, labels)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, default=128)
    ap.add_argument("--d", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--act", nargs="+", default=["erf", "relu"])
    ap.add_argument("--walkers", type=int, default=8000)
    ap.add_argument("--replicates", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--averaging", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = MeanFieldParams(walkers=args.walkers, replicates=args.replicates, iterations=args.iterations,
                             averaging=args.averaging)
    head = ("act", "d", "NNGP", "AK", "mean-field", "SE", "prototype", "AK s", "MF s", "kurtosis",
            "TrE[ww]", "AK TrS", "status")
    print(" | ".join(head))
    for act in args.act:
        for d in args.d:
            ds = data.gaussian_data((args.N // 2, args.N // 2), d, [-2.0, 2.0], [0.5, 0.5], 0, 0)
            t = time.perf_counter()
            ak = solve_eos(ds.X, ds.y, EoSParams(**PAPER), activation=act, device="cpu")
            t_ak = time.perf_counter() - t
            res = solve_mean_field(ds.X, ds.y, activation=act, **PAPER, params=params, start=ak, labels=ds.labels)
            row = (act, d, f"{log10_nc1(ak.Q0, ds.labels):+.4f}", f"{log10_nc1(ak.Q, ds.labels):+.4f} ({ak.status})",
                   f"{res.log10_nc1:+.4f}", f"{res.se_log10_nc1:.4f}", PROTOTYPE.get((act, d), ""),
                   f"{t_ak:.2f}", f"{res.seconds:.2f}", f"{res.kurtosis:.4f}",
                   "" if res.sigma is None else f"{float(torch.trace(res.sigma)):.4f}",
                   f"{float(torch.trace(ak.Sigma)):.4f}", res.status)
            print(" | ".join(str(v) for v in row), flush=True)
            if res.status not in ("ok",):
                print(f"    {res.message} (kappa_min {res.kappa_min:.4g})")
            if act == "relu" and d == 1:
                ex = relu_d1_posterior(ds.X[:, 0], ds.y, slope=0.0, **PAPER)
                e = log10_nc1(torch.as_tensor(ex.kernel), ds.labels)
                print(f"    exact posterior: log10 NC1 {e:+.6f} (mean-field {res.log10_nc1 - e:+.2e}, "
                      f"AK {log10_nc1(ak.Q, ds.labels) - e:+.2e}); E|w|^2 {ex.sigma_trace:.6f} "
                      f"(mean-field {float(torch.trace(res.sigma)) / ex.sigma_trace - 1:+.2e} relative)")


if __name__ == "__main__":
    main()

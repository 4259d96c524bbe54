"""Cost of sampling the collapsed posterior by Gibbs over neurons, against the sweep's floor.

``python bench/bench_posterior.py [--quick]``

On the project's draw (seed 0, repeat 0) of the paper's Gaussians at h = 500, sigw2 = 1,
siga2 = 1/128, sig2 = 1e-6, 4 chains from the prior, one torch thread (as a sweep cell runs):
erf at N = 128, 256, 1024 (d = 8) and ReLU at N = 128 (d = 8, 32). Printed per cell: candidates per
neuron update, seconds per sweep, the slowest series' bulk and tail ESS over the 4 chains, seconds
per effective sample, log10 NC1 with its Monte Carlo SE, and the sweep's time against its floor.

The floor is the time of the sweep's unavoidable BLAS work, timed here on the same arrays: per
neuron, (1 + candidates) products u^T C_W^{-1} and one rank-two update of C_W^{-1}, O(N^2) each,
for every chain group (:func:`shallow_collapse.posterior.chains.chain_groups`). The ratio says how
much the Python-level loop and the small vector operations add on top. Every number is measured in
this run; the machine is shared, so read ratios.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shallow_collapse.data import gaussian_data  # noqa: E402
from shallow_collapse.experiments.posterior import chain_seeds  # noqa: E402
from shallow_collapse.params import EoSParams, PosteriorParams  # noqa: E402
from shallow_collapse.posterior import sample_posterior  # noqa: E402
from shallow_collapse.posterior.chains import chain_groups  # noqa: E402

H, SIGA2, SIG2, CHAINS = 500, 1 / 128, 1e-6, 4


def floor_seconds(N: int, evaluations: float, repeats: int = 20) -> float:
    """Seconds of one sweep's O(h N^2) BLAS work for CHAINS chains (see the module docstring)."""
    total = 0.0
    for group in chain_groups(CHAINS, N, H):
        B = group.stop - group.start
        M = torch.randn(B, N, N, dtype=torch.float64)
        u = torch.randn(B, N, dtype=torch.float64)
        left, right = torch.randn(B, N, 2, dtype=torch.float64), torch.randn(B, 2, N, dtype=torch.float64)
        (u.unsqueeze(-2) @ M, M.baddbmm_(left, right, alpha=0.0))  # warm
        start = time.perf_counter()
        for _ in range(repeats):
            u.unsqueeze(-2) @ M
        product = (time.perf_counter() - start) / repeats
        start = time.perf_counter()
        for _ in range(repeats):
            M.baddbmm_(left, right, alpha=1e-300)
        update = (time.perf_counter() - start) / repeats
        total += H * ((1 + evaluations) * product + update)
    return total


def run(act: str, N: int, d: int, burn_in: int, samples: int):
    ds = gaussian_data((N // 2, N // 2), d, [-2.0, 2.0], [0.5, 0.5], 0, 0)
    phi = {"erf": torch.erf, "relu": torch.relu}[act]
    params = PosteriorParams(burn_in=burn_in, samples=samples, chains=CHAINS)
    (r,) = sample_posterior(ds.X[None], ds.y[None, :, None], ds.labels, phi,
                            EoSParams(sigw2=1.0, siga2=SIGA2, sig2=SIG2, h=H), params,
                            seeds=chain_seeds(0, (N // 2, N // 2), d, 0, CHAINS),
                            homogeneous=act == "relu")
    return r


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter chains (a smoke run, noisier numbers)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scale = 0.25 if args.quick else 1.0
    cells = [("erf", 128, 8, 200), ("erf", 256, 8, 200), ("erf", 1024, 8, 40), ("relu", 128, 8, 200),
             ("relu", 128, 32, 200)]
    print(f"Gibbs over neurons, h={H}, sig2={SIG2:g}, {CHAINS} chains from the prior, one thread")
    print(f"{'act':>4} {'N':>5} {'d':>3} {'sweeps':>7} {'cand':>5} {'s/sweep':>8} {'ESS b/t':>11} {'s/ESS':>7} "
          f"{'rhat':>6} {'log10 NC1':>17} {'floor s':>8} {'x floor':>7} {'status':>13}")
    for act, N, d, samples in cells:
        samples = max(8, int(samples * scale))
        burn = max(2, samples // 5)
        r = run(act, N, d, burn, samples)
        per_sweep = r.seconds / r.sweeps
        ess = min(r.ess_bulk, r.ess_tail)
        floor = floor_seconds(N, r.evaluations)
        print(f"{act:>4} {N:>5} {d:>3} {burn:>3}+{samples:<3} {r.evaluations:>5.2f} {per_sweep:>8.3f} "
              f"{r.ess_bulk:>5.0f}/{r.ess_tail:<5.0f} {r.seconds / ess if ess > 0 else math.inf:>7.3f} "
              f"{r.rhat:>6.3f} {r.log10_nc1:>9.4f} ± {r.se_log10_nc1:.4f} {floor:>8.3f} {per_sweep / floor:>7.2f} "
              f"{r.status:>13}")


if __name__ == "__main__":
    main()

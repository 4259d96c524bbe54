"""Cost of sampling the collapsed posterior by Gibbs over neurons, against the sweep's floor.

``python bench/bench_posterior.py [--quick]``

On the project's draw (seed 0, repeat 0) of the paper's Gaussians at h = 500, sigw2 = 1,
siga2 = 1/128, sig2 = 1e-6, 4 chains from the prior, one torch thread (as a sweep cell runs):
erf at N = 128, 256, 1024 (d = 8) and ReLU at N = 128 (d = 8, 32). Printed per cell: candidates per
neuron update, seconds per sweep (the compiled loop, and once the batched torch loop), the slowest series' bulk and tail ESS over the 4 chains, seconds
per effective sample, log10 NC1 with its Monte Carlo SE, and the sweep's time against its floor.

The floor is the time of the sweep's unavoidable work, timed here on arrays of the same size: per
neuron, (1 + candidates) products u^T C_W^{-1} (BLAS gemv) and one rank-two update of C_W^{-1},
O(N^2) each, for each chain. The ratio says how much the rest (features, the slice bookkeeping,
the refactorisation, the recorder, the Python-level loop of the torch path) adds on top. Every number is measured in
this run; the machine is shared, so read ratios.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shallow_collapse.activations import get  # noqa: E402
from shallow_collapse.data import gaussian_data  # noqa: E402
from shallow_collapse.experiments.posterior import chain_seeds  # noqa: E402
from shallow_collapse.params import EoSParams, PosteriorParams  # noqa: E402
from shallow_collapse.posterior import sample_posterior  # noqa: E402

H, SIGA2, SIG2, CHAINS = 500, 1 / 128, 1e-6, 4


@numba.njit(cache=True)
def _floor_chain(M, u, p, r, h, products):
    """One chain's sweep of bare BLAS work: per neuron ``products`` gemv u^T M and a rank-two update."""
    N = M.shape[0]
    s = 0.0
    for _ in range(h):
        for _ in range(products):
            s += np.dot(M, u)[0]
        for a in range(N):
            pa, ra = 1e-300 * p[a], 1e-300 * r[a]
            for b in range(N):
                M[a, b] += pa * p[b] - ra * r[b]
    return s


def floor_seconds(N: int, evaluations: float) -> float:
    """Seconds of one sweep's O(h N^2) work for CHAINS chains: per neuron (1 + candidates) products
    with C_W^{-1} and one rank-two update, timed as the compiled loop does them (BLAS gemv and a
    scalar loop), on arrays of the same size, without anything else."""
    rng = np.random.default_rng(0)
    M, u, p, r = rng.standard_normal((N, N)), rng.standard_normal(N), rng.standard_normal(N), rng.standard_normal(N)
    products = max(1, round(1 + evaluations))
    _floor_chain(M, u, p, r, 1, products)  # compile
    start = time.perf_counter()
    _floor_chain(M, u, p, r, H, products)
    return CHAINS * (time.perf_counter() - start)


def run(act: str, N: int, d: int, burn_in: int, samples: int, compiled: bool = True):
    ds = gaussian_data((N // 2, N // 2), d, [-2.0, 2.0], [0.5, 0.5], 0, 0)
    phi = get(act) if compiled else get(act).phi  # a bare callable takes the batched torch loop
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
    cells = [("erf", 128, 8, 200, False), ("erf", 128, 8, 200, True), ("erf", 256, 8, 200, True),
             ("erf", 1024, 8, 40, True), ("relu", 128, 8, 200, True), ("relu", 128, 32, 200, True)]
    print(f"Gibbs over neurons, h={H}, sig2={SIG2:g}, {CHAINS} chains from the prior, one thread")
    print(f"{'loop':>8} {'act':>4} {'N':>5} {'d':>3} {'sweeps':>7} {'cand':>5} {'s/sweep':>8} {'ESS b/t':>11} {'s/ESS':>7} "
          f"{'rhat':>6} {'log10 NC1':>17} {'floor s':>8} {'x floor':>7} {'status':>13}")
    for act, N, d, samples, compiled in cells:
        samples = max(8, int(samples * scale))
        burn = max(2, samples // 5)
        r = run(act, N, d, burn, samples, compiled)
        per_sweep = r.seconds / r.sweeps
        ess = min(r.ess_bulk, r.ess_tail)
        floor = floor_seconds(N, r.evaluations)
        print(f"{'compiled' if compiled else 'torch':>8} {act:>4} {N:>5} {d:>3} {burn:>3}+{samples:<3} {r.evaluations:>5.2f} {per_sweep:>8.3f} "
              f"{r.ess_bulk:>5.0f}/{r.ess_tail:<5.0f} {r.seconds / ess if ess > 0 else math.inf:>7.3f} "
              f"{r.rhat:>6.3f} {r.log10_nc1:>9.4f} ± {r.se_log10_nc1:.4f} {floor:>8.3f} {per_sweep / floor:>7.2f} "
              f"{r.status:>13}")


if __name__ == "__main__":
    main()

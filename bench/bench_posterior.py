"""Cost of sampling the collapsed posterior, and agreement with the earlier (retired) sampler.

``python bench/bench_posterior.py [--quick]``

1. Cost against the noise: erf, N = 128 (64 + 64), d = 8, h = 500, sigw2 = 1, siga2 = 1/128, 4 chains,
   sig2 in {1e-2, 1e-4, 1e-6}, both proposals (pcnl, mala): the adapted step, the acceptance, the
   smallest effective sample size over the recorded series, steps per effective sample and seconds.
   The question: does the cost per effective sample stay flat as sig2 falls 10^4-fold (it grew as
   1/sig2 for the joint sampler)?
2. Agreement at sig2 = 1e-2 with the retired joint Langevin sampler (three step sizes extrapolated to
   0), whose values for the project's draw (seed 0, repeat 0) docs/POSTERIOR.md recorded on 2026-12-01:
   N = 128, d in {1, 8}, h in {32, 128, 512}. Printed: both values, their difference and the
   difference in combined standard errors.
Every number is measured in this run; ratios between rows are what to read (the machine is shared).
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
from shallow_collapse.params import PosteriorParams  # noqa: E402
from shallow_collapse.posterior import sample_posterior  # noqa: E402

# The retired sampler's posterior log10 NC1 (value, standard error) per (d, h), docs/POSTERIOR.md 2026-12-01.
RETIRED = {(1, 32): (-2.523, 0.005), (1, 128): (-2.223, 0.004), (1, 512): (-2.080, 0.003),
           (8, 32): (-1.789, 0.018), (8, 128): (-1.333, 0.004), (8, 512): (-1.125, 0.002)}


def run(N, d, h, sig2, proposal, burn_in, samples, chains=4):
    ds = gaussian_data((N // 2, N // 2), d, [-2.0, 2.0], [0.5, 0.5], 0, 0)
    params = PosteriorParams(proposal=proposal, burn_in=burn_in, samples=samples, thin=1, chains=chains)
    start = time.perf_counter()
    (r,) = sample_posterior(ds.X[None], ds.y[None, :, None], ds.labels, torch.erf, sigw2=1.0, siga2=1 / 128,
                            sig2=sig2, h=h, params=params, seeds=chain_seeds(0, (N // 2, N // 2), d, 0, chains))
    return r, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter chains (a smoke run, noisier numbers)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    burn, samples = (300, 600) if args.quick else (1000, 2000)
    print(f"1. cost against sig2: erf N=128 d=8 h=500, 4 chains, {burn} burn-in + {samples} samples per chain")
    print(f"{'sig2':>7} {'proposal':>8} {'step':>6} {'accept':>6} {'ESS':>6} {'steps/ESS':>9} {'s/ESS':>6} "
          f"{'log10 NC1':>16} {'status':>13}")
    for sig2 in (1e-2, 1e-4, 1e-6):
        for proposal in ("pcnl", "mala"):
            r, sec = run(128, 8, 500, sig2, proposal, burn, samples)
            per = 4 * (burn + samples) / r.ess
            print(f"{sig2:>7.0e} {proposal:>8} {r.eps:>6.3f} {r.acceptance:>6.2f} {r.ess:>6.0f} {per:>9.1f} "
                  f"{sec / r.ess:>6.3f} {r.log10_nc1:>9.4f} ± {r.se_log10_nc1:.4f} {r.status:>13}")
    print("\n2. agreement with the retired joint sampler at sig2 = 1e-2 (erf N=128, pcnl)")
    print(f"{'d':>2} {'h':>4} {'collapsed':>16} {'retired':>16} {'difference':>10} {'in SE':>6} {'seconds':>7}")
    for (d, h), (old, old_se) in RETIRED.items():
        r, sec = run(128, d, h, 1e-2, "pcnl", burn, samples)
        diff = r.log10_nc1 - old
        print(f"{d:>2} {h:>4} {r.log10_nc1:>9.4f} ± {r.se_log10_nc1:.4f} {old:>9.3f} ± {old_se:.3f} {diff:>+10.4f} "
              f"{diff / math.hypot(r.se_log10_nc1, old_se):>+6.1f} {sec:>7.1f}")


if __name__ == "__main__":
    main()

"""Which series of the posterior sampler mixes slowest, with and without the scale move (ReLU).

``python bench/posterior_slow_modes.py``

ReLU, the project's draw (seed 0, repeat 0), N = 128, d = 8 and 32, h = 500, sig2 = 1e-6,
sigw2 = 1, siga2 = 1/128; 4 chains from the prior, 30 + 150 sweeps, compiled loop; once with
the scale move W -> sW after every sweep and once without, on the same seeds. Printed per series
(Tr Sigma_W, Tr Sigma_B, their ratio, Tr W^T W / h): rank R-hat and bulk / tail ESS, and each
run's log10 NC1 and seconds. Read the ratios between rows of one run.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shallow_collapse.activations import get  # noqa: E402
from shallow_collapse.data import gaussian_data  # noqa: E402
from shallow_collapse.experiments.posterior import chain_seeds  # noqa: E402
from shallow_collapse.params import EoSParams, PosteriorParams  # noqa: E402
from shallow_collapse.posterior import diagnostics, sample_posterior  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    N, h, chains = 128, 500, 4
    print(f"{'d':>3} {'scale move':>10} {'series':>12} {'rhat':>6} {'ESS bulk':>8} {'ESS tail':>8}")
    for d in (8, 32):
        ds = gaussian_data((N // 2, N // 2), d, [-2.0, 2.0], [0.5, 0.5], 0, 0)
        for scale in (True, False):
            start = time.perf_counter()
            (r,) = sample_posterior(ds.X[None], ds.y[None, :, None], ds.labels, get("relu"),
                                    EoSParams(sigw2=1.0, siga2=1 / 128, sig2=1e-6, h=h),
                                    PosteriorParams(burn_in=30, samples=150, chains=chains),
                                    seeds=chain_seeds(0, (N // 2, N // 2), d, 0, chains), homogeneous=scale)
            sec = time.perf_counter() - start
            for name, x in r.traces.items():
                print(f"{d:>3} {str(scale):>10} {name:>12} {diagnostics.rhat(x):>6.3f} {diagnostics.ess_bulk(x):>8.0f} "
                      f"{diagnostics.ess_tail(x):>8.0f}")
            print(f"{d:>3} {str(scale):>10} log10 NC1 {r.log10_nc1:.4f} ± {r.se_log10_nc1:.4f}, Tr Sigma "
                  f"{r.sigma_trace:.3f} ± {r.se_sigma_trace:.3f}, {r.evaluations:.2f} candidates/update, "
                  f"{sec:.0f} s, {r.status}", flush=True)


if __name__ == "__main__":
    main()

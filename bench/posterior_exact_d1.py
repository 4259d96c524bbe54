"""The Gibbs sampler against the exact ReLU-family posterior at d = 1 (docs/POSTERIOR.md, "Checks").

``python bench/posterior_exact_d1.py``

The cases of tests/posterior/test_gibbs.py (N = 32, two classes at -2 and 2 with std 0.5, targets
-1 / +1, sigw2 = siga2 = 1), ReLU and leaky ReLU (slope 0.2), sig2 in {1e-2, 1e-6}, h in {8, 64},
plus the paper's setting (N = 128, h = 500, siga2 = 1/128, sig2 = 1e-6): 16 chains from the prior,
the compiled loop with the scale move. Printed: log10 NC1 of E[K_W] and E[Tr W^T W / h], the
sampler's value with the standard error from the spread of the 16 chains' means, the exact value
(:func:`shallow_collapse.posterior.exact.relu_d1_posterior`), their difference in SE, candidates
per update and seconds.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shallow_collapse import metrics  # noqa: E402
from shallow_collapse.activations import leaky_relu  # noqa: E402
from shallow_collapse.posterior.chains import run_chains  # noqa: E402
from shallow_collapse.posterior.compiled import activation_code  # noqa: E402
from shallow_collapse.posterior.diagnostics import ratio_log10  # noqa: E402
from shallow_collapse.posterior.exact import relu_d1_posterior  # noqa: E402
from shallow_collapse.posterior.gibbs import GibbsTarget  # noqa: E402


def case(slope, sig2, h, N=32, siga2=1.0, samples=600, B=16):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(N) // (N // 2)
    x = torch.where(labels == 0, -2.0, 2.0).double() + 0.5 * torch.randn(N, generator=g, dtype=torch.float64)
    y = (2.0 * labels - 1).double()
    act = leaky_relu(slope)
    exact = relu_d1_posterior(x, y[:, None], slope=slope, sigw2=1.0, siga2=siga2, sig2=sig2, h=h)
    log_nc1 = math.log10(float(metrics.nc1_kernel(torch.as_tensor(exact.kernel), labels)))
    target = GibbsTarget(x[None, :, None].expand(B, -1, -1).clone(), y[None, :, None].expand(B, -1, -1).clone(),
                         act.phi, 1.0, siga2, sig2, h, activation_code(act))
    gens = [torch.Generator().manual_seed(1000 * h + b) for b in range(B)]
    W0 = torch.stack([torch.randn(h, 1, generator=gg, dtype=torch.float64) for gg in gens])
    start = time.perf_counter()
    run = run_chains(target, labels, W0, gens, burn_in=samples // 5, samples=samples, scale_move=True)
    sec = time.perf_counter() - start
    tw, tb, st = (run.records[k].mean(0) for k in ("tr_w", "tr_b", "sigma_trace"))
    value, se = ratio_log10(tw, tb)
    se_s = st.std(ddof=1) / math.sqrt(B)
    print(f"{slope:>5} {sig2:>6.0e} {N:>4} {h:>4} {value:>9.5f} ± {se:.5f} {log_nc1:>9.5f} {(value - log_nc1) / se:>+6.2f} "
          f"{st.mean():>8.5f} ± {se_s:.5f} {exact.sigma_trace:>8.5f} {(st.mean() - exact.sigma_trace) / se_s:>+6.2f} "
          f"{run.evaluations.mean():>5.2f} {sec:>6.1f}", flush=True)


def main():
    torch.set_num_threads(1)
    print(f"{'slope':>5} {'sig2':>6} {'N':>4} {'h':>4} {'log10 NC1 (chains)':>19} {'exact':>9} {'in SE':>6} "
          f"{'E Tr WtW/h':>18} {'exact':>8} {'in SE':>6} {'cand':>5} {'sec':>6}")
    for slope in (0.0, 0.2):
        for sig2 in (1e-2, 1e-6):
            for h in (8, 64):
                case(slope, sig2, h, samples=600 if h == 8 else 200)
    for slope in (0.0, 0.2):
        case(slope, 1e-6, 500, N=128, siga2=1 / 128, samples=200)


if __name__ == "__main__":
    main()

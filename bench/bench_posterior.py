"""Speed of the posterior sampler against the plain SGD loop of the same size, and its stiffness.

    python bench/bench_posterior.py                      # N=128, d=8, h=256, 4 chains
    python bench/bench_posterior.py --N 256 --h 1024 --steps 100

Throughput, measured in one run on the same data and sizes (B chains = B networks, full batch):
- langevin f64: ``posterior.langevin`` (float64, autograd gradient, the default LM scheme), steps/s;
- langevin f32: the same in float32 (what float64 costs);
- sgd: ``training.train`` on an ``FCNEnsemble`` of B networks (float32, its fast gradient path,
  no probes): one full-batch SGD step per epoch, steps/s.
Printed: steps per second of each and the ratios sgd / langevin.

Stiffness: the condition number of each layer at a prior draw, kappa_l = (largest curvature of U
in layer l) / (its prior curvature), for sig2 in {1e-2, 1e-3, 1e-6}. With the step eta in units of
the inverse largest curvature, the slowest prior direction relaxes in about kappa / eta steps; the
factor steps-per-cell / kappa measured at sig2 = 1e-2 (``--cell``: one full default cell) turns
kappa into the steps a converged cell needs at the other sig2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shallow_collapse import activations  # noqa: E402
from shallow_collapse.data import gaussian_data  # noqa: E402
from shallow_collapse.model import FCNEnsemble  # noqa: E402
from shallow_collapse.params import LangevinParams, NetworkParams, ProbeParams, SGDParams  # noqa: E402
from shallow_collapse.posterior import PosteriorTarget, langevin, layer_curvatures, sample_posterior  # noqa: E402
from shallow_collapse.training import make_targets, train  # noqa: E402

SIGW2, SIGA2 = 1.0, 1 / 128


def _target(ds, B, sig2, dtype):
    X = ds.X.unsqueeze(0).expand(B, -1, -1).contiguous().to(dtype)
    y = ds.y.unsqueeze(0).expand(B, -1).contiguous().to(dtype)
    return PosteriorTarget(X, y, activations.get("erf").phi, SIGW2, SIGA2, sig2)


def langevin_rate(ds, B, h, steps, dtype) -> float:
    target = _target(ds, B, 1e-2, dtype)
    gens = [torch.Generator().manual_seed(s) for s in range(B)]
    W, a = target.prior_draw(gens, h)
    W, a = W.to(dtype), a.to(dtype)
    precond = tuple(1 / lam for lam in layer_curvatures(target, W, a))
    langevin(target, W, a, ds.labels, step=1.0, precond=precond, burn_in=5, samples=0, thin=1, generators=gens)
    start = time.perf_counter()
    langevin(target, W, a, ds.labels, step=1.0, precond=precond, burn_in=steps, samples=0, thin=1, generators=gens)
    return steps / (time.perf_counter() - start)


def sgd_rate(ds, B, h, steps) -> float:
    net = NetworkParams(hidden_weight_std=math.sqrt(SIGW2), final_weight_std=math.sqrt(SIGA2))
    model = FCNEnsemble(list(range(B)), ds.X.shape[1], h, net=net)
    X = ds.X.unsqueeze(0).expand(B, -1, -1).float()
    T = make_targets(ds.labels, 2, 1).unsqueeze(0).expand(B, -1, -1)
    probes = ProbeParams(probe_features=False, probe_weights=False, probing_frequency=None)
    train(model, X, T, ds.labels, SGDParams(num_epochs=5, lr=1e-3), probes, num_classes=2, probe_init=False)
    start = time.perf_counter()
    train(model, X, T, ds.labels, SGDParams(num_epochs=steps, lr=1e-3), probes, num_classes=2, probe_init=False)
    return steps / (time.perf_counter() - start)


def stiffness(ds, h):
    print("\nstiffness at a prior draw (4 chains, mean): kappa_W = lam_W / (d/sigw2), kappa_a = lam_a / (h/siga2)")
    d = ds.X.shape[1]
    for sig2 in (1e-2, 1e-3, 1e-6):
        target = _target(ds, 4, sig2, torch.float64)
        W, a = target.prior_draw([torch.Generator().manual_seed(s) for s in range(4)], h)
        lam_W, lam_a = layer_curvatures(target, W, a)
        print(f"  sig2={sig2:g}: kappa_W {float(lam_W.mean()) * SIGW2 / d:.4g}, kappa_a {float(lam_a.mean()) * SIGA2 / h:.4g}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=128)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--h", type=int, default=256)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--cell", action="store_true", help="also time one full cell with the default keys")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ds = gaussian_data((args.N // 2, args.N // 2), args.d, [-2.0, 2.0], [0.5, 0.5], 0, 0)
    print(f"N={args.N} d={args.d} h={args.h} chains={args.chains}, {args.steps} steps, 1 thread, "
          f"load {os.getloadavg()[0]:.2f}")
    rates = {"langevin f64": langevin_rate(ds, args.chains, args.h, args.steps, torch.float64),
             "langevin f32": langevin_rate(ds, args.chains, args.h, args.steps, torch.float32),
             "sgd (f32)": sgd_rate(ds, args.chains, args.h, args.steps)}
    for name, rate in rates.items():
        print(f"  {name:13s} {rate:9.1f} steps/s")
    print(f"  ratio sgd / langevin f64: {rates['sgd (f32)'] / rates['langevin f64']:.2f}; "
          f"langevin f32 / f64: {rates['langevin f32'] / rates['langevin f64']:.2f}")
    stiffness(ds, args.h)
    if args.cell:
        params = LangevinParams(chains=args.chains)
        target = _target(ds, args.chains, 1e-2, torch.float64)
        start = time.perf_counter()
        [r] = sample_posterior(target, ds.labels, args.h, params, list(range(args.chains)))
        print(f"\none default cell (sig2=1e-2): {r.total_steps} steps per chain, {time.perf_counter() - start:.1f} s, "
              f"status {r.status} (R-hat {r.rhat:.3f}, ESS {r.ess:.0f}, step misfit {r.z:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

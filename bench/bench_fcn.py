"""Speed of FCN training: the batched ensemble path against a plain one-network-at-a-time loop.

    python bench/bench_fcn.py                 # per-network time, ensemble vs loop, 3 shapes
    python bench/bench_fcn.py --grid          # the paper's FCN sweep grids, cell by cell
    python bench/bench_fcn.py --grid --epochs 100   # the same with 100 epochs, extrapolated

Default mode: for (N, d) in {(1024, 1), (1024, 128), (2048, 128)}, h=500, 100 full-batch epochs
of SGD (lr 1e-3, momentum 0.9) on the MSE loss, float32, two-class Gaussian data:
- ensemble: ``training.train`` on an ``FCNEnsemble`` of ``--repeats`` networks (a sweep cell's
  repeats, each with its own draw), no probes besides the final loss;
- loop: the same networks built from ``torch.nn.Linear`` + ``torch.erf``, trained one after
  the other with ``torch.optim.SGD`` (the plain way), with default torch settings ("loop"),
  with subnormals flushed to zero as the ensemble path does ("loop+ftz"), and flushed with one
  torch thread ("loop 1 thread": on a shared machine OpenMP's per-operation barriers can stall
  a two-thread loop), to separate what batching gains from what the settings gain.
Printed: seconds per trained network for each path and the ratios loop / ensemble.

Grid mode: ``experiments.fcn.evaluate_cell`` (training, final NC1 probes and the NNGP/NTK rows) on
every cell of configs/fcn_bulk_balanced.yml and configs/fcn_bulk_imbalanced.yml, timed per cell.
With ``--epochs E`` < 1000 the training part is extrapolated linearly to 1000 epochs from two
measured points per cell (E and E/2 epochs: time = fixed + per_epoch * epochs) and reported as an
extrapolation.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shallow_collapse.config import load_config  # noqa: E402
from shallow_collapse.data import gaussian_data  # noqa: E402
from shallow_collapse.experiments import fcn  # noqa: E402
from shallow_collapse.model import FCNEnsemble  # noqa: E402
from shallow_collapse.params import ProbeParams, SGDParams  # noqa: E402
from shallow_collapse.sweeps import cell_datasets, grid_cells  # noqa: E402
from shallow_collapse.training import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(1024, 1), (1024, 128), (2048, 128)]
H, LR, MOMENTUM = 500, 1e-3, 0.9


def _draws(N, d, R):
    sizes = (N // 2, N // 2)
    return [gaussian_data(sizes, d, (-2.0, 2.0), (0.5, 0.5), 0, r) for r in range(R)]


def time_ensemble(N, d, R, epochs, device):
    draws = _draws(N, d, R)
    X = torch.stack([ds.X for ds in draws])
    T = torch.stack([ds.y for ds in draws])
    model = FCNEnsemble(range(R), d, H, device=device)  # the paper's network (NetworkParams())
    start = time.perf_counter()
    rec = train(model, X, T, draws[0].labels, SGDParams(lr=LR, momentum=MOMENTUM, num_epochs=epochs),
                ProbeParams(probe_features=False, probe_weights=False, probing_frequency=None), probe_init=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert rec.status == ["ok"] * R, rec.status
    return seconds / R


def time_loop(N, d, R, epochs, device, flush, threads=None):
    """Plain loop: one torch.nn.Linear network at a time (the networks of the ensemble's seeds),
    with torch's default thread count or ``threads``."""
    draws = _draws(N, d, R)
    ref = FCNEnsemble(range(R), d, H)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    torch.set_flush_denormal(flush)
    total = 0.0
    try:
        for r in range(R):
            l1, l2 = torch.nn.Linear(d, H), torch.nn.Linear(H, 1)
            with torch.no_grad():
                l1.weight.copy_(ref.weights[0][r]), l1.bias.copy_(ref.biases[0][r])
                l2.weight.copy_(ref.weights[1][r]), l2.bias.copy_(ref.biases[1][r])
            l1, l2 = l1.to(device), l2.to(device)
            X = draws[r].X.float().to(device)
            y = draws[r].y.float().unsqueeze(-1).to(device)
            opt = torch.optim.SGD([*l1.parameters(), *l2.parameters()], lr=LR, momentum=MOMENTUM)
            start = time.perf_counter()
            for _ in range(epochs):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(l2(torch.erf(l1(X))), y)
                loss.backward()
                opt.step()
            loss.item()  # synchronise
            total += time.perf_counter() - start
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)
    return total / R


def bench_shapes(args, device):
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # import torch's optimiser machinery once
    print(f"device {device}, torch threads {torch.get_num_threads()}, h={H}, {args.epochs} epochs, "
          f"ensemble of {args.repeats}, loop of {args.loop_networks}")
    print(f"{'N':>5} {'d':>4} {'ensemble':>9} {'loop':>7} {'loop+ftz':>9} {'loop 1 thread':>14} "
          f"{'loop/ens':>9} {'loop+ftz/ens':>13} {'loop 1 thread/ens':>18}   (seconds per trained network)")
    for N, d in SHAPES:
        ens = time_ensemble(N, d, args.repeats, args.epochs, device)
        loop = time_loop(N, d, args.loop_networks, args.epochs, device, flush=False)
        loop_ftz = time_loop(N, d, args.loop_networks, args.epochs, device, flush=True)
        loop_1 = time_loop(N, d, args.loop_networks, args.epochs, device, flush=True, threads=1)
        print(f"{N:>5} {d:>4} {ens:>9.3f} {loop:>7.3f} {loop_ftz:>9.3f} {loop_1:>14.3f} {loop / ens:>9.2f} "
              f"{loop_ftz / ens:>13.2f} {loop_1 / ens:>18.2f}", flush=True)


def _cell_seconds(cfg, cell, epochs):
    datasets = cell_datasets(cfg, cell)
    start = time.perf_counter()
    rows = fcn.evaluate_cell({**cfg, "num_epochs": epochs}, cell, datasets)
    seconds = time.perf_counter() - start
    bad = [r for r in rows if r["status"] != "ok"]
    return seconds, bad


def bench_grid(args, device):
    target_epochs = 1000
    for grid, target in (("balanced", 360), ("imbalanced", 1200)):
        cfg = load_config(ROOT / "configs" / f"fcn_bulk_{grid}.yml", [f"device={device.type}"])
        cells = grid_cells(cfg, grid)
        total, statuses = 0.0, []
        print(f"{grid} grid: {len(cells)} cells x {cfg['repeat']} repeats, h={cfg['hidden_features']}, "
              f"{'measured at' if args.epochs == target_epochs else 'extrapolated from'} {args.epochs} epochs",
              flush=True)
        for cell in cells:
            seconds, bad = _cell_seconds(cfg, cell, args.epochs)
            if args.epochs != target_epochs:
                half, _ = _cell_seconds(cfg, cell, args.epochs // 2)
                per_epoch = (seconds - half) / (args.epochs - args.epochs // 2)
                fixed = max(seconds - per_epoch * args.epochs, 0.0)
                estimate = fixed + per_epoch * target_epochs
            else:
                estimate = seconds
            total += estimate
            statuses += bad
            print(f"  cell {cell.key:>14}: {seconds:7.1f} s at {args.epochs} epochs"
                  + (f", {estimate:7.1f} s extrapolated to {target_epochs}" if args.epochs != target_epochs else "")
                  + (f", {len(bad)} rows not ok" if bad else ""), flush=True)
        kind = "measured" if args.epochs == target_epochs else "extrapolated"
        print(f"{grid} grid total: {total:.0f} s ({total / 60:.1f} min, {kind}); target {target / 60:.0f} min; "
              f"rows not ok: {len(statuses)}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", action="store_true", help="time the paper's balanced and imbalanced FCN grids")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run (default: 100 for the shapes, 1000 for --grid)")
    parser.add_argument("--repeats", type=int, default=10, help="networks in the ensemble (shapes mode)")
    parser.add_argument("--loop-networks", type=int, default=3, help="networks trained by the loop (shapes mode)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.grid:
        args.epochs = args.epochs or 1000
        bench_grid(args, device)
    else:
        args.epochs = args.epochs or 100
        bench_shapes(args, device)


if __name__ == "__main__":
    main()

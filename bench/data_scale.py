"""How much NC1 on real data moves with ``data_scale`` (the justification of its default).

    python bench/data_scale.py [--scales 0.5 1 2 4] [--N 128] [--d 8] [--repeat 3] [--classes 3 8]

On scikit-learn's digits (two digits, d principal components of their pool, one balanced cell,
``repeat`` draws), with the erf network of the shipped adaptive-kernel sweep config, prints for each
``data_scale``: log10 NC1 of the inputs (blind to the scale: NC1 is a ratio of traces), of the NNGP
and of the adaptive kernel (AK), and the AK's log10 NC1 relative to its input (``log10_rel``: 0
means the network does no more than the data). The pre-activation variance of the hidden layer is
data_scale^2 (sw = 1), so a small scale keeps erf in its linear range, where both kernels reproduce
the inputs' NC1, and a large one saturates it. Means over the draws, with their standard deviation.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shallow_collapse import metrics  # noqa: E402
from shallow_collapse.config import load_config  # noqa: E402
from shallow_collapse.experiments.adaptive_kernel import evaluate_cell  # noqa: E402
from shallow_collapse.sweeps import Cell, cell_datasets  # noqa: E402


def _mean_sd(values) -> str:
    return f"{statistics.mean(values):+.3f} +- {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def measure(scale: float, N: int, d: int, repeat: int, classes, activation: str) -> dict:
    cfg = load_config(ROOT / "configs/adaptive_kernels_bulk_balanced.yml",
                      ["training_data_cls=digits", f"data_classes=[{classes[0]},{classes[1]}]", f"data_scale={scale}",
                       f"activation={activation}", "workers=1"])
    cell = Cell((N // 2, N // 2), d, tuple(range(repeat)))
    datasets = cell_datasets(cfg, cell)
    start = time.perf_counter()
    with torch.no_grad():
        rows = evaluate_cell(cfg, cell, datasets)
    seconds = time.perf_counter() - start
    data = [metrics.log10(float(metrics.nc1_features(ds.X, ds.labels))) for ds in datasets]
    out = {"data": data, "seconds": seconds, "status": sorted({r["status"] for r in rows if r["method"] == "ak"})}
    for method in ("nngp", "ak"):
        out[method] = [metrics.log10(r["nc1"]) for r in rows if r["method"] == method]
    out["ak_rel"] = [a - x for a, x in zip(out["ak"], data)]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--N", type=int, default=128)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--classes", type=int, nargs=2, default=[3, 8])
    parser.add_argument("--activation", default="erf")
    args = parser.parse_args(argv)
    print(f"digits {args.classes[0]} vs {args.classes[1]}, N={args.N} balanced, d={args.d}, {args.repeat} draws, "
          f"{args.activation}; log10 NC1, mean +- sd over draws")
    print(f"{'data_scale':>10}  {'inputs':>15}  {'NNGP':>15}  {'AK':>15}  {'AK - inputs':>15}  AK status, seconds")
    results = {}
    for scale in args.scales:
        r = measure(scale, args.N, args.d, args.repeat, args.classes, args.activation)
        results[scale] = r
        print(f"{scale:>10g}  {_mean_sd(r['data']):>15}  {_mean_sd(r['nngp']):>15}  {_mean_sd(r['ak']):>15}  "
              f"{_mean_sd(r['ak_rel']):>15}  {','.join(r['status'])}, {r['seconds']:.1f} s")
    scales = sorted(results)
    for a, b in zip(scales, scales[1:]):
        moves = {m: statistics.mean(results[b][m]) - statistics.mean(results[a][m]) for m in ("nngp", "ak")}
        print(f"data_scale {a:g} -> {b:g}: log10 NC1 moves by {moves['nngp']:+.3f} (NNGP), {moves['ak']:+.3f} (AK)")


if __name__ == "__main__":
    main()

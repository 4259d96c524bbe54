"""The default EoS solver (least action) on CPU and on CUDA, same draws, in one run.

    python bench/bench_eos_devices.py           # (N, d) in (1024, 32), (2048, 128), (4096, 128)

Prints per size: seconds and O(N^3) evaluations on each device, the relative gap of the two
solutions (max|dSigma| / max|Sigma|) and of their NC1, and the ratio CPU / CUDA seconds. The CPU
solve runs with ``--threads`` threads. Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shallow_collapse import data, metrics  # noqa: E402
from shallow_collapse.eos import solve_eos  # noqa: E402
from shallow_collapse.params import EoSParams  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the CPU solve")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_eos_devices.py: needs a CUDA device", file=sys.stderr)
        return 2
    print(f"default EoS solver, paper's erf settings, CPU with {args.threads} thread(s) vs "
          f"{torch.cuda.get_device_name()}", flush=True)
    print(f"{'N':>5} {'d':>4} | {'cpu s':>7} {'ev':>3} | {'cuda s':>7} {'ev':>3} | {'dSigma':>8} {'dNC1':>8} | "
          f"{'cpu/cuda':>8}", flush=True)
    params = EoSParams()
    solve_eos(*_draw(64, 2)[:2], params, device="cuda")  # CUDA context and kernels warm
    for N, d in [(1024, 32), (2048, 128), (4096, 128)]:
        X, y, labels = _draw(N, d)
        runs = {}
        for device, threads in (("cpu", args.threads), ("cuda", 1)):
            t0 = time.perf_counter()
            result = solve_eos(X, y, params, device=device, threads=threads)
            if device == "cuda":
                torch.cuda.synchronize()
            runs[device] = (time.perf_counter() - t0, result)
        (t_cpu, cpu), (t_gpu, gpu) = runs["cpu"], runs["cuda"]
        gap = float((cpu.Sigma - gpu.Sigma).abs().max() / cpu.Sigma.abs().max())
        nc1 = [float(metrics.nc1_kernel(r.Q, labels)) for r in (cpu, gpu)]
        print(f"{N:>5} {d:>4} | {t_cpu:>7.2f} {cpu.evaluations:>3d} | {t_gpu:>7.2f} {gpu.evaluations:>3d} | "
              f"{gap:>8.1e} {abs(nc1[0] - nc1[1]) / nc1[0]:>8.1e} | {t_cpu / t_gpu:>8.1f}  "
              f"({cpu.status}/{gpu.status})", flush=True)
    return 0


def _draw(N, d):
    ds = data.gaussian_data((N // 2, N // 2), d, (-2.0, 2.0), (0.5, 0.5), 0, 0)
    return ds.X, ds.y, ds.labels


if __name__ == "__main__":
    sys.exit(main())

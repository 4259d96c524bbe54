"""Accuracy and speed of the numerical kernel maps (shallow_collapse/kernel_maps.py).

    python bench/bench_activations.py [--quick]

1. Accuracy: for every activation with a closed form, the largest error of the numerical path
   (built from phi alone) relative to the largest entry of the closed form, for Kphi, Kdphi and
   the EoS gradient G = dTr(A Q)/dK (random symmetric A), on the pre-activation kernels
   K = X Sigma X^T of the paper's data (N = 256, d in {1, 2, 8, 32}, Sigma = I/d and a random SPD
   Sigma) and on a kernel with exact duplicates, negatives and a near-collinear pair. The last
   column divides the worst Kphi/Kdphi error by neural-tangents' accepted tolerance (2e-3 NNGP).
2. Speed, as ratios measured in this run: one EoS evaluation at N = 1024 (d = 8) with tanh (table
   cached, as in a solve) against erf's closed form; the first evaluation (which builds the table);
   the limiting-kernel balanced grid (4 N x 5 d, ``repeat`` draws) with tanh against erf.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shallow_collapse import activations, data, eos  # noqa: E402
from shallow_collapse.eos.passes import generic, passes_for  # noqa: E402
from shallow_collapse.kernels import limiting_kernels_nc1  # noqa: E402
from shallow_collapse.data import class_labels  # noqa: E402
from shallow_collapse.params import NetworkParams  # noqa: E402

NT_TOLERANCE = 2e-3  # neural-tangents' ElementwiseNumerical against its closed forms (NNGP)


def kernels(quick: bool):
    g = torch.Generator().manual_seed(0)
    for d in ([2, 8] if quick else [1, 2, 8, 32]):
        X = data.gaussian_data((128, 128), d, (-2.0, 2.0), (0.5, 0.5), 0, 0).X
        R = torch.randn(d, d, generator=g, dtype=torch.float64)
        for label, S in (("I/d", torch.eye(d, dtype=torch.float64) / d), ("random", (R @ R.T + d * torch.eye(d)) / d**2)):
            yield f"paper d={d} Sigma={label}", X @ S.to(torch.float64) @ X.T
    X = torch.randn(60, 3, generator=g, dtype=torch.float64) + 1.0
    X = torch.cat([X, X[:1], -X[1:2], X[2:3] + 1e-9])
    yield "collinear/near-collinear pairs", X @ X.T / 3 + 0.2


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def accuracy(quick: bool):
    names = [n for n, a in activations.ACTIVATIONS.items() if a.closed_form]
    print("1. Numerical path against closed forms: max |numerical - closed| / max |closed|")
    print(f"{'activation':12s} {'Kphi':>9s} {'Kdphi':>9s} {'G':>9s} {'/ NT 2e-3':>10s}")
    ks = list(kernels(quick))
    g = torch.Generator().manual_seed(1)
    for name in names + ["leaky_relu(0.2)"]:
        act = activations.get("leaky_relu", slope=0.2) if name == "leaky_relu(0.2)" else activations.get(name)
        worst = [0.0, 0.0, 0.0]
        pairs = [(act.kernel_map, passes_for(act.kernel_map)), (act.numerical, generic(act.numerical))]
        for _, K in ks:
            A = torch.randn(K.shape, generator=g, dtype=torch.float64)
            A = A + A.T
            (F, Kd, G, s), (Fn, Kdn, Gn, sn) = (
                (*kmap.maps(K), *p.g(A.clone(), p.q(K.clone(), K.diagonal().clone(), 1.0)[1], 1.0))
                for kmap, p in pairs)
            worst = [max(w, e) for w, e in zip(worst, (rel(Fn, F), rel(Kdn, Kd), rel(Gn * sn, G * s)))]
        print(f"{name:12s} {worst[0]:9.1e} {worst[1]:9.1e} {worst[2]:9.1e} {max(worst[:2]) / NT_TOLERANCE:10.1e}")


def best_of(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def speed(quick: bool):
    print("\n2. Speed (one process, one thread)")
    ds = data.gaussian_data((512, 512), 8, (-2.0, 2.0), (0.5, 0.5), 0, 0)
    S = torch.eye(8, dtype=torch.float64) / 8
    fresh = activations.register("tanh_fresh", torch.tanh, lambda z: 1.0 - torch.tanh(z) ** 2) \
        if "tanh_fresh" not in activations.ACTIVATIONS else activations.get("tanh_fresh")
    start = time.perf_counter()
    eos.EoSEvaluator(ds.X, ds.y, activation=fresh).state(S)
    first = time.perf_counter() - start
    evaluators = {name: eos.EoSEvaluator(ds.X, ds.y, activation=name) for name in ("erf", "tanh")}
    for ev in evaluators.values():
        ev.state(S)  # compiles erf's loops, builds tanh's table
    t = {name: float("inf") for name in evaluators}
    for _ in range(4):  # interleaved, so that a burst of load hits both
        for name, ev in evaluators.items():
            start = time.perf_counter()
            ev.state(S)
            t[name] = min(t[name], time.perf_counter() - start)
    print(f"EoS evaluation N=1024 d=8 (best of 4, interleaved): erf {t['erf']:.3f} s, tanh {t['tanh']:.3f} s (table cached), "
          f"ratio {t['tanh'] / t['erf']:.2f}; first tanh evaluation (builds its table) {first:.3f} s")
    repeat = 1 if quick else 2
    cells = [(N, d) for N in (128, 256, 512, 1024) for d in (1, 2, 8, 32, 128)]

    def grid(name):
        for N, d in cells:
            for r in range(repeat):
                ds = data.gaussian_data((N // 2, N // 2), d, (-2.0, 2.0), (0.5, 0.5), 0, r)
                limiting_kernels_nc1(ds.X, class_labels((N // 2, N // 2)), NetworkParams(activation=name))

    t = {name: best_of(lambda: grid(name), repeats=1) for name in ("erf", "tanh", "erf")}
    print(f"limiting-kernel balanced grid ({len(cells)} cells x {repeat} draws, NNGP+NTK NC1): "
          f"erf {t['erf']:.2f} s, tanh {t['tanh']:.2f} s, ratio {t['tanh'] / t['erf']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer kernels and draws")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    accuracy(args.quick)
    speed(args.quick)


if __name__ == "__main__":
    main()

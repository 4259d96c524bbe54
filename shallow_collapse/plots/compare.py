"""The paper's comparison: FCN, NNGP, NTK and AK on identical draws, one panel per group."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import save_figure
from .sweep import PANELS, d_axis, draw_band, group_label

__all__ = ["plot_comparison", "plot_nc1_vs_n"]


def _base(method: str) -> str:
    """``nngp`` of a labelled method ``nngp[activation=relu]`` (merged sweeps of different settings)."""
    return method.partition("[")[0]


def _ordered(summary: list[dict], labels: dict) -> list[str]:
    """The methods of ``summary`` in the order of ``labels``, then any others by name."""
    order = list(labels)

    def key(method):
        base = _base(method)
        return (order.index(base) if base in order else len(order), base, method)
    return sorted({r["method"] for r in summary}, key=key)


def method_label(method: str, labels: dict) -> str:
    """Legend text: ``NNGP`` or ``NNGP [activation=relu]``."""
    base, bracket, rest = method.partition("[")
    return labels.get(base, base) + (f" [{rest}" if bracket else "")


def plot_comparison(summary: list[dict], plots_dir: Path, grid: str, labels: dict) -> list[Path]:
    """``compare_nc1.png`` (log10 NC1) and ``compare_rel_nc1.png`` (relative NC1) against d:
    one panel per N (or class-size tuple), one curve per method, mean +- std over repeats.
    ``labels`` maps a base method to its label, in legend order."""
    groups = list(dict.fromkeys(r["class_sizes"] for r in summary))
    methods = _ordered(summary, labels)
    written = []
    for (mean_key, std_key, ylabel), name in zip(PANELS, ("compare_nc1.png", "compare_rel_nc1.png")):
        fig, axes = plt.subplots(1, len(groups), figsize=(max(4 * len(groups), 7), 4), sharey=True, squeeze=False,
                                 constrained_layout=True)
        for ax, sizes in zip(axes[0], groups):
            rows = [r for r in summary if r["class_sizes"] == sizes]
            for method in methods:
                draw_band(ax, [r for r in rows if r["method"] == method], mean_key, std_key,
                          method_label(method, labels))
            d_axis(ax, [r["in_features"] for r in rows])
            ax.set_title(group_label(rows[0], grid))
        axes[0, 0].set_ylabel(ylabel)
        axes[0, 0].legend(fontsize=8)
        fig.suptitle("NC1 of " + ", ".join(dict.fromkeys(labels.get(_base(m), _base(m)) for m in methods))
                     + " on identical draws")
        written.append(save_figure(fig, Path(plots_dir) / name))
    if len({r["N"] for r in summary}) > 1:
        written.append(plot_nc1_vs_n(summary, plots_dir, labels))
    return written


def plot_nc1_vs_n(summary: list[dict], plots_dir: Path, labels: dict) -> Path:
    """``compare_nc1_vs_n.png``: log10 NC1 against N (log2 axis), one panel per d, one curve per
    method, mean +- std over repeats (the paper's figures against N)."""
    dims = sorted({r["in_features"] for r in summary})
    methods = _ordered(summary, labels)
    fig, axes = plt.subplots(1, len(dims), figsize=(max(3.5 * len(dims), 7), 3.8), sharey=True, squeeze=False,
                             constrained_layout=True)
    for ax, d in zip(axes[0], dims):
        rows = [r for r in summary if r["in_features"] == d]
        for method in methods:
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["N"])
            N = np.array([r["N"] for r in mine], dtype=float)
            mean = np.array([r["mean_log10_nc1"] for r in mine], dtype=float)
            std = np.array([r["std_log10_nc1"] for r in mine], dtype=float)
            failed = sum(r["n_failed"] for r in mine)
            (line,) = ax.plot(N, mean, marker="o", ms=3,
                              label=method_label(method, labels) + (f" ({failed} failed)" if failed else ""))
            ax.fill_between(N, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_xscale("log", base=2)
        ticks = sorted({r["N"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("number of samples N")
        ax.set_title(f"d={d}")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(PANELS[0][2])
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("NC1 against N, one panel per d, on identical draws")
    return save_figure(fig, Path(plots_dir) / "compare_nc1_vs_n.png")

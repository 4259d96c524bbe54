"""Paper-style sweep figures: log10 NC1 and relative NC1 against d, one curve per group."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import save_figure

__all__ = ["plot_sweep", "group_label", "draw_band", "d_axis", "PANELS"]
PANELS = (("mean_log10_nc1", "std_log10_nc1", r"$\log_{10}$ NC1"),
          ("mean_log10_rel_nc1", "std_log10_rel_nc1", r"relative NC1: $\log_{10}$(NC1 / NC1(X))"))


def group_label(row: dict, grid: str) -> str:
    """Legend label of a summary row's group: ``N=512`` or ``n=(512, 1536)``."""
    if grid == "balanced":
        return f"N={row['N']}"
    return "n=(" + ", ".join(str(row["class_sizes"]).split("-")) + ")"


def _groups(summary, method):
    groups: dict[str, list[dict]] = {}
    for row in summary:
        if row["method"] == method:
            groups.setdefault(row["class_sizes"], []).append(row)
    return [sorted(g, key=lambda r: r["in_features"]) for g in groups.values()]


def draw_band(ax, rows: list[dict], mean_key: str, std_key: str, label: str) -> None:
    """One curve against d with a mean +- std band from summary ``rows`` (one per d); a black x
    marks points with failed repeats, and the label counts them."""
    rows = sorted(rows, key=lambda r: r["in_features"])
    d = np.array([r["in_features"] for r in rows], dtype=float)
    mean = np.array([r[mean_key] for r in rows], dtype=float)
    std = np.array([r[std_key] for r in rows], dtype=float)
    failed = sum(r["n_failed"] for r in rows)
    (line,) = ax.plot(d, mean, marker="o", ms=3, label=label + (f" ({failed} failed)" if failed else ""))
    ax.fill_between(d, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    bad = np.array([r["n_failed"] > 0 for r in rows])
    if bad.any():
        ax.plot(d[bad], mean[bad], "x", color="k", ms=8, mew=2)


def d_axis(ax, ds) -> None:
    """Log2 axis of input dimensions with a tick at each d of the grid."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(ds))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("input dimension d")
    ax.grid(alpha=0.3)


def _draw(ax, summary, method, grid, mean_key, std_key):
    for group in _groups(summary, method):
        draw_band(ax, group, mean_key, std_key, group_label(group[0], grid))
    d_axis(ax, [r["in_features"] for r in summary])


def plot_sweep(rows: list[dict], summary: list[dict], plots_dir: Path, grid: str, labels: dict) -> list[Path]:
    """One figure per method (NC1 and relative NC1) and one with all methods side by side;
    ``labels`` maps a method to its label.

    Bands are mean +- std over repeats with status ok; a black x marks a point where some repeats
    failed (diverged, not converged, NaN or error), and the legend counts them.
    """
    plots_dir = Path(plots_dir)
    methods = list(dict.fromkeys(r["method"] for r in summary))
    written = []
    for method in methods:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
        for ax, (mean_key, std_key, ylabel) in zip(axes, PANELS):
            _draw(ax, summary, method, grid, mean_key, std_key)
            ax.set_ylabel(ylabel)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{labels.get(method, method)}: NC1 against input dimension ({grid} classes)")
        written.append(save_figure(fig, plots_dir / f"{method}_nc1.png"))
    fig, axes = plt.subplots(2, len(methods), figsize=(4.5 * len(methods), 7.5), sharey="row",
                             squeeze=False, constrained_layout=True)
    for col, method in enumerate(methods):
        for row, (mean_key, std_key, ylabel) in enumerate(PANELS):
            ax = axes[row, col]
            _draw(ax, summary, method, grid, mean_key, std_key)
            ax.set_title(labels.get(method, method) if row == 0 else "")
            if col == 0:
                ax.set_ylabel(ylabel)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(" vs ".join(labels.get(m, m) for m in methods) + f" ({grid} classes)")
    written.append(save_figure(fig, plots_dir / "methods_side_by_side.png"))
    return written

"""The paper's comparison: FCN, NNGP, NTK and AK on identical draws, one panel per group."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from . import save_figure
from .sweep import METHOD_LABELS, PANELS, d_axis, draw_band, group_label

__all__ = ["plot_comparison"]

METHOD_ORDER = ("fcn", "nngp", "ntk", "ak")


def _base(method: str) -> str:
    """``nngp`` of a labelled method ``nngp[activation=relu]`` (merged sweeps of different settings)."""
    return method.partition("[")[0]


def _order(method: str) -> tuple:
    base = _base(method)
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), base, method)


def method_label(method: str) -> str:
    """Legend text: ``NNGP`` or ``NNGP [activation=relu]``."""
    base, bracket, rest = method.partition("[")
    return METHOD_LABELS.get(base, base) + (f" [{rest}" if bracket else "")


def plot_comparison(summary: list[dict], plots_dir: Path, grid: str) -> list[Path]:
    """``compare_nc1.png`` (log10 NC1) and ``compare_rel_nc1.png`` (relative NC1) against d:
    one panel per N (or class-size tuple), one curve per method, mean +- std over repeats."""
    groups = list(dict.fromkeys(r["class_sizes"] for r in summary))
    methods = sorted({r["method"] for r in summary}, key=_order)
    written = []
    for (mean_key, std_key, ylabel), name in zip(PANELS, ("compare_nc1.png", "compare_rel_nc1.png")):
        fig, axes = plt.subplots(1, len(groups), figsize=(max(4 * len(groups), 7), 4), sharey=True, squeeze=False,
                                 constrained_layout=True)
        for ax, sizes in zip(axes[0], groups):
            rows = [r for r in summary if r["class_sizes"] == sizes]
            for method in methods:
                draw_band(ax, [r for r in rows if r["method"] == method], mean_key, std_key, method_label(method))
            d_axis(ax, [r["in_features"] for r in rows])
            ax.set_title(group_label(rows[0], grid))
        axes[0, 0].set_ylabel(ylabel)
        axes[0, 0].legend(fontsize=8)
        fig.suptitle("NC1 of " + ", ".join(dict.fromkeys(METHOD_LABELS.get(_base(m), _base(m)) for m in methods))
                     + " on identical draws")
        written.append(save_figure(fig, Path(plots_dir) / name))
    return written

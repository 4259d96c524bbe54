"""The matched study's figure, in the paper's style: log10 NC1 against N, one panel per d, one row per activation."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import save_figure

__all__ = ["plot_matched", "CAPTIONS"]

CAPTIONS = {
    "matched_nc1": "log10 NC1 against N (log scale), one panel per input dimension d, one row per activation, "
                   "means over the draws compared: the posterior network (NC1 of its posterior-averaged kernel; error "
                   "bars: 2 standard errors of the paired gap AK - posterior, from the spread over draws, or "
                   "from the chains with one draw), the "
                   "adaptive kernel of the same width, the mean-field adaptive kernel (the EoS without their "
                   "Gaussian single-neuron density; error bars: 2 standard errors of its mean over the draws "
                   "compared, from its replicate solves, none for the quadrature at d <= 2), the NNGP and the "
                   "SGD-trained network of the same draws. A missing posterior point: no draw of that cell had both "
                   "a converged posterior and a certified AK; a missing mean-field point: no draw had both a "
                   "converged posterior and a mean-field status ok (e.g. not_normalisable).",
}

# method column of matched_study.cell_table -> (label, matplotlib style)
LINES = {"ak": ("adaptive kernel", dict(color="C3", marker="s", ls="-")),
         "nngp": ("NNGP", dict(color="gray", marker="", ls="--")),
         "fcn": ("SGD FCN", dict(color="C2", marker="^", ls=":"))}


def plot_matched(cells: list[dict], plots_dir: Path) -> Path:
    """``matched_nc1`` from the rows of :func:`shallow_collapse.matched_study.cell_table`."""
    activations = sorted({c["activation"] for c in cells})
    dims = sorted({c["in_features"] for c in cells})
    fig, axes = plt.subplots(len(activations), len(dims), figsize=(3.3 * len(dims), 3.0 * len(activations)),
                             squeeze=False, sharex=True, constrained_layout=True)
    for i, activation in enumerate(activations):
        for j, d in enumerate(dims):
            ax = axes[i, j]
            rows = sorted((c for c in cells if (c["activation"], c["in_features"]) == (activation, d)),
                          key=lambda c: c["N"])
            Ns = np.array([c["N"] for c in rows], dtype=float)
            post = np.array([c["posterior"] for c in rows], dtype=float)
            se = np.array([c["se_ak_minus_posterior"] for c in rows], dtype=float)
            ax.errorbar(Ns, post, yerr=2 * np.where(np.isfinite(se), se, 0.0), color="C0", marker="o", ls="-",
                        capsize=3, label="posterior network")
            mf = np.array([c.get("mean_field", np.nan) for c in rows], dtype=float)
            se_mf = np.array([c.get("se_mean_field", np.nan) for c in rows], dtype=float)
            ax.errorbar(Ns, mf, yerr=2 * np.where(np.isfinite(se_mf), se_mf, 0.0), color="C1", marker="D", ls="-.",
                        capsize=3, label="mean-field kernel")
            for key, (label, style) in LINES.items():
                ax.plot(Ns, [c[key] for c in rows], label=label, **style)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{activation}, d={d}", fontsize=9)
            if i == len(activations) - 1:
                ax.set_xlabel("N")
            if j == 0:
                ax.set_ylabel(r"$\log_{10}$ NC1")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("The adaptive and mean-field kernels against the posterior network they describe (same draws)")
    return save_figure(fig, Path(plots_dir) / "matched_nc1.png")


"""The matched study's figure: log10 NC1 against the width h, one panel per (N, d)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import save_figure

__all__ = ["plot_matched", "CAPTIONS"]

CAPTIONS = {
    "matched_nc1": "log10 NC1 against the width h, one panel per (N, d), one line style per sig2: the "
                   "posterior network (Langevin, posterior-averaged kernel, extrapolated to step 0, ± 2 "
                   "standard errors over chains; hollow: not converged), the adaptive kernel of the same h, "
                   "the NNGP, and the MAP network (SGD at the matched initialisation, weight decay = priors).",
}


def plot_matched(table: list[dict], plots_dir: Path) -> Path:
    """``matched_nc1``: from the rows of :func:`shallow_collapse.matched_study.study_table`
    (repeats averaged per point; error bars are the sampler's 2 SE, combined over repeats)."""
    panels = sorted({(r["N"], r["in_features"]) for r in table})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False, constrained_layout=True)
    styles = ["-", "--", ":", "-."]
    for ax, (N, d) in zip(axes[0], panels):
        for k, sig2 in enumerate(sorted({r["sig2"] for r in table})):
            rows = [r for r in table if (r["N"], r["in_features"], r["sig2"]) == (N, d, sig2)]
            hs = sorted({r["h"] for r in rows})

            def mean(key, h):
                return float(np.mean([r[key] for r in rows if r["h"] == h]))

            se = [float(np.sqrt(np.sum([r["se_langevin"] ** 2 for r in rows if r["h"] == h]))
                        / sum(r["h"] == h for r in rows)) for h in hs]
            ok = [all(r["langevin_status"] == "ok" for r in rows if r["h"] == h) for h in hs]
            ls, tag = styles[k % len(styles)], f" sig2={sig2:g}"
            lang = [mean("langevin", h) for h in hs]
            ax.errorbar(hs, lang, yerr=2 * np.array(se), color="C0", ls=ls, capsize=3, label="posterior (Langevin)" + tag)
            ax.scatter([h for h, o in zip(hs, ok) if not o], [v for v, o in zip(lang, ok) if not o],
                       facecolors="white", edgecolors="C0", zorder=3)
            ax.plot(hs, [mean("ak", h) for h in hs], "s" + ls, color="C3", label="adaptive kernel" + tag)
            ax.plot(hs, [mean("nngp", h) for h in hs], ls, color="gray", label="NNGP" + tag)
            ax.plot(hs, [mean("map", h) for h in hs], "^" + ls, color="C2", label="MAP (noise-free descent)" + tag)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width h")
        ax.set_title(f"N={N}, d={d}")
    axes[0, 0].set_ylabel(r"$\log_{10}$ NC1")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("The adaptive kernel against the posterior network it describes")
    return save_figure(fig, Path(plots_dir) / "matched_nc1.png")

"""Figures of one trained network (``fcn.py``): they read the training record and the data only.

:func:`plot_run` writes every figure; each ``plot_*`` function writes one PNG and returns its path.
The record is :func:`shallow_collapse.experiments.fcn.plot_record`: the fields of a training result
for an ensemble (arrays with a network axis R), the predicted classes and the kernel probe; these
figures show network ``net`` (0 by default).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from . import save_figure

__all__ = ["plot_run", "plot_loss", "plot_nc1", "plot_weight_spectra", "plot_predictions", "plot_data",
           "plot_kernels", "layer_label"]

CLASS_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def layer_label(name: str) -> str:
    """``pre1`` -> 'layer 1 pre-activation', ``post1`` -> 'layer 1 post-activation', ``ntk`` -> 'NTK'."""
    if name == "ntk":
        return "NTK"
    kind = "pre" if name.startswith("pre") else "post"
    return f"layer {name[len(kind):]} {kind}-activation"


def _log10(x):
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, np.log10(np.where(x > 0, x, 1.0)), np.nan)


def plot_loss(record: dict, path: Path, net: int = 0) -> Path:
    """Training loss of every epoch (mean over its batches) and the full-data loss at the probes."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    train_loss = np.asarray(record["train_loss"])[:, net]
    ax.plot(np.arange(1, len(train_loss) + 1), train_loss, lw=1, label="training loss (epoch mean)")
    ax.plot(record["epochs"], np.asarray(record["loss"])[:, net], "o", ms=4, label="loss at probes (full data)")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE loss")
    status = record["status"][net]
    ax.set_title("training loss" + ("" if status == "ok" else f" ({status} at epoch {record['diverged_epoch'][net]})"))
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_nc1(record: dict, path: Path, net: int = 0) -> Path:
    """log10 NC1 by epoch for every layer's features, trace form and pinv form, with the input
    data's NC1 as a dashed reference line."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    forms = (("nc1", "data_nc1", r"$\log_{10}$ Tr($\Sigma_W$) / Tr($\Sigma_B$)"),
             ("nc1_pinv", "data_nc1_pinv", r"$\log_{10}$ Tr($\Sigma_W \Sigma_B^+$) / C"))
    for ax, (key, data_key, ylabel) in zip(axes, forms):
        for name, values in record[key].items():
            ax.plot(record["epochs"], _log10(np.asarray(values)[:, net]), marker="o", ms=3, label=layer_label(name))
        ax.axhline(_log10(np.asarray(record[data_key])[net]), color="k", ls="--", lw=1, label="input data X")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title("NC1 (trace form)")
    axes[1].set_title("NC1 (pseudo-inverse form)")
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def plot_weight_spectra(record: dict, layer: str, path: Path, net: int = 0) -> Path:
    """Eigenvalues (= singular values) of W^T W at init and after training: sorted values, their
    histogram, and the heatmap of W^T W(end) - W^T W(init)."""
    spectra = np.asarray(record["spectra"][layer])[:, net]  # (P, k)
    first, last = spectra[0], spectra[-1]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    idx = np.arange(1, len(first) + 1)
    axes[0].plot(idx, first, marker="o", ms=2, label=f"init (epoch {record['epochs'][0]})")
    axes[0].plot(idx, last, marker="o", ms=2, label=f"end (epoch {record['epochs'][-1]})")
    both = np.concatenate([first, last])
    if np.all(both > 0) and np.nanmax(both) > 10 * np.nanmin(both):
        axes[0].set_yscale("log")
    if len(first) <= 10:
        axes[0].set_xticks(idx)
        axes[0].set_xlim(0.5, len(first) + 0.5)
    else:
        axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_xlabel("index (descending; the other eigenvalues are exactly 0)" if len(first) == 1
                       else "index (descending)")
    axes[0].set_ylabel(f"eigenvalue of {layer}$^T${layer}")
    axes[0].set_title(f"spectrum of {layer}$^T${layer}")
    axes[0].legend()
    finite = np.concatenate([first, last])
    finite = finite[np.isfinite(finite)]
    bins = np.linspace(finite.min(), finite.max(), 40) if finite.size and finite.min() < finite.max() else 20
    axes[1].hist(first[np.isfinite(first)], bins=bins, alpha=0.6, label="init")
    axes[1].hist(last[np.isfinite(last)], bins=bins, alpha=0.6, label="end")
    axes[1].set_xlabel(f"eigenvalue of {layer}$^T${layer}")
    axes[1].set_ylabel("count")
    axes[1].set_title("histogram of the eigenvalues")
    axes[1].legend()
    diff = np.asarray(record["gram_final"][layer])[net] - np.asarray(record["gram_init"][layer])[net]
    lim = np.nanmax(np.abs(diff)) if np.isfinite(diff).any() else 1.0
    im = axes[2].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=axes[2], shrink=0.85)
    axes[2].set_title(f"{layer}$^T${layer} (end) $-$ {layer}$^T${layer} (init)")
    axes[2].set_xlabel("input unit")
    axes[2].set_ylabel("input unit")
    return save_figure(fig, path)


def plot_predictions(record: dict, labels: np.ndarray, path: Path, net: int = 0) -> Path:
    """The predicted class of every sample (``initial_prediction``, ``final_prediction``) at init and
    after training, samples ordered by class, and the raw output."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    C = int(record["num_classes"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for key, title, marker in (("initial", "init", "x"), ("final", "end", "o")):
        axes[0].plot(np.asarray(record[f"{key}_prediction"])[net][order], marker, ms=3, alpha=0.6, label=title)
        f = np.asarray(record[f"{key}_output"])[net][order]  # (N, out)
        if f.shape[-1] == 1:
            axes[1].plot(f[:, 0], marker, ms=2, alpha=0.6, label=title)
    bounds = np.cumsum(np.bincount(labels, minlength=C))[:-1]
    for ax in axes:
        for b in bounds:
            ax.axvline(b - 0.5, color="k", lw=0.8, ls=":")
        ax.set_xlabel("sample (ordered by class)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("predicted class")
    axes[0].set_yticks(range(C))
    axes[0].set_title("prediction per sample (class boundaries dotted)")
    f_end = np.asarray(record["final_output"])[net]
    if f_end.shape[-1] == 1:
        axes[1].set_ylabel("network output f(x)")
        axes[1].set_title("raw output per sample")
    else:
        axes[1].imshow(f_end[order].T, aspect="auto", interpolation="nearest", cmap="viridis")
        axes[1].set_ylabel("output unit")
        axes[1].set_title("outputs after training")
    return save_figure(fig, path)


def plot_data(X: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """The data's first three coordinates coloured by class (1-D: value against sample index)."""
    X, labels = np.asarray(X), np.asarray(labels)
    d = X.shape[1]
    fig = plt.figure(figsize=(6, 5), constrained_layout=True)
    if d >= 3:
        ax = fig.add_subplot(projection="3d")
    else:
        ax = fig.add_subplot()
    for c in np.unique(labels):
        pts = X[labels == c]
        color = CLASS_COLORS[c % len(CLASS_COLORS)]
        if d == 1:
            ax.plot(np.nonzero(labels == c)[0], pts[:, 0], ".", ms=3, color=color, label=f"class {c}")
        elif d == 2:
            ax.scatter(pts[:, 0], pts[:, 1], s=4, color=color, label=f"class {c}")
        else:
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=4, color=color, label=f"class {c}")
    if d == 1:
        ax.set_xlabel("sample index")
        ax.set_ylabel("$x_1$")
    else:
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        if d >= 3:
            ax.set_zlabel("$x_3$")
    ax.set_title(f"training data (N={len(labels)}, d={d}" + (", first 3 coordinates)" if d > 3 else ")"))
    ax.legend()
    return save_figure(fig, path)


def plot_kernels(kernels: dict, labels: np.ndarray, plots_dir: Path) -> list[Path]:
    """Limiting kernels of the data: heatmaps (samples ordered by class), spectra, NC1 per layer."""
    plots_dir = Path(plots_dir)
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    names = list(kernels)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), constrained_layout=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        K = np.asarray(kernels[name]["kernel"])[np.ix_(order, order)]
        im = ax.imshow(K, cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8)
        title = "NNGP " + layer_label(name) if name != "ntk" else "NTK"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("sample (ordered by class)")
        ax.set_ylabel("sample (ordered by class)")
    written = [save_figure(fig, plots_dir / "kernels_heatmaps.png")]
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    for name in names:
        eig = np.asarray(kernels[name]["eigenvalues"])
        ax.plot(np.arange(1, len(eig) + 1), np.clip(eig, 1e-16, None), label=layer_label(name))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("index (descending)")
    ax.set_ylabel("eigenvalue (clipped at 1e-16)")
    ax.set_title("spectra of the limiting kernels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(save_figure(fig, plots_dir / "kernels_spectra.png"))
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    values = _log10([kernels[name]["nc1"] for name in names])
    ax.bar(range(len(names)), values)
    ax.set_xticks(range(len(names)), [layer_label(n) for n in names], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(r"$\log_{10}$ NC1")
    ax.set_title("NC1 of the limiting kernels per layer")
    ax.grid(alpha=0.3, axis="y")
    written.append(save_figure(fig, plots_dir / "kernels_nc1.png"))
    return written


def plot_run(record: dict, X: np.ndarray, labels: np.ndarray, plots_dir: Path, net: int = 0) -> list[Path]:
    """Every figure of one run: loss, NC1 by epoch, W^T W spectra per layer, predictions, data and
    (when the record has them) the limiting kernels. Returns the paths written."""
    plots_dir = Path(plots_dir)
    written = [plot_loss(record, plots_dir / "loss.png", net)]
    if "nc1" in record:
        written.append(plot_nc1(record, plots_dir / "nc1.png", net))
    for layer in record.get("spectra", {}):
        written.append(plot_weight_spectra(record, layer, plots_dir / f"spectrum_{layer}.png", net))
    written.append(plot_predictions(record, labels, plots_dir / "predictions.png", net))
    written.append(plot_data(X, labels, plots_dir / "data.png"))
    if "kernels" in record:
        written += plot_kernels(record["kernels"], labels, plots_dir)
    return written

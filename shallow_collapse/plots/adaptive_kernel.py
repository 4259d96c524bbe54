"""Figures of a single adaptive-kernel run. They read the ``results.json`` record (and the three
N x N matrices, which are too large for JSON); they compute no science beyond log scales."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import save_figure

__all__ = ["plot_single_run", "SINGLE_RUN_PLOTS"]

SINGLE_RUN_PLOTS = (
    "data_kernel.png", "q_kernels.png", "q_spectra.png", "sigma.png", "sigma_trace.png",
    "sigma_spectrum.png", "nc1_per_step.png", "fbar_kernel_nc1.png", "mse_per_step.png",
    "fbar_per_sample.png", "solver_steps.png", "action_per_step.png",
)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def _heatmap(ax, M, title, symmetric=False):
    M = _np(M)
    if symmetric:
        v = float(np.nanmax(np.abs(M))) or 1.0
        im = ax.imshow(M, cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
    else:
        im = ax.imshow(M, cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("sample j (ordered by class)")
    ax.set_ylabel("sample i (ordered by class)")
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _factor_labels(per_step):
    return ["GP" if f == "inf" else f"{float(f):.3g}" for f in (s["factor"] for s in per_step)]


def _step_axis(ax, labels):
    ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
    ax.set_xlabel(r"annealing factor $\chi$ (GP = NNGP limit, last = h)")
    ax.grid(alpha=0.3)


def _log10(values):
    v = _np(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)


def _tag(record: dict) -> str:
    """The line every figure carries: the cell, the activation, h and the status."""
    status = record["status"] + ("" if record["status"] == "ok" else
                                 f" (at chi={record['final_factor']:g}, rel_residual {float(record['rel_residual']):.2g})")
    return f"N={record['N']}, d={record['in_features']}, {record['activation']}, h={record['h']}: {status}"


def _data_kernel(record, matrices, tag):
    fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
    _heatmap(ax, matrices["data_kernel"], r"data kernel $XX^T$")
    fig.suptitle(tag, fontsize=9)
    return fig


def _start_end_change(start, end, titles, tag):
    """Three heatmaps: ``start``, ``end`` and ``end - start`` (on a symmetric colour scale)."""
    start, end = _np(start), _np(end)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    for i, (ax, M, title) in enumerate(zip(axes, (start, end, end - start), titles)):
        _heatmap(ax, M, title, symmetric=i == 2)
    fig.suptitle(tag, fontsize=9)
    return fig, axes


def _q_kernels(record, matrices, tag):
    fig, _ = _start_end_change(matrices["q_gp"], matrices["q_end"],
                               (f"Q at the GP limit (NC1 {record['nngp_nc1']:.3g})",
                                f"Q at the solution (NC1 {record['ak_nc1']:.3g})", "Q(solution) - Q(GP limit)"), tag)
    return fig


def _q_spectra(record, matrices, tag):
    fig, ax = plt.subplots(figsize=(6, 4.5), constrained_layout=True)
    for key, label in (("q_spectrum_gp", "Q at the GP limit"), ("q_spectrum_end", "Q at the solution")):
        ev = _np(record[key])
        ax.plot(np.arange(1, len(ev) + 1), np.abs(ev), label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index (largest first)")
    ax.set_ylabel("|eigenvalue| of Q")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title("spectra of Q  |  " + tag, fontsize=9)
    return fig


def _sigma(record, matrices, tag):
    fig, axes = _start_end_change(record["sigma_start"], record["sigma_end"],
                                  (r"$\Sigma$ at the start (NNGP: $\sigma_w^2/d\ I$)", r"$\Sigma$ at the end",
                                   r"$\Sigma_{end} - \Sigma_{start}$"), tag)
    for ax in axes:
        ax.set_xlabel("input coordinate")
        ax.set_ylabel("input coordinate")
    return fig


def _sigma_trace(record, matrices, tag):
    per_step = record["per_step"]
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    ax.plot(np.arange(len(per_step)), [s["trace_sigma"] for s in per_step], marker="o")
    _step_axis(ax, _factor_labels(per_step))
    ax.set_ylabel(r"Tr($\Sigma$)")
    ax.set_title(r"Tr($\Sigma$) per accepted step  |  " + tag, fontsize=9)
    return fig


def _sigma_spectrum(record, matrices, tag):
    fig, ax = plt.subplots(figsize=(6, 4.5), constrained_layout=True)
    for key, label in (("sigma_spectrum_start", "start (NNGP)"), ("sigma_spectrum_end", "end")):
        ev = _np(record[key])
        ax.plot(np.arange(1, len(ev) + 1), ev, marker="o", ms=3, label=label)
    ax.set_yscale("symlog", linthresh=1e-8)
    ax.set_xlabel("eigenvalue index (largest first)")
    ax.set_ylabel(r"eigenvalue of $\Sigma$")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(r"spectrum of $\Sigma$  |  " + tag, fontsize=9)
    return fig


def _nc1_per_step(record, matrices, tag):
    per_step = record["per_step"]
    x = np.arange(len(per_step))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    axes[0].plot(x, _log10([s["nc1"] for s in per_step]), marker="o", label="AK (Q)")
    axes[0].axhline(math.log10(record["data_nc1"]), color="gray", ls="--", label="input data X")
    axes[0].set_ylabel(r"$\log_{10}$ NC1 of Q")
    axes[0].legend()
    axes[1].plot(x, _log10([s["tr_w"] for s in per_step]), marker="o", label=r"Tr($\Sigma_W$)")
    axes[1].plot(x, _log10([s["tr_b"] for s in per_step]), marker="s", label=r"Tr($\Sigma_B$)")
    axes[1].set_ylabel(r"$\log_{10}$ trace (features of Q)")
    axes[1].legend()
    for ax in axes:
        _step_axis(ax, _factor_labels(per_step))
    fig.suptitle("NC1 of Q per accepted step  |  " + tag, fontsize=9)
    return fig


def _per_step_curve(key, ylabel, title):
    """A figure of one per-step quantity of the record on a log10 scale."""
    def figure(record, matrices, tag):
        per_step = record["per_step"]
        fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        ax.plot(np.arange(len(per_step)), _log10([s[key] for s in per_step]), marker="o")
        _step_axis(ax, _factor_labels(per_step))
        ax.set_ylabel(ylabel)
        ax.set_title(title + "  |  " + tag, fontsize=9)
        return fig
    return figure


def _fbar_per_sample(record, matrices, tag):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    idx = np.arange(len(record["y"]))
    y = _np(record["y"])
    axes[0].plot(idx, y, "k.", ms=2, label="target y")
    for key, label in (("fbar_gp", r"$\bar f$ at the GP limit"), ("fbar_end", r"$\bar f$ at the end")):
        axes[0].plot(idx, record[key], ".", ms=2, alpha=0.7, label=label)
        # y - fbar = sig2 alpha is tiny when the GP interpolates: shown on a log scale.
        axes[1].plot(idx, _log10(np.abs(y - _np(record[key]))), ".", ms=2, alpha=0.7, label=label)
    axes[0].set_ylabel(r"$\bar f_i$")
    axes[1].set_ylabel(r"$\log_{10} |y_i - \bar f_i|$")
    for ax in axes:
        ax.set_xlabel("sample index (ordered by class)")
        ax.legend(markerscale=5, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(r"GP posterior mean $\bar f$ per sample  |  " + tag, fontsize=9)
    return fig


def _solver_steps(record, matrices, tag):
    steps = record["steps"]
    xs = np.arange(len(steps))
    ok = np.array([bool(s["converged"]) for s in steps])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    evals = np.array([s["evaluations"] for s in steps], dtype=float)
    axes[0].bar(xs[ok], evals[ok], color="tab:blue", label="converged")
    if (~ok).any():
        axes[0].bar(xs[~ok], evals[~ok], color="tab:red", label="not converged (subdivided or gave up)")
    axes[0].set_ylabel("O(N^3) function evaluations")
    axes[0].legend(fontsize=8)
    res = np.array([float(s["rel_residual"]) for s in steps])
    axes[1].plot(xs, _log10(np.maximum(res, 1e-300)), marker="o", color="k", lw=0.8)
    axes[1].plot(xs[~ok], _log10(np.maximum(res[~ok], 1e-300)), "x", color="tab:red", ms=9, mew=2)
    axes[1].axhline(math.log10(record["rtol"]), color="gray", ls="--", label="rtol")
    axes[1].set_ylabel(r"$\log_{10}$ rel_residual max|$\Sigma-\Sigma_{new}$|/max|$\Sigma$|")
    axes[1].legend(fontsize=8)
    step_labels = [f"{float(s['factor']):.3g}" for s in steps]
    for ax in axes:
        ax.set_xticks(xs, step_labels, rotation=60, fontsize=7)
        ax.set_xlabel(r"attempted step: annealing factor $\chi$")
        ax.grid(alpha=0.3)
    fig.suptitle(f"solver record ({record['strategy']}, {record['evaluations']} evaluations, "
                 f"{record['seconds']:.1f}s)  |  " + tag, fontsize=9)
    return fig


def _action_per_step(record, matrices, tag):
    # The action and the relative residual at every accepted factor (the NNGP start, where S is
    # infinite and the residual exactly 0, is left out).
    solved = [s for s in record["per_step"] if s["factor"] != "inf"]
    xs = np.arange(len(solved))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    axes[0].plot(xs, [float(s["action"]) for s in solved], marker="o")
    axes[0].set_ylabel(r"action $S(\Sigma)$ at the accepted point")
    axes[1].plot(xs, _log10([float(s["rel_residual"]) for s in solved]), marker="o", color="k")
    axes[1].axhline(math.log10(record["rtol"]), color="gray", ls="--", label="rtol")
    axes[1].set_ylabel(r"$\log_{10}$ rel_residual")
    axes[1].legend(fontsize=8)
    for ax in axes:
        _step_axis(ax, [f"{float(s['factor']):.3g}" for s in solved])
    fig.suptitle(f"action and relative residual per annealing step (kept: {record['origin']}, "
                 f"S = {float(record['action']):.10g})  |  " + tag, fontsize=9)
    return fig


# file name -> figure(record, matrices, tag), in the order they are written
_FIGURES = {
    "data_kernel.png": _data_kernel, "q_kernels.png": _q_kernels, "q_spectra.png": _q_spectra,
    "sigma.png": _sigma, "sigma_trace.png": _sigma_trace, "sigma_spectrum.png": _sigma_spectrum,
    "nc1_per_step.png": _nc1_per_step,
    "fbar_kernel_nc1.png": _per_step_curve("fbar_nc1", r"$\log_{10}$ NC1 of $\bar f \bar f^T$",
                                           r"NC1 of the kernel of $\bar f$ per step"),
    "mse_per_step.png": _per_step_curve("mse", r"$\log_{10}$ training MSE of $\bar f$: mean$_i (y_i - \bar f_i)^2$",
                                        r"training MSE of $\bar f$ per step"),
    "fbar_per_sample.png": _fbar_per_sample, "solver_steps.png": _solver_steps, "action_per_step.png": _action_per_step,
}
assert tuple(_FIGURES) == SINGLE_RUN_PLOTS


def plot_single_run(record: dict, matrices: dict, plots_dir) -> list[Path]:
    """Write every figure of :data:`SINGLE_RUN_PLOTS` into ``plots_dir``; returns their paths.

    ``record``: the ``results.json`` content of a non-lightweight run; ``matrices``: ``data_kernel``
    (X X^T), ``q_gp`` (Q at the NNGP limit) and ``q_end`` (Q at the solution), each ``(N, N)``.
    """
    tag = _tag(record)
    return [save_figure(figure(record, matrices, tag), Path(plots_dir) / name) for name, figure in _FIGURES.items()]

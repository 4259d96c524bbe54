"""Trained fully-connected networks: the sweep method ``fcn`` and the single run of ``fcn.py``.

Network init seeds are :func:`~shallow_collapse.model.network_seed` of (seed, class sizes, d,
repeat), so a sweep cell's repeat r and a single run with the same data keys (repeat 0) train
the very same network on the very same draw.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data import gaussian_data
from ..devices import resolve_device
from ..model import FCNEnsemble, network_seed
from ..training import make_targets, train
from . import limiting_kernels

__all__ = ["evaluate_cell", "run", "build_ensemble", "results_json"]


def build_ensemble(cfg: dict, seeds, in_features: int, device=None, dtype=torch.float32) -> FCNEnsemble:
    """An :class:`FCNEnsemble` with the network keys of ``cfg`` and one network per seed."""
    return FCNEnsemble(seeds, in_features, cfg["hidden_features"], cfg["out_features"], cfg["L"],
                       cfg["activation"], cfg["hidden_weight_std"], cfg["final_weight_std"], cfg["bias_std"],
                       cfg["use_batch_norm"], dtype=dtype,
                       device=device if device is not None else resolve_device(cfg["device"]))


def _train_args(cfg: dict) -> dict:
    return dict(lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                batch_size=cfg["batch_size"], num_epochs=cfg["num_epochs"])


def evaluate_cell(cfg: dict, cell, datasets) -> list[dict]:
    """Train the repeats of ``cell`` as one ensemble (one network per draw) and report, per repeat,
    a row ``fcn`` (NC1 of the last hidden layer's post-activation features after training, both
    forms, with final loss and accuracy) plus the rows ``nngp`` and ``ntk`` of the same draw.

    ``batch_size`` >= N means full batch. A diverged network gives status ``diverged`` (NaN NC1,
    the epoch in ``diverged_epoch``); an unexpected failure of the training gives status ``error``
    with the message, never an exception.
    """
    C = len(cell.class_sizes)
    labels = datasets[0].labels
    if any(not torch.equal(ds.labels, labels) for ds in datasets):
        raise ValueError("every draw of a cell must have the same labels")
    seeds = [network_seed(cfg["seed"], cell.class_sizes, cell.in_features, r) for r in cell.repeats]
    X = torch.stack([ds.X for ds in datasets])
    T = make_targets(labels, C, cfg["out_features"]).unsqueeze(0).expand(len(datasets), -1, -1)
    name = f"post{cfg['L'] - 1}"
    rows = []
    try:
        model = build_ensemble(cfg, seeds, cell.in_features)
        rec = train(model, X, T, labels, **_train_args(cfg), probing_frequency=None, probe_features=True,
                    probe_weights=False, num_classes=C, probe_init=False)
        per_net = rec["seconds"] / len(seeds)
        for i, r in enumerate(cell.repeats):
            rows.append({"method": "fcn", "repeat": r, "nc1": float(rec["final_nc1"][name][i]),
                         "status": rec["status"][i], "final_loss": float(rec["final_loss"][i]),
                         "accuracy": float(rec["final_accuracy"][i]),
                         "nc1_pinv": float(rec["final_nc1_pinv"][name][i]),
                         "diverged_epoch": rec["diverged_epoch"][i] if rec["diverged_epoch"][i] is not None else "",
                         "network_seed": seeds[i], "train_seconds": per_net})
    except (RuntimeError, FloatingPointError) as exc:  # e.g. out of memory, a failed kernel
        message = " ".join(str(exc).split())[:300]
        rows = [{"method": "fcn", "repeat": r, "nc1": math.nan, "status": "error", "message": message,
                 "network_seed": s} for r, s in zip(cell.repeats, seeds)]
    return rows + limiting_kernels.evaluate_cell(cfg, cell, datasets)


def results_json(cfg: dict, record: dict, network_seed_: int) -> dict:
    """The JSON-serialisable part of a one-network training ``record``: every probe by epoch."""
    def first(v):  # (P, R) -> (P,) for the single network
        return np.asarray(v)[..., 0] if np.ndim(v) >= 1 else v

    out = {
        "network_seed": network_seed_,
        "status": record["status"][0], "diverged_epoch": record["diverged_epoch"][0],
        "epochs": record["epochs"],
        "train_loss": np.asarray(record["train_loss"])[:, 0],
        "loss": first(record["loss"]), "accuracy": first(record["accuracy"]),
        "final_loss": float(record["final_loss"][0]), "final_accuracy": float(record["final_accuracy"][0]),
        "data_nc1": float(record["data_nc1"][0]), "data_nc1_pinv": float(record["data_nc1_pinv"][0]),
        "seconds": record["seconds"],
    }
    for key in ("nc1", "nc1_pinv"):
        if key in record:
            out[key] = {name: first(v) for name, v in record[key].items()}
            out[f"final_{key}"] = {name: float(v[0]) for name, v in record[f"final_{key}"].items()}
    if "spectra" in record:  # (P, R, k) -> (P, k)
        out["spectra"] = {name: np.asarray(v)[:, 0] for name, v in record["spectra"].items()}
    if "kernels" in record:
        out["kernels"] = {name: {"nc1": k["nc1"], "eigenvalues": k["eigenvalues"]}
                          for name, k in record["kernels"][0].items()}
    return out


def run(cfg: dict, run) -> None:
    """Train one network on the config's draw (repeat 0) and write ``results.json``,
    ``weights.pt`` (the ensemble's state dict, leading dimension 1; ``torch.load(...,
    weights_only=True)`` and :meth:`FCNEnsemble.load_state_dict`), ``initial_weights.pt`` and the
    plots of :mod:`shallow_collapse.plots.fcn`."""
    from ..plots.fcn import plot_run

    sizes = tuple(cfg["class_sizes"])
    C = len(sizes)
    d = cfg["in_features"]
    ds = gaussian_data(sizes, d, cfg["class_means"], cfg["class_stds"], cfg["seed"], repeat=0)
    seed = network_seed(cfg["seed"], sizes, d, 0)
    device = resolve_device(cfg["device"])
    model = build_ensemble(cfg, [seed], d, device=device)
    run.log.info("training one network: N=%d d=%d h=%d L=%d %s on %s (network seed %d)", len(ds.labels), d,
                 cfg["hidden_features"], cfg["L"], cfg["activation"], device, seed)
    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    targets = make_targets(ds.labels, C, cfg["out_features"])
    record = train(model, ds.X, targets, ds.labels, **_train_args(cfg), probing_frequency=cfg["probing_frequency"],
                   probe_features=cfg["probe_features"], probe_weights=cfg["probe_weights"],
                   probe_kernels=cfg["probe_kernels"], num_classes=C, log=run.log)
    results = results_json(cfg, record, seed)
    run.write_json("results.json", results)
    run.save_tensors("weights.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    run.save_tensors("initial_weights.pt", initial)
    run.log.info("status %s, final loss %.4g, accuracy %.3f, %.1f s", results["status"], results["final_loss"],
                 results["final_accuracy"], results["seconds"])
    if results["status"] != "ok":
        run.log.warning("the network diverged at epoch %s", results["diverged_epoch"])
    plot_run(record, ds.X.numpy(), ds.labels.numpy(), run.plots)

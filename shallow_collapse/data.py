"""Gaussian class data (MATH.md section 1), reproducible from (seed, cell, repeat) alone.

Class c is drawn from N(m_c 1_d, s_c^2 I_d). Rows are ordered by class (all of class 0 first).
A draw depends only on ``seed``, the class sizes, ``d`` and ``repeat`` (through a NumPy
``SeedSequence``), never on the order in which cells run, so a balanced N=2048 cell and an
imbalanced (1024, 1024) cell with the same seed, d and repeat see the same points, and every
method (FCN, NNGP, NTK, AK) evaluated on a cell sees the same draw.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DATA_CLASSES", "Dataset", "class_labels", "scalar_targets", "one_hot_targets",
           "gaussian_data", "draw_seed"]

# Data classes of the established config format and the number of classes each implies.
DATA_CLASSES = {"GaussiandD2NL": 2, "GaussiandD4NL": 4}


@dataclass
class Dataset:
    """One draw. ``X``: ``(N, d)`` float64; ``labels``: ``(N,)`` int64 in ``0..C-1``;
    ``y``: ``(N,)`` float64 scalar targets 2c - (C-1) (MATH section 1)."""

    X: torch.Tensor
    labels: torch.Tensor
    y: torch.Tensor


def class_labels(class_sizes) -> torch.Tensor:
    """``(N,)`` int64 labels, ``class_sizes[c]`` copies of c in class order."""
    return torch.repeat_interleave(torch.arange(len(class_sizes)), torch.as_tensor(list(class_sizes)))


def scalar_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N,)`` float64 targets y = 2c - (C-1): {-1, +1} for C=2, {-3, -1, 1, 3} for C=4."""
    return (2.0 * labels - (num_classes - 1)).to(torch.float64)


def one_hot_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N, C)`` float64 one-hot targets, for networks with C outputs."""
    return torch.nn.functional.one_hot(labels, num_classes).to(torch.float64)


def draw_seed(seed: int, class_sizes, d: int, repeat: int) -> np.random.SeedSequence:
    """The seed sequence of one draw: a function of (seed, class sizes, d, repeat) only."""
    return np.random.SeedSequence([int(seed), int(d), int(repeat), *map(int, class_sizes)])


def gaussian_data(class_sizes, d: int, class_means, class_stds, seed: int, repeat: int = 0) -> Dataset:
    """Draw ``sum(class_sizes)`` points in R^d, class c ~ N(class_means[c] 1, class_stds[c]^2 I)."""
    rng = np.random.default_rng(draw_seed(seed, class_sizes, d, repeat))
    labels = class_labels(class_sizes)
    z = rng.standard_normal((len(labels), d))
    means = np.asarray(class_means, dtype=np.float64)[labels.numpy()]
    stds = np.asarray(class_stds, dtype=np.float64)[labels.numpy()]
    X = torch.from_numpy(means[:, None] + stds[:, None] * z)
    return Dataset(X=X, labels=labels, y=scalar_targets(labels, len(class_sizes)))

"""Class data: Gaussian (MATH.md section 1), a file or scikit-learn's digits; every draw is
reproducible from (seed, cell, repeat) alone.

Class c is drawn from N(m_c 1_d, s_c^2 I_d). Rows are ordered by class (all of class 0 first).
A draw depends only on ``seed``, the class sizes, ``d`` and ``repeat`` (through a NumPy
``SeedSequence``), never on the order in which cells run, so a balanced N=2048 cell and an
imbalanced (1024, 1024) cell with the same seed, d and repeat see the same points, and every
method (FCN, NNGP, NTK, AK) evaluated on a cell sees the same draw.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = ["DATA_CLASSES", "SOURCES", "Dataset", "DataError", "Pool", "class_labels", "scalar_targets",
           "one_hot_targets", "gaussian_data", "draw_seed", "draw", "pool", "pool_data", "check_source",
           "check_cells", "project", "subsample", "principal_components", "source_label",
           "is_gaussian", "is_pool", "is_file", "file_digest", "check_arrays"]

# Data classes of the established config format and the number of classes each implies.
DATA_CLASSES = {"GaussiandD2NL": 2, "GaussiandD4NL": 4}


@dataclass
class Dataset:
    """One draw. ``X``: ``(N, d)`` float64; ``labels``: ``(N,)`` int64 in ``0..C-1``;
    ``y``: ``(N,)`` float64 scalar targets 2c - (C-1) (MATH section 1); ``index``: ``(N,)`` the
    pool rows of a file or digits draw (None for Gaussian draws)."""

    X: torch.Tensor
    labels: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None = None


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


# ---------------------------------------------------------------------------------------------
# Data the toolkit did not generate: a file (.npz with X and labels) or scikit-learn's digits.
# A *pool* is the rows of the kept classes (``data_classes``, in that order). For d principal
# components, the pool is centred on its mean and projected on the top-d eigenvectors of its
# covariance (computed once per pool), then multiplied by one scalar so that the pool's mean of
# |x|^2 / d is ``data_scale``^2. A cell draws N/C (or ``class_sizes``) rows of each class without
# replacement, from (seed, class sizes, d, repeat) alone, as the Gaussian draws are.
# ---------------------------------------------------------------------------------------------

SOURCES = ("file", "digits")
DIGITS_SHAPE = (1797, 64)


class DataError(ValueError):
    """Data that cannot be used: one line naming the config key and what was expected."""


def _refuse(key: str, expected: str, got) -> DataError:
    text = repr(got)
    text = text if len(text) <= 120 else text[:117] + "..."
    return DataError(f"config key '{key}': expected {expected}, got {text}")


def is_gaussian(cfg: dict) -> bool:
    """The data are Gaussian classes (``class_means``, ``class_stds`` describe them)."""
    return cfg.get("training_data_cls") in DATA_CLASSES


def is_pool(cfg: dict) -> bool:
    """The data are a pool of points, a file or the digits (``data_classes``, ``data_scale`` describe it)."""
    return not is_gaussian(cfg)


def is_file(cfg: dict) -> bool:
    """The data are an .npz file (``data_path``, ``data_sha256`` describe it)."""
    return is_pool(cfg) and cfg.get("training_data_cls") != "digits"


def source_label(cfg: dict) -> str:
    """The data source in words: ``GaussiandD2NL``, ``digits[3,8]``, ``feats.npz@1a2b3c4d5e6f``."""
    cls = cfg.get("training_data_cls")
    classes = cfg.get("data_classes")
    kept = "" if classes is None else "[" + ",".join(map(str, classes)) + "]"
    if cls == "digits":
        return f"digits{kept}"
    if cls == "file":
        return f"{Path(str(cfg.get('data_path'))).name}@{str(cfg.get('data_sha256'))[:12]}{kept}"
    return str(cls)


@dataclass(frozen=True)
class Pool:
    """The rows of the kept classes: ``X`` ``(n, D)`` float64, ``labels`` ``(n,)`` in ``0..C-1``
    (class c is the c-th entry of ``classes``, the original labels), ``rows[c]`` the pool rows of
    class c, and the ``digest`` of the source (SHA-256 of the file, or of the digits array)."""

    X: np.ndarray
    labels: np.ndarray
    classes: tuple
    rows: tuple
    digest: str

    @property
    def counts(self) -> tuple:
        return tuple(len(r) for r in self.rows)


def _read_npz(content: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """X and labels of an .npz file's bytes, checked (each failure names data_path)."""
    try:
        archive = np.load(io.BytesIO(content), allow_pickle=False)
    except Exception:  # noqa: BLE001 -- any failure to parse is the same refusal
        archive = None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _refuse("data_path", "a readable .npz file (numpy.savez) holding X and labels", name)
    with archive:
        missing = [k for k in ("X", "labels") if k not in archive.files]
        if missing:
            raise _refuse("data_path", f"an .npz holding arrays X and labels (missing {', '.join(missing)}; "
                          f"it holds {', '.join(archive.files) or 'nothing'})", name)
        try:
            X, labels = archive["X"], archive["labels"]
        except Exception:  # noqa: BLE001 -- object arrays need pickle: refused
            raise _refuse("data_path", "X and labels as plain numeric arrays (no pickled objects)", name) from None
    return X, labels


def check_arrays(X: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """X as (n, D) finite float64 and labels as (n,) int64, or a one-line refusal naming data_path."""
    if X.dtype.kind not in "iuf" or X.ndim != 2 or 0 in X.shape:
        raise _refuse("data_path", "X as a 2-D array of real numbers (n points x D features)",
                      f"{name}: X of shape {X.shape} and dtype {X.dtype}")
    X = X.astype(np.float64)
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise _refuse("data_path", "finite X (no NaN or inf)", f"{name}: {bad} rows of X with NaN or inf")
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise _refuse("data_path", "labels as a 1-D array of integers",
                      f"{name}: labels of shape {labels.shape} and dtype {labels.dtype}")
    if len(labels) != len(X):
        raise _refuse("data_path", f"one label per row of X ({len(X)})", f"{name}: {len(labels)} labels")
    return X, labels.astype(np.int64)


@lru_cache(maxsize=4)
def _digits() -> tuple[np.ndarray, np.ndarray, str]:
    """The 8x8 digits scikit-learn ships in its wheel (read from the installed package, never
    downloaded): 1797 images x 64 pixels with values 0..16, labels 0..9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X, labels = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    digest = hashlib.sha256(X.tobytes() + labels.tobytes()).hexdigest()
    return X, labels, digest


@lru_cache(maxsize=4)
def _file(path: str, digest: str) -> tuple[np.ndarray, np.ndarray]:
    content = Path(path).read_bytes()
    if hashlib.sha256(content).hexdigest() != digest:
        raise DataError(f"config key 'data_path': expected the file the run was started with (SHA-256 "
                        f"{digest[:12]}), got {path} with other content (edited while running?)")
    return check_arrays(*_read_npz(content, path), path)


def file_digest(path) -> str:
    """SHA-256 of a data file's content, or a refusal naming data_path."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except (OSError, TypeError) as exc:
        reason = "not found" if isinstance(exc, FileNotFoundError) else getattr(exc, "strerror", None) or "unreadable"
        raise _refuse("data_path", "a readable .npz file", f"{path} ({reason})") from None


def _source_arrays(cfg: dict) -> tuple[np.ndarray, np.ndarray, str]:
    if cfg["training_data_cls"] == "digits":
        return _digits()
    return (*_file(str(cfg["data_path"]), cfg["data_sha256"]), cfg["data_sha256"])


def pool(cfg: dict) -> Pool:
    """The pool of ``cfg``'s kept classes (cached per source, digest and classes)."""
    X, labels, digest = _source_arrays(cfg)
    return _pool(X, labels, digest, tuple(cfg["data_classes"]))


_POOLS: dict = {}


def _pool(X, labels, digest, classes) -> Pool:
    key = (digest, classes)
    if key not in _POOLS:
        rows = [np.flatnonzero(labels == c) for c in classes]
        order = np.concatenate(rows)
        new_labels = np.repeat(np.arange(len(classes)), [len(r) for r in rows])
        starts = np.cumsum([0, *[len(r) for r in rows]])
        _POOLS.clear() if len(_POOLS) > 8 else None
        _POOLS[key] = Pool(X=X[order], labels=new_labels, classes=classes, digest=digest,
                           rows=tuple(np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])))
    return _POOLS[key]


def check_source(cfg: dict) -> None:
    """Check the data keys of a resolved ``cfg`` against its source and fill the derived ones:
    ``data_sha256`` (file), ``data_classes`` (default: every label, sorted). Raises
    :class:`DataError` before any work; nothing is computed but the file's digest and a read."""
    cls = cfg["training_data_cls"]
    if cls != "file" and cfg["data_path"] is not None:
        raise _refuse("data_path", f"no data_path with training_data_cls {cls} (it reads no file; "
                      "set training_data_cls: file to use one)", cfg["data_path"])
    if is_gaussian(cfg):
        for key in ("data_classes", "data_sha256"):
            if cfg[key] is not None:
                raise _refuse(key, f"no {key} with training_data_cls {cls} (Gaussian classes 0..C-1)", cfg[key])
        return
    if cls == "file":
        if cfg["data_path"] is None:
            raise _refuse("data_path", "the path of an .npz file with X and labels for training_data_cls file", None)
        digest = file_digest(cfg["data_path"])
        if cfg["data_sha256"] not in (None, digest):
            raise _refuse("data_sha256", f"the SHA-256 of data_path's content, {digest} (derived: leave it out)",
                          cfg["data_sha256"])
        cfg["data_sha256"] = digest
    elif cfg["data_sha256"] is not None:
        raise _refuse("data_sha256", "no data_sha256 with training_data_cls digits", cfg["data_sha256"])
    X, labels, _ = _source_arrays(cfg)
    present = sorted(set(labels.tolist()))
    classes = cfg["data_classes"]
    if classes is None:
        classes = present
    else:
        missing = [c for c in classes if c not in present]
        if missing:
            raise _refuse("data_classes", f"labels that occur in the data ({_few(present)})", classes)
        if len(set(classes)) != len(classes):
            raise _refuse("data_classes", "distinct labels", classes)
    if len(classes) < 2:
        raise _refuse("data_classes", "at least two classes to keep", classes)
    cfg["data_classes"] = [int(c) for c in classes]
    if cfg["num_classes"] != len(classes):
        raise _refuse("num_classes", f"{len(classes)}, the number of classes kept ({source_label(cfg)}; "
                      "num_classes must agree with data_classes)", cfg["num_classes"])


def _few(values) -> str:
    return ", ".join(map(str, values[:12])) + (", ..." if len(values) > 12 else "")


def check_cells(cfg: dict, groups, dims, sizes_key: str, d_key: str) -> None:
    """Refuse, before any work, a grid the pool cannot fill: a class with fewer points than a cell
    needs (naming the cell and the class), or d above the number of features D or of pool points."""
    if is_gaussian(cfg):
        return
    p = pool(cfg)
    for sizes in groups:
        for c, (need, have) in enumerate(zip(sizes, p.counts)):
            if need > have:
                cell = "n" + "-".join(map(str, sizes))
                raise _refuse(sizes_key, f"cells the pool can fill: cell {cell} needs {need} points of class {c} "
                              f"(label {p.classes[c]}), {source_label(cfg)} has {have}", list(sizes))
    n, D = p.X.shape  # X is (points, features)
    for d in dims:
        if d > D or d > n:
            raise _refuse(d_key, f"at most {min(D, n)} principal components ({source_label(cfg)} has D={D} "
                          f"features and {n} points of the kept classes)", d)


_PCA: dict = {}


def principal_components(p: Pool) -> tuple[np.ndarray, np.ndarray]:
    """The pool's mean and its covariance's eigenvectors, columns by decreasing eigenvalue, each
    column's sign fixed (its entry of largest magnitude positive) so the projection is the same
    on every machine. Computed once per pool."""
    key = (p.digest, p.classes)
    if key not in _PCA:
        mean = p.X.mean(axis=0)
        centred = p.X - mean
        values, vectors = np.linalg.eigh(centred.T @ centred / len(centred))
        vectors = vectors[:, np.argsort(values)[::-1]]
        pivot = np.abs(vectors).argmax(axis=0)
        vectors = vectors * np.sign(vectors[pivot, np.arange(vectors.shape[1])])
        _PCA.clear() if len(_PCA) > 8 else None
        _PCA[key] = (mean, vectors)
    return _PCA[key]


def project(p: Pool, d: int, scale: float) -> np.ndarray:
    """``(n, d)``: the pool centred, on its top-d principal directions, times the one scalar that
    makes the pool's mean of |x|^2 / d equal ``scale``^2."""
    mean, vectors = principal_components(p)
    Z = (p.X - mean) @ vectors[:, :d]
    power = float((Z ** 2).sum(axis=1).mean()) / d
    if power <= 0:
        raise DataError("config key 'data_classes': expected kept classes whose points are not all equal")
    return Z * (scale / math.sqrt(power))


def subsample(p: Pool, class_sizes, seed: int, d: int, repeat: int) -> np.ndarray:
    """Pool row indices of one draw: ``class_sizes[c]`` distinct rows of class c, in class order
    (sorted within a class), from (seed, class sizes, d, repeat) alone."""
    rng = np.random.default_rng(draw_seed(seed, class_sizes, d, repeat))
    picks = [np.sort(p.rows[c][rng.choice(len(p.rows[c]), size=int(n), replace=False)])
             for c, n in enumerate(class_sizes)]
    return np.concatenate(picks)


def pool_data(cfg: dict, class_sizes, d: int, repeat: int = 0) -> Dataset:
    """One draw of a file or digits pool: the subsample's rows, projected and scaled."""
    p = pool(cfg)
    index = subsample(p, class_sizes, cfg["seed"], d, repeat)
    labels = class_labels(class_sizes)
    X = torch.from_numpy(np.ascontiguousarray(project(p, d, cfg["data_scale"])[index]))
    return Dataset(X=X, labels=labels, y=scalar_targets(labels, len(class_sizes)), index=torch.from_numpy(index))


def draw(cfg: dict, class_sizes, d: int, repeat: int = 0) -> Dataset:
    """The draw of (class sizes, d, repeat) from ``cfg``'s data source: every method's data."""
    if is_gaussian(cfg):
        return gaussian_data(class_sizes, d, cfg["class_means"], cfg["class_stds"], cfg["seed"], repeat)
    return pool_data(cfg, class_sizes, d, repeat)

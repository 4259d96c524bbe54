"""Convergence diagnostics and estimates from independent chains, and the chains' traces on disk.

Draws ``x`` are shaped ``(S, M)``: S draws per chain, M chains. The diagnostics come from
ArviZ's arviz-stats (``arviz_stats.base.array_stats``), after Vehtari, Gelman, Simpson, Carpenter
and Buerkner (2021), "Rank-normalization, folding, and localization: an improved R-hat for
assessing convergence of MCMC", Bayesian Analysis 16(2):

- :func:`rhat`: rank-normalised split R-hat, the larger of the bulk R-hat (split chains, ranks
  mapped to normal scores) and the tail R-hat (the same of the folded draws ``|x - median|``),
  so chains that differ only in spread are caught as well as chains around different locations;
- :func:`ess_bulk`, :func:`ess_tail`: effective sample size of the rank-normalised draws, and the
  smaller of those of the indicators ``x <= q05`` and ``x <= q95`` (the 5% and 95% quantiles);
- :func:`mcse_mean`: Monte Carlo standard error of the mean, sd / sqrt(ESS of the mean);
- :func:`ratio_log10`: log10 of a ratio of chain means with its standard error (delta method).

Each diagnostic returns a Python float, and NaN, never an exception, where it is undefined: fewer
than 4 draws per chain, a non-finite draw, and for :func:`rhat` fewer than 2 chains (ArviZ
compares chains; a single chain gets NaN, not its two halves). Two cases are decided here before
ArviZ is asked, as ArviZ gives 0/0 for the first and can give a harmless-looking number for the
second (a chain stuck at the 25% quantile of the others: rank R-hat 1.10 at S = 1000, M = 4):

- every draw of every chain is the same number (a quantity the chains do not move, or agree on
  exactly): R-hat 1.0, both ESS S M, MCSE 0.0. Nothing is left to converge: every draw is the
  mean. A sampler that moved no chain at all from a common start looks the same here: its
  acceptance rate, not these, tells it;
- some chain never moved (all its draws equal) while the draws are not all equal: R-hat +inf,
  both ESS 0.0, MCSE +inf. These are sentinels meaning "not converged, no usable information",
  not estimates; they survive ``max`` / ``min`` over several series and any threshold test
  (a NaN would be skipped by ``max(1.0, nan)``, ``np.nanmax`` and ``min``).

:func:`save_traces` writes series ``(S, M)`` as the posterior group of an ArviZ DataTree in a
netCDF (HDF5) file, dims ``(chain, draw)``, that ``arviz_base.convert_to_datatree(path)`` and
``xarray.open_datatree(path)`` open; :func:`load_traces` reads it back. arviz-stats, arviz-base,
xarray and h5netcdf are imported inside the functions, on their first call: together they take
over a second to import, which ``import shallow_collapse.posterior.diagnostics`` does not pay.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import xarray

__all__ = [
    "rhat", "ess_bulk", "ess_tail", "mcse_mean", "ratio_log10", "save_traces", "load_traces",
    "TAIL_PROB",
]

TAIL_PROB = (0.05, 0.95)  # the quantiles whose indicators give the tail ESS

_UNDEFINED, _CONSTANT, _STUCK, _OK = "undefined", "constant", "stuck", "ok"


def _array_stats():
    """ArviZ's array interface, imported on first use (about 1.5 s: it pulls scipy.stats and xarray)."""
    from arviz_stats.base import array_stats

    return array_stats


def _draws(x) -> tuple[np.ndarray, str]:
    """``x`` as float64 ``(S, M)`` and its case: undefined (S < 4, no chain, a non-finite draw),
    constant (every draw equal), stuck (some chain never moved, others did) or ok."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"draws must be shaped (S draws, M chains), got shape {x.shape}")
    S, M = x.shape
    if S < 4 or M < 1 or not np.isfinite(x).all():
        return x, _UNDEFINED
    moved = np.any(x != x[0], axis=0)
    if not moved.any() and np.all(x[0] == x[0, 0]):
        return x, _CONSTANT
    if not moved.all():
        return x, _STUCK
    return x, _OK


def _arviz(name: str, x: np.ndarray, **kwargs) -> float:
    """``array_stats.<name>`` of ``(S, M)`` draws, passed as ``(M, S)``: chains on axis 0, draws on axis 1."""
    with np.errstate(all="ignore"):  # NaN where undefined is the documented answer, not a warning
        value = getattr(_array_stats(), name)(x.T, chain_axis=0, draw_axis=1, **kwargs)
    return float(value)


def _decided(x, name: str, *, constant, stuck: float, **kwargs) -> float:
    """ArviZ's ``name`` of draws ``x`` ``(S, M)``, or the value decided here (module docstring): NaN
    when undefined, ``constant`` when every draw is equal ("size": S M), ``stuck`` when some chain
    never moved while others did."""
    x, case = _draws(x)
    if case == _UNDEFINED:
        return math.nan
    if case == _CONSTANT:
        return float(x.size) if constant == "size" else constant
    if case == _STUCK:
        return stuck
    return _arviz(name, x, **kwargs)


def rhat(x: np.ndarray) -> float:
    """Rank-normalised split R-hat of draws ``x`` ``(S, M)``: max of the bulk and the folded (tail)
    rank-normalised split R-hat (Vehtari et al. 2021). Converged chains give values near 1;
    Vehtari et al. ask for < 1.01. NaN with S < 4, M < 2 or a non-finite draw; 1.0 when every
    draw is equal; +inf when some chain never moved while others did."""
    return _decided(x, "rhat", constant=1.0, stuck=math.inf, method="rank")


def ess_bulk(x: np.ndarray) -> float:
    """Bulk effective sample size of draws ``x`` ``(S, M)``: Geyer's initial monotone sequence
    estimator on the rank-normalised split chains (Vehtari et al. 2021). NaN with S < 4 or a
    non-finite draw; S M when every draw is equal; 0.0 when some chain never moved while others did."""
    return _decided(x, "ess", constant="size", stuck=0.0, method="bulk")


def ess_tail(x: np.ndarray) -> float:
    """Tail effective sample size of draws ``x`` ``(S, M)``: the smaller of the split-chain ESS of
    the indicators ``x <= q`` at the 5% and 95% quantiles q (:data:`TAIL_PROB`). NaN, S M and 0.0
    as :func:`ess_bulk`."""
    return _decided(x, "ess", constant="size", stuck=0.0, method="tail", prob=TAIL_PROB)


def mcse_mean(x: np.ndarray) -> float:
    """Monte Carlo standard error of the mean of draws ``x`` ``(S, M)``: sd / sqrt(ESS_mean), sd
    over all draws (ddof 1), ESS_mean the split-chain ESS of the draws themselves (not of their
    ranks). NaN with S < 4 or a non-finite draw; 0.0 when every draw is equal; +inf when some chain
    never moved while others did."""
    return _decided(x, "mcse", constant=0.0, stuck=math.inf, method="mean")


def ratio_log10(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """log10(mean(num) / mean(den)) over independent replicates ``(M,)`` (one per chain) and its
    standard error by the delta method (the covariance of numerator and denominator included)."""
    M = len(num)
    mn, md = num.mean(), den.mean()
    value = math.log10(mn / md) if mn > 0 and md > 0 else math.nan
    if M < 2 or not math.isfinite(value):
        return value, math.nan
    cov = np.cov(np.stack([num / mn, den / md]), ddof=1)
    var = (cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]) / M
    return value, math.sqrt(max(var, 0.0)) / math.log(10)


def _attr_value(key: str, value):
    """``value`` as a netCDF attribute: a string, a number or a 1-D list of either; bools become
    0 / 1 (netCDF has no boolean type). Anything else (None, mappings, nested lists) is refused."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        if not -2**63 <= int(value) < 2**63:
            raise TypeError(f"attribute {key!r}: integer {value} does not fit a netCDF int64")
        return value
    if isinstance(value, numbers.Real):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        items = value.tolist() if isinstance(value, np.ndarray) else list(value)
        if any(isinstance(v, (list, tuple, np.ndarray)) for v in items):
            raise TypeError(f"attribute {key!r}: only flat lists can be netCDF attributes")
        items = [_attr_value(key, v) for v in items]
        kinds = {isinstance(v, str) for v in items}
        if len(kinds) > 1:
            raise TypeError(f"attribute {key!r}: a list must be all strings or all numbers")
        return items if kinds == {True} else np.asarray(items)
    raise TypeError(f"attribute {key!r}: {type(value).__name__} is not a netCDF attribute type "
                    "(str, int, float, bool or a flat list of them)")


def save_traces(path: str | os.PathLike, series: Mapping[str, np.ndarray],
                attrs: Mapping[str, object] | None = None) -> None:
    """Write ``series`` (name -> draws ``(S, M)``, all of one shape) to the netCDF file ``path``
    as the ``posterior`` group of an ArviZ DataTree: each a float64 variable on dims
    ``(chain, draw)`` (coordinates 0..M-1 and 0..S-1), which ArviZ opens as it opens any sampler's
    output (``arviz_base.convert_to_datatree(path)``, ``arviz_stats.summary`` on it). ``attrs``
    (str, int, float, bool as 0 / 1, or flat lists of them) are the file's global attributes,
    the root of the tree; the posterior group carries ArviZ's own (creation time, library).
    The file is written beside ``path`` and renamed onto it, so a reader never sees half of it."""
    import arviz_base

    if not series:
        raise ValueError("no series to save")
    arrays, shape = {}, None
    for name, x in series.items():
        if not isinstance(name, str) or not name or "/" in name or name in ("chain", "draw"):
            raise ValueError(f"series name {name!r}: not a non-empty string without '/' "
                             "other than chain and draw")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or (shape is not None and x.shape != shape):
            like = f" like the first, {shape}" if shape is not None else ""
            raise ValueError(f"series {name!r} has shape {x.shape}: each must be (S draws, M chains){like}")
        shape = x.shape
        arrays[name] = np.ascontiguousarray(x.T)  # ArviZ's order: (chain, draw)
    root = {str(k): _attr_value(str(k), v) for k, v in (attrs or {}).items()}
    tree = arviz_base.from_dict({"posterior": arrays}, sample_dims=["chain", "draw"], index_origin=0,
                                check_conventions=False,  # more chains than draws is fine here
                                attrs={"/": root})
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with _local_writes():
            tree.to_netcdf(partial, engine="h5netcdf")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _local_writes():
    """A context in which xarray writes in this thread: where dask is installed, xarray's netCDF
    writer asks dask for its scheduler, and a process that once used dask.distributed (the
    ``executor: dask`` sweeps) may still name it with no client left, which fails the write."""
    try:
        import dask
    except ImportError:
        return contextlib.nullcontext()
    return dask.config.set(scheduler="synchronous")


def load_traces(path: str | os.PathLike) -> xarray.DataTree:
    """The DataTree that :func:`save_traces` wrote to ``path``, read whole into memory and the file
    closed: ``tree["posterior"][name]`` is ``(chain, draw)``, so ``.values.T`` gives back the
    ``(S, M)`` draws exactly, and ``tree.attrs`` the attributes."""
    import xarray

    with xarray.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load()

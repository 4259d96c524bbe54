"""Configs: one flat mapping of keys, loaded from YAML, overridden by ``key=value``, validated.

Every key has an entry in :data:`SCHEMA`: its default, its type, its *scope* and a one-line
meaning. The scope says which jobs' run hash the key enters (see :mod:`shallow_collapse.jobs`):
only keys that change a job's numbers are hashed. A value of ``na`` (or ``null``) means "not
applicable here" and takes the default, so configs written for the earlier layout of this tool
(with ``hidden_features: na`` in kernel runs, and without ``seed`` or the sweep lists) run
unchanged.

Validation happens before any work and raises :class:`ConfigError` with one line that names the
key and what was expected.
"""
from __future__ import annotations

import difflib
import json
import math
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from . import data as data_sources
from .data import DATA_CLASSES, SOURCES as DATA_SOURCES
from . import activations
from .mean_field import MeanFieldParams
from .params import EOS_STRATEGIES, EoSParams, NetworkParams, PosteriorParams, ProbeParams, SGDParams, SolverOptions

__all__ = ["ConfigError", "Key", "SCHEMA", "keys_of", "used_keys", "load_config", "resolve", "parse_override",
           "format_override", "show", "EOS_STRATEGIES", "PLOT_FORMATS"]

# Keys that no longer exist, with what replaces them: a value other than na stops with this line.
RETIRED = {
    **{f"langevin_{key}": "retired with optimizer: langevin; the posterior network's keys are posterior_* "
                          "(docs/CONFIG.md)"
       for key in ("ess_min", "rhat_max", "chains", "thin", "samples", "burn_in", "levels", "step")},
    "optimizer": "retired: the posterior network is its own job, posterior_bulk_balanced or "
                 "posterior_bulk_imbalanced (configs/posterior_bulk_balanced.yml); the FCN sweeps train with SGD",
    **{f"posterior_{key}": f"retired with the gradient samplers (pCN-Langevin, MALA): the posterior network is "
                           f"sampled by collapsed Gibbs with elliptical slice sampling, which has no {what} "
                           f"(docs/POSTERIOR.md)"
       for key, what in (("proposal", "proposal"), ("step", "step size"),
                         ("target_acceptance", "acceptance rate"), ("thin", "thinning: every sweep is kept"))},
    "f_tol": "retired: the EoS now converge on the relative residual; use rtol "
             "(max|Sigma - Sigma_new| / max|Sigma|, default 1e-8)",
}
# A retired key may still say what is now the only behaviour (optimizer: sgd): that value passes.
RETIRED_DEFAULTS = {"optimizer": "sgd"}
PLOT_FORMATS = ("png", "pdf", "svg")


class ConfigError(ValueError):
    """A bad config: the message is one line naming the key and what was expected."""


@dataclass(frozen=True)
class Bound:
    """A condition on a number (on each number of a list key), with the words that name it."""

    ok: Callable[[Any], bool]
    words: str  # e.g. "a positive integer"
    list_words: str  # e.g. "positive integers"


POSITIVE_INT = Bound(lambda v: v >= 1, "a positive integer", "positive integers")
NON_NEGATIVE_INT = Bound(lambda v: v >= 0, "a non-negative integer", "non-negative integers")
NON_NEGATIVE = Bound(lambda v: v >= 0, "a non-negative number", "non-negative numbers")
POSITIVE = Bound(lambda v: v > 0, "a positive number", "positive numbers")
FRACTION = Bound(lambda v: 0 < v < 1, "a number between 0 and 1", "numbers between 0 and 1")
AT_LEAST_2 = Bound(lambda v: v >= 2, "an integer >= 2 (at least one hidden layer)", "integers >= 2")
TWO_OR_MORE = Bound(lambda v: v >= 2, "an integer >= 2", "integers >= 2")
EVEN_TWO_OR_MORE = Bound(lambda v: v >= 2 and v % 2 == 0, "an even integer >= 2", "even integers >= 2")
FOUR_OR_MORE = Bound(lambda v: v >= 4, "an integer >= 4 (split R-hat halves each chain)", "integers >= 4")
ABOVE_1 = Bound(lambda v: v > 1, "a number above 1", "numbers above 1")


@dataclass(frozen=True)
class Key:
    """One config key. ``scope`` says which jobs read it: a job's run hash holds exactly the keys of
    the scopes it reads (:func:`keys_of`), less those whose ``when`` is false for the config
    (:func:`used_keys`: a Gaussian run never hashes data_path, an erf run never leaky_relu_slope)."""

    default: Any
    type: str  # int, float, bool, str, list[int], list[float], list[list[int]], or "a|b|c" choices
    scope: str  # data, single, grid, grid_balanced, grid_imbalanced, network, init, fcn, probe, ak, ak_single,
    #             posterior, mean_field, study, run
    help: str  # a default of None means "derived from other keys" or "not set"
    bound: Bound | None = None  # checked on the value (on each entry of a list), None stays allowed
    when: Callable[[dict], bool] | None = None  # read only when true of the config; None: always


def _leaky(cfg: dict) -> bool:
    return cfg.get("activation") == "leaky_relu"


SCHEMA: dict[str, Key] = {
    # what and where
    "name": Key("run", "str", "run", "run folder name under the output root: OUT/<name>/<hash>/"),
    "seed": Key(0, "int", "data", "root seed; every draw (data, network init, shuffling) derives from it", bound=NON_NEGATIVE_INT),
    # data (MATH section 1)
    "training_data_cls": Key("GaussiandD2NL", "|".join([*DATA_CLASSES, *DATA_SOURCES]), "data",
                             "the data: Gaussian classes GaussiandD2NL (2 classes) or GaussiandD4NL (4 classes); "
                             "file (the .npz at data_path) or digits (scikit-learn's 8x8 digits); see docs/GUIDE.md, "
                             "'Your own data'"),
    "num_classes": Key(2, "int", "data", "number of classes C (must match training_data_cls; file and digits: "
                       "the number of kept classes, data_classes)"),
    "class_means": Key([-2.0, 2.0], "list[float]", "data", "Gaussian data: per-class mean m_c, broadcast over all d coordinates",
                       when=data_sources.is_gaussian),
    "class_stds": Key([0.5, 0.5], "list[float]", "data", "Gaussian data: per-class standard deviation s_c", bound=NON_NEGATIVE,
                      when=data_sources.is_gaussian),
    # data of a file or of scikit-learn's digits (data.py): a pool of kept classes, PCA to d, scaled
    "data_path": Key(None, "str", "data", "training_data_cls file: an .npz holding X (n x D, real) and labels "
                     "(n, integers); relative to the working directory", when=data_sources.is_file),
    "data_classes": Key(None, "list[int]", "data", "file, digits: the labels kept, in class order ([3, 8] makes "
                        "3 class 0); default every label, sorted", when=data_sources.is_pool),
    "data_scale": Key(2.0, "float", "data", "file, digits: the pool, projected on its top-d principal components, "
                      "is scaled so that its mean |x|^2 / d is data_scale^2 (bench/data_scale.py)", bound=POSITIVE,
                      when=data_sources.is_pool),
    "data_sha256": Key(None, "str", "data", "derived, file: SHA-256 of data_path's content (enters the run hash, "
                       "so an edited file starts a new run); leave it out", when=data_sources.is_file),
    "tau": Key(1e-8, "float", "data", "regulariser of relative NC1: log10(NC1(H) / (NC1(X) + tau))", bound=NON_NEGATIVE),
    # single runs
    "N": Key(1024, "int", "single", "number of samples (single runs)", bound=POSITIVE_INT),
    "class_sizes": Key(None, "list[int]", "single", "samples per class (single runs); default N/C each"),
    "in_features": Key(2, "int", "single", "input dimension d (single runs)", bound=POSITIVE_INT),
    # sweep grid
    "N_list": Key([128, 256, 512, 1024], "list[int]", "grid_balanced", "dataset sizes of balanced sweeps"),
    "class_sizes_list": Key([[1024, 1024], [768, 1280], [512, 1536], [256, 1792]], "list[list[int]]",
                            "grid_imbalanced", "class-size tuples of imbalanced sweeps"),
    "in_features_list": Key([1, 2, 8, 32, 128], "list[int]", "grid", "input dimensions d of sweeps", bound=POSITIVE_INT),
    "repeat": Key(10, "int", "grid", "independent draws (data and network) per grid cell", bound=POSITIVE_INT),
    # network (MATH sections 2 and 5): the activation (every method), the initialisation (init: the
    # SGD network and its limiting kernels; the EoS have their own prior, sigw2 and siga2)
    "L": Key(NetworkParams.L, "int", "init", "number of layers (L=2: one hidden layer; the adaptive kernel needs L=2)", bound=AT_LEAST_2),
    "activation": Key(NetworkParams.activation, "str", "network",
                      "activation phi: a name of the registry (erf, relu, leaky_relu, abs, gelu, silu, softplus, "
                      "tanh, sigmoid, sin, cos; see docs/ACTIVATIONS.md)"),
    "leaky_relu_slope": Key(NetworkParams.leaky_relu_slope, "float", "network",
                            "leaky_relu: phi(x) = x for x > 0, leaky_relu_slope * x below", when=_leaky),
    "bias_std": Key(NetworkParams.bias_std, "float", "init", "sb: bias standard deviation", bound=NON_NEGATIVE),
    "hidden_weight_std": Key(NetworkParams.hidden_weight_std, "float", "init", "sw: hidden weights ~ N(0, sw^2/fan_in)", bound=NON_NEGATIVE),
    "final_weight_std": Key(NetworkParams.final_weight_std, "float", "init", "so: output weights ~ N(0, so^2/h)", bound=NON_NEGATIVE),
    # training (FCN)
    "hidden_features": Key(500, "int", "fcn", "hidden width h of the trained network", bound=POSITIVE_INT),
    "out_features": Key(1, "int", "fcn", "outputs: 1 (scalar targets 2c-(C-1)) or C (one-hot targets)", bound=POSITIVE_INT),
    "use_batch_norm": Key(False, "bool", "fcn", "batch norm after each hidden linear layer"),
    "batch_size": Key(SGDParams.batch_size, "int", "fcn", "SGD batch size; null or >= N means full batch (each cell's N in sweeps)", bound=POSITIVE_INT),
    "num_epochs": Key(SGDParams.num_epochs, "int", "fcn", "training epochs", bound=POSITIVE_INT),
    "lr": Key(SGDParams.lr, "float", "fcn", "SGD learning rate", bound=NON_NEGATIVE),
    "momentum": Key(SGDParams.momentum, "float", "fcn", "SGD momentum", bound=NON_NEGATIVE),
    "weight_decay": Key(SGDParams.weight_decay, "float", "fcn", "SGD weight decay (L2)", bound=NON_NEGATIVE),
    # the posterior network the EoS describe, readout integrated out (docs/POSTERIOR.md)
    "posterior_burn_in": Key(PosteriorParams.burn_in, "int", "posterior",
                             "Gibbs sweeps per chain discarded (a sweep updates every neuron once)",
                             bound=NON_NEGATIVE_INT),
    "posterior_samples": Key(PosteriorParams.samples, "int", "posterior", "Gibbs sweeps per chain retained",
                             bound=FOUR_OR_MORE),
    "posterior_chains": Key(PosteriorParams.chains, "int", "posterior",
                            "chains per data draw, even: half start from the prior, half from the AK's Sigma",
                            bound=EVEN_TWO_OR_MORE),
    "posterior_rhat_max": Key(PosteriorParams.rhat_max, "float", "posterior",
                              "a draw whose largest rank-normalised split R-hat exceeds this is not_converged",
                              bound=ABOVE_1),
    "posterior_ess_min": Key(PosteriorParams.ess_min, "float", "posterior",
                             "a draw whose smallest bulk or tail effective sample size is below this is "
                             "not_converged", bound=NON_NEGATIVE),
    "posterior_se_max": Key(PosteriorParams.se_max, "float", "posterior",
                            "a draw whose Monte Carlo SE of log10 NC1 exceeds this is not_converged",
                            bound=POSITIVE),
    # the mean-field adaptive kernel (docs/THEORIES.md, docs/MATH.md section 11): MeanFieldParams' knobs
    "mean_field_method": Key(MeanFieldParams.method, "auto|quadrature|walkers", "mean_field",
                             "mean-field solver: auto (quadrature for d <= 2, walkers above), quadrature (d <= 2) "
                             "or walkers"),
    "mean_field_damping": Key(MeanFieldParams.damping, "float", "mean_field",
                              "eta of the damped iteration Phi <- (1 - eta) Phi + eta E_p[phi phi^T]", bound=FRACTION),
    "mean_field_iterations": Key(MeanFieldParams.iterations, "int", "mean_field",
                                 "iteration budget of the quadrature, or of the walkers' damped phase",
                                 bound=POSITIVE_INT),
    "mean_field_averaging": Key(MeanFieldParams.averaging, "int", "mean_field",
                                "walkers: Robbins-Monro averaging iterations after the damped phase",
                                bound=NON_NEGATIVE_INT),
    "mean_field_rtol": Key(MeanFieldParams.rtol, "float", "mean_field",
                           "converged when max|E_p[phi phi^T] - Phi| / max|Phi| <= rtol (walkers: or within "
                           "mean_field_mc_tol Monte Carlo SEs)", bound=FRACTION),
    "mean_field_mc_tol": Key(MeanFieldParams.mc_tol, "float", "mean_field",
                             "walkers: the residual may be this many Monte Carlo SEs of itself", bound=POSITIVE),
    "mean_field_walkers": Key(MeanFieldParams.walkers, "int", "mean_field",
                              "walkers per replicate solve (d > 2), moved by elliptical slice sampling",
                              bound=TWO_OR_MORE),
    "mean_field_sweeps": Key(MeanFieldParams.sweeps, "int", "mean_field",
                             "walkers: elliptical slice updates per walker and iteration", bound=POSITIVE_INT),
    "mean_field_burn_in": Key(MeanFieldParams.burn_in, "int", "mean_field",
                              "walkers: updates before the first estimate", bound=NON_NEGATIVE_INT),
    "mean_field_replicates": Key(MeanFieldParams.replicates, "int", "mean_field",
                                 "walkers: independent solves per draw, for the Monte Carlo SE of log10 NC1",
                                 bound=POSITIVE_INT),
    "mean_field_max_points": Key(MeanFieldParams.max_points, "int", "mean_field",
                                 "quadrature (d <= 2): most nodes of a refined grid (sets its memory)",
                                 bound=POSITIVE_INT),
    "probe_features": Key(ProbeParams.probe_features, "bool", "probe", "probe NC1 of every layer's features during training"),
    "probe_weights": Key(ProbeParams.probe_weights, "bool", "probe", "probe the spectra of W^T W during training"),
    "probe_kernels": Key(False, "bool", "probe", "also compute the limiting kernels of the run's data"),
    "probing_frequency": Key(ProbeParams.probing_frequency, "int", "probe", "probe every this many epochs (and at init and the end)", bound=POSITIVE_INT),
    # adaptive kernel (MATH section 6)
    "h": Key(EoSParams.h, "int", "ak", "width h of the adaptive kernel (the last annealing factor)", bound=POSITIVE_INT),
    "sigw2": Key(EoSParams.sigw2, "float", "ak", "prior variance of first-layer weights times d", bound=POSITIVE),
    "siga2": Key(EoSParams.siga2, "float", "ak", "readout variance", bound=POSITIVE),
    "sig2": Key(EoSParams.sig2, "float", "ak", "GP noise variance", bound=POSITIVE),
    "eos_update_strategy": Key(SolverOptions.strategy, "|".join(EOS_STRATEGIES), "ak",
                               "EoS solver: minimize (least action, L-BFGS; default), anderson or "
                               "newton-krylov (fixed-point iteration over the annealing schedule)"),
    "eos_candidates": Key(list(SolverOptions.candidates), "list[" + "|".join(EOS_STRATEGIES) + "]", "ak",
                          "further EoS strategies whose solutions compete; the least action is kept"),
    "rtol": Key(SolverOptions.rtol, "float", "ak", "EoS convergence: max|Sigma - Sigma_new| / max|Sigma| <= rtol", bound=FRACTION),
    "maxiter": Key(SolverOptions.maxiter, "int", "ak",
                   "EoS iterations per step (minimize: L-BFGS iterations; newton-krylov: Newton steps)", bound=POSITIVE_INT),
    "inner_maxiter": Key(SolverOptions.inner_maxiter, "int", "ak", "newton-krylov: Krylov iterations per Newton step", bound=POSITIVE_INT),
    "max_subdivisions": Key(SolverOptions.max_subdivisions, "int", "ak", "EoS: nested geometric factors inserted into a failed step before giving up", bound=NON_NEGATIVE_INT),
    "annealing_factors": Key(list(EoSParams.annealing_factors), "list[float]", "ak",
                             "chi values of the continuation, strictly decreasing and >= h (h is appended if missing)", bound=POSITIVE),
    "lightweight": Key(False, "bool", "ak_single", "single AK runs only (sweeps never read it): solve at chi = h directly, without the annealing "
                      "schedule, its per-step metrics and the plots"),
    # the matched study (shallow_collapse.matched_study): per activation, the posterior, AK and SGD FCN sweeps
    "activation_list": Key(["erf", "relu"], "list[str]", "study",
                           "matched study: one set of sweeps (posterior, AK, SGD FCN) per activation"),
    # execution and output (never hashed: they do not change the numbers)
    "plot_formats": Key(["png"], "list[" + "|".join(PLOT_FORMATS) + "]", "run",
                        "file formats of every figure: any of png, pdf, svg"),
    "use_cache": Key(True, "bool", "run", "reuse finished cells of an earlier run of the same config (resume)"),
    "device": Key("auto", "auto|cpu|cuda", "run", "where tensors live: auto (cuda if available), cpu or cuda"),
    "workers": Key("auto", "auto|int", "run", "sweep cells in parallel: auto (one process per core), 1 (in this process) or a count"),
    "executor": Key("local", "local|dask", "run", "local worker processes, or a Dask cluster (needs scheduler_address)"),
    "scheduler_address": Key(None, "str", "run", "Dask scheduler, e.g. tcp://127.0.0.1:8786; default $DASK_SCHEDULER_ADDRESS"),
}



def keys_of(*scopes: str) -> tuple:
    """The keys of :data:`SCHEMA` in ``scopes``, sorted."""
    return tuple(sorted(k for k, spec in SCHEMA.items() if spec.scope in scopes))


def used_keys(keys, cfg: dict) -> tuple:
    """``keys`` less those whose ``when`` is false of ``cfg``: what a run with ``cfg`` reads."""
    return tuple(k for k in keys if SCHEMA[k].when is None or SCHEMA[k].when(cfg))


_NA = {"na", "n/a", "none", "null", ""}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TYPE_WORDS = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string",
               "list[int]": "a list of integers", "list[str]": "a list of strings", "list[float]": "a list of finite numbers",
               "list[list[int]]": "a list of lists of integers", "auto|int": "auto or an integer"}


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 2, 6, 6, 60, 60, 40
_SHOW_LENGTH = 160


def show(value) -> str:
    """A short repr of ``value`` for one-line messages: bounded however large or deeply shared
    (a YAML alias bomb) the value is."""
    text = _SHOW.repr(value)
    return text if len(text) <= _SHOW_LENGTH else text[: _SHOW_LENGTH - 3] + "..."


def _expected(spec: str) -> str:
    if spec in _TYPE_WORDS:
        return _TYPE_WORDS[spec]
    if spec.startswith("list["):
        return "a list of " + ", ".join(spec[5:-1].split("|"))
    return "one of " + ", ".join(spec.split("|"))


def _coerce(value: Any, spec: str):
    """Convert ``value`` to ``spec`` or raise TypeError/ValueError."""
    if spec == "bool":
        if isinstance(value, bool):
            return value
        raise TypeError
    if spec == "int":
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int):
            return value
        if isinstance(value, str):  # YAML 1.1 reads 1e6 (no dot) as a string
            value = float(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError
    if spec == "float":
        if isinstance(value, bool):
            raise TypeError
        if not isinstance(value, (int, float, str)):  # YAML 1.1 reads 1e-3 (no dot) as a string
            raise TypeError
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return number
    if spec == "auto|int":
        return value if value == "auto" else _coerce(value, "int")
    if spec.startswith("list["):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        inner = spec[5:-1]
        return [_coerce(v, inner) for v in value]
    if not isinstance(value, str):
        raise TypeError
    if spec != "str" and value not in spec.split("|"):
        raise ValueError
    return value


def _is_na(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NA)


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, SCHEMA, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "; see docs/CONFIG.md for the list of keys"
    return ConfigError(f"unknown config key {show(key)}{hint}")


def resolve(raw: dict) -> dict:
    """Typed, validated config with every key of :data:`SCHEMA` (defaults filled, na resolved)."""
    for key in raw:
        if key in RETIRED:
            if not _is_na(raw[key]) and raw[key] != RETIRED_DEFAULTS.get(key):
                raise ConfigError(f"config key '{key}': {RETIRED[key]}")
            continue
        if key not in SCHEMA:
            raise _unknown_key(str(key))
    cfg = {}
    for key, spec in SCHEMA.items():
        value = raw.get(key)
        if _is_na(value):
            cfg[key] = spec.default
            continue
        try:
            cfg[key] = _coerce(value, spec.type)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected {_expected(spec.type)}, got {show(value)}") from None
        _check_bound(key, spec, cfg[key])
    _check(cfg)
    return cfg


def _require(ok: bool, key: str, expected: str, got):
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}, got {show(got)}")


def _check_bound(key: str, spec: Key, value) -> None:
    if spec.bound is None:
        return
    if spec.type.startswith("list["):
        _require(all(spec.bound.ok(v) for v in value), key, "a list of " + spec.bound.list_words, value)
    else:
        _require(spec.bound.ok(value), key, spec.bound.words, value)


def _check(cfg: dict) -> None:
    """Cross-key checks; fills the derived default of class_sizes (N/C each)."""
    _require(bool(_NAME.fullmatch(cfg["name"])) and ".." not in cfg["name"], "name",
             "a folder name of at most 100 letters, digits, '.', '_' and '-' (no path separators)", cfg["name"])
    _require(cfg["activation"] in activations.ACTIVATIONS, "activation",
             "one of " + ", ".join(sorted(activations.ACTIVATIONS)), cfg["activation"])
    _require(all(a in activations.ACTIVATIONS for a in cfg["activation_list"]), "activation_list",
             "activations among " + ", ".join(sorted(activations.ACTIVATIONS)), cfg["activation_list"])
    C = cfg["num_classes"]
    _check_data(cfg)
    _require(cfg["workers"] == "auto" or cfg["workers"] >= 1, "workers", "auto or a positive integer", cfg["workers"])
    _require(cfg["out_features"] in (1, C), "out_features", f"1 or num_classes={C}", cfg["out_features"])
    if cfg["class_sizes"] is None:
        _require(cfg["N"] % C == 0, "N", f"a multiple of num_classes={C} when class_sizes is not given", cfg["N"])
        cfg["class_sizes"] = [cfg["N"] // C] * C
    _check_sizes(cfg["class_sizes"], "class_sizes", C)
    _require(sum(cfg["class_sizes"]) == cfg["N"], "class_sizes", f"sizes that sum to N={cfg['N']}",
             cfg["class_sizes"])
    for key in ("N_list", "in_features_list", "class_sizes_list", "annealing_factors", "plot_formats",
                "activation_list"):
        _require(len(cfg[key]) > 0, key, "a non-empty list", cfg[key])
    for key in ("N_list", "in_features_list", "class_sizes_list"):
        _require(len({str(v) for v in cfg[key]}) == len(cfg[key]), key, "distinct grid entries", cfg[key])
    _require(all(n >= C and n % C == 0 for n in cfg["N_list"]), "N_list",
             f"positive multiples of num_classes={C}", cfg["N_list"])
    for sizes in cfg["class_sizes_list"]:
        _check_sizes(sizes, "class_sizes_list", C)
    _check_schedule(cfg)


def _check_data(cfg: dict) -> None:
    """The data keys: Gaussian classes fix num_classes and need a mean and a std per class (they are
    not refused when the data are a file or the digits, and not hashed there); a file or the digits
    are read and checked here, before any work (data.check_source)."""
    C = cfg["num_classes"]
    if cfg["training_data_cls"] in DATA_CLASSES:
        implied = DATA_CLASSES[cfg["training_data_cls"]]
        _require(C == implied, "num_classes", f"{implied} for training_data_cls {cfg['training_data_cls']}", C)
        for key in ("class_means", "class_stds"):
            _require(len(cfg[key]) == C, key, f"a list of num_classes={C} numbers", cfg[key])
    _require(C >= 2, "num_classes", "at least 2 classes", C)
    try:
        data_sources.check_source(cfg)
    except data_sources.DataError as exc:
        raise ConfigError(str(exc)) from None


def _check_schedule(cfg: dict) -> None:
    """The annealing factors decrease strictly; h is appended when the list ends above h, so the
    resolved schedule of the AK ends at h."""
    factors, h = cfg["annealing_factors"], cfg["h"]
    _require(all(a > b for a, b in zip(factors, factors[1:])), "annealing_factors",
             "strictly decreasing factors (the continuation runs from large chi down to h)", factors)
    if factors[-1] > h:  # a schedule that ends below h is refused by the AK jobs only (jobs.check_adaptive_kernel)
        cfg["annealing_factors"] = [*factors, float(h)]


def _check_sizes(sizes, key, C):
    _require(len(sizes) == C and all(n >= 1 for n in sizes), key,
             f"num_classes={C} positive class sizes", sizes)


def parse_override(text: str) -> tuple[str, Any]:
    """``'key=value'`` -> ``(key, value)``, the value parsed as YAML (``repeat=2``, ``x=[1,8]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {show(text)}: expected key=value")
    if not value.strip():
        raise ConfigError(f"override {show(text)}: expected a value after '=' (na or null for the default)")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {show(text)}: value is not valid YAML ({_one_line(exc)})") from None


def format_override(key: str, value: Any) -> str:
    """``(key, value)`` -> ``'key=value'``, the value as YAML flow text: what :func:`parse_override`
    reads back to the same value (the studies pass their keys to the sweeps this way)."""
    return f"{key}={json.dumps(value)}"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def read_yaml(path) -> dict:
    """The mapping in a YAML file, loaded safely (no object construction)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}': expected UTF-8 text, got byte {exc.object[exc.start]:#04x} "
                          f"at offset {exc.start}") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {_one_line(exc)}") from None
    if raw is None:
        raise ConfigError(f"config file '{path}': expected a mapping of keys to values, got an empty file")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}': expected a mapping of keys to values at the top level")
    return raw


def load_config(path, overrides=(), defaults: dict | None = None) -> dict:
    """Read ``path``, apply ``key=value`` ``overrides`` and validate; see :func:`resolve`.

    ``defaults`` (e.g. the job's name) fill keys the file leaves out.
    """
    raw = {**(defaults or {}), **read_yaml(path)}
    for text in overrides:
        key, value = parse_override(text)
        if key not in SCHEMA and key not in RETIRED:
            raise _unknown_key(key)
        raw[key] = value
    return resolve(raw)


def markdown_table() -> str:
    """The table of config keys in docs/CONFIG.md (``python -m shallow_collapse.config [docs/CONFIG.md]``)."""
    lines = ["| key | default | type | meaning |", "|---|---|---|---|"]
    for key, spec in SCHEMA.items():
        default = "`null`" if spec.default is None else f"`{spec.default}`"
        kind = spec.type.replace("|", " or ")
        lines.append(f"| `{key}` | {default} | {kind} | {spec.help} |")
    return "\n".join(lines)


def _update_readme(path: str) -> None:
    text = Path(path).read_text()
    start, end = "<!-- config-table -->\n", "<!-- /config-table -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path}: no config-table markers; the table lives in docs/CONFIG.md")
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    Path(path).write_text(head + start + markdown_table() + "\n" + end + tail)


if __name__ == "__main__":  # print the table, or rewrite it in place: python -m shallow_collapse.config docs/CONFIG.md
    import sys

    _update_readme(sys.argv[1]) if len(sys.argv) > 1 else print(markdown_table())

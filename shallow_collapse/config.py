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
import math
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .data import DATA_CLASSES
from .activations import ACTIVATIONS
from .eos import STRATEGIES as EOS_STRATEGIES
from .params import EoSParams, NetworkParams, ProbeParams, SGDParams

__all__ = ["ConfigError", "Key", "SCHEMA", "load_config", "resolve", "parse_override", "show", "EOS_STRATEGIES",
           "PLOT_FORMATS"]

# Keys that no longer exist, with what replaces them: a value other than na stops with this line.
RETIRED = {
    "f_tol": "retired: the EoS now converge on the relative residual; use rtol "
             "(max|Sigma - Sigma_new| / max|Sigma|, default 1e-8)",
}
PLOT_FORMATS = ("png", "pdf", "svg")


class ConfigError(ValueError):
    """A bad config: the message is one line naming the key and what was expected."""


@dataclass(frozen=True)
class Key:
    default: Any
    type: str  # int, float, bool, str, list[int], list[float], list[list[int]], or "a|b|c" choices
    scope: str  # data, single, grid, grid_balanced, grid_imbalanced, network, fcn, probe, ak, run
    help: str  # a default of None means "derived from other keys" or "not set"


SCHEMA: dict[str, Key] = {
    # what and where
    "name": Key("run", "str", "run", "run folder name under the output root: OUT/<name>/<hash>/"),
    "seed": Key(0, "int", "data", "root seed; every draw (data, network init, shuffling) derives from it"),
    # data (MATH section 1)
    "training_data_cls": Key("GaussiandD2NL", "|".join(DATA_CLASSES), "data",
                             "Gaussian class data: GaussiandD2NL (2 classes) or GaussiandD4NL (4 classes)"),
    "num_classes": Key(2, "int", "data", "number of classes C (must match training_data_cls)"),
    "class_means": Key([-2.0, 2.0], "list[float]", "data", "per-class mean m_c, broadcast over all d coordinates"),
    "class_stds": Key([0.5, 0.5], "list[float]", "data", "per-class standard deviation s_c"),
    "tau": Key(1e-8, "float", "data", "regulariser of relative NC1: log10(NC1(H) / (NC1(X) + tau))"),
    # single runs
    "N": Key(1024, "int", "single", "number of samples (single runs)"),
    "class_sizes": Key(None, "list[int]", "single", "samples per class (single runs); default N/C each"),
    "in_features": Key(2, "int", "single", "input dimension d (single runs)"),
    # sweep grid
    "N_list": Key([128, 256, 512, 1024], "list[int]", "grid_balanced", "dataset sizes of balanced sweeps"),
    "class_sizes_list": Key([[1024, 1024], [768, 1280], [512, 1536], [256, 1792]], "list[list[int]]",
                            "grid_imbalanced", "class-size tuples of imbalanced sweeps"),
    "in_features_list": Key([1, 2, 8, 32, 128], "list[int]", "grid", "input dimensions d of sweeps"),
    "repeat": Key(10, "int", "grid", "independent draws (data and network) per grid cell"),
    # network (MATH sections 2 and 5)
    "L": Key(NetworkParams.L, "int", "network", "number of layers (L=2: one hidden layer)"),
    "activation": Key(NetworkParams.activation, "|".join(ACTIVATIONS), "network", "activation phi: erf or relu"),
    "bias_std": Key(NetworkParams.bias_std, "float", "network", "sb: bias standard deviation"),
    "hidden_weight_std": Key(NetworkParams.hidden_weight_std, "float", "network", "sw: hidden weights ~ N(0, sw^2/fan_in)"),
    "final_weight_std": Key(NetworkParams.final_weight_std, "float", "network", "so: output weights ~ N(0, so^2/h)"),
    # training (FCN)
    "hidden_features": Key(500, "int", "fcn", "hidden width h of the trained network"),
    "out_features": Key(1, "int", "fcn", "outputs: 1 (scalar targets 2c-(C-1)) or C (one-hot targets)"),
    "use_batch_norm": Key(False, "bool", "fcn", "batch norm after each hidden linear layer"),
    "batch_size": Key(SGDParams.batch_size, "int", "fcn", "SGD batch size; null or >= N means full batch (each cell's N in sweeps)"),
    "num_epochs": Key(SGDParams.num_epochs, "int", "fcn", "training epochs"),
    "lr": Key(SGDParams.lr, "float", "fcn", "SGD learning rate"),
    "momentum": Key(SGDParams.momentum, "float", "fcn", "SGD momentum"),
    "weight_decay": Key(SGDParams.weight_decay, "float", "fcn", "SGD weight decay (L2)"),
    "probe_features": Key(ProbeParams.probe_features, "bool", "probe", "probe NC1 of every layer's features during training"),
    "probe_weights": Key(ProbeParams.probe_weights, "bool", "probe", "probe the spectra of W^T W during training"),
    "probe_kernels": Key(False, "bool", "probe", "also compute the limiting kernels of the run's data"),
    "probing_frequency": Key(ProbeParams.probing_frequency, "int", "probe", "probe every this many epochs (and at init and the end)"),
    # adaptive kernel (MATH section 6)
    "h": Key(EoSParams.h, "int", "ak", "width h of the adaptive kernel (the last annealing factor)"),
    "sigw2": Key(EoSParams.sigw2, "float", "ak", "prior variance of first-layer weights times d"),
    "siga2": Key(EoSParams.siga2, "float", "ak", "readout variance"),
    "sig2": Key(EoSParams.sig2, "float", "ak", "GP noise variance"),
    "eos_update_strategy": Key(EoSParams.strategy, "|".join(EOS_STRATEGIES), "ak",
                               "EoS solver: minimize (least action, L-BFGS; default), anderson or "
                               "newton-krylov (fixed-point iteration over the annealing schedule)"),
    "eos_candidates": Key(list(EoSParams.candidates), "list[" + "|".join(EOS_STRATEGIES) + "]", "ak",
                          "further EoS strategies whose solutions compete; the least action is kept"),
    "rtol": Key(EoSParams.rtol, "float", "ak", "EoS convergence: max|Sigma - Sigma_new| / max|Sigma| <= rtol"),
    "maxiter": Key(EoSParams.maxiter, "int", "ak",
                   "EoS iterations per step (minimize: L-BFGS iterations; newton-krylov: Newton steps)"),
    "inner_maxiter": Key(EoSParams.inner_maxiter, "int", "ak", "newton-krylov: Krylov iterations per Newton step"),
    "max_subdivisions": Key(EoSParams.max_subdivisions, "int", "ak", "EoS: nested geometric factors inserted into a failed step before giving up"),
    "annealing_factors": Key(list(EoSParams.annealing_factors), "list[float]", "ak",
                             "chi values of the continuation, large to small, ending at h"),
    "lightweight": Key(False, "bool", "ak", "skip per-step metrics and plots of single AK runs"),
    # execution and output (never hashed: they do not change the numbers)
    "plot_formats": Key(["png"], "list[str]", "run", "file formats of every figure: any of png, pdf, svg"),
    "use_cache": Key(True, "bool", "run", "reuse finished cells of an earlier run of the same config (resume)"),
    "device": Key("auto", "auto|cpu|cuda", "run", "where tensors live: auto (cuda if available), cpu or cuda"),
    "workers": Key("auto", "auto|int", "run", "sweep cells in parallel: auto (one process per core), 1 (in this process) or a count"),
    "executor": Key("local", "local|dask", "run", "local worker processes, or a Dask cluster (needs scheduler_address)"),
    "scheduler_address": Key(None, "str", "run", "Dask scheduler, e.g. tcp://127.0.0.1:8786; default $DASK_SCHEDULER_ADDRESS"),
}

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
    hint = f"; did you mean '{close[0]}'?" if close else "; see README for the list of keys"
    return ConfigError(f"unknown config key {show(key)}{hint}")


def resolve(raw: dict) -> dict:
    """Typed, validated config with every key of :data:`SCHEMA` (defaults filled, na resolved)."""
    for key in raw:
        if key in RETIRED:
            if not _is_na(raw[key]):
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
    _check(cfg)
    return cfg


def _require(ok: bool, key: str, expected: str, got):
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}, got {show(got)}")


def _check(cfg: dict) -> None:
    """Cross-key checks; fills the derived default of class_sizes (N/C each)."""
    _require(bool(_NAME.fullmatch(cfg["name"])) and ".." not in cfg["name"], "name",
             "a folder name of at most 100 letters, digits, '.', '_' and '-' (no path separators)", cfg["name"])
    _require(cfg["seed"] >= 0, "seed", "a non-negative integer", cfg["seed"])
    C = cfg["num_classes"]
    implied = DATA_CLASSES[cfg["training_data_cls"]]
    _require(C == implied, "num_classes", f"{implied} for training_data_cls {cfg['training_data_cls']}", C)
    for key in ("class_means", "class_stds"):
        _require(len(cfg[key]) == C, key, f"a list of num_classes={C} numbers", cfg[key])
    _require(all(s >= 0 for s in cfg["class_stds"]), "class_stds", "non-negative standard deviations",
             cfg["class_stds"])
    for key in ("bias_std", "hidden_weight_std", "final_weight_std", "lr", "momentum", "weight_decay",
                "tau", "sigw2", "siga2", "sig2"):
        _require(cfg[key] >= 0, key, "a finite non-negative number", cfg[key])
    for key in ("N", "in_features", "repeat", "L", "hidden_features", "out_features", "num_epochs",
                "probing_frequency", "h"):
        _require(cfg[key] >= 1, key, "a positive integer", cfg[key])
    _require(cfg["workers"] == "auto" or cfg["workers"] >= 1, "workers", "auto or a positive integer", cfg["workers"])
    _require(cfg["L"] >= 2, "L", "an integer >= 2 (at least one hidden layer)", cfg["L"])
    _require(cfg["out_features"] in (1, C), "out_features", f"1 or num_classes={C}", cfg["out_features"])
    if cfg["class_sizes"] is None:
        _require(cfg["N"] % C == 0, "N", f"a multiple of num_classes={C} when class_sizes is not given", cfg["N"])
        cfg["class_sizes"] = [cfg["N"] // C] * C
    _check_sizes(cfg["class_sizes"], "class_sizes", C)
    _require(sum(cfg["class_sizes"]) == cfg["N"], "class_sizes", f"sizes that sum to N={cfg['N']}",
             cfg["class_sizes"])
    _require(cfg["batch_size"] is None or cfg["batch_size"] >= 1, "batch_size", "a positive integer or null",
             cfg["batch_size"])
    for key in ("N_list", "in_features_list", "class_sizes_list", "annealing_factors"):
        _require(len(cfg[key]) > 0, key, "a non-empty list", cfg[key])
    for key in ("N_list", "in_features_list", "class_sizes_list"):
        _require(len({str(v) for v in cfg[key]}) == len(cfg[key]), key, "distinct grid entries", cfg[key])
    _require(all(n >= C and n % C == 0 for n in cfg["N_list"]), "N_list",
             f"positive multiples of num_classes={C}", cfg["N_list"])
    _require(all(d >= 1 for d in cfg["in_features_list"]), "in_features_list", "positive integers",
             cfg["in_features_list"])
    for sizes in cfg["class_sizes_list"]:
        _check_sizes(sizes, "class_sizes_list", C)
    _require(all(a > 0 for a in cfg["annealing_factors"]), "annealing_factors", "positive numbers",
             cfg["annealing_factors"])
    _require(0 < cfg["rtol"] < 1, "rtol", "a number between 0 and 1", cfg["rtol"])
    for key in ("maxiter", "inner_maxiter"):
        _require(cfg[key] >= 1, key, "a positive integer", cfg[key])
    _require(len(cfg["plot_formats"]) > 0 and all(f in PLOT_FORMATS for f in cfg["plot_formats"]), "plot_formats",
             "a non-empty list of " + ", ".join(PLOT_FORMATS), cfg["plot_formats"])
    _require(cfg["max_subdivisions"] >= 0, "max_subdivisions", "a non-negative integer", cfg["max_subdivisions"])


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
    """The README's table of config keys (``python -m shallow_collapse.config [README.md]``)."""
    lines = ["| key | default | type | meaning |", "|---|---|---|---|"]
    for key, spec in SCHEMA.items():
        default = "`null`" if spec.default is None else f"`{spec.default}`"
        kind = spec.type.replace("|", " or ")
        lines.append(f"| `{key}` | {default} | {kind} | {spec.help} |")
    return "\n".join(lines)


def _update_readme(path: str) -> None:
    text = Path(path).read_text()
    start, end = "<!-- config-table -->\n", "<!-- /config-table -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    Path(path).write_text(head + start + markdown_table() + "\n" + end + tail)


if __name__ == "__main__":  # print the table, or rewrite it in place: python -m shallow_collapse.config README.md
    import sys

    _update_readme(sys.argv[1]) if len(sys.argv) > 1 else print(markdown_table())

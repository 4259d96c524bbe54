"""Run folders: ``OUT/<name>/<hash>/`` with the resolved config, versions, log and results.

The hash covers the job and every config key whose scope the job declares (the keys that change
its numbers), serialised canonically (sorted keys, typed values), so it is stable under key order
and YAML formatting and blind to the output root and execution options.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from .config import SCHEMA
from .devices import resolve_device

__all__ = ["Run", "run_hash", "hashed_config", "open_run", "atomic_write_text", "atomic_write_json",
           "software_versions"]

HASH_LENGTH = 10


def hashed_config(cfg: dict, job: str, scopes) -> dict:
    """The part of ``cfg`` that changes the numbers of ``job`` (keys whose scope is in ``scopes``)."""
    return {"job": job, **{k: cfg[k] for k in sorted(cfg) if SCHEMA[k].scope in scopes}}


def run_hash(cfg: dict, job: str, scopes) -> str:
    """Short, stable hash of :func:`hashed_config`."""
    text = json.dumps(hashed_config(cfg, job, scopes), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (no torn files)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default, allow_nan=True) + "\n")


def _json_default(obj):
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def software_versions() -> dict:
    """Versions of Python and the numerical libraries, and the compute devices present."""
    import numpy
    import scipy
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
        "scipy": scipy.__version__, "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
        "cuda_available": cuda, "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
    }


@dataclass
class Run:
    """An open run folder. ``path``: the folder; ``plots``: its plots/ folder; ``log``: a logger
    writing to ``run.log`` (and warnings to stderr); ``job``: the job name; ``cfg``: the config."""

    path: Path
    job: str
    cfg: dict
    log: logging.Logger

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def write_json(self, name: str, obj) -> Path:
        atomic_write_json(self.path / name, obj)
        return self.path / name

    def close(self) -> None:
        for handler in list(self.log.handlers):
            handler.close()
            self.log.removeHandler(handler)


def _logger(path: Path, key: str) -> logging.Logger:
    log = logging.getLogger(f"shallow_collapse.run.{key}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
    file = logging.FileHandler(path / "run.log")
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.addHandler(file)
    log.addHandler(console)
    return log


def open_run(cfg: dict, job: str, scopes, out_root="out", argv=None) -> Run:
    """Create (or reopen) ``out_root/<name>/<hash>/`` and record config, versions and command."""
    digest = run_hash(cfg, job, scopes)
    path = Path(out_root) / cfg["name"] / digest
    (path / "plots").mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    meta = {"job": job, "hash": digest, "hashed_config": hashed_config(cfg, job, scopes),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": argv if argv is not None else sys.argv,
            "device": str(resolve_device(cfg["device"])), "versions": software_versions()}
    atomic_write_json(path / "meta.json", meta)
    log = _logger(path, digest)
    log.info("run %s of job %s started (%s)", digest, job, " ".join(meta["command"]))
    return Run(path=path, job=job, cfg=cfg, log=log)

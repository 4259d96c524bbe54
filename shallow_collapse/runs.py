"""Run folders: ``OUT/<name>/<hash>/`` with the resolved config, versions, log and results.

The hash covers the job and every config key the job declares it uses (the keys that change
its numbers), serialised canonically (sorted keys, typed values), so it is stable under key order
and YAML formatting and blind to the output root and execution options.

Nothing is written through a symbolic link inside the output root: folders are created one
component at a time and a link (or a file) where a folder belongs is refused with
:class:`OutputError`, a run folder holding a link is refused, and every file is written to a
temporary name and moved into place (:func:`atomic_file`), which replaces a link planted later
instead of following it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from .data import source_label
from .devices import resolve_device

__all__ = ["Run", "OutputError", "run_hash", "hashed_config", "open_run", "make_folder", "atomic_file",
           "atomic_write_text", "atomic_write_json", "software_versions", "config_text"]

HASH_LENGTH = 10


def hashed_config(cfg: dict, job: str, keys) -> dict:
    """The part of ``cfg`` that changes the numbers of ``job``: the ``keys`` it declares."""
    return {"job": job, **{k: cfg[k] for k in sorted(keys)}}


def run_hash(cfg: dict, job: str, keys) -> str:
    """Short, stable hash of :func:`hashed_config`."""
    text = json.dumps(hashed_config(cfg, job, keys), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


class OutputError(ValueError):
    """An output location that cannot be used (not a folder, not writable, a symbolic link); the
    message is one line naming the path and what was expected."""


@contextmanager
def atomic_file(path: Path):
    """Yield a fresh temporary path next to ``path``; when the block succeeds it replaces ``path``
    with ``os.replace`` (no torn files; a symbolic link at ``path`` is replaced, not followed)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # as a plain new file (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


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

    def save_tensors(self, name: str, obj) -> Path:
        """``torch.save(obj)`` to ``name`` in the run folder, atomically."""
        with atomic_file(self.path / name) as tmp:
            torch.save(obj, tmp)
        return self.path / name

    def close(self) -> None:
        for handler in list(self.log.handlers):
            handler.close()
            self.log.removeHandler(handler)


class _LogFile(logging.FileHandler):
    """A log file appended to, never through a symbolic link (opening one fails with ELOOP)."""

    def _open(self):
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
        return open(os.open(self.baseFilename, flags, 0o644), "a", encoding=self.encoding)


def _logger(path: Path, key: str) -> logging.Logger:
    log = logging.getLogger(f"shallow_collapse.run.{key}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
    file = _LogFile(path / "run.log")
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.addHandler(file)
    log.addHandler(console)
    return log


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what creating it would add)."""
    missing = None
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            return missing
        missing = folder
    return missing


def _check_folder(folder: Path, link_ok: bool) -> None:
    if folder.is_symlink() and not link_ok:
        raise OutputError(f"{folder}: expected a folder, got a symbolic link (writes never follow links)")
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputError(f"{folder}: expected a folder, got a file")


@contextmanager
def _created(path: Path):
    """Remove the folders this block created if it fails with an OSError, and report it as
    :class:`OutputError` naming ``path``."""
    created = _first_missing(path)
    try:
        yield
    except OSError as exc:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise OutputError(f"{exc.filename or path}: expected a writable folder ({exc.strerror})") from None


def make_folder(root, *parts) -> Path:
    """``root/parts...`` as real folders: ``root`` may be a link (the user's choice), but no
    component below it; checked before anything is created. Returns the path."""
    root = Path(root)
    path = root.joinpath(*parts)
    _check_folder(root, link_ok=True)
    for depth in range(1, len(parts) + 1):
        _check_folder(root.joinpath(*parts[:depth]), link_ok=False)
    with _created(path):
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(path))
    return path


def _refuse_links(path: Path) -> None:
    """Refuse a run folder that holds a symbolic link (in it, in plots/ or in cells/)."""
    folders = [path] + [path / sub for sub in ("plots", "cells") if (path / sub).is_dir()]
    for child in (child for folder in folders for child in folder.iterdir()):
        if child.is_symlink():
            raise OutputError(f"{child}: expected no symbolic link in a run folder (writes never follow links)")


def config_text(keys: dict, cfg: dict) -> str:
    """``config.yaml`` of a folder: the YAML of ``keys`` under one comment line naming the data
    source of ``cfg`` (``# data: digits[3,8]``, ``# data: feats.npz@1a2b3c4d5e6f[0,1]``,
    ``# data: GaussiandD2NL``), so the folder says what data it saw; the comment leaves the YAML
    unchanged."""
    return f"# data: {source_label(cfg)}\n" + yaml.safe_dump(keys, sort_keys=False)


def open_run(cfg: dict, job: str, keys, out_root="out", argv=None) -> Run:
    """Create (or reopen) ``out_root/<name>/<hash>/`` and record config, versions and command.
    Raises :class:`OutputError` (nothing created) when the place cannot be used."""
    digest = run_hash(cfg, job, keys)
    path = Path(out_root) / cfg["name"] / digest
    if path.is_dir() and not path.is_symlink():
        _refuse_links(path)
    with _created(path):
        make_folder(out_root, cfg["name"], digest, "plots")
        atomic_write_text(path / "config.yaml", config_text(cfg, cfg))
        meta = {"job": job, "hash": digest, "data": source_label(cfg), "hashed_config": hashed_config(cfg, job, keys),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": argv if argv is not None else sys.argv,
                "device": str(resolve_device(cfg["device"])), "versions": software_versions()}
        atomic_write_json(path / "meta.json", meta)
        log = _logger(path, digest)
    log.info("run %s of job %s started (%s)", digest, job, " ".join(meta["command"]))
    return Run(path=path, job=job, cfg=cfg, log=log)

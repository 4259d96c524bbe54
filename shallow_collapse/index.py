"""The index of every run under an output root: ``OUT/index.html`` and ``python -m shallow_collapse runs``.

The index is rebuilt from the folders each time (nothing is kept anywhere else), so it is current
after every run, comes back when deleted, and never lists a folder that is gone. Each row is one
run folder ``OUT/<name>/<hash>/`` (a single run, a sweep, a comparison or the whole study): its
job, hash, date, status (for a sweep: the result rows not ok), its data source (``digits[3,8]``, a
file's name and short hash such as ``feats.npz@1a2b3c4d5e6f[0,1]``, or the Gaussian class such as
``GaussiandD2NL``; :func:`data.source_label`), the config keys that differ from
that job's shipped config (``configs/<job>.yml``, or the schema's defaults where that file is
absent; the column's title says which, :func:`baseline`), so that runs of one job can be told apart, and a link to its ``report.html``.

Two runs may finish at once: the rebuild (read every folder, write the page) holds an exclusive
lock on ``OUT/.index.lock``, and the page is written to a temporary name and moved into place, so
the last writer has read every folder as it was when it finished and no reader sees a torn page.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import ConfigError, read_yaml, resolve
from .data import source_label
from .report import REPORT, STYLE, html_link, html_table
from .runs import atomic_write_text
from .sweeps import read_table

__all__ = ["Entry", "INDEX", "entries", "write_index", "update_index", "main"]

INDEX = "index.html"
LOCK = ".index.lock"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the shipped configs of a source checkout


def baseline() -> str:
    """What the index compares a run's keys with, in words: the shipped configs of a source
    checkout, or, for an installed package (no configs/ beside it), the schema's defaults."""
    return "differs from the shipped config" if CONFIGS.is_dir() else "differs from the defaults (no configs/ found)"


@dataclass
class Entry:
    """One run folder as the index shows it."""

    job: str
    hash: str
    date: str
    status: str  # "ok", or what is not (rows not ok, failed, no results yet)
    ok: bool
    differs: dict  # config keys whose value differs from the job's shipped config
    folder: str  # <name>/<hash>, relative to the output root
    data: str = ""  # the data source, e.g. digits[3,8] ("" where the folder does not say)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _baseline(job: str) -> dict:
    """The resolved shipped config of ``job`` (``configs/<job>.yml``), else the schema's defaults."""
    path = CONFIGS / f"{job}.yml"
    try:
        return resolve({"name": job, **(read_yaml(path) if path.is_file() else {})})
    except ConfigError:
        return resolve({"name": job})


def _differs(values: dict, job: str) -> dict:
    base = _baseline(job)
    return {k: v for k, v in values.items() if k != "job" and base.get(k) != v}


def _sweep_status(folder: Path) -> tuple[str, bool]:
    if not (folder / "results.csv").is_file():
        return "no results yet (running or stopped)", False
    rows = read_table(folder / "results.csv")
    bad = sum(r.get("status") != "ok" for r in rows)
    return (f"ok, {len(rows)} rows", True) if not bad else (f"{bad} of {len(rows)} rows not ok", False)


def _data(meta: dict) -> str:
    """The data source of a run folder's ``meta.json`` (folders written before it was recorded:
    from the hashed config, which holds the data keys the run used)."""
    if isinstance(meta.get("data"), str):
        return meta["data"]
    hashed = meta.get("hashed_config", {})
    return source_label(hashed) if "training_data_cls" in hashed else ""


def _run_entry(folder: Path, meta: dict) -> Entry:
    job = meta.get("job", "?")
    if (folder / "cells").is_dir() or (folder / "results.csv").is_file():
        status, ok = _sweep_status(folder)
    else:
        results = _read_json(folder / "results.json")
        if results is None:
            status, ok = "no results yet (running or stopped)", False
        else:
            status = str(results.get("status", "ok"))
            ok = status == "ok"
    return Entry(job, meta.get("hash", folder.name), meta.get("started", ""), status, ok,
                 _differs(meta.get("hashed_config", {}), job), "", _data(meta))


def _paper_entry(folder: Path, record: dict) -> Entry:
    shared = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
    base = _baseline_paper()
    differs = {k: v for k, v in (shared or {}).items() if base.get(k) != v}
    if folder.parent.name != "paper":
        differs = {"name": folder.parent.name, **differs}
    steps = [*record.get("sweeps", {}).values(), *record.get("comparisons", {}).values()]
    bad = sum(s.get("status") != "ok" for s in steps)
    status = str(record.get("status", "?"))
    ok = status == "ok" and not bad
    text = "ok" if ok else f"{status}, {bad} of {len(steps)} steps not ok"
    sweeps = [Path(s["folder"]) for s in record.get("sweeps", {}).values() if isinstance(s.get("folder"), str)]
    sweeps = [p for p in sweeps if len(p.parts) == 2 and ".." not in p.parts and not p.is_absolute()]  # <name>/<hash>
    meta = _read_json(folder.parent.parent / sweeps[0] / "meta.json") if sweeps else None  # all see the same data
    return Entry("paper", record.get("hash", folder.name), record.get("started", ""), text, ok, differs, "",
                 _data(meta) if isinstance(meta, dict) else "")


def _baseline_paper() -> dict:
    path = CONFIGS / "paper.yml"
    try:
        return read_yaml(path) if path.is_file() else {}
    except ConfigError:
        return {}


def _compare_entry(folder: Path, record: dict) -> Entry:
    inputs = [Path(p).parent.name + "/" + Path(p).name for p in record.get("inputs", [])]
    return Entry("compare", folder.name, record.get("created", ""), "ok", True, {"inputs": inputs}, "")


def _study_entry(folder: Path, record: dict) -> Entry:
    status = str(record.get("status", "?"))
    activations = [s.get("activation") for s in record.get("sweeps", [])]
    return Entry(record.get("job", "matched_study"), folder.name, record.get("created", ""), status, status == "ok",
                 {"activations": activations, **({"overrides": record["overrides"]} if record.get("overrides") else {})},
                 "")


def _entry(folder: Path) -> Entry | None:
    for name, build in (("paper.json", _paper_entry), ("compare.json", _compare_entry), ("study.json", _study_entry),
                        ("meta.json", _run_entry)):
        record = _read_json(folder / name)
        if isinstance(record, dict):
            try:
                return build(folder, record)
            except (OSError, ValueError, yaml.YAMLError):
                return Entry(folder.parent.name, folder.name, "", f"unreadable {name}", False, {}, "")
    return None


def entries(out_root) -> list[Entry]:
    """Every run folder ``out_root/<name>/<hash>/``, newest first (links are not followed)."""
    out_root = Path(out_root)
    found = []
    for name in sorted(p for p in out_root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
        for folder in sorted(p for p in name.iterdir() if p.is_dir() and not p.is_symlink()):
            entry = _entry(folder)
            if entry is not None:
                entry.folder = f"{name.name}/{folder.name}"
                found.append(entry)
    found.sort(key=lambda e: (e.date, e.folder), reverse=True)
    return found


def _differs_text(differs: dict) -> str:
    return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in differs.items())


@contextmanager
def _locked(out_root: Path):
    fd = os.open(out_root / LOCK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _page(rows: list[Entry]) -> str:
    cells = [{"job": e.job, "hash": html_link(f"{e.folder}/{REPORT}", e.hash), "date (UTC)": e.date[:19].replace("T", " "),
              "status": e.status, "data": e.data,
              baseline(): _differs_text(e.differs)} for e in rows]
    not_ok = {id(cell) for cell, e in zip(cells, rows) if not e.ok}
    table = html_table(cells, bad=lambda cell: id(cell) in not_ok, raw=("hash",))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>runs</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>Runs <small>{len(rows)} folders</small></h1>\n"
            "<p>Every run folder under this output root, newest first; rebuilt by every run "
            "(<code>python -m shallow_collapse runs</code> prints the same table).</p>\n"
            f"{table if rows else '<p>(no runs yet)</p>'}\n</body></html>\n")


def write_index(out_root) -> Path:
    """Rebuild ``out_root/index.html`` from the run folders under it; returns its path."""
    out_root = Path(out_root)
    with _locked(out_root):
        rows = entries(out_root)
        path = out_root / INDEX
        atomic_write_text(path, _page(rows))
    return path


def update_index(out_root) -> None:
    """:func:`write_index` for the end (and start) of a run: an index that cannot be written is a
    warning on stderr, never a failed run."""
    try:
        write_index(out_root)
    except (OSError, ValueError) as exc:
        print(f"warning: {Path(out_root) / INDEX} not updated: {type(exc).__name__}: {exc}", file=sys.stderr)


def terminal_table(rows: list[Entry]) -> str:
    """The index as aligned text columns."""
    table = [("job", "hash", "date", "status", "data", baseline())]
    table += [(e.job, e.hash, e.date, e.status, e.data, _differs_text(e.differs)) for e in rows]
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5] for r in table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shallow_collapse runs",
                                     description="Every run folder under the output root (and rebuild its index.html).")
    parser.add_argument("--out", default="out", metavar="DIR", help="output root (default: out/)")
    args = parser.parse_args(argv)
    out_root = Path(args.out)
    if not out_root.is_dir():
        print(f"runs: error: {out_root}: expected an output folder (nothing has run there yet)", file=sys.stderr)
        return 2
    try:
        path = write_index(out_root)
    except OSError as exc:
        print(f"runs: error: {out_root}: cannot write {INDEX} ({exc.strerror})", file=sys.stderr)
        return 2
    rows = entries(out_root)
    print(terminal_table(rows) if rows else f"no runs under {out_root}")
    print(f"\n{len(rows)} run folders; page: {path}")
    return 0

"""The whole study in one command: the six bulk sweeps, then the balanced and the imbalanced comparison.

``python paper.py configs/paper.yml [key=value ...] [--out DIR] [--configs DIR]``

Each sweep ``<method>_bulk_<grid>`` reads its own config ``<configs>/<method>_bulk_<grid>.yml``
(by default from the folder of the paper's config) with the keys of the paper's config laid over
it (the shared keys: seed, repeat, the three grid lists, workers, executor, scheduler_address,
and any other key given there; ``name`` names the paper's own folder). It runs exactly as its
entry script would with those keys as ``key=value`` overrides, through :func:`cli.main`, so it
lands in its usual run folder ``OUT/<name>/<hash>/``: the single script with the same keys reuses
that folder, and the paper reuses the single script's. The comparison of each grid
(:func:`compare.compare`) follows its three sweeps.

``OUT/<name>/<hash>/`` (``name`` defaults to ``paper``; the hash covers the six sweeps' run hashes)
holds ``paper.json`` (the folders used, each step's status, rows and failures), ``config.yaml``
(the shared keys) and ``report.html``. A rerun resumes: stored cells are skipped. Ctrl-C stops
the study and keeps every finished cell (exit 130); a sweep that fails is reported and the
others still run (exit 1). All sweeps advance one progress bar with a remaining-time estimate.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from . import cli, matched_study
from .compare import compare
from .config import ConfigError, format_override, parse_override, read_yaml, resolve, load_config
from .executors import check_execution
from .index import update_index
from .jobs import GRID_SCOPES, JOBS
from .methods import METHODS
from .progress import study_progress
from .report import write_report
from .runs import (OutputError, atomic_write_json, atomic_write_text, config_text, make_folder, run_hash,
                   software_versions)
from .sweeps import grid_cells, read_table

__all__ = ["PAPER_SWEEPS", "plan", "study_hash", "run_paper", "main"]

# Per grid, the paper's sweeps in the registry's order (limiting kernels first: seconds; then FCN
# and AK). The posterior network runs in the matched study (--matched), sized for it.
PAPER_SWEEPS = {grid: [f"{m.prefix}_bulk_{grid}" for m in METHODS if m.paper] for grid in GRID_SCOPES}


def plan(config, overrides=(), configs_dir=None) -> tuple[dict, dict, dict]:
    """Validate the paper's config and every sweep's config with the shared keys laid over it.

    Returns ``(paper_cfg, shared, sweeps)``: the paper's resolved config, the shared keys (typed,
    the ones given in the file or on the command line, without ``name``) and, per sweep job,
    ``{"config": path, "cfg": resolved config, "hash": run hash}``. Raises :class:`ConfigError`
    before any work when any of them is invalid.
    """
    config = Path(config)
    paper_cfg = load_config(config, overrides, defaults={"name": "paper"})
    given = set(read_yaml(config)) | {parse_override(text)[0] for text in overrides}
    shared = {key: paper_cfg[key] for key in paper_cfg if key in given and key != "name"}
    configs_dir = Path(configs_dir) if configs_dir is not None else config.parent
    sweeps = {}
    for job in (job for jobs in PAPER_SWEEPS.values() for job in jobs):
        path = configs_dir / f"{job}.yml"
        try:
            cfg = resolve({"name": job, **read_yaml(path), **shared})
            JOBS[job].check(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        check_execution(cfg)
        sweeps[job] = {"config": path, "cfg": cfg, "hash": run_hash(cfg, job, JOBS[job].keys_for(cfg))}
    return paper_cfg, shared, sweeps


def study_hash(sweeps: dict) -> str:
    """The paper folder's hash: it covers the run hashes of the six sweeps planned by :func:`plan`."""
    return hashlib.sha256(json.dumps({job: e["hash"] for job, e in sweeps.items()}, sort_keys=True)
                          .encode()).hexdigest()[:10]


def _sweep_record(entry: dict) -> dict:
    return {"config": str(entry["config"]), "folder": f"{entry['cfg']['name']}/{entry['hash']}",
            "status": "not run", "message": ""}


def _count_rows(record: dict, folder: Path) -> None:
    table = folder / "results.csv"
    if table.is_file():
        rows = read_table(table)
        record["rows"] = len(rows)
        record["rows_not_ok"] = sum(r["status"] != "ok" for r in rows)


def _run_sweep(job: str, entry: dict, shared: dict, out_root: Path, record: dict) -> bool:
    """Run one sweep through its entry script's code path; False when interrupted."""
    argv = [str(entry["config"]), *(format_override(k, v) for k, v in shared.items()), "--out", str(out_root)]
    start = time.perf_counter()
    try:
        outcome = cli.run_job(job, argv)
        code = outcome.code
        if outcome.folder is not None:  # the folder the sweep wrote (the planned one: same keys, same hash)
            record["folder"] = outcome.folder.relative_to(out_root).as_posix()
    except Exception as exc:  # noqa: BLE001 -- a failing sweep is reported; the study goes on
        record.update(status="failed", message=f"{type(exc).__name__}: {exc}".splitlines()[0])
        print(f"paper.py: {job} failed: {record['message']}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        code = 1
    record["seconds"] = round(time.perf_counter() - start, 1)
    if code == 130:
        record.update(status="interrupted", message="interrupted: finished cells are kept")
        return False
    if code == 0:
        record["status"] = "ok"
    elif record["status"] != "failed":
        record.update(status="failed", message=f"exit status {code}")
    _count_rows(record, out_root / record["folder"])
    return True


def _run_comparison(grid: str, records: dict, out_root: Path, plot_formats) -> dict:
    done = [job for job in PAPER_SWEEPS[grid] if records[job]["status"] == "ok"]
    missing = [job for job in PAPER_SWEEPS[grid] if job not in done]
    entry = {"inputs": done, "folder": None, "status": "not run",
             "message": f"without {', '.join(missing)} (not finished)" if missing else ""}
    if not done:
        return entry
    try:
        path = compare([out_root / records[job]["folder"] for job in done], out_root, plot_formats)
    except (OSError, ValueError) as exc:  # CompareError is a ValueError
        entry.update(status="failed", message=f"{type(exc).__name__}: {exc}")
        print(f"paper.py: {grid} comparison failed: {entry['message']}", file=sys.stderr)
        return entry
    entry.update(folder=f"compare/{path.name}", status="incomplete" if missing else "ok")
    return entry


def run_paper(paper_cfg: dict, shared: dict, sweeps: dict, out_root="out", command=()) -> tuple[Path, int]:
    """Run the study planned by :func:`plan`; returns the paper folder and the exit status
    (0 all ok, 1 some sweep or comparison failed, 130 interrupted)."""
    out_root = Path(out_root)
    digest = study_hash(sweeps)
    folder = make_folder(out_root, paper_cfg["name"], digest)
    atomic_write_text(folder / "config.yaml", config_text(shared, next(iter(sweeps.values()))["cfg"]))
    paper = {"job": "paper", "hash": digest, "status": "running",
             "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": list(command),
             "versions": software_versions(),
             "sweeps": {job: _sweep_record(e) for job, e in sweeps.items()},
             "comparisons": {grid: {"inputs": [], "folder": None, "status": "not run"} for grid in PAPER_SWEEPS}}

    def save():
        atomic_write_json(folder / "paper.json", paper)
        write_report(folder)
        update_index(out_root)

    save()
    planned = {job: len(grid_cells(sweeps[job]["cfg"], grid)) for grid, jobs in PAPER_SWEEPS.items() for job in jobs}
    interrupted = False
    with study_progress(planned, desc="paper") as study:
        try:
            for grid, jobs in PAPER_SWEEPS.items():
                for job in jobs:
                    study.describe(f"paper {list(planned).index(job) + 1}/{len(planned)} {job}")
                    ok = _run_sweep(job, sweeps[job], shared, out_root, paper["sweeps"][job])
                    study.finish(job)
                    save()
                    if not ok:  # cli.main caught the Ctrl-C and kept the finished cells: stop here too
                        raise KeyboardInterrupt
                paper["comparisons"][grid] = _run_comparison(grid, paper["sweeps"], out_root,
                                                             paper_cfg["plot_formats"])
                save()
        except KeyboardInterrupt:
            interrupted = True
    steps = [*paper["sweeps"].values(), *paper["comparisons"].values()]
    failed = any(s["status"] not in ("ok", "not run") for s in steps)
    paper["status"] = "interrupted" if interrupted else "failed" if failed else "ok"
    paper["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    save()
    return folder, 130 if interrupted else 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="paper.py", description="The whole study: the six bulk sweeps (limiting kernels, FCN, adaptive kernel; "
        "balanced and imbalanced classes) and both comparisons, with one report.",
        epilog="Every config key, its default and meaning: docs/CONFIG.md.")
    parser.add_argument("config", help="YAML file of the shared keys, e.g. configs/paper.yml")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override shared keys; values are YAML, e.g. repeat=2 in_features_list=[1,8]")
    parser.add_argument("--out", default="out", metavar="DIR", help="output root (default: out/)")
    parser.add_argument("--configs", default=None, metavar="DIR",
                        help="folder of the six sweep configs (default: the folder of CONFIG)")
    parser.add_argument("--matched", default=None, metavar="CONFIG",
                        help="then also run the matched study of this config (the AK and the mean-field kernel "
                             "against the posterior network they describe, e.g. configs/matched_study.yml) in "
                             "its own folder, after the paper page is written")
    args = parser.parse_intermixed_args(argv)
    try:
        paper_cfg, shared, sweeps = plan(args.config, args.overrides, args.configs)
        if args.matched is not None:
            matched_study.plan(args.matched)
    except ConfigError as exc:
        print(f"paper.py: error: {exc}", file=sys.stderr)
        return 2
    command = ["paper.py", *(sys.argv[1:] if argv is None else argv)]
    try:
        folder, code = run_paper(paper_cfg, shared, sweeps, args.out, command)
    except OutputError as exc:  # an unusable --out: refused before any sweep runs
        print(f"paper.py: error: {exc}", file=sys.stderr)
        return 2
    for job, record in json.loads((folder / "paper.json").read_text())["sweeps"].items():
        if record["status"] not in ("ok", "not run"):
            print(f"paper.py: {job}: {record['status']} {record['message']}", file=sys.stderr)
    print(folder)
    if args.matched is not None and code == 0:
        code = matched_study.main([args.matched, "--out", args.out])
    return code

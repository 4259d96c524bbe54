"""The command line shared by every entry script: ``SCRIPT.py CONFIG [key=value ...] [--out DIR]``."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import ConfigError, load_config
from .devices import resolve_device
from .executors import check_execution
from .index import update_index
from .jobs import JOBS
from .memory import check_memory
from .plots import figure_formats
from .report import write_report
from .runs import OutputError, open_run

__all__ = ["main", "run_job", "Outcome", "finish"]


def _parser(job_name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{job_name}.py", description=JOBS[job_name].description,
        epilog="Every config key, its default and meaning: docs/CONFIG.md.")
    parser.add_argument("config", help="YAML config file, e.g. configs/%s.yml" % job_name)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config keys; values are YAML, e.g. repeat=2 in_features_list=[1,8]")
    parser.add_argument("--out", default="out", metavar="DIR", help="output root (default: out/)")
    return parser


@dataclass(frozen=True)
class Outcome:
    """What one run of a job did: its exit status (0 done, 2 refused before any work, 130
    interrupted with the finished cells kept) and the run folder it wrote (None when refused)."""

    code: int
    folder: Path | None


def run_job(job_name: str, argv=None) -> Outcome:
    """Validate the config, the execution settings, the memory and the output folder, then run
    the job and write its report. Refusals print one line on stderr and write nothing. Callers
    that go on with the run (paper.py, the matched study) read the folder from the outcome."""
    parser = _parser(job_name)
    args = parser.parse_intermixed_args(argv)
    job = JOBS[job_name]
    command = [parser.prog, *(sys.argv[1:] if argv is None else argv)]
    try:
        cfg = load_config(args.config, args.overrides, defaults={"name": job_name})
        resolve_device(cfg["device"])
        job.check(cfg)
        check_execution(cfg)
        check_memory(job.memory(cfg))
        run = open_run(cfg, job_name, job.keys_for(cfg), args.out, argv=command)
    except (ConfigError, OutputError, RuntimeError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return Outcome(2, None)
    except KeyboardInterrupt:  # e.g. while waiting for a Dask scheduler: nothing written yet
        print(f"{parser.prog}: interrupted before any work", file=sys.stderr)
        return Outcome(130, None)
    update_index(args.out)
    try:
        with figure_formats(cfg["plot_formats"]):
            job.target(cfg, run)
        write_report(run.path)
    except KeyboardInterrupt:
        run.log.warning("interrupted: finished cells are kept; rerun the same command to resume")
        return Outcome(130, run.path)
    finally:
        run.close()
        update_index(args.out)
    print(run.path)
    return Outcome(0, run.path)


def main(job_name: str, argv=None) -> int:
    """An entry script: :func:`run_job`, returning its exit status."""
    return run_job(job_name, argv).code


def finish(prog: str, work: Callable[[], Path], refusals: tuple[type[BaseException], ...]) -> int:
    """The tail of a command that writes one folder: run ``work``; print the folder and return 0,
    or print ``prog: error: ...`` for one of ``refusals`` and return 2."""
    try:
        folder = work()
    except refusals as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0

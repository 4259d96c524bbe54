"""``python -m shallow_collapse JOB CONFIG [key=value ...] [--out DIR]``: run any job.

JOB is the name of an entry script without ``.py`` (e.g. ``fcn_bulk_balanced``), ``paper`` or
``compare`` (``python -m shallow_collapse compare RUN_DIR [RUN_DIR ...]``), or ``runs``
(``python -m shallow_collapse runs [--out DIR]``: the index of every run folder).
"""
from __future__ import annotations

import sys

from . import cli, compare, index, matched_study, paper
from .jobs import JOBS

COMMANDS = {**{job: (lambda argv, job=job: cli.main(job, argv)) for job in JOBS},
            "paper": paper.main, "compare": compare.main, "matched_study": matched_study.main, "runs": index.main}


USAGE = ("usage: python -m shallow_collapse JOB CONFIG [key=value ...] [--out DIR]\n"
         "       python -m shallow_collapse compare RUN_DIR [RUN_DIR ...] [--out DIR]\n"
         "       python -m shallow_collapse runs [--out DIR]   (every run folder; rebuilds OUT/index.html)\njobs: " + ", ".join(COMMANDS))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    wants_help = bool(argv) and argv[0] in ("-h", "--help")
    print(USAGE, file=sys.stdout if wants_help else sys.stderr)
    return 0 if wants_help else 2


if __name__ == "__main__":
    sys.exit(main())

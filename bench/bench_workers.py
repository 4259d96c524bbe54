"""Speed-up of local worker processes: the same small FCN and AK sweeps with 1 and 2 workers.

    python bench/bench_workers.py

Each sweep runs through its entry script (fresh output root, so nothing is cached) with
``workers=1`` (in process) and ``workers=2`` (two spawned processes); every cell runs on one
torch thread either way. Prints wall times, the speed-up (target >= 1.7 on a 2-core machine) and checks that
both tables hold identical numbers (timing columns, whose names end in "seconds", aside).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shallow_collapse.sweeps import read_table  # noqa: E402
SWEEPS = {  # small grids: 16 cells of one to a few seconds each
    "fcn_bulk_balanced": ["N_list=[256,512,768,1024]", "in_features_list=[1,2,8,32]", "repeat=4",
                          "num_epochs=600"],
    "adaptive_kernels_bulk_balanced": ["N_list=[256,512,768,1024]", "in_features_list=[2,8,32,128]", "repeat=4"],
}


def run(script: str, overrides: list[str], workers: int, out: str) -> tuple[float, Path]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, f"{script}.py", f"configs/{script}.yml", *overrides,
                           f"workers={workers}", "--out", out], cwd=ROOT, check=True, capture_output=True,
                          text=True)
    return time.perf_counter() - start, Path(proc.stdout.strip().splitlines()[-1])


def numbers(folder: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in read_table(folder / "results.csv")]


def main() -> None:
    for script, overrides in SWEEPS.items():
        with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
            t1, folder1 = run(script, overrides, 1, one)
            t2, folder2 = run(script, overrides, 2, two)
            same = numbers(folder1) == numbers(folder2)
            print(f"{script:32s} 1 worker {t1:6.1f} s   2 workers {t2:6.1f} s   speed-up {t1 / t2:4.2f}x   "
                  f"identical tables: {same}")


if __name__ == "__main__":
    main()

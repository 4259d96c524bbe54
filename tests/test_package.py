"""The package builds as a wheel from the checkout and works from another directory."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_imports_and_runs_a_job_from_another_directory(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "shallow_collapse", src / "shallow_collapse",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(wheels), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("shallow_collapse-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    for module in ("__main__.py", "paper.py", "report.py", "plots/captions.py", "experiments/fcn.py"):
        assert f"shallow_collapse/{module}" in names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "c.yml").write_text(yaml.safe_dump({"N_list": [16], "in_features_list": [2], "repeat": 1,
                                                     "workers": 1}))
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = dict(cwd=elsewhere, env=env, capture_output=True, text=True)
    where = subprocess.run([sys.executable, "-c", "import shallow_collapse; print(shallow_collapse.__file__)"], **run)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    job = subprocess.run([sys.executable, "-m", "shallow_collapse", "limiting_kernels_bulk_balanced", "c.yml",
                          "--out", "out"], **run)
    assert job.returncode == 0, job.stderr
    folder = elsewhere / job.stdout.strip()
    assert (folder / "results.csv").is_file() and (folder / "report.html").is_file()
    usage = subprocess.run([sys.executable, "-m", "shallow_collapse", "no_such_job"], **run)
    assert usage.returncode == 2 and "paper" in usage.stderr and "fcn_bulk_imbalanced" in usage.stderr

"""Shared fixtures: tiny configs written to a temporary folder (override only what a test needs),
and the check that a command was refused cleanly."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

torch.set_num_threads(1)  # the suite runs beside other work on a 2-core machine

TINY_SWEEP = {
    "name": "tiny", "seed": 3, "N_list": [16, 32], "class_sizes_list": [[8, 8], [4, 12]],
    "in_features_list": [1, 4], "repeat": 2, "workers": 1,
}


@pytest.fixture
def write_config(tmp_path):
    """``write_config(**keys) -> path`` of a YAML config with the tiny sweep grid and ``keys``."""
    def write(filename="config.yml", **keys):
        path = tmp_path / filename
        path.write_text(yaml.safe_dump({**TINY_SWEEP, **keys}))
        return path
    return write


@pytest.fixture
def out_root(tmp_path):
    return tmp_path / "out"


def files_under(root) -> dict:
    """Every file, folder and link under ``root`` (links not followed) with its size and mtime."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            stat = os.lstat(Path(folder) / name)
            found[os.path.relpath(Path(folder) / name, root)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture
def refused(tmp_path, capsys):
    """``refused(call, *words) -> line``: ``call()`` returns exit status 2 and prints one line
    ``...: error: ...`` holding every one of ``words``, no traceback, and changes nothing under
    the test's folder (no new file or folder, nothing written through a link)."""
    def check(call, *words):
        capsys.readouterr()
        before = files_under(tmp_path)
        status = call()
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert status == 2 and "Traceback" not in err and len(lines) == 1 and ": error: " in lines[0], err
        for word in words:
            assert word in lines[0], (word, lines[0])
        assert files_under(tmp_path) == before
        return lines[0]
    return check

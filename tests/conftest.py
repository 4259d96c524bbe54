"""Shared fixtures: tiny configs written to a temporary folder (override only what a test needs)."""
from __future__ import annotations

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

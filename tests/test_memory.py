"""Memory estimates: sizes that cannot fit are refused before any work (issue 9, case 6)."""
from pathlib import Path

import pytest

from shallow_collapse.cli import main
from shallow_collapse.config import ConfigError, load_config
from shallow_collapse.jobs import JOBS
from shallow_collapse.memory import Need, available_memory, check_memory

ROOT = Path(__file__).resolve().parents[1]

TOO_LARGE = [  # (job, overrides, keys the one line must name)
    ("fcn", ["N=1e12"], ["N", "in_features"]),
    ("fcn", ["in_features=1e9"], ["in_features"]),
    ("fcn", ["hidden_features=1e9"], ["hidden_features"]),
    ("fcn", ["L=100000"], ["L"]),
    ("limiting_kernels_bulk_balanced", ["N_list=[1099511627776]"], ["N_list", "repeat", "workers"]),
    ("limiting_kernels_bulk_balanced", ["repeat=1e12"], ["repeat"]),
    ("fcn_bulk_imbalanced", ["class_sizes_list=[[1000000000,1000000000]]"], ["class_sizes_list"]),
    ("adaptive_kernels", ["N=1e8"], ["N"]),
    ("adaptive_kernels_bulk_balanced", ["workers=100000", f"N_list={list(range(2, 202, 2))}",  # 100000 cells
                                        f"in_features_list={list(range(1, 1001))}"], ["workers"]),
]


@pytest.mark.parametrize("job,overrides,keys", TOO_LARGE)
def test_sizes_that_cannot_fit_are_refused_before_any_work(job, overrides, keys, write_config, out_root, refused):
    path = write_config()
    line = refused(lambda: main(job, [str(path), *overrides, "--out", str(out_root)]),
                   "expected sizes that fit", "of memory available", "needs about")
    named = line.split(": expected")[0]
    assert all(key in named.split("keys ")[1].split(", ") for key in keys), line


def test_the_line_says_how_much_is_needed_and_available():
    with pytest.raises(ConfigError, match=r"keys N, d: .* 1\.0 GiB of memory available, but one run needs about 2\.0 TiB"):
        check_memory(Need(2 * 2**40, ("N", "d"), "one run"), available=2**30)
    check_memory(Need(2**30, ("N",), "one run"), available=2**30)  # exactly enough is enough
    assert 0 < available_memory()


@pytest.mark.parametrize("config", sorted(p for p in (ROOT / "configs").glob("*.yml") if p.stem in JOBS),
                         ids=lambda p: p.stem)
def test_shipped_configs_fit_in_4_gib_with_two_workers(config):
    # (paper.yml and paper_quick.yml run these jobs' configs, each checked by its own sweep.)
    # The estimates must not refuse the paper's grids on a small machine.
    cfg = load_config(config, ["workers=2"])
    check_memory(JOBS[config.stem].memory(cfg), available=4 * 2**30)

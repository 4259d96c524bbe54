"""Each job declares the keys it uses: exactly those enter its run hash; keys it cannot honour stop."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shallow_collapse.cli import main
from shallow_collapse.config import SCHEMA, load_config
from shallow_collapse.jobs import JOBS
from shallow_collapse.runs import run_hash

GOLDEN_KEYS = Path(__file__).with_name("golden_keys.json")
AK_JOBS = ["adaptive_kernels", "adaptive_kernels_bulk_balanced", "adaptive_kernels_bulk_imbalanced"]


def test_every_declared_key_exists_and_no_execution_key_is_hashed():
    for name, job in JOBS.items():
        assert set(job.keys) <= set(SCHEMA), name
        assert not {k for k in job.keys if SCHEMA[k].scope == "run"}, name


@pytest.mark.parametrize("job", AK_JOBS)
def test_adaptive_kernel_hash_ignores_network_keys_it_does_not_use(job, write_config):
    base = load_config(write_config())
    h = run_hash(base, job, JOBS[job].keys)
    for key, value in [("hidden_weight_std", 2.0), ("bias_std", 0.3), ("final_weight_std", 1.0), ("lr", 0.5)]:
        assert run_hash({**base, key: value}, job, JOBS[job].keys) == h, key
    for key, value in [("activation", "relu"), ("sig2", 1e-3), ("rtol", 1e-6), ("eos_update_strategy", "anderson")]:
        assert run_hash({**base, key: value}, job, JOBS[job].keys) != h, key


def test_lightweight_enters_only_the_single_run_hash():
    assert "lightweight" in JOBS["adaptive_kernels"].keys
    assert "lightweight" not in JOBS["adaptive_kernels_bulk_balanced"].keys


@pytest.mark.parametrize("job", AK_JOBS)
def test_adaptive_kernel_refuses_more_than_one_hidden_layer(job, write_config, out_root, capsys):
    assert main(job, [str(write_config(L=3)), "--out", str(out_root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'L'" in err and "expected 2" in err
    assert not out_root.exists()


def test_every_job_hashes_exactly_its_pinned_keys():
    # The key list of each job is pinned (tests/golden_keys.json): a key that enters or leaves a
    # job's hash changes its run folders, so it must be a deliberate change of that file
    # (PYTHONPATH=. python tests/test_jobs.py rewrites it).
    golden = json.loads(GOLDEN_KEYS.read_text())
    assert sorted(golden) == sorted(JOBS)
    for name, job in JOBS.items():
        assert list(job.keys) == golden[name], name


def test_leaky_relu_slope_enters_the_hash_only_of_leaky_relu_runs():
    for name in ("fcn_bulk_balanced", "limiting_kernels_bulk_balanced", "adaptive_kernels"):
        cfg = load_config(f"configs/{name}.yml")
        assert "leaky_relu_slope" not in JOBS[name].keys_for(cfg)
        assert "leaky_relu_slope" in JOBS[name].keys_for({**cfg, "activation": "leaky_relu"})
    cfg = load_config("configs/posterior_bulk_balanced.yml", ["activation=leaky_relu"])
    assert "leaky_relu_slope" in JOBS["posterior_bulk_balanced"].keys_for(cfg)


if __name__ == "__main__":  # PYTHONPATH=. python tests/test_jobs.py: rewrite tests/golden_keys.json
    GOLDEN_KEYS.write_text(json.dumps({name: list(job.keys) for name, job in sorted(JOBS.items())}, indent=1) + "\n")
    print(f"wrote {GOLDEN_KEYS}")

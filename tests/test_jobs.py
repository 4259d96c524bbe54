"""Each job declares the keys it uses: exactly those enter its run hash; keys it cannot honour stop."""
from __future__ import annotations

import pytest

from shallow_collapse.cli import main
from shallow_collapse.config import SCHEMA, load_config
from shallow_collapse.jobs import JOBS
from shallow_collapse.runs import run_hash

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


def test_limiting_kernel_and_fcn_hashes_cover_the_same_keys_as_before(write_config):
    # The keys these jobs hashed before keys were declared per job (by scope), so their run
    # folders (and resumes) are unchanged.
    by_scope = lambda *scopes: sorted(k for k, s in SCHEMA.items() if s.scope in scopes)  # noqa: E731
    assert list(JOBS["limiting_kernels_bulk_balanced"].keys) == by_scope("data", "grid", "grid_balanced", "network")
    assert list(JOBS["fcn_bulk_imbalanced"].keys) == by_scope("data", "grid", "grid_imbalanced", "network", "fcn")
    assert list(JOBS["fcn"].keys) == by_scope("data", "single", "network", "fcn", "probe")


def test_leaky_relu_slope_enters_the_hash_only_of_leaky_relu_runs():
    for name in ("fcn_bulk_balanced", "limiting_kernels_bulk_balanced", "adaptive_kernels"):
        cfg = load_config(f"configs/{name}.yml")
        assert "leaky_relu_slope" not in JOBS[name].keys_for(cfg)
        assert "leaky_relu_slope" in JOBS[name].keys_for({**cfg, "activation": "leaky_relu"})
    cfg = load_config("configs/posterior_bulk_balanced.yml", ["activation=leaky_relu"])
    assert "leaky_relu_slope" in JOBS["posterior_bulk_balanced"].keys_for(cfg)

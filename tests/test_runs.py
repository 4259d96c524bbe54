import json

import yaml

from shallow_collapse.config import load_config
from shallow_collapse.jobs import JOBS
from shallow_collapse.runs import open_run, run_hash

JOB = "limiting_kernels_bulk_balanced"
SCOPES = JOBS[JOB].scopes


def test_hash_is_stable_under_order_and_formatting(tmp_path):
    a = tmp_path / "a.yml"
    a.write_text("repeat: 2\nN_list: [16, 32]\nbias_std: 0\nfinal_weight_std: 1.97\n")
    b = tmp_path / "b.yml"
    b.write_text("final_weight_std: 1.970\nN_list:\n  - 16\n  - 32\nbias_std: 0.0   # same value\nrepeat: 2\n")
    assert run_hash(load_config(a), JOB, SCOPES) == run_hash(load_config(b), JOB, SCOPES)
    assert len(run_hash(load_config(a), JOB, SCOPES)) == 10


def test_hash_follows_the_numbers_only(write_config):
    base = load_config(write_config())
    h = run_hash(base, JOB, SCOPES)
    for key, value in [("repeat", 3), ("seed", 4), ("activation", "relu"), ("class_stds", [0.5, 1.0])]:
        assert run_hash({**base, key: value}, JOB, SCOPES) != h, key
    # keys that do not change a limiting-kernel sweep's numbers: name, execution, training keys
    for key, value in [("name", "other"), ("use_cache", False), ("device", "cpu"), ("lr", 0.5),
                       ("class_sizes_list", [[1, 31]]), ("hidden_features", 7)]:
        assert run_hash({**base, key: value}, JOB, SCOPES) == h, key


def test_run_folder_records_config_and_versions(write_config, out_root):
    cfg = load_config(write_config())
    run = open_run(cfg, JOB, SCOPES, out_root, argv=["x"])
    run.close()
    assert run.path == out_root / "tiny" / run_hash(cfg, JOB, SCOPES)
    assert yaml.safe_load((run.path / "config.yaml").read_text()) == cfg
    meta = json.loads((run.path / "meta.json").read_text())
    assert {"python", "torch", "numpy"} <= set(meta["versions"]) and meta["device"] in ("cpu", "cuda")
    assert (run.path / "run.log").exists() and (run.path / "plots").is_dir()

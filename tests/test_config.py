import subprocess
import sys
from pathlib import Path

import pytest

from shallow_collapse.cli import main
from shallow_collapse.config import SCHEMA, load_config

ROOT = Path(__file__).resolve().parents[1]

BAD = [  # (keys written to the config, override, words the one-line message must contain)
    ({"repeet": 2}, None, ["unknown config key 'repeet'", "did you mean 'repeat'"]),
    ({"repeat": "many"}, None, ["'repeat'", "expected an integer"]),
    ({"lr": "fast"}, None, ["'lr'", "expected a finite number"]),
    ({"use_batch_norm": "yes"}, None, ["'use_batch_norm'", "true or false"]),
    ({"class_stds": [0.5, -1.0]}, None, ["'class_stds'", "non-negative"]),
    ({"N": 10, "class_sizes": [4, 5]}, None, ["'class_sizes'", "sum to N=10"]),
    ({"class_sizes_list": [[8, -8]]}, None, ["'class_sizes_list'", "positive class sizes"]),
    ({"class_means": [-2, 0, 2]}, None, ["'class_means'", "num_classes=2"]),
    ({"activation": "swish2"}, None, ["'activation'", "erf", "relu", "tanh", "leaky_relu"]),
    ({"training_data_cls": "MNIST"}, None, ["'training_data_cls'", "GaussiandD2NL"]),
    ({"training_data_cls": "GaussiandD4NL"}, None, ["'num_classes'", "4"]),
    ({"name": "../escape"}, None, ["'name'", "folder name"]),
    ({}, "in_features_lst=[1]", ["unknown config key 'in_features_lst'", "in_features_list"]),
    ({}, "repeat", ["override 'repeat'", "key=value"]),
    ({"f_tol": 1e-6}, None, ["'f_tol'", "retired", "rtol"]),
    ({"annealing_factors": [1e4, 1e5, 500]}, None, ["'annealing_factors'", "strictly decreasing"]),
    ({"seed": -1}, None, ["'seed'", "a non-negative integer"]),
    ({"in_features_list": [1, 0]}, None, ["'in_features_list'", "a list of positive integers"]),
    ({}, "f_tol=5e-4", ["'f_tol'", "retired", "rtol"]),
    ({"rtol": 0}, None, ["'rtol'", "between 0 and 1"]),
    ({"eos_update_strategy": "lbfgs"}, None, ["'eos_update_strategy'", "minimize", "anderson"]),
    ({"eos_candidates": ["anderson", "bfgs"]}, None, ["'eos_candidates'", "a list of minimize, anderson"]),
]


def test_retired_key_with_na_is_ignored(write_config):
    # Configs of the earlier layout may carry f_tol: na ("not applicable"): nothing to retire.
    assert "f_tol" not in load_config(write_config(f_tol="na"), [])


@pytest.mark.parametrize("keys,override,words", BAD)
def test_bad_config_stops_with_one_line_and_no_folder(write_config, out_root, capsys, keys, override, words):
    path = write_config(**keys)
    argv = [str(path), *([override] if override else []), "--out", str(out_root)]
    assert main("limiting_kernels_bulk_balanced", argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("limiting_kernels_bulk_balanced.py: error:")
    for word in words:
        assert word in err
    assert not out_root.exists()


def test_missing_file_unparsable_yaml_and_unsafe_yaml(tmp_path, out_root, capsys):
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text("repeat: [1, 2\n")
    unsafe = tmp_path / "unsafe.yml"
    unsafe.write_text("repeat: !!python/object/apply:os.system ['echo hacked']\n")
    for path, word in [(tmp_path / "nope.yml", "not found"), (bad_yaml, "not valid YAML"), (unsafe, "not valid YAML")]:
        assert main("limiting_kernels_bulk_balanced", [str(path), "--out", str(out_root)]) == 2
        assert word in capsys.readouterr().err
    assert not out_root.exists()


def test_script_exits_2_without_traceback(write_config, tmp_path):
    path = write_config(activation="swish2")
    proc = subprocess.run([sys.executable, "limiting_kernels_bulk_balanced.py", str(path), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "'activation'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_legacy_config_runs_unchanged(tmp_path):
    # Earlier-layout configs: placeholders "na", YAML-1.1 floats like 1e-3 (read as strings),
    # no seed and no sweep lists.
    path = tmp_path / "legacy.yml"
    path.write_text("name: legacy\ntraining_data_cls: GaussiandD2NL\nN: 128\nclass_means: [-2, 2]\n"
                    "class_stds: [0.5, 0.5]\nclass_sizes: [64, 64]\nhidden_features: na\nlr: 1e-3\n"
                    "activation: erf\nuse_cache: False\nL: 2\nin_features: 2\n")
    cfg = load_config(path)
    assert cfg["hidden_features"] == SCHEMA["hidden_features"].default and cfg["lr"] == 1e-3
    assert cfg["seed"] == 0 and cfg["N_list"] == [128, 256, 512, 1024] and cfg["repeat"] == 10


def test_overrides_are_yaml(write_config):
    cfg = load_config(write_config(), ["repeat=3", "in_features_list=[1, 8]", "activation=relu"])
    assert cfg["repeat"] == 3 and cfg["in_features_list"] == [1, 8] and cfg["activation"] == "relu"


def alias_bomb(key: str, depth: int = 40) -> str:
    """YAML whose value under ``key`` expands to 9**depth leaves (a "billion laughs")."""
    levels = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth)]
    return f"{key}: [{', '.join(levels)}]\n"


HOSTILE = {  # issue 9, cases 1-4, 7, 8, 10: (config file text or keys, overrides, words of the one line)
    "1 alias bomb under a known key": (alias_bomb("class_means"), [], ["'class_means'", "a list of finite numbers"]),
    "2 non-UTF-8 config file": (b"repeat: 2\nname: caf\xe9\n", [], ["expected UTF-8 text", "0xe9"]),
    "3 negative seed": ({}, ["seed=-1"], ["'seed'", "non-negative integer"]),
    "4 NaN in class_means": ({}, ["class_means=[.nan,2]"], ["'class_means'", "finite numbers"]),
    "4 inf in class_stds": ({}, ["class_stds=[.inf,0.5]"], ["'class_stds'", "finite numbers"]),
    "4 inf in annealing_factors": ({}, ["annealing_factors=[.inf,500]"], ["'annealing_factors'", "finite numbers"]),
    "7 name with a trailing newline": ({"name": "run\n"}, [], ["'name'", "folder name"]),
    "7 name of 300 characters": ({"name": "a" * 300}, [], ["'name'", "at most 100"]),
    "8 duplicate N_list entries": ({}, ["N_list=[16,16]"], ["'N_list'", "distinct"]),
    "8 duplicate in_features_list entries": ({}, ["in_features_list=[4,1,4]"], ["'in_features_list'", "distinct"]),
    "8 duplicate class_sizes_list entries": ({}, ["class_sizes_list=[[8,8],[8,8]]"], ["'class_sizes_list'", "distinct"]),
    "10 empty config file": ("", [], ["empty file"]),
    "10 override with no value": ({}, ["N="], ["override 'N='", "a value after '='"]),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_config_is_refused_with_one_line(case, write_config, tmp_path, out_root, refused):
    content, overrides, words = HOSTILE[case]
    path = tmp_path / "hostile.yml"
    if isinstance(content, dict):
        path = write_config(**content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    line = refused(lambda: main("limiting_kernels_bulk_balanced", [str(path), *overrides, "--out", str(out_root)]),
                   *words)
    assert line.startswith("limiting_kernels_bulk_balanced.py: error:") and len(line) < 400


def test_the_schedule_is_made_to_end_at_h(write_config):
    cfg = load_config(write_config(h=1000, annealing_factors=[1e5, 1e4, 2000]), [])
    assert cfg["annealing_factors"] == [1e5, 1e4, 2000, 1000]
    assert load_config(write_config(), [])["annealing_factors"][-1] == 500


@pytest.mark.parametrize("job", ["adaptive_kernels_bulk_balanced", "adaptive_kernels"])
@pytest.mark.parametrize("key", ["sigw2", "siga2", "sig2"])
@pytest.mark.parametrize("value", [0, -1])
def test_variances_must_be_positive(job, key, value, write_config, out_root, refused):
    path = write_config(N=16, in_features=2)
    line = refused(lambda: main(job, [str(path), f"{key}={value}", "--out", str(out_root)]),
                   f"'{key}'", "a positive number")
    assert line.startswith(f"{job}.py: error:")


def test_adaptive_kernels_script_refuses_a_negative_sigw2(write_config, out_root):
    proc = subprocess.run([sys.executable, str(ROOT / "adaptive_kernels.py"), str(write_config()), "sigw2=-1",
                           "--out", str(out_root)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "'sigw2'" in proc.stderr, proc.stderr
    assert not out_root.exists()


def test_a_schedule_ending_below_h_is_refused_only_by_the_jobs_that_anneal(write_config, out_root, refused):
    """The AK's annealing_factors must end at or above h; the limiting kernels (and the posterior
    network, tests/experiments/test_posterior.py) do not read the schedule and run."""
    path = write_config(h=1000)
    refused(lambda: main("adaptive_kernels_bulk_balanced", [str(path), "--out", str(out_root)]),
            "'annealing_factors'", "no smaller than h=1000")
    assert main("limiting_kernels_bulk_balanced", [str(path), "--out", str(out_root)]) == 0


def test_reading_a_config_imports_neither_the_solver_nor_numba():
    # The strategy names a config is checked against live in params.EOS_STRATEGIES, beside
    # SolverOptions, so that loading YAML never compiles the EoS loops.
    code = ("import sys, shallow_collapse.config as c; c.load_config(sys.argv[1]); "
            "print(sorted(m for m in ('numba', 'shallow_collapse.eos') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, "configs/adaptive_kernels_bulk_balanced.yml"], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"

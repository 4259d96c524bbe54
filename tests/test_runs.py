import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from shallow_collapse.cli import main
from shallow_collapse.config import load_config
from shallow_collapse.jobs import JOBS
from shallow_collapse.runs import atomic_write_text, open_run, run_hash

JOB = "limiting_kernels_bulk_balanced"
KEYS = JOBS[JOB].keys


def test_hash_is_stable_under_order_and_formatting(tmp_path):
    a = tmp_path / "a.yml"
    a.write_text("repeat: 2\nN_list: [16, 32]\nbias_std: 0\nfinal_weight_std: 1.97\n")
    b = tmp_path / "b.yml"
    b.write_text("final_weight_std: 1.970\nN_list:\n  - 16\n  - 32\nbias_std: 0.0   # same value\nrepeat: 2\n")
    assert run_hash(load_config(a), JOB, KEYS) == run_hash(load_config(b), JOB, KEYS)
    assert len(run_hash(load_config(a), JOB, KEYS)) == 10


def test_hash_follows_the_numbers_only(write_config):
    base = load_config(write_config())
    h = run_hash(base, JOB, KEYS)
    for key, value in [("repeat", 3), ("seed", 4), ("activation", "relu"), ("class_stds", [0.5, 1.0])]:
        assert run_hash({**base, key: value}, JOB, KEYS) != h, key
    # keys that do not change a limiting-kernel sweep's numbers: name, execution, training keys
    for key, value in [("name", "other"), ("use_cache", False), ("device", "cpu"), ("lr", 0.5),
                       ("class_sizes_list", [[1, 31]]), ("hidden_features", 7)]:
        assert run_hash({**base, key: value}, JOB, KEYS) == h, key


def test_run_folder_records_config_and_versions(write_config, out_root):
    cfg = load_config(write_config())
    run = open_run(cfg, JOB, KEYS, out_root, argv=["x"])
    run.close()
    assert run.path == out_root / "tiny" / run_hash(cfg, JOB, KEYS)
    assert yaml.safe_load((run.path / "config.yaml").read_text()) == cfg
    meta = json.loads((run.path / "meta.json").read_text())
    assert {"python", "torch", "numpy"} <= set(meta["versions"]) and meta["device"] in ("cpu", "cuda")
    assert (run.path / "run.log").exists() and (run.path / "plots").is_dir()


def _file(tmp_path):
    (tmp_path / "a_file").write_text("not a folder\n")
    return tmp_path / "a_file"


UNUSABLE_OUT = {  # issue 9, case 5: --out that cannot hold a run folder, and the words of the line
    "/dev/null": (lambda tmp_path: Path("/dev/null"), ["/dev/null", "expected a folder"]),
    "a regular file": (_file, ["a_file", "expected a folder, got a file"]),
    "below a regular file": (lambda tmp_path: _file(tmp_path) / "out", ["a_file", "expected a writable folder"]),
    "a read-only place": (lambda tmp_path: Path("/sys/shallow_collapse_out"), ["/sys/shallow_collapse_out",
                                                                            "expected a writable folder"]),
}


@pytest.mark.parametrize("case", UNUSABLE_OUT)
def test_unusable_out_is_refused_with_one_line(case, write_config, tmp_path, refused):
    where, words = UNUSABLE_OUT[case]
    path, out = write_config(), where(tmp_path)
    if case == "a read-only place" and not Path("/sys").is_dir():
        pytest.skip("needs a read-only /sys")
    refused(lambda: main(JOB, [str(path), "--out", str(out)]), *words)
    assert not os.path.lexists("/sys/shallow_collapse_out")


def _plant(run_path: Path, outside: Path, name: str) -> Path:
    """Replace ``run_path/name`` (a file or folder of the run) by a link to ``outside/name``."""
    link = run_path / name
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    target = outside / name.replace("/", "_")
    target.mkdir() if "." not in name else target.write_text("victim\n")
    link.symlink_to(target)
    return link


PLANTED = ["run.log", "config.yaml", "plots/nngp_nc1.png", "cells", "plots", "cells/n8-8_d1.json", ".",
           "..", "fcn:weights.pt"]


@pytest.mark.parametrize("name", PLANTED)
def test_a_symlink_planted_in_the_output_tree_is_refused(name, write_config, tmp_path, out_root, refused):
    # issue 9, case 14: the run folder, its parent (".." = OUT/<name>), plots/, cells/ and any file
    job, name = ("fcn", name.split(":")[1]) if name.startswith("fcn:") else (JOB, name)
    cfg = load_config(write_config(), defaults={"name": job})
    run = open_run(cfg, job, JOBS[job].keys_for(cfg), out_root)
    run.close()
    (run.path / "cells").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    if name in (".", ".."):
        folder = run.path if name == "." else run.path.parent
        shutil.move(folder, outside / "moved")
        folder.symlink_to(outside / "moved")
        link = folder
    else:
        link = _plant(run.path, outside, name)
    path = write_config()
    refused(lambda: main(job, [str(path), "--out", str(out_root)]), str(link), "symbolic link")


def test_writes_replace_a_link_planted_later_instead_of_following_it(tmp_path):
    import matplotlib.pyplot as plt

    from shallow_collapse.plots import save_figure

    victim = tmp_path / "victim"
    victim.write_text("victim\n")
    for name, write in [("a.txt", lambda p: atomic_write_text(p, "mine\n")),
                        ("b.png", lambda p: save_figure(plt.figure(), p))]:
        link = tmp_path / name
        link.symlink_to(victim)
        write(link)
        assert not link.is_symlink() and link.stat().st_size > 0
    assert victim.read_text() == "victim\n"


GOLDEN = Path(__file__).with_name("golden_hashes.json")


def shipped_hashes() -> dict:
    """Run hash of every shipped job config, and of each paper config its study hash and the hashes of
    the six sweeps it plans."""
    from shallow_collapse import matched_study
    from shallow_collapse.paper import plan, study_hash

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yml"))
    hashes = {}
    for path in configs:
        if path.stem in JOBS:
            cfg = load_config(path, defaults={"name": path.stem})
            hashes[path.name] = run_hash(cfg, path.stem, JOBS[path.stem].keys_for(cfg))
        elif path.stem.startswith("matched_study"):  # per activation: the posterior, AK and SGD FCN sweeps
            _, points = matched_study.plan(path)
            hashes[path.name] = {f"{job} activation={p['activation']}": digest
                                 for p in points for job, digest in p["hashes"].items()}
        else:
            _, _, sweeps = plan(path)
            hashes[path.name] = {"study": study_hash(sweeps), **{job: e["hash"] for job, e in sweeps.items()}}
    return hashes


def test_shipped_configs_keep_their_run_hashes():
    """A changed hash orphans every stored result of that config: it must be a deliberate change.
    After one (a new key that enters a job's hash, a changed shipped config), regenerate with
    ``PYTHONPATH=. python tests/test_runs.py`` and commit tests/golden_hashes.json with the change."""
    assert shipped_hashes() == json.loads(GOLDEN.read_text())


if __name__ == "__main__":  # PYTHONPATH=. python tests/test_runs.py: rewrite tests/golden_hashes.json
    GOLDEN.write_text(json.dumps(shipped_hashes(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")

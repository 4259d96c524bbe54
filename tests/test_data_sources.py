import numpy as np
import pytest
import torch

from shallow_collapse import data
from shallow_collapse.config import ConfigError, resolve
from shallow_collapse.jobs import JOBS
from shallow_collapse.runs import run_hash


def _npz(tmp_path, X, labels, name="d.npz"):
    path = tmp_path / name
    np.savez(path, X=X, labels=labels)
    return str(path)


def _pool_file(tmp_path):
    rng = np.random.default_rng(0)
    return _npz(tmp_path, rng.standard_normal((60, 5)), np.repeat([7, 2, 4], 20))


def test_balanced_cells_hold_n_over_c_of_each_class_and_repeats_differ(tmp_path):
    cfg = resolve({"training_data_cls": "file", "data_path": _pool_file(tmp_path), "data_classes": [4, 7]})
    a, b = data.draw(cfg, (6, 6), 3, 0), data.draw(cfg, (6, 6), 3, 0)
    assert torch.equal(a.index, b.index) and torch.equal(a.X, b.X)
    p = data.pool(cfg)
    assert [int((p.labels[a.index.numpy()] == c).sum()) for c in (0, 1)] == [6, 6]
    assert len(set(a.index.tolist())) == 12
    assert not torch.equal(a.index, data.draw(cfg, (6, 6), 3, 1).index)
    assert p.classes == (4, 7)  # data_classes order decides class 0


def test_hash_follows_one_byte_of_the_file(tmp_path):
    path = _pool_file(tmp_path)
    job = "limiting_kernels_bulk_balanced"
    cfg = resolve({"training_data_cls": "file", "data_path": path, "data_classes": [4, 7]})
    h = run_hash(cfg, job, JOBS[job].keys_for(cfg))
    content = bytearray(open(path, "rb").read())
    content[-30] ^= 1
    open(path, "wb").write(bytes(content))
    try:
        other = resolve({"training_data_cls": "file", "data_path": path, "data_classes": [4, 7]})
    except ConfigError:
        return  # the edited byte made the file unreadable: refused, never resumed into the old folder
    assert run_hash(other, job, JOBS[job].keys_for(other)) != h


@pytest.mark.parametrize("raw, key", [
    ({"training_data_cls": "file", "data_path": "/nonexistent.npz"}, "data_path"),
    ({"training_data_cls": "digits", "data_classes": [3, 11]}, "data_classes"),
    ({"training_data_cls": "digits", "data_classes": [3]}, "data_classes"),
    ({"training_data_cls": "digits"}, "num_classes"),
    ({"data_path": "x.npz"}, "data_path"),
])
def test_bad_data_is_refused_naming_the_key(raw, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        resolve(raw)


def test_a_class_short_of_a_cell_is_refused_before_any_work():
    cfg = resolve({"training_data_cls": "digits", "data_classes": [3, 8], "N_list": [400]})
    with pytest.raises(ConfigError, match="'N_list'.*n200-200.*label 3"):
        JOBS["limiting_kernels_bulk_balanced"].check(cfg)

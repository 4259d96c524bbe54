"""Data the toolkit did not generate (shallow_collapse/data.py): a file pool and scikit-learn's digits,
their draws, the kernels they give, their refusals and a tiny sweep of every method."""
import math

import numpy as np
import pytest
import torch
import yaml

from shallow_collapse import cli, data, index
from shallow_collapse.config import ConfigError, load_config, resolve
from shallow_collapse.experiments import single_run_data
from shallow_collapse.jobs import JOBS
from shallow_collapse.kernels import limiting_kernels_nc1
from shallow_collapse.params import NetworkParams
from shallow_collapse.runs import run_hash
from shallow_collapse.sweeps import Cell, cell_datasets, read_table


def _npz(tmp_path, X, labels, name="d.npz", **extra):
    path = tmp_path / name
    np.savez(path, **({"X": X, "labels": labels} if X is not None else {"labels": labels}), **extra)
    return str(path)


def _pool_file(tmp_path, name="d.npz"):
    rng = np.random.default_rng(0)
    return _npz(tmp_path, rng.standard_normal((60, 5)), np.repeat([7, 2, 4], 20), name)


# -- draws --------------------------------------------------------------------------------------------------

def test_balanced_cells_hold_n_over_c_of_each_class_and_repeats_differ(tmp_path):
    cfg = resolve({"training_data_cls": "file", "data_path": _pool_file(tmp_path), "data_classes": [4, 7]})
    a, b = data.draw(cfg, (6, 6), 3, 0), data.draw(cfg, (6, 6), 3, 0)
    assert torch.equal(a.index, b.index) and torch.equal(a.X, b.X)
    p = data.pool(cfg)
    assert [int((p.labels[a.index.numpy()] == c).sum()) for c in (0, 1)] == [6, 6]
    assert len(set(a.index.tolist())) == 12
    assert not torch.equal(a.index, data.draw(cfg, (6, 6), 3, 1).index)
    assert p.classes == (4, 7)  # data_classes order decides class 0


def test_a_fixed_seed_gives_the_same_points_in_a_fresh_pool_and_another_seed_others(tmp_path):
    path = _pool_file(tmp_path)
    cfg = resolve({"training_data_cls": "file", "data_path": path, "data_classes": [2, 7], "seed": 5})
    first = data.draw(cfg, (5, 7), 4, 2)
    data._POOLS.clear(), data._PCA.clear(), data._file.cache_clear()  # as a new process would read it
    again = data.draw(resolve({"training_data_cls": "file", "data_path": path, "data_classes": [2, 7], "seed": 5}),
                      (5, 7), 4, 2)
    assert torch.equal(first.index, again.index) and torch.equal(first.X, again.X)
    other = data.draw({**cfg, "seed": 6}, (5, 7), 4, 2)
    assert not torch.equal(first.index, other.index)


def test_every_method_of_a_cell_sees_the_same_indices():
    """Each sweep job's own shipped config with the same data keys: the same rows and points, and
    the single runs' draw is repeat 0 of the cell with their class sizes and d."""
    keys = ["training_data_cls=digits", "data_classes=[3,8]", "seed=4"]
    cell = Cell((20, 12), 8, (0, 1))
    draws = {}
    for prefix in ("limiting_kernels", "fcn", "adaptive_kernels", "posterior"):
        job = f"{prefix}_bulk_imbalanced"
        draws[prefix] = cell_datasets(load_config(f"configs/{job}.yml", keys), cell)
    first = draws.pop("limiting_kernels")
    for prefix, datasets in draws.items():
        for a, b in zip(first, datasets):
            assert torch.equal(a.index, b.index) and torch.equal(a.X, b.X), prefix
    assert not torch.equal(first[0].index, first[1].index)
    for single in ("fcn", "adaptive_kernels"):
        cfg = load_config(f"configs/{single}.yml", [*keys, "N=32", "class_sizes=[20,12]", "in_features=8"])
        assert torch.equal(single_run_data(cfg).index, first[0].index), single


def test_data_classes_order_decides_class_0_targets_and_imbalanced_sizes(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 4))
    labels = np.repeat([5, 9], 25)
    path = _npz(tmp_path, X, labels)
    draws = {}
    for classes in ([5, 9], [9, 5]):
        cfg = resolve({"training_data_cls": "file", "data_path": path, "data_classes": classes})
        ds = data.draw(cfg, (4, 16), 4, 0)
        p = data.pool(cfg)  # the pool's class 0 is the rows of the first listed label
        assert p.classes == tuple(classes) and np.array_equal(p.X[p.rows[0]], X[labels == classes[0]])
        file_rows = np.concatenate([np.flatnonzero(labels == c) for c in classes])  # pool row -> file row
        picked = labels[file_rows[ds.index.numpy()]]
        assert (picked[:4] == classes[0]).all() and (picked[4:] == classes[1]).all()  # 4 of the first label
        assert ds.y.tolist() == [-1.0] * 4 + [1.0] * 16  # class 0 -> target -1
        draws[tuple(classes)] = ds
    # the same rows of X back the same points: a file row lands in class 0 or 1 by the order alone
    assert not torch.equal(draws[(5, 9)].X, draws[(9, 5)].X)


# -- kernels on a pool: with d = D the projection is a rotation of the centred, scaled inputs -------------

def _erf_nc1_independent(Z: np.ndarray, labels: np.ndarray, s2: float) -> tuple[float, float]:
    """NNGP (post-activation) and NTK NC1 of a one-hidden-layer erf network (no bias, sw = 1, final
    std^2 = s2) from the inputs ``Z`` ``(N, D)``: closed-form kernels, then features H with
    H H^T = K (eigendecomposition) and NC1 from explicit class means."""
    D = Z.shape[1]
    K1 = Z @ Z.T / D
    k = np.diag(K1)
    norm = np.sqrt(np.outer(1 + 2 * k, 1 + 2 * k))
    nngp = 2 / np.pi * np.arcsin(2 * K1 / norm)  # E[erf(u) erf(v)]
    dphi = 4 / np.pi / np.sqrt(norm ** 2 - 4 * K1 ** 2)  # E[erf'(u) erf'(v)]
    ntk = s2 * nngp + s2 * dphi * K1

    def nc1(K):
        values, vectors = np.linalg.eigh(K)
        H = vectors * np.sqrt(np.clip(values, 0, None))
        mu = H.mean(axis=0)
        means = [H[labels == c].mean(axis=0) for c in np.unique(labels)]
        within = sum(((H[labels == c] - m) ** 2).sum() for c, m in zip(np.unique(labels), means)) / len(H)
        between = np.mean([((m - mu) ** 2).sum() for m in means])
        return within / between

    return nc1(nngp), nc1(ntk)


@pytest.mark.parametrize("transform", ["as_is", "columns_permuted_and_flipped", "rotated"])
def test_kernel_nc1_with_d_equal_to_D_is_that_of_the_centred_scaled_inputs(tmp_path, transform):
    """Whatever basis the file's features come in (so whatever signs and order the PCA returns),
    NNGP and NTK NC1 of a d = D draw equal those of the independently centred and scaled rows.

    Tolerance: both sides are float64 sums of D = 6 products per kernel entry (relative round-off
    ~ D eps ~ 1e-15), mapped by arcsin at |rho| <= 0.8 here (amplification 1/sqrt(1 - rho^2) < 2)
    and the eigendecomposition of a 40 x 40 PSD kernel (absolute error ~ N eps |K|); NC1 takes the
    difference Tr K - sum_c S_cc / n_c, which is a fraction >~ 0.1 of Tr K for these overlapping
    classes, so the relative error is at most ~ 10 * 40 * 2 * 1e-15 ~ 1e-12: 1e-10 leaves 100x."""
    rng = np.random.default_rng(2)
    D = 6
    X = rng.standard_normal((90, D)) * np.array([3.0, 2.0, 1.5, 1.0, 0.5, 0.2]) + 1.0
    labels = np.repeat([1, 0, 2], 30)
    X[labels == 1] += 0.8
    Q = {"as_is": np.eye(D),
         "columns_permuted_and_flipped": np.eye(D)[[3, 0, 5, 1, 4, 2]] * np.array([-1, 1, -1, -1, 1, 1]),
         "rotated": np.linalg.qr(rng.standard_normal((D, D)))[0]}[transform]
    path = _npz(tmp_path, X @ Q, labels)
    cfg = resolve({"training_data_cls": "file", "data_path": path, "data_classes": [1, 0], "data_scale": 1.5})
    ds = data.draw(cfg, (15, 25), D, 0)
    # independent: the kept rows, centred on their mean, scaled to mean |x|^2 / D = 1.5^2
    kept = np.concatenate([np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)])
    centred = X[kept] - X[kept].mean(axis=0)
    Z = centred * 1.5 / math.sqrt((centred ** 2).sum(axis=1).mean() / D)
    Z = Z[ds.index.numpy()]
    # The Gram of the drawn rows against that of Z (rotation-free): the package's mean sums the n = 60
    # kept rows in its own order (<= n eps max|X| per coordinate, times the scale s, a shift of each
    # row by <= sqrt(D) of that); its eigenvectors are orthonormal and the rotation rounds to
    # ~D eps of |z| (LAPACK); the Gram sums D products (D eps |z|^2). So the entries move by
    # <= 2 |z|max dz + D eps |z|max^2 with dz the row error, x4 for the constants: ~2e-13 of
    # max|ZZ^T| here (was a fixed 1e-12); a wrong centring or scale is O(1).
    eps, n = np.finfo(np.float64).eps, len(kept)
    zmax = np.sqrt((Z ** 2).sum(axis=1).max())
    dz = math.sqrt(D) * n * eps * np.abs(X[kept]).max() * 1.5 / math.sqrt((centred ** 2).sum(axis=1).mean() / D) \
        + D * eps * zmax
    gram_tol = 4 * (2 * zmax * dz + D * eps * zmax ** 2)
    assert np.abs(ds.X.numpy() @ ds.X.numpy().T - Z @ Z.T).max() <= gram_tol
    net = NetworkParams.from_config(cfg)
    got = limiting_kernels_nc1(ds.X, ds.labels, net)
    nngp, ntk = _erf_nc1_independent(Z, ds.labels.numpy(), net.final_weight_std ** 2)
    assert float(got["post1"]) == pytest.approx(nngp, rel=1e-10)
    assert float(got["ntk"]) == pytest.approx(ntk, rel=1e-10)


# -- the run hash ---------------------------------------------------------------------------------------------

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


# -- run folders say which data they saw ----------------------------------------------------------------------

def test_config_yaml_and_the_index_name_the_data_source(tmp_path, write_config):
    path = _pool_file(tmp_path, "feats.npz")
    digest = data.file_digest(path)
    out = tmp_path / "out"
    runs = {"digits[3,8]": {"training_data_cls": "digits", "data_classes": [3, 8]},
            f"feats.npz@{digest[:12]}[4,2]": {"training_data_cls": "file", "data_path": path, "data_classes": [4, 2]},
            "GaussiandD4NL": {"training_data_cls": "GaussiandD4NL", "num_classes": 4, "class_means": [-3, -1, 1, 3],
                              "class_stds": [0.5] * 4, "N_list": [16], "class_sizes_list": [[4] * 4]}}
    folders = {}
    for label, keys in runs.items():
        config = write_config(f"{len(folders)}.yml", **{"N_list": [8], "in_features_list": [2], "repeat": 1, **keys})
        outcome = cli.run_job("limiting_kernels_bulk_balanced", [str(config), "--out", str(out)])
        assert outcome.code == 0
        text = (outcome.folder / "config.yaml").read_text()
        assert text.splitlines()[0] == f"# data: {label}"
        assert yaml.safe_load(text)["training_data_cls"] == keys["training_data_cls"]  # still the resolved config
        folders[outcome.folder.name] = label
    assert {e.hash: e.data for e in index.entries(out)} == folders
    page = (out / "index.html").read_text()
    assert all(f"<td>{label}</td>" in page for label in folders.values())


def test_keys_of_the_other_sources_are_accepted_and_not_hashed():
    """class_means / class_stds with digits, data_scale with Gaussian data: not refused, not hashed."""
    job = "limiting_kernels_bulk_balanced"

    def digest(raw):
        cfg = resolve(raw)
        return run_hash(cfg, job, JOBS[job].keys_for(cfg))

    digits = {"training_data_cls": "digits", "data_classes": [3, 8]}
    assert digest({**digits, "class_means": [-5.0, 5.0], "class_stds": [3.0, 3.0]}) == digest(digits)
    assert digest({**digits, "data_scale": 1.0}) != digest(digits)
    assert digest({"data_scale": 7.0}) == digest({})
    assert digest({"class_stds": [1.0, 1.0]}) != digest({})


# -- bad input: one line naming the key, exit 2, no folder ----------------------------------------------------

def _bad_files(tmp_path) -> dict:
    rng = np.random.default_rng(3)
    X, labels = rng.standard_normal((40, 5)), np.repeat([0, 1], 20)
    nan = X.copy()
    nan[3, 2] = np.nan
    inf = X.copy()
    inf[5, 0] = -np.inf
    (tmp_path / "text.npz").write_text("X,labels\n1,0\n")
    return {
        "missing": (str(tmp_path / "absent.npz"), ["not found"]),
        "not an npz": (str(tmp_path / "text.npz"), ["readable .npz"]),
        "no X": (_npz(tmp_path, None, labels, "nox.npz", Y=X), ["missing X"]),
        "no labels": (str(_save(tmp_path / "nolabels.npz", X=X)), ["missing labels"]),
        "X 1-D": (_npz(tmp_path, X[:, 0], labels, "x1d.npz"), ["2-D"]),
        "X 3-D": (_npz(tmp_path, X.reshape(40, 5, 1), labels, "x3d.npz"), ["2-D"]),
        "X NaN": (_npz(tmp_path, nan, labels, "nan.npz"), ["NaN or inf"]),
        "X inf": (_npz(tmp_path, inf, labels, "inf.npz"), ["NaN or inf"]),
        "float labels": (_npz(tmp_path, X, labels + 0.5, "flt.npz"), ["integers"]),
        "rows mismatch": (_npz(tmp_path, X, labels[:-1], "rows.npz"), ["one label per row"]),
    }


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


BAD_FILES = ["missing", "not an npz", "no X", "no labels", "X 1-D", "X 3-D", "X NaN", "X inf", "float labels",
             "rows mismatch"]


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_refused_in_one_line_naming_data_path(tmp_path, write_config, refused, case):
    path, words = _bad_files(tmp_path)[case]
    config = write_config(training_data_cls="file", data_path=path, data_classes=[0, 1])
    out = tmp_path / "out"
    refused(lambda: cli.main("limiting_kernels_bulk_balanced", [str(config), "--out", str(out)]), "'data_path'", *words)
    assert not out.exists()


BAD_KEYS = {  # overrides of a digits (or file) sweep -> the key named and words of the refusal
    "unknown data_classes entry": (["training_data_cls=digits", "data_classes=[3,11]"], "data_classes", ["11"]),
    "one class kept": (["training_data_cls=digits", "data_classes=[3]"], "data_classes",
                       ["at least two"]),
    "repeated class": (["training_data_cls=digits", "data_classes=[3,3]"], "data_classes", ["distinct"]),
    "num_classes disagrees": (["training_data_cls=digits", "data_classes=[3,8,5]"], "num_classes", ["3"]),
    "class short of a balanced cell": (["training_data_cls=digits", "data_classes=[3,8]", "N_list=[16,400]"],
                                       "N_list", ["n200-200", "class 0", "label 3"]),
    "class short of an imbalanced cell": (["training_data_cls=digits", "data_classes=[3,8]",
                                           "class_sizes_list=[[8,8],[10,180]]"], "class_sizes_list",
                                          ["n10-180", "class 1", "label 8", "has 174"]),
    "d above D": (["training_data_cls=digits", "data_classes=[3,8]", "in_features_list=[2,65]"],
                  "in_features_list", ["65", "D=64"]),
    "data_path with digits": (["training_data_cls=digits", "data_classes=[3,8]", "data_path=x.npz"], "data_path",
                              ["digits"]),
    "data_path with Gaussian": (["data_path=x.npz"], "data_path", ["GaussiandD2NL"]),
    "data_sha256 with digits": (["training_data_cls=digits", "data_classes=[3,8]", "data_sha256=abc"],
                                "data_sha256", ["digits"]),
    "file without data_path": (["training_data_cls=file"], "data_path", ["path of an .npz"]),
}


@pytest.mark.parametrize("case", sorted(BAD_KEYS))
def test_a_bad_data_key_is_refused_in_one_line_before_any_work(tmp_path, write_config, refused, case):
    overrides, key, words = BAD_KEYS[case]
    out = tmp_path / "out"
    config = write_config()
    refused(lambda: cli.main("limiting_kernels_bulk_balanced" if "imbalanced" not in case
                             else "limiting_kernels_bulk_imbalanced", [str(config), *overrides, "--out", str(out)]),
            f"'{key}'", *words)
    assert not out.exists()


def test_d_above_the_pool_size_is_refused(tmp_path, write_config, refused):
    """D = 10 features but 8 points of the kept classes: at most 8 components."""
    rng = np.random.default_rng(4)
    path = _npz(tmp_path, rng.standard_normal((12, 10)), np.repeat([0, 1, 2], 4))
    config = write_config(training_data_cls="file", data_path=path, data_classes=[0, 2], N_list=[4],
                          in_features_list=[9])
    refused(lambda: cli.main("limiting_kernels_bulk_balanced", [str(config), "--out", str(tmp_path / "out")]),
            "'in_features_list'", "at most 8", "D=10", "8 points")


def test_single_runs_refuse_a_class_short_of_their_draw(tmp_path, refused):
    out = tmp_path / "out"
    refused(lambda: cli.main("fcn", ["configs/fcn.yml", "training_data_cls=digits", "data_classes=[8,3]",
                                     "N=360", "--out", str(out)]), "'class_sizes'", "n180-180", "label 8")
    refused(lambda: cli.main("adaptive_kernels", ["configs/adaptive_kernels.yml", "training_data_cls=digits",
                                                  "data_classes=[8,3]", "N=32", "class_sizes=[16,16]",
                                                  "in_features=70", "--out", str(out)]), "'in_features'", "D=64")


def test_a_class_short_of_a_cell_is_refused_before_any_work():
    cfg = resolve({"training_data_cls": "digits", "data_classes": [3, 8], "N_list": [400]})
    with pytest.raises(ConfigError, match="'N_list'.*n200-200.*label 3"):
        JOBS["limiting_kernels_bulk_balanced"].check(cfg)


# -- digits through every method, end to end -------------------------------------------------------------------

TINY = ["training_data_cls=digits", "data_classes=[3,8]", "N_list=[16]", "class_sizes_list=[[6,10]]",
        "in_features_list=[2]", "repeat=1", "workers=1", "num_epochs=20", "hidden_features=16", "h=16",
        "posterior_burn_in=20", "posterior_samples=20", "posterior_chains=2", "posterior_ess_min=1"]


@pytest.mark.slow
def test_digits_run_through_every_method_and_sweep(tmp_path):
    """Every sweep (NNGP/NTK, SGD FCN, AK, posterior network; balanced and imbalanced) and both
    single runs on a digit pair, through the command line: a folder with finite NC1 for every
    method, and one draw behind all of them (equal data NC1 per cell)."""
    out = tmp_path / "out"
    data_nc1 = {}
    for prefix in ("limiting_kernels", "fcn", "adaptive_kernels", "posterior"):
        for grid in ("balanced", "imbalanced"):
            job = f"{prefix}_bulk_{grid}"
            outcome = cli.run_job(job, [f"configs/{job}.yml", *TINY, "--out", str(out)])
            assert outcome.code == 0, job
            rows = read_table(outcome.folder / "results.csv")
            assert rows and all(math.isfinite(float(r["nc1"])) and float(r["nc1"]) > 0 for r in rows), job
            assert {r["method"] for r in rows} >= set(JOBS[job].target.keywords["methods"]), job
            for r in rows:
                data_nc1.setdefault((r["class_sizes"], r["in_features"], r["repeat"]), set()).add(r["data_nc1"])
    assert len(data_nc1) == 2 and all(len(v) == 1 for v in data_nc1.values())
    single = ["training_data_cls=digits", "data_classes=[3,8]", "N=16", "class_sizes=[6,10]", "in_features=2", "num_epochs=20",
              "hidden_features=16", "probing_frequency=10", "h=16"]
    for job in ("fcn", "adaptive_kernels"):
        outcome = cli.run_job(job, [f"configs/{job}.yml", *single, "--out", str(out)])
        assert outcome.code == 0 and (outcome.folder / "results.json").is_file(), job

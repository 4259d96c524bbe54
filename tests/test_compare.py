"""compare.py on tiny sweeps of all four methods."""
import json
from pathlib import Path

import pytest

from shallow_collapse.cli import main
from shallow_collapse.compare import main as compare_main
from shallow_collapse.compare import merge, paired_differences
from shallow_collapse.config import load_config
from shallow_collapse.sweeps import cell_datasets, grid_cells, read_table

from conftest import nc1_round_off

TINY = {"limiting_kernels_bulk_balanced": [],
        "fcn_bulk_balanced": ["hidden_features=16", "num_epochs=20", "lr=0.01"],
        "adaptive_kernels_bulk_balanced": []}


@pytest.fixture
def sweeps(write_config, tmp_path):
    """Run folders of the three balanced sweeps (FCN, NNGP, NTK, AK) on the tiny grid, seed 3."""
    folders = []
    for job, overrides in TINY.items():
        out = tmp_path / job
        assert main(job, [str(write_config()), *overrides, "--out", str(out)]) == 0
        (folder,) = (out / "tiny").iterdir()
        folders.append(folder)
    return folders


@pytest.mark.slow
def test_compare_writes_figures_and_paired_differences(sweeps, tmp_path, capsys):
    assert compare_main([*map(str, sweeps), "--out", str(tmp_path / "cmp")]) == 0
    path = tmp_path / "cmp" / "compare" / capsys.readouterr().out.strip().split("/")[-1]
    for name in ("compare_nc1.png", "compare_rel_nc1.png"):
        assert (path / "plots" / name).stat().st_size > 10_000
    rows = read_table(path / "results.csv")
    assert {r["method"] for r in rows} == {"fcn", "nngp", "ntk", "ak"}
    assert len(rows) == 4 * 2 * 2 * 2  # methods x N x d x repeats, each draw once
    diffs = read_table(path / "paired_differences.csv")
    assert {d["pair"] for d in diffs} == {"fcn-nngp", "ntk-nngp", "ak-nngp", "ak-fcn"}
    # a paired difference is the difference of the two methods' rows on the same draw
    index = {(r["method"], r["class_sizes"], r["in_features"], r["repeat"]): r for r in rows}
    for d in diffs:
        a, b = d["pair"].split("-")
        key = (d["class_sizes"], d["in_features"], d["repeat"])
        # the same subtraction of the same two floats (the CSV keeps every bit): equal; approx's
        # default tolerance is slack only
        assert d["diff_log10_nc1"] == pytest.approx(index[(a, *key)]["log10_nc1"] - index[(b, *key)]["log10_nc1"])
    summary = read_table(path / "paired_summary.csv")
    assert all(s["n"] == 2 and s["stderr_diff_log10_nc1"] >= 0 for s in summary)
    # the NNGP of the kernel sweep and of the FCN sweep are the same numbers on the same draws
    # (one function, limiting_kernels.evaluate_cell, on the same draws: equal bits; 1e-12 is slack)
    _, report = merge(sweeps[:2])
    assert report["duplicate_max_rel_diff"]["nngp"] < 1e-12
    # ... so they are one method (the FCN keys do not change the NNGP), not two labelled ones
    assert set(merge(sweeps)[1]["methods"]) == {"nngp", "ntk", "fcn", "ak"}


def test_compare_refuses_mismatched_grids_or_seeds(write_config, tmp_path, capsys):
    folders = []
    for name, overrides in [("a", []), ("b", ["seed=4"]), ("c", ["repeat=3"])]:
        out = tmp_path / name
        main("limiting_kernels_bulk_balanced", [str(write_config()), *overrides, "--out", str(out)])
        folders.append(str(next((out / "tiny").iterdir())))
    for other, word in [(folders[1], "seed"), (folders[2], "grid")]:
        capsys.readouterr()
        assert compare_main([folders[0], other, "--out", str(tmp_path / "cmp")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("compare.py: error:") and word in err and len(err.strip().splitlines()) == 1
    assert compare_main([str(tmp_path), "--out", str(tmp_path / "cmp")]) == 2


def test_paired_differences_skip_failed_draws():
    rows = [{"method": m, "N": 4, "class_sizes": "2-2", "in_features": 1, "repeat": 0, "log10_nc1": v,
             "log10_rel_nc1": v, "status": s} for m, v, s in [("nngp", -1.0, "ok"), ("ak", -2.0, "ok"),
                                                             ("fcn", float("nan"), "diverged")]]
    diffs = paired_differences(rows)
    assert [(d["pair"], d["diff_log10_nc1"]) for d in diffs] == [("ak-nngp", -1.0)]


HOSTILE_INPUTS = {  # issue 9, case 15: (file, content, words of the one line)
    "a python tag in config.yaml": ("config.yaml", "seed: !!python/object/apply:os.system ['echo hacked']\n",
                                    ["config.yaml and results.csv", "ConstructorError"]),
    "config.yaml that is not a mapping": ("config.yaml", "[1, 2]\n", ["config.yaml: expected a mapping"]),
    "results.csv missing columns": ("results.csv", "method,N\nnngp,16\n", ["results.csv", "missing", "nc1"]),
    "results.csv with text for numbers": ("results.csv", None, ["results.csv, row 1", "expected numbers in nc1"]),
    "results.csv with only a header": ("results.csv", "method\n", ["results.csv: expected result rows"]),
    "results.csv not UTF-8": ("results.csv", b"method,N\n\xff\xfe,1\n", ["UnicodeDecodeError"]),
    "results.csv with a ragged row": ("results.csv", None, ["results.csv"]),
}


@pytest.mark.parametrize("case", HOSTILE_INPUTS)
def test_compare_refuses_hostile_inputs_with_one_line(case, write_config, tmp_path, refused):
    assert main("limiting_kernels_bulk_balanced", [str(write_config()), "--out", str(tmp_path / "a")]) == 0
    (folder,) = (tmp_path / "a" / "tiny").iterdir()
    name, content, words = HOSTILE_INPUTS[case]
    if case == "results.csv with text for numbers":
        content = (folder / name).read_text().splitlines()
        header, first = content[0].split(","), content[1].split(",")
        first[header.index("nc1")] = "lots"
        content = "\n".join([content[0], ",".join(first), *content[2:]]) + "\n"
    elif case == "results.csv with a ragged row":
        content = (folder / name).read_text() + "nngp,16,8-8\n"
    (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    refused(lambda: compare_main([str(folder), "--out", str(tmp_path / "cmp")]), str(folder), *words)


@pytest.mark.parametrize("out", ["/dev/null", "a_file"])
def test_compare_refuses_an_unusable_out(out, write_config, tmp_path, refused):
    assert main("limiting_kernels_bulk_balanced", [str(write_config()), "--out", str(tmp_path / "a")]) == 0
    (folder,) = (tmp_path / "a" / "tiny").iterdir()
    (tmp_path / "a_file").write_text("x\n")
    out = out if out.startswith("/") else str(tmp_path / out)
    refused(lambda: compare_main([str(folder), "--out", out]), out, "expected a folder")


def test_erf_and_relu_sweeps_are_labelled_methods_with_their_pairs(write_config, tmp_path, capsys):
    folders = []
    for activation in ("erf", "relu"):
        out = tmp_path / activation
        assert main("limiting_kernels_bulk_balanced", [str(write_config()), f"activation={activation}",
                                                       "--out", str(out)]) == 0
        (folder,) = (out / "tiny").iterdir()
        folders.append(folder)
    capsys.readouterr()
    assert compare_main([*map(str, folders), "--out", str(tmp_path / "cmp")]) == 0
    path = Path(capsys.readouterr().out.strip())
    rows = read_table(path / "results.csv")
    labels = {f"{m}[activation={a}]" for m in ("nngp", "ntk") for a in ("erf", "relu")}
    assert {r["method"] for r in rows} == labels
    assert len(rows) == 4 * 2 * 2 * 2  # every row of both sweeps kept: methods x N x d x repeats
    pairs = {d["pair"] for d in read_table(path / "paired_differences.csv")}
    assert pairs == {"ntk[activation=erf]-nngp[activation=erf]", "ntk[activation=relu]-nngp[activation=relu]",
                     "nngp[activation=relu]-nngp[activation=erf]", "ntk[activation=relu]-ntk[activation=erf]"}
    # each labelled method holds its own sweep's numbers, and the figure draws one curve per method
    for folder, activation in zip(folders, ("erf", "relu")):
        own = {(r["method"], r["class_sizes"], r["in_features"], r["repeat"]): r["nc1"] for r in read_table(folder / "results.csv")}
        for r in rows:
            if r["method"].endswith(f"={activation}]"):
                assert r["nc1"] == own[(r["method"].partition("[")[0], r["class_sizes"], r["in_features"], r["repeat"])]
    record = json.loads((path / "compare.json").read_text())
    assert record["methods"]["nngp[activation=relu]"]["inputs"] == [str(folders[1])]
    assert len(record["pairs"]) == 4
    assert {r["method"] for r in read_table(path / "summary.csv")} == labels



@pytest.mark.slow
def test_the_posterior_sweep_compares_like_the_others(write_config, tmp_path, capsys):
    """A posterior sweep beside an AK sweep of the same keys: rows paired as ak - posterior and
    posterior - nngp, and the two sweeps' NNGP (both of the EoS prior) are one method."""
    keys = ["h=8", "sig2=0.05", "annealing_factors=[100.0]", "posterior_burn_in=50", "posterior_samples=50",
            "posterior_chains=2", "posterior_ess_min=0", "posterior_rhat_max=100", "posterior_se_max=1", "N_list=[16]",
            "in_features_list=[2]"]  # short chains: let them pass as ok
    folders = []
    for job in ("posterior_bulk_balanced", "adaptive_kernels_bulk_balanced"):
        out = tmp_path / job
        assert main(job, [str(write_config()), *keys, "--out", str(out)]) == 0
        folders.append(next((out / "tiny").iterdir()))
    assert compare_main([*map(str, folders), "--out", str(tmp_path / "cmp")]) == 0
    path = tmp_path / "cmp" / "compare" / capsys.readouterr().out.strip().splitlines()[-1].split("/")[-1]
    pairs = {d["pair"] for d in read_table(path / "paired_differences.csv")}
    assert {"ak-posterior", "posterior-nngp", "ak-nngp"} <= pairs, pairs
    # the two NNGPs are two float64 evaluations of one kernel (the foundation's limiting kernels and
    # the EoS's fused Q0): their relative NC1 gap is within nc1_round_off of each draw's kernel
    assert merge(folders)[1]["duplicate_max_rel_diff"]["nngp"] <= _nngp_round_off(load_config(write_config(), keys))


def _nngp_round_off(cfg) -> float:
    """The largest relative NC1 round-off bound (nc1_round_off / NC1) over the draws of the
    balanced grid of ``cfg``, for the NNGP of the EoS prior."""
    from shallow_collapse.experiments.posterior import prior_network_config
    from shallow_collapse.kernels import limiting_kernels
    from shallow_collapse.metrics import nc1_kernel
    from shallow_collapse.params import NetworkParams

    net = NetworkParams.from_config(prior_network_config(cfg))
    worst = 0.0
    for cell in grid_cells(cfg, "balanced"):
        for ds in cell_datasets(cfg, cell):
            K = limiting_kernels(ds.X, net).post[0]
            worst = max(worst, nc1_round_off(K, ds.labels) / float(nc1_kernel(K, ds.labels)))
    return worst


def test_the_mean_field_pairs_come_from_the_registry():
    from shallow_collapse.compare import _pairs

    pairs = _pairs(["nngp", "ak", "mean_field", "posterior"])
    assert {("mean_field", "nngp"), ("mean_field", "posterior"), ("mean_field", "ak"), ("ak", "posterior")} <= set(pairs)


def test_a_mean_field_sweep_compares_beside_the_ak(write_config, tmp_path, capsys):
    """A mean-field sweep beside an AK sweep of the same keys: rows paired as mean_field - ak and
    each - nngp, the two sweeps' NNGP (both of the EoS prior) one method."""
    keys = ["h=8", "sig2=0.05", "siga2=0.5", "annealing_factors=[100.0]", "N_list=[16]", "in_features_list=[1,2]"]
    folders = []
    for job in ("mean_field_bulk_balanced", "adaptive_kernels_bulk_balanced"):
        out = tmp_path / job
        assert main(job, [str(write_config()), *keys, "--out", str(out)]) == 0
        folders.append(next((out / "tiny").iterdir()))
    capsys.readouterr()
    assert compare_main([*map(str, folders), "--out", str(tmp_path / "cmp")]) == 0
    path = tmp_path / "cmp" / "compare" / capsys.readouterr().out.strip().splitlines()[-1].split("/")[-1]
    pairs = {d["pair"] for d in read_table(path / "paired_differences.csv")}
    assert {"mean_field-ak", "mean_field-nngp", "ak-nngp"} <= pairs, pairs

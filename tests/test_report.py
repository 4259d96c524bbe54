"""report.html of every job kind: it parses, its links resolve inside the folder, values are escaped."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from conftest import only_folder, parse_report

import pytest

from shallow_collapse.cli import main
from shallow_collapse.compare import main as compare_main
from shallow_collapse.plots.captions import caption

SCRIPT = '<script>alert("x")</script>'  # a free-text key: unused with executor local
AK_KEYS = {"h": 500, "sigw2": 1.0, "siga2": 0.0078125, "sig2": 1e-6, "rtol": 1e-8,
           "annealing_factors": [1e4, 1e3, 500.0]}


def check_run_report(folder: Path) -> str:
    page = parse_report(folder)
    html = (folder / "report.html").read_text()
    for stem in {p.stem for p in (folder / "plots").iterdir()}:
        assert caption(stem), f"figure {stem} has no caption"
        assert f"plots/{stem}." in html
    assert {Path(unquote(src)).stem for src in page.images} == {p.stem for p in (folder / "plots").iterdir()}
    assert SCRIPT not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    return html


def test_sweep_report(write_config, out_root):
    path = write_config(scheduler_address=SCRIPT)
    assert main("limiting_kernels_bulk_imbalanced", [str(path), "--out", str(out_root)]) == 0
    folder = only_folder(out_root / "tiny")
    html = check_run_report(folder)
    assert 'href="results.csv"' in html and 'href="summary.csv"' in html and folder.name in html
    assert "every repeat ok" in html


def test_failed_repeats_stand_out(write_config, out_root):
    # lr=100 makes every ReLU network diverge: the summary rows with failed repeats are marked.
    path = write_config(scheduler_address=SCRIPT, in_features_list=[4], N_list=[16], hidden_features=8,
                        num_epochs=5, lr=100.0, activation="relu")
    assert main("fcn_bulk_balanced", [str(path), "--out", str(out_root)]) == 0
    html = check_run_report(only_folder(out_root / "tiny"))
    assert "2 failed repeats" in html and '<tr class="bad"><td>fcn</td>' in html
    assert "Rows not ok" in html and "diverged" in html


@pytest.mark.slow
@pytest.mark.parametrize("job,keys,exact", [
    ("fcn", dict(N=32, in_features=3, hidden_features=8, num_epochs=10, probing_frequency=5, probe_kernels=True,
                 lr=0.00125), "<tr><td>lr</td><td>0.00125</td><td>yes</td></tr>"),
    ("adaptive_kernels", dict(**AK_KEYS, N=32, class_sizes=[16, 16], in_features=2, lightweight=False),
     "<tr><td>siga2</td><td>0.0078125</td><td>yes</td></tr>"),
])
def test_single_run_report(write_config, out_root, job, keys, exact):
    path = write_config(scheduler_address=SCRIPT, **keys)
    assert main(job, [str(path), "--out", str(out_root)]) == 0
    html = check_run_report(only_folder(out_root / "tiny"))
    assert 'href="results.json"' in html and "<th>status</th><td>ok</td>" in html
    # config values are shown exactly (not to 4 digits), and the keys of the run hash are marked
    assert exact in html
    assert "<tr><td>workers</td><td>1</td><td></td></tr>" in html


@pytest.mark.slow
def test_comparison_report(write_config, tmp_path, capsys):
    folders = []
    for job, extra in (("limiting_kernels_bulk_balanced", []), ("adaptive_kernels_bulk_balanced", ["rtol=1e-8"])):
        assert main(job, [str(write_config()), *extra, "--out", str(tmp_path / "o")]) == 0
        folders.append(capsys.readouterr().out.strip())
    assert compare_main([*folders, "--out", str(tmp_path / "o"), "--plot-formats", "svg,pdf"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    page = parse_report(folder)
    html = (folder / "report.html").read_text()
    # comparison figures come first, shown as SVG with a link to the PDF
    assert [Path(unquote(s)).name for s in page.images] == ["compare_nc1.svg", "compare_rel_nc1.svg",
                                                                 "compare_nc1_vs_n.svg"]  # balanced: N varies
    assert 'href="plots/compare_nc1.pdf"' in html and 'href="paired_summary.csv"' in html
    for f in folders:
        assert f in html  # the inputs are named (as text: they lie outside this folder)

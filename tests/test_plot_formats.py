"""plot_formats: every figure of a sweep in each format asked for, and the report shows them."""
from shallow_collapse.cli import main
from conftest import parse_report


def test_pdf_and_svg_for_a_sweep(write_config, out_root):
    path = write_config(plot_formats=["pdf", "svg"])
    assert main("limiting_kernels_bulk_balanced", [str(path), "--out", str(out_root)]) == 0
    (folder,) = (out_root / "tiny").iterdir()
    plots = folder / "plots"
    stems = ("nngp_nc1", "ntk_nc1", "methods_side_by_side")
    assert sorted(p.name for p in plots.iterdir()) == sorted(f"{s}.{f}" for s in stems for f in ("pdf", "svg"))
    for stem in stems:
        assert (plots / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
        assert "<svg" in (plots / f"{stem}.svg").read_text()[:2000]
    page = parse_report(folder)
    assert sorted(page.images) == sorted(f"plots/{s}.svg" for s in stems)  # browsers show SVG inline
    assert {f"plots/{s}.pdf" for s in stems} <= set(page.links)


def test_unknown_format_is_refused(write_config, out_root, capsys):
    assert main("limiting_kernels_bulk_balanced", [str(write_config()), "plot_formats=[jpg]", "--out", str(out_root)]) == 2
    assert "'plot_formats'" in capsys.readouterr().err and not out_root.exists()

"""``report.html``: one static page per run folder, readable straight from the file system.

No server and no JavaScript: plain HTML with a little inline CSS. The page shows the job, the
hash, the date, the summary table (rows and points with failed repeats stand out), every figure
of ``plots/`` by relative path with its one-line caption (:mod:`shallow_collapse.plots.captions`),
the resolved config, and links to ``results.csv`` and the other files of the folder. Every value
written into the page goes through :func:`html.escape`.

The kind of folder is read from what it holds: ``meta.json`` (a single run or a sweep, written by
:func:`shallow_collapse.runs.open_run`), ``compare.json`` (a comparison) or ``paper.json`` (the
whole study, :mod:`shallow_collapse.paper`). Links of a run's page stay inside its folder; the
paper's page links the sweep and comparison folders it used (siblings under the output root).
"""
from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path
from urllib.parse import quote

import yaml

from .plots.captions import caption
from .runs import atomic_write_text
from .sweeps import read_table

__all__ = ["write_report", "REPORT", "STYLE", "html_link", "html_table"]

REPORT = "report.html"
# Shown first, in this order (comparisons, sweeps, single FCN runs, single AK runs); other figures follow by name.
FIGURE_ORDER = ("compare_nc1", "compare_rel_nc1", "methods_side_by_side", "nc1", "loss", "nc1_per_step",
                "action_per_step")
DISPLAYED = ("png", "svg")  # formats a browser shows inline, preferred first
MAX_BAD_ROWS = 200
LINKS = ("report", "results")  # columns of the paper's tables that hold links

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 75em; padding: 0 1em; color: #222; }
h1 small { color: #777; font-weight: normal; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr.bad td { background: #fde2e2; }
td.bad, span.bad { color: #b00; font-weight: bold; }
figure { display: inline-block; margin: 0 1em 1.5em 0; max-width: 100%; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; max-width: 60em; }
code { background: #f4f4f4; padding: 0 0.2em; }
div.compact { display: flex; flex-wrap: wrap; gap: 0 1.5em; }
table.compact caption { font-weight: bold; text-align: left; }
table.compact td { text-align: right; white-space: nowrap; }
details { margin: 0.3em 0 1em; }
summary { cursor: pointer; color: #036; }
p.head { color: #555; font-size: 0.9em; overflow-wrap: anywhere; }
"""


def _e(value) -> str:
    """Escaped text of ``value`` (floats to 4 significant digits)."""
    if isinstance(value, float):
        value = f"{value:.4g}"
    return escape(str(value), quote=True)


def _href(path: str) -> str:
    """A relative path made safe for an href/src attribute."""
    return escape(quote(Path(path).as_posix()), quote=True)


def html_link(path: str, text=None) -> str:
    return f'<a href="{_href(path)}">{_e(text if text is not None else path)}</a>'


def html_table(rows: list[dict], bad=lambda row: False, raw=()) -> str:
    """An HTML table of ``rows`` (columns in first-seen order); rows where ``bad`` is true stand
    out. Cells of the ``raw`` columns are ready-made HTML (links built by :func:`html_link`)."""
    if not rows:
        return "<p>(no rows)</p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cls = ' class="bad"' if bad(row) else ""
        cells = (row.get(c, "") if c in raw else _e(row.get(c, "")) for c in columns)
        body.append(f"<tr{cls}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f"<table><tr>{head}</tr>\n" + "\n".join(body) + "</table>"


def _exact(value) -> str:
    """A config value as written in YAML/JSON, never rounded (``0.0078125``, ``null``, ``[1, 8]``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _key_values(mapping: dict, bad_keys=()) -> str:
    rows = []
    for key, value in mapping.items():
        text = json.dumps(value) if isinstance(value, (list, dict)) else value
        cls = ' class="bad"' if key in bad_keys else ""
        rows.append(f"<tr><th>{_e(key)}</th><td{cls}>{_e(text)}</td></tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def _not_ok(value) -> bool:
    return isinstance(value, str) and value not in ("ok", "")


def _failed(row: dict) -> bool:
    """A summary row with failed repeats, or a result row whose status is not ok."""
    n_failed = row.get("n_failed", 0)
    return (isinstance(n_failed, (int, float)) and n_failed > 0) or _not_ok(row.get("status", "ok"))


def _compact(summary: list[dict], by: str = "method", mean: str = "mean_log10_nc1", spread: str = "std_log10_nc1",
             sign: str = "\u00b1") -> str:
    """Per ``by`` (a method, or a pair of methods), a small table: rows N (or class sizes, when
    several share one N), columns d, cells ``mean +- spread`` to 2 decimals; a cell with failed
    repeats is marked (its count of failed repeats, in red)."""
    if not summary:
        return "<p>(no rows)</p>"
    rows_of = "class_sizes" if len({r["N"] for r in summary}) == 1 and len({r["class_sizes"] for r in summary}) > 1 else "N"
    blocks = []
    for name in dict.fromkeys(r[by] for r in summary):
        group = [r for r in summary if r[by] == name]
        ds = sorted({r["in_features"] for r in group})
        cells = {(r[rows_of], r["in_features"]): r for r in group}
        head = "".join(f"<th>d={_e(d)}</th>" for d in ds)
        body = []
        for label in dict.fromkeys(r[rows_of] for r in group):
            tds = []
            for d in ds:
                r = cells.get((label, d))
                if r is None:
                    tds.append("<td></td>")
                    continue
                text = f"{r[mean]:.2f} {sign} {r[spread]:.2f}" if isinstance(r[mean], float) else _e(r[mean])
                failed = r.get("n_failed", 0)
                if isinstance(failed, (int, float)) and failed > 0:
                    tds.append(f'<td class="bad">{_e(text)} ({_e(failed)} of {_e(r["count"])} failed)</td>')
                else:
                    tds.append(f"<td>{_e(text)}</td>")
            body.append(f"<tr><th>{_e(label)}</th>{''.join(tds)}</tr>")
        blocks.append(f'<table class="compact"><caption>{_e(name)}</caption><tr><th>{_e(rows_of)}</th>{head}</tr>'
                      + "".join(body) + "</table>")
    return '<div class="compact">' + "\n".join(blocks) + "</div>"


def _folded(title: str, content: str, note: str = "") -> str:
    """A long table folded under a one-line summary."""
    return f"<details><summary>{_e(title)}{_e(note)}</summary>{content}</details>"


def _figures(folder: Path, plots: Path) -> str:
    """Every figure under ``plots`` (relative to ``folder``) with its caption and other formats."""
    if not plots.is_dir():
        return ""
    files: dict[str, list[Path]] = {}
    for path in sorted(plots.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            files.setdefault(path.stem, []).append(path)
    order = sorted(files, key=lambda s: (FIGURE_ORDER.index(s) if s in FIGURE_ORDER else len(FIGURE_ORDER), s))
    blocks = []
    for stem in order:
        by_format = {p.suffix[1:]: p for p in files[stem]}
        shown = next((by_format[f] for f in DISPLAYED if f in by_format), None)
        rel = {f: os.path.relpath(p, folder) for f, p in by_format.items()}
        text = caption(stem) or stem
        others = " ".join(html_link(rel[f], f) for f in sorted(rel) if shown is None or by_format[f] != shown)
        img = f'<img src="{_href(os.path.relpath(shown, folder))}" alt="{_e(stem)}">' if shown else ""
        blocks.append(f"<figure>{img}<figcaption><b>{_e(stem)}</b>: {_e(text)} {others}</figcaption></figure>")
    return "\n".join(blocks)


def _files(folder: Path) -> str:
    items = [f"<li>{html_link(p.name)}</li>" for p in sorted(folder.iterdir())
             if p.is_file() and p.name != REPORT and not p.name.startswith(".")]
    cells = folder / "cells"
    if cells.is_dir():
        items.append(f"<li><code>cells/</code>: {len(list(cells.glob('*.json')))} cell files (what a rerun resumes from)</li>")
    return "<ul>" + "\n".join(items) + "</ul>"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _config(folder: Path) -> dict:
    path = folder / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def _single_run_summary(results: dict) -> str:
    """Top-level scalars of ``results.json`` (and one level of named scalars, e.g. NC1 per layer)."""
    flat = {}
    for key, value in results.items():
        if isinstance(value, dict) and all(not isinstance(v, (list, dict)) for v in value.values()):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif not isinstance(value, (list, dict)):
            flat[key] = value
    bad = [k for k, v in flat.items() if k.endswith("status") and _not_ok(v)]
    return _key_values(flat, bad)


def _run_sections(folder: Path) -> tuple[dict, str]:
    meta = _read_json(folder / "meta.json")
    head = {"job": meta["job"], "hash": meta["hash"], "date": meta["started"],
            "command": " ".join(map(str, meta.get("command", [])))}
    parts = ["<h2>Figures</h2>" + _figures(folder, folder / "plots")]
    if (folder / "summary.csv").is_file():
        summary = read_table(folder / "summary.csv")
        failed = sum(int(r["n_failed"]) for r in summary)
        note = f'<p class="bad"><span class="bad">{failed} failed repeats</span> (cells in red)</p>' if failed else \
            "<p>every repeat ok</p>"
        parts.append("<h2>Summary: log10 NC1, mean \u00b1 std over repeats</h2>" + note + _compact(summary))
        parts.append(_folded("Every summary row", html_table(summary, _failed), f" ({len(summary)} rows)"))
        if (folder / "results.csv").is_file():
            bad_rows = [r for r in read_table(folder / "results.csv") if _not_ok(r["status"])]
            if bad_rows:
                shown = bad_rows[:MAX_BAD_ROWS]
                more = f" (first {MAX_BAD_ROWS} shown)" if len(bad_rows) > MAX_BAD_ROWS else ""
                parts.append(f'<h2>Rows not ok: <span class="bad">{len(bad_rows)}</span></h2>'
                             + _folded("Rows not ok", html_table(shown, _failed), more))
    elif (folder / "results.json").is_file():
        parts.append("<h2>Summary</h2>" + _single_run_summary(_read_json(folder / "results.json")))
    parts.append(_config_section(_config(folder), "Resolved config", set(meta.get("hashed_config", ()))))
    return head, "\n".join(parts)


def _config_section(cfg: dict, title: str, hashed=None) -> str:
    """Every key with its exact value; with ``hashed``, a column marks the keys in the run hash."""
    rows = [{"key": key, "value": _exact(value), **({"in run hash": "yes" if key in hashed else ""}
                                                     if hashed is not None else {})}
            for key, value in cfg.items()]
    return f"<h2>{_e(title)}</h2>" + _folded(f"{len(cfg)} keys", html_table(rows))


def _compare_sections(folder: Path) -> tuple[dict, str]:
    record = _read_json(folder / "compare.json")
    head = {"job": "compare", "hash": folder.name, "date": record.get("created", "")}
    parts = ["<h2>Figures</h2>" + _figures(folder, folder / "plots")]
    summary = read_table(folder / "summary.csv")
    parts.append("<h2>Summary: log10 NC1, mean \u00b1 std over repeats</h2>" + _compact(summary))
    parts.append(_folded("Every summary row", html_table(summary, _failed), f" ({len(summary)} rows)"))
    if (folder / "paired_summary.csv").is_file():
        paired = read_table(folder / "paired_summary.csv")
        parts.append("<h2>Paired differences of log10 NC1, mean \u00b1 standard error over draws</h2>"
                     + _compact(paired, by="pair", mean="mean_diff_log10_nc1", spread="stderr_diff_log10_nc1")
                     + _folded("Every paired row", html_table(paired), f" ({len(paired)} rows)"))
    parts.append("<h2>Inputs</h2><ul>" + "".join(f"<li><code>{_e(f)}</code></li>" for f in record["inputs"])
                 + "</ul>" + _key_values({"largest disagreement between copies of a method":
                                          record.get("duplicate_max_rel_diff", {})}))
    return head, "\n".join(parts)


def _exists_link(base: Path, rel: str, text: str) -> str:
    """A link to ``rel`` (relative to ``base``) if that file exists, else the plain text."""
    return html_link(rel, text) if (base / rel).is_file() else _e(text)


def _paper_sections(folder: Path) -> tuple[dict, str]:
    record = _read_json(folder / "paper.json")
    head = {"job": "paper", "hash": record["hash"], "date": record["started"],
            **({"finished": record["finished"]} if "finished" in record else {}),
            "command": " ".join(map(str, record.get("command", []))), "status": record["status"]}
    root = os.path.relpath(folder.parent.parent, folder)  # the output root, seen from this folder
    figures, rows, comparisons = [], [], []
    for grid, entry in record["comparisons"].items():
        rel = os.path.join(root, entry["folder"]) if entry.get("folder") else None
        if rel and (folder / rel).is_dir():
            figures.append(f"<h3>{_e(grid)} classes</h3>" + _figures(folder, folder / rel / "plots"))
        comparisons.append({"comparison": grid, "status": entry["status"], "message": entry.get("message", ""),
                            "report": _exists_link(folder, os.path.join(rel, REPORT), entry["folder"]) if rel else ""})
    for job, entry in record["sweeps"].items():
        rel = os.path.join(root, entry["folder"])
        rows.append({"sweep": job, "status": entry["status"], "rows": entry.get("rows", ""),
                     "rows not ok": entry.get("rows_not_ok", ""), "seconds": entry.get("seconds", ""),
                     "message": entry.get("message", ""),
                     "report": _exists_link(folder, os.path.join(rel, REPORT), entry["folder"]),
                     "results": _exists_link(folder, os.path.join(rel, "results.csv"), "results.csv")})
    parts = ["<h2>Comparisons</h2>" + "\n".join(figures),
             "<h2>Sweeps</h2>" + html_table(rows, lambda r: r["status"] != "ok" or (r["rows not ok"] or 0) > 0, LINKS),
             "<h2>Comparison folders</h2>" + html_table(comparisons, lambda r: r["status"] != "ok", LINKS),
             _config_section(_config(folder), "Shared keys (given to every sweep)")]
    return head, "\n".join(parts)


def _study_sections(folder: Path) -> tuple[dict, str]:
    """The matched study (:mod:`shallow_collapse.matched_study`): figure, AK - posterior per cell, its sweeps."""
    record = _read_json(folder / "study.json")
    head = {"job": record.get("job", "matched_study"), "hash": record.get("hash", folder.name),
            "date": record.get("created", ""), "command": " ".join(map(str, record.get("command", []))),
            "status": record.get("status")}
    root = os.path.relpath(folder.parent.parent, folder)
    cells = read_table(folder / "cells.csv") if (folder / "cells.csv").is_file() else []
    sweeps = [{"activation": entry["activation"], "sweep": job,
               "report": _exists_link(folder, os.path.join(root, *Path(f).parts[-2:], REPORT), "/".join(Path(f).parts[-2:]))}
              for entry in record.get("sweeps", []) for job, f in entry["folders"].items()]
    parts = ["<h2>Figures</h2>" + _figures(folder, folder / "plots"),
             "<h2>AK - posterior per cell: log10 NC1, mean over the draws compared, with its standard error</h2>"
             + html_table(cells, lambda c: c["draws_compared"] < c["draws"]),
             _folded("Every draw (table.csv)", html_table(read_table(folder / "table.csv"),
                                                      lambda r: _not_ok(r["posterior_status"]) or r["ak_outside"]))
             if (folder / "table.csv").is_file() else "",
             "<h2>Sweeps</h2>" + html_table(sweeps, raw=("report",)),
             _config_section(_config(folder), "Resolved config")]
    return head, "\n".join(parts)


def write_report(folder) -> Path:
    """Write ``folder/report.html`` for a run, sweep, comparison or paper folder; returns its path."""
    folder = Path(folder)
    if (folder / "paper.json").is_file():
        head, body = _paper_sections(folder)
    elif (folder / "compare.json").is_file():
        head, body = _compare_sections(folder)
    elif (folder / "study.json").is_file():
        head, body = _study_sections(folder)
    elif (folder / "meta.json").is_file():
        head, body = _run_sections(folder)
    else:
        raise FileNotFoundError(f"{folder}: no meta.json, compare.json, study.json or paper.json to report on")
    status = head.get("status")
    status_line = "" if status in (None, "ok") else f' <span class="bad">{_e(status)}</span>'
    header = (f"<h1>{_e(head['job'])} <small>{_e(head['hash'])}</small>{status_line}</h1>\n"
              + '<p class="head">' + " &middot; ".join(f"{_e(k)}: <code>{_e(v)}</code>" for k, v in head.items()
                                                      if k not in ("job", "hash", "status") and v) + "</p>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(head['job'])} {_e(head['hash'])}</title><style>{STYLE}</style></head><body>\n"
            f"{header}\n{body}\n<h2>Files</h2>{_files(folder)}\n</body></html>\n")
    path = folder / REPORT
    atomic_write_text(path, page)
    return path


"""The pages in a real browser: headless Chromium renders the sweep, comparison, single-run and
index pages; every image loads and nothing is wider than the window, with every folded table
opened. The screenshots of the first screen stay under the test's tmp folder (``*.png`` beside
each page). Skipped with a message where Chromium is absent (``.ci/run`` installs it from the
Debian packages: ``apt-get install chromium``)."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shallow_collapse.cli import main
from shallow_collapse.compare import main as compare_main

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(BROWSER is None, reason="no headless Chromium here (apt-get install chromium)")]
WINDOW = (1280, 800)

# Run in the page once it has loaded (images included): open every <details>, then report the
# images that did not load and every element whose right edge lies beyond the window.
CHECK = """<script>
window.addEventListener("load", () => {
  document.querySelectorAll("details").forEach(d => { d.open = true; });
  const width = document.documentElement.clientWidth;
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
  const wide = [...document.body.querySelectorAll("*")].filter(e => e.getBoundingClientRect().right > width + 1)
    .map(e => e.tagName + ": " + (e.textContent || "").trim().slice(0, 60));
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({images: document.images.length, broken, wide, width,
                                    scroll_width: document.documentElement.scrollWidth});
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> str:
    proc = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                           *args], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def render(page: Path, tmp_path: Path) -> dict:
    """Load ``page`` in Chromium: the check's findings, and a screenshot of the first screen
    written beside the page (``<page>.png``)."""
    checked = page.with_name(f".check-{page.name}")  # beside the page: its relative links resolve the same
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    dom = chromium(tmp_path, "--virtual-time-budget=20000", "--dump-dom", checked.as_uri())
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    shot = page.with_suffix(".png")
    chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    assert shot.stat().st_size > 10_000
    return json.loads(html.unescape(found.group(1)))


def assert_renders(page: Path, tmp_path: Path, images: int) -> dict:
    result = render(page, tmp_path)
    assert result["broken"] == [] and result["images"] == images, result
    assert result["wide"] == [] and result["scroll_width"] <= result["width"], result
    return result


def test_pages_render_with_every_image_and_nothing_too_wide(write_config, tmp_path, capsys):
    out = tmp_path / "out"
    folders = []
    for activation in ("erf", "relu"):
        assert main("limiting_kernels_bulk_balanced", [str(write_config(f"{activation}.yml", activation=activation)),
                                                       "--out", str(out)]) == 0
        folders.append(capsys.readouterr().out.strip())
    assert compare_main([*folders, "--out", str(out)]) == 0
    comparison = Path(capsys.readouterr().out.strip())
    assert main("fcn", [str(write_config("fcn.yml", N=32, in_features=3, hidden_features=8, num_epochs=10,
                                         probing_frequency=5)), "--out", str(out)]) == 0
    single = next(Path(p) for p in capsys.readouterr().out.split() if Path(p).is_dir())
    for folder in (*map(Path, folders), comparison, single):
        assert_renders(folder / "report.html", tmp_path, images=len(list((folder / "plots").iterdir())))
    assert_renders(out / "index.html", tmp_path, images=0)
    assert (Path(folders[0]) / "report.png").is_file()  # the screenshot is kept under the test's tmp

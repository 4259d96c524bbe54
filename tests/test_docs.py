"""The documentation stays inside the repository: every link is relative and resolves to a file in
it; the config table of docs/CONFIG.md is the schema's."""
import re
from pathlib import Path

import pytest

from shallow_collapse.config import markdown_table

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


DOCS = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md", *sorted(p.relative_to(ROOT).as_posix()
                                                          for p in (ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS)
def test_links_resolve_inside_the_repository(doc):
    path = ROOT / doc
    for link in LINK.findall(path.read_text()):
        assert not re.match(r"^[a-z]+:", link), f"{doc}: link {link} leaves the repository"
        if link.startswith("#"):
            continue  # an anchor in the same page
        target = (path.parent / link.split("#")[0]).resolve()
        assert target.is_relative_to(ROOT) and target.exists(), f"{doc}: link {link}"


def test_config_doc_lists_every_key_with_its_default():
    # regenerate with: python -m shallow_collapse.config docs/CONFIG.md
    assert markdown_table() in (ROOT / "docs" / "CONFIG.md").read_text()


def test_readme_points_to_the_math_in_the_repository():
    assert "(docs/MATH.md)" in (ROOT / "README.md").read_text()
    math = (ROOT / "docs" / "MATH.md").read_text()
    for section in ("## 1. Data", "## 3. NC1 from features", "## 4. NC1 from a kernel", "## 5. Limiting kernels",
                    "## 6. Adaptive kernel", "## 7. The action of the EoS"):
        assert section in math

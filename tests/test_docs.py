"""The documentation stays inside the repository: every relative link resolves to a file in it."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", ["README.md", "CONTRIBUTING.md", "docs/MATH.md"])
def test_relative_links_resolve_inside_the_repository(doc):
    path = ROOT / doc
    for link in LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+:", link) or link.startswith("#"):
            continue  # web addresses and anchors
        target = (path.parent / link.split("#")[0]).resolve()
        assert target.is_relative_to(ROOT) and target.exists(), f"{doc}: link {link}"


def test_readme_points_to_the_math_in_the_repository():
    assert "(docs/MATH.md)" in (ROOT / "README.md").read_text()
    math = (ROOT / "docs" / "MATH.md").read_text()
    for section in ("## 1. Data", "## 3. NC1 from features", "## 4. NC1 from a kernel", "## 5. Limiting kernels",
                    "## 6. Adaptive kernel", "## 7. The action of the EoS"):
        assert section in math

"""The README is a front door: short, naming every entry script, pointing into docs/."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_names_every_entry_script():
    for script in ROOT.glob("*.py"):
        assert f"`{script.name}`" in README, script.name


def test_readme_is_a_front_door():
    assert len(README.splitlines()) <= 150
    for doc in ("docs/GUIDE.md", "docs/CONFIG.md", "docs/MATH.md", "docs/RESULTS.md", "CHANGELOG.md"):
        assert f"]({doc})" in README, doc

from pathlib import Path

from shallow_collapse.config import markdown_table

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_documents_every_config_key_with_its_default():
    # regenerate with: python -m shallow_collapse.config README.md
    assert markdown_table() in README


def test_readme_names_every_entry_script():
    for script in Path(__file__).resolve().parents[1].glob("*.py"):
        assert f"`{script.name}`" in README, script.name

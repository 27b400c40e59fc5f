"""The package that pip builds holds every module: setuptools' find_packages (pyproject.toml) skips a
folder without __init__.py silently, and then an installed jaxrec misses it."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_source_folder_is_a_package():
    folders = [p for p in [REPO / "jaxrec", *(REPO / "jaxrec").rglob("*")] if p.is_dir() and any(p.glob("*.py"))]
    missing = [str(p.relative_to(REPO)) for p in folders if not (p / "__init__.py").is_file()]
    assert folders and not missing, missing

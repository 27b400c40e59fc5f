"""The package that pip builds holds every module (a missing __init__.py drops a folder silently)."""

from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]


def test_every_source_folder_is_a_package():
    packages = set(find_packages(str(REPO), include=["jaxrec*"]))
    folders = {
        ".".join(p.relative_to(REPO).parts)
        for p in (REPO / "jaxrec").rglob("*")
        if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py"))
    }
    assert "jaxrec" in packages
    assert folders <= packages, folders - packages

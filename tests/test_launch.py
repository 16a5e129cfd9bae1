"""The launch buttons: a chapter opened in Colab or Binder installs the book's library in its first
cell, and that cell installs nothing where the library is already importable (here)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))
REPOSITORY = re.search(r"url:\s*(\S+)", (ROOT / "book/_config.yml").read_text()).group(1)
INSTALL = f"dgm_edu[notebook] @ git+{REPOSITORY}"


def _first_cell(chapter: Path):
    cells = [c for c in jupytext.read(chapter).cells if c.cell_type == "code"]
    return cells[0]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_first_cell_is_the_install_guard(chapter):
    cell = _first_cell(chapter)
    assert 'importlib.util.find_spec("dgm_edu")' in cell.source, (
        f"{chapter.name}: the first code cell must be the install guard (see chapters/01)"
    )
    assert INSTALL in cell.source, f"{chapter.name}: the guard must install {INSTALL!r}"
    assert "remove-cell" in cell.metadata.get("tags", []), "the site does not show the guard"
    # every chapter's guard is the same cell
    assert cell.source == _first_cell(CHAPTERS[0]).source


def _run_guard(monkeypatch, *, present: bool) -> list[list[str]]:
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(list(args)))
    monkeypatch.setattr(importlib, "invalidate_caches", lambda: calls.append(["invalidate"]))
    if not present:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "dgm_edu" else real(name)
        )
    exec(_first_cell(CHAPTERS[0]).source, {})  # the cell, as a kernel would run it
    return calls


def test_guard_installs_nothing_where_the_library_imports(monkeypatch):
    assert importlib.util.find_spec("dgm_edu") is not None
    assert _run_guard(monkeypatch, present=True) == []


def test_guard_installs_the_library_where_it_is_missing(monkeypatch):
    calls = _run_guard(monkeypatch, present=False)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", INSTALL], ["invalidate"]]


def test_the_notebook_extra_holds_what_chapters_import_beyond_the_library():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = " ".join(project["optional-dependencies"]["notebook"])
    core = " ".join(project["dependencies"])
    imported = set()
    for chapter in CHAPTERS:
        imported |= set(re.findall(r"^(?:from|import) (\w+)", chapter.read_text(), re.M))
    for module, package in {"myst_nb": "myst-nb", "ipywidgets": "ipywidgets"}.items():
        if module in imported:
            assert package in extra or package in core, f"{package} is missing from the install"


def test_binder_installs_the_repository_with_the_pinned_torch():
    lines = (ROOT / "binder/requirements.txt").read_text().split("\n")
    torch_pin = re.search(r"^TORCH \?= (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f"torch=={torch_pin}" in lines  # the Makefile's pin
    assert ".[notebook]" in lines  # the library from this repository, with the chapters' extra
    assert (ROOT / "binder/runtime.txt").read_text().strip() == "python-3.11"

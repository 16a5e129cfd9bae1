"""The two editions of the site keep the answers where they belong (book/_ext/editions.py).

- Reference edition (``make book``, the public site; ``DGM_EDU_SITE`` to test another build): no
  page and no downloadable notebook carries a hidden test, and every solution is collapsed behind a
  toggle (checked in Chromium: hidden until the toggle is clicked).
- Student edition (``make book-student`` -> build/student; ``DGM_EDU_STUDENT_SITE``): no page, no
  downloadable notebook and no student notebook carries ``BEGIN SOLUTION``, a hidden test, or any
  distinctive line of a solution body taken from the chapter sources.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from urllib.parse import urljoin

import nbformat
import pytest
from bs4 import BeautifulSoup

from .conftest import ROOT, SITE

STUDENT = Path(
    os.environ.get("DGM_EDU_STUDENT_SITE", ROOT / "build" / "student" / "_build" / "html")
)
CHAPTERS = sorted(
    p.stem
    for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")
    if any(c.metadata.get("nbgrader") for c in nbformat.read(p, as_version=4).cells)
)
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def _norm(text: str) -> str:
    return " ".join(text.split())


def _regions(source: str, begin: str, end: str) -> list[str]:
    out, inside = [], False
    for line in source.splitlines():
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        elif inside:
            out.append(line)
    return out


def _outside(source: str) -> list[str]:
    """The lines of a cell outside its solution and hidden-test regions."""
    out, inside = [], False
    for line in source.splitlines():
        if "BEGIN SOLUTION" in line or "BEGIN HIDDEN TESTS" in line:
            inside = True
        elif "END SOLUTION" in line or "END HIDDEN TESTS" in line:
            inside = False
        elif not inside:
            out.append(line)
    return out


@cache
def _secrets(name: str) -> tuple[list[str], list[str]]:
    """The distinctive lines of the chapter's solution bodies and of its hidden tests.

    A line is distinctive when it is long enough to mean something and appears nowhere in the
    chapter that a student may see: not in another cell's source, nor in the visible parts of the
    exercise cells, nor in the outputs of the reference build.
    """
    nb = nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4)
    solution, hidden, public = [], [], []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        src = cell.source
        hidden += _regions(src, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
        if meta.get("solution"):
            body = _regions(src, "BEGIN SOLUTION", "END SOLUTION")
            if not body and "BEGIN SOLUTION" not in src:
                body = src.splitlines()
            solution += body
        # what a student sees of this cell: the lines outside both regions (by position, so a
        # line repeated inside and outside a region counts as seen)
        outside = _outside(src)
        if meta.get("solution") and "BEGIN SOLUTION" not in src:
            outside = []
        public += outside
    executed = ROOT / "book" / "_build" / "jupyter_execute" / "chapters" / f"{name}.ipynb"
    if executed.is_file():
        for cell in nbformat.read(executed, as_version=4).cells:
            if cell.cell_type == "code" and not cell.metadata.get("nbgrader"):
                for out in cell.get("outputs", []):
                    text = out.get("text") or out.get("data", {}).get("text/plain", "")
                    public += "".join(text).splitlines()
    seen = _norm("\n".join(public))

    def keep(lines: list[str]) -> list[str]:
        lines = {_norm(x) for x in lines}
        return sorted(
            x for x in lines if len(x) >= 12 and re.search(r"[A-Za-z]{2}", x) and x not in seen
        )

    return keep(solution), keep(hidden)


def _page_text(path: Path) -> str:
    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    return _norm(soup.get_text(" "))


def _notebook_text(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    parts = []
    for cell in nb.cells:
        parts.append(cell.source)
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            parts += ["".join(v) for v in out.get("data", {}).values() if isinstance(v, str)]
    return _norm("\n".join(parts))


def _student_files(name: str) -> list[Path]:
    files = [
        STUDENT / "chapters" / f"{name}.html",
        STUDENT / "_sources" / "chapters" / f"{name}.ipynb",
    ]
    notebook = STUDENT.parents[1] / "notebooks" / f"{name}.ipynb"
    return files + ([notebook] if notebook.is_file() else [])


@pytest.fixture(scope="module")
def student_site() -> Path:
    if not (STUDENT / "index.html").is_file():
        pytest.fail(f"No student edition at {STUDENT}: run 'make book-student' first")
    return STUDENT


def test_the_chapters_have_secrets_to_keep():
    """Guards the two tests below against passing vacuously."""
    for name in CHAPTERS:
        solution, hidden = _secrets(name)
        assert solution, f"{name}: no distinctive solution line found in the sources"
        assert hidden, f"{name}: no distinctive hidden-test line found in the sources"


@pytest.mark.parametrize("name", CHAPTERS)
def test_student_edition_keeps_the_answers_away(student_site, name):
    solution, hidden = _secrets(name)
    for path in _student_files(name):
        assert path.is_file(), f"the student edition has no {path}"
        text = _page_text(path) if path.suffix == ".html" else _notebook_text(path)
        for marker in MARKERS:
            assert marker not in text, f"{path} contains {marker!r}"
        leaked = [x for x in solution + hidden if x in text]
        assert not leaked, f"{path} shows solution or hidden-test lines: {leaked[:3]}"
        if path.suffix == ".html":
            assert "NotImplementedError" in text, f"{path} has no exercise stub"


@pytest.mark.parametrize("name", CHAPTERS)
def test_reference_edition_has_no_hidden_tests_and_collapses_solutions(name):
    if not (SITE / "index.html").is_file():
        pytest.fail(f"No built site at {SITE}: run 'make book' first (or set DGM_EDU_SITE)")
    solution, hidden = _secrets(name)
    shown = "\n".join(solution)  # solutions are shown, collapsed: what they contain is no leak
    hidden = [x for x in hidden if x not in shown]
    page = SITE / "chapters" / f"{name}.html"
    for path in (page, SITE / "_sources" / "chapters" / f"{name}.ipynb"):
        text = _page_text(path) if path.suffix == ".html" else _notebook_text(path)
        assert "HIDDEN TESTS" not in text, f"{path} contains a hidden-test marker"
        leaked = [x for x in hidden if x in text]
        assert not leaked, f"{path} shows hidden-test lines: {leaked[:3]}"
    nb = nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4)
    n_solutions = sum(
        1
        for c in nb.cells
        if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")
    )
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    collapsed = soup.select("div.dgm-solution > details")
    assert len(collapsed) == n_solutions, (
        f"{page}: {len(collapsed)} collapsed solutions, {n_solutions} solution cells"
    )
    # each solution follows its prompt: the element before it is not another solution
    for box in soup.select("div.dgm-solution"):
        prev = box.find_previous_sibling()
        assert prev is not None and "dgm-solution" not in prev.get("class", []), page


def test_reference_solution_is_hidden_until_the_toggle_is_clicked(browser, base_url):
    page = f"chapters/{CHAPTERS[0]}.html"
    tab = browser.new_page()
    tab.route("**/*", lambda r: r.continue_() if "127.0.0.1" in r.request.url else r.abort())
    tab.goto(urljoin(base_url, page), wait_until="load")
    box = tab.locator("div.dgm-solution").first
    code = box.locator("div.cell_input pre").first
    assert box.locator("summary").first.is_visible(), f"{page}: the solution toggle is not shown"
    assert not code.is_visible(), f"{page}: the solution is visible before the toggle is clicked"
    box.locator("summary").first.click()
    code.wait_for(state="visible", timeout=5_000)
    assert "BEGIN SOLUTION" in code.inner_text()
    tab.close()


def test_student_page_loads_cleanly(student_site, browser):
    """One student page in Chromium, offline: no console errors, math typeset."""
    import functools
    import http.server
    import threading

    from .conftest import _QuietHandler

    handler = functools.partial(_QuietHandler, directory=str(student_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/chapters/{CHAPTERS[0]}.html"
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.route("**/*", lambda r: r.continue_() if "127.0.0.1" in r.request.url else r.abort())
    tab.goto(url, wait_until="load")
    tab.wait_for_function(
        "() => [...document.querySelectorAll('span.math, div.math')]"
        ".every(e => e.querySelector('mjx-container'))",
        timeout=30_000,
    )
    assert "Student edition" in tab.inner_text("body")
    tab.close()
    server.shutdown()
    assert not errors, f"the student page logged console errors: {errors[:5]}"

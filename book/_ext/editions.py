"""The two editions of the site, made at build time from the unchanged chapter sources.

- **Reference edition** (``make book``, the public site): every solution cell (nbgrader
  ``solution: true``) is collapsed behind a "Show the solution" toggle after its prompt, and the
  hidden tests (``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``) are removed from every page
  and from the downloadable notebooks (``_sources/``). The notebooks are executed (and cached) as
  they are: only the rendered page changes, so the execution cache still matches.
- **Student edition** (``DGM_EDU_EDITION=student``, ``make book-student``): each chapter is the
  reference build's executed notebook (``book/_build/jupyter_execute``, so nothing is executed
  again) passed through nbgrader's own ``ClearSolutions``, ``ClearHiddenTests`` and
  ``ClearMarkScheme`` preprocessors, with the outputs of the graded cells dropped. The download
  button offers the same stripped notebook, without outputs.

The functions without Sphinx (``student_notebook``, ``strip_hidden_tests``, ...) are also used by
the tests and by ``scripts/build_course.py``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import nbformat

EDITION_ENV = "DGM_EDU_EDITION"
EXECUTED_ENV = "DGM_EDU_EXECUTED"  # the reference build's executed notebooks (student edition)
REUSE_ENV = "DGM_EDU_REUSE_EXECUTED"
BOOK = Path(__file__).resolve().parents[1]
HIDDEN_BEGIN, HIDDEN_END = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
SOLUTION_BEGIN = "BEGIN SOLUTION"
SHOW, HIDE = "Show the solution", "Hide the solution"


def edition() -> str:
    """``reference`` (default) or ``student``, from ``DGM_EDU_EDITION``."""
    value = os.environ.get(EDITION_ENV, "reference").strip().lower() or "reference"
    if value not in ("reference", "student"):
        raise ValueError(f"{EDITION_ENV} must be 'reference' or 'student', got {value!r}")
    return value


def _nbgrader(cell: nbformat.NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_solution(cell: nbformat.NotebookNode) -> bool:
    return bool(_nbgrader(cell).get("solution"))


def is_graded(cell: nbformat.NotebookNode) -> bool:
    return bool(_nbgrader(cell).get("grade"))


def strip_hidden_tests(text: str) -> str:
    """``text`` without its hidden-test regions (nbgrader's own ClearHiddenTests)."""
    if HIDDEN_BEGIN not in text:
        return text
    from nbgrader.preprocessors import ClearHiddenTests

    cell = nbformat.v4.new_code_cell(text)
    ClearHiddenTests(enforce_metadata=False).preprocess_cell(cell, {}, 0)
    return cell.source


def clear_solution_text(text: str) -> str:
    """``text`` with its solution regions replaced by the stub (nbgrader's ClearSolutions)."""
    if SOLUTION_BEGIN not in text:
        return text
    from nbgrader.preprocessors import ClearSolutions

    cell = nbformat.v4.new_code_cell(text)
    ClearSolutions(enforce_metadata=False).preprocess_cell(cell, {"language": "python"}, 0)
    return cell.source


def reference_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook as the public reference edition offers it: hidden tests removed."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        cell.source = strip_hidden_tests(cell.source)
    return nb


def student_notebook(
    nb: nbformat.NotebookNode, *, keep_outputs: bool = True
) -> nbformat.NotebookNode:
    """The notebook without solution bodies, hidden tests and mark schemes.

    nbgrader's ClearSolutions, ClearHiddenTests and ClearMarkScheme do the work (so the stubs are
    those of the released assignments); the outputs of solution and graded cells are dropped, and
    all outputs too unless ``keep_outputs``.
    """
    from nbgrader.preprocessors import ClearHiddenTests, ClearMarkScheme, ClearSolutions

    nb = copy.deepcopy(nb)
    resources: dict[str, Any] = {}
    for pp in (ClearSolutions(), ClearHiddenTests(), ClearMarkScheme()):
        nb, resources = pp.preprocess(nb, resources)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if not keep_outputs or is_solution(cell) or is_graded(cell):
            cell.outputs = []
            cell.execution_count = None
    return nb


# --- Sphinx -------------------------------------------------------------------------------------


def _executed_dir(app: Any) -> Path:
    default = BOOK / "_build" / "jupyter_execute"
    return Path(os.environ.get(EXECUTED_ENV, default)).resolve()


def _config_inited(app: Any, config: Any) -> None:
    app.dgm_edition = edition()
    # the student edition always reuses the reference build's outputs; DGM_EDU_REUSE_EXECUTED=1
    # rebuilds the reference edition from them too (a quick rebuild of the pages, no execution)
    app.dgm_reuse = app.dgm_edition == "student" or os.environ.get(REUSE_ENV, "") == "1"
    if app.dgm_reuse:
        config.nb_execution_mode = "off"
    if app.dgm_edition == "student":
        options = dict(config.html_theme_options or {})
        options["announcement"] = (
            "Student edition: the exercises' solutions and hidden tests are not shown."
        )
        config.html_theme_options = options


def _executed(app: Any, docname: str, nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The reference build's executed notebook of ``docname``, its glued values put back."""
    from sphinx.errors import ExtensionError
    from sphinx.util import logging

    executed = _executed_dir(app) / f"{docname}.ipynb"
    if not executed.is_file():
        raise ExtensionError(
            f"This build reuses the reference build's outputs, and {executed} is missing: "
            "run 'make book' first (or set DGM_EDU_EXECUTED to another jupyter_execute folder)."
        )
    app.env.note_dependency(str(executed))
    ran = nbformat.read(executed, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    if code != [c.source for c in ran.cells if c.cell_type == "code"]:
        logging.getLogger(__name__).warning(
            f"{docname}: the reference build's executed notebook ({executed}) is older than "
            "the chapter: run 'make book' first",
            location=docname,
        )
    _restore_glue(ran, executed.with_suffix(".glue.json"))
    return ran


def _source_read(app: Any, docname: str, source: list[str]) -> None:
    if not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    nb = nbformat.reads(source[0], as_version=4)
    if not any(_nbgrader(c) for c in nb.cells) and not app.dgm_reuse:
        return
    if app.dgm_reuse:
        nb = _executed(app, docname, nb)
    if app.dgm_edition == "student":
        source[0] = nbformat.writes(student_notebook(nb))
        return
    # reference: a markdown answer cell (a model answer) is collapsed in a dropdown; markdown
    # cells do not enter the execution cache's hash, so the cache still matches
    changed = app.dgm_reuse
    for cell in nb.cells:
        if cell.cell_type == "markdown" and is_solution(cell):
            fence = ":" * (4 + max((len(x) for x in _colon_runs(cell.source)), default=0))
            cell.source = f"{fence}{{dropdown}} {SHOW}\n\n{cell.source}\n{fence}\n"
            changed = True
    if changed:
        source[0] = nbformat.writes(nb)


def _restore_glue(nb: nbformat.NotebookNode, glue_file: Path) -> None:
    """Put back the glued values that myst-nb moved out of the executed notebook.

    myst-nb removes the glue outputs from the notebook it writes to ``jupyter_execute`` and keeps
    them in ``<doc>.glue.json``; it reads them from any cell's outputs again, so they go to the
    first code cell that is not an exercise cell.
    """
    if not glue_file.is_file():
        return
    import json

    outputs = []
    for raw in json.loads(glue_file.read_text()).values():
        out = nbformat.from_dict(raw)
        # the file keeps the bare mimetypes; myst-nb strips the recorded prefix when it reads them
        prefix = out.get("metadata", {}).get("scrapbook", {}).get("mime_prefix", "")
        if prefix and not any(k.startswith(prefix) for k in out.get("data", {})):
            out["data"] = {prefix + k: v for k, v in out["data"].items()}
        outputs.append(out)
    host = next((c for c in nb.cells if c.cell_type == "code" and not _nbgrader(c)), None)
    if host is None:
        host = nbformat.v4.new_code_cell("")
        nb.cells.append(host)
    host.outputs = [*host.outputs, *outputs]


def _colon_runs(text: str) -> list[str]:
    import re

    return re.findall(r"^:{3,}", text, flags=re.M)


def _doctree_read(app: Any, doctree: Any) -> None:
    from docutils import nodes

    student = app.dgm_edition == "student"
    for block in list(doctree.findall(nodes.literal_block)):
        text = block.astext()
        new = strip_hidden_tests(text)
        if student:
            new = clear_solution_text(new)
        if new != text:
            block.children = [nodes.Text(new)]
            block.rawsource = new
    if student:
        return
    for cell in doctree.findall(nodes.container):
        if cell.get("nb_element") != "cell_code":
            continue
        if (cell.get("cell_metadata") or {}).get("nbgrader", {}).get("solution"):
            # myst-nb's own hide-cell treatment (a <details> element), with our labels
            cell["hide_mode"] = "all"
            cell["prompt_show"], cell["prompt_hide"] = SHOW, HIDE
            cell["classes"].append("dgm-solution")


def _build_finished(app: Any, exception: Exception | None) -> None:
    """The downloadable sources (``_sources/*.ipynb``) of the same edition as the pages."""
    if exception is not None or app.builder.format != "html":
        return
    sources = Path(app.outdir) / "_sources"
    for path in sorted(sources.rglob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if not any(_nbgrader(c) for c in nb.cells):
            continue
        if app.dgm_edition == "student":
            nb = student_notebook(nb, keep_outputs=False)
        else:
            nb = reference_notebook(nb)
        nbformat.write(nb, path)


def setup(app: Any) -> dict[str, Any]:
    app.connect("config-inited", _config_inited, priority=100)
    app.connect("source-read", _source_read)
    app.connect("doctree-read", _doctree_read)
    app.connect("build-finished", _build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""The course tools without running nbgrader: the editions' notebook transforms
(book/_ext/editions.py), the feedback preprocessor and the released-only export
(scripts/course_hooks.py), the collect helper and the course config (scripts/build_course.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import build_course  # noqa: E402
import course_hooks  # noqa: E402


def _load_editions():
    spec = importlib.util.spec_from_file_location("editions", ROOT / "book/_ext/editions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


editions = _load_editions()


def _meta(**kw) -> dict:
    return {"nbgrader": {"schema_version": 3, "locked": False, "task": False, **kw}}


def _notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "P"}
    code = nbformat.v4.new_code_cell
    nb.cells = [
        code("import math", outputs=[nbformat.v4.new_output("stream", text="set up\n")]),
        code(
            "def f(x):\n    ### BEGIN SOLUTION\n    return secret_formula(x)\n    ### END SOLUTION",
            metadata=_meta(grade=False, grade_id="f-solution", solution=True),
            outputs=[nbformat.v4.new_output("stream", text="a solution's output\n")],
        ),
        code(
            "whole_cell_answer = 42",
            metadata=_meta(grade=False, grade_id="g-solution", solution=True),
        ),
        code(
            "assert f(0) == 0\n### BEGIN HIDDEN TESTS\nassert f(7) == hidden_value\n"
            "### END HIDDEN TESTS",
            metadata=_meta(grade=True, grade_id="f-tests", solution=False, points=2),
        ),
        nbformat.v4.new_markdown_cell(
            "The model answer: because of the chain rule.",
            metadata=_meta(grade=True, grade_id="why", solution=True, points=1),
        ),
    ]
    return nb


def test_student_notebook_keeps_the_answers_away():
    nb = editions.student_notebook(_notebook())
    text = nbformat.writes(nb)
    for secret in ("secret_formula", "whole_cell_answer", "hidden_value", "chain rule"):
        assert secret not in text
    for marker in ("BEGIN SOLUTION", "HIDDEN TESTS"):
        assert marker not in text
    assert nb.cells[1].source == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    assert nb.cells[2].source.endswith("raise NotImplementedError()")
    assert nb.cells[3].source == "assert f(0) == 0"
    assert nb.cells[4].source == "YOUR ANSWER HERE"
    assert nb.cells[0].outputs and not nb.cells[1].outputs  # a solution's output is dropped
    assert not editions.student_notebook(_notebook(), keep_outputs=False).cells[0].outputs


def test_reference_notebook_drops_only_the_hidden_tests():
    nb = editions.reference_notebook(_notebook())
    text = nbformat.writes(nb)
    assert "hidden_value" not in text and "HIDDEN TESTS" not in text
    assert "secret_formula" in text and "chain rule" in text


def test_text_helpers_use_nbgraders_rules():
    assert editions.strip_hidden_tests("a\n### BEGIN HIDDEN TESTS\nb\n### END HIDDEN TESTS\nc") == (
        "a\nc"
    )
    assert editions.strip_hidden_tests("no markers") == "no markers"
    assert "x = 1" not in editions.clear_solution_text(
        "### BEGIN SOLUTION\nx = 1\n### END SOLUTION"
    )


def test_feedback_hides_hidden_tests_and_tracebacks():
    cell = _notebook().cells[3]
    cell.outputs = [
        nbformat.v4.new_output(
            "error",
            ename="AssertionError",
            evalue="",
            traceback=["----", "assert f(7) == hidden_value", "AssertionError"],
        )
    ]
    pp = course_hooks.FeedbackWithoutHiddenTests()
    assert pp.enabled
    cell, _ = pp.preprocess_cell(cell, {}, 0)
    assert "hidden_value" not in cell.source and course_hooks.HIDDEN_NOTE in cell.source
    assert cell.outputs[0].traceback == ["AssertionError: "]
    solution = _notebook().cells[1]
    assert pp.preprocess_cell(solution, {}, 0)[0].source == _notebook().cells[1].source


def test_collect_gathers_files_and_folders_with_timestamps(tmp_path):
    course = tmp_path / "course"
    (course / "source" / "a1").mkdir(parents=True)
    nbformat.write(_notebook(), course / "source" / "a1" / "a1.ipynb")
    hand = tmp_path / "hand"
    (hand / "carol").mkdir(parents=True)
    nbformat.write(_notebook(), hand / "dave.ipynb")
    nbformat.write(_notebook(), hand / "carol" / "Assignment 1 (final).ipynb")
    (hand / "notes.txt").write_text("ignored")
    assert build_course.collect(course, "a1", hand) == ["carol", "dave"]
    for student in ("carol", "dave"):
        folder = course / "submitted" / student / "a1"
        assert sorted(p.name for p in folder.iterdir()) == [
            "a1.ipynb",
            "submission_secret.txt",
            "timestamp.txt",
        ]
        from dateutil.parser import parse

        assert parse((folder / "timestamp.txt").read_text()).tzinfo is not None
    build_course.collect(course, "a1", hand, timestamp="2027-01-15 16:59:00.000000 UTC")
    assert (course / "submitted/dave/a1/timestamp.txt").read_text().startswith("2027-01-15")


def test_collect_refuses_what_it_cannot_file(tmp_path):
    course = tmp_path / "course"
    (course / "source" / "a1").mkdir(parents=True)
    nbformat.write(_notebook(), course / "source" / "a1" / "a1.ipynb")
    bad_name = tmp_path / "bad_name"
    bad_name.mkdir()
    nbformat.write(_notebook(), bad_name / "Dave Smith.ipynb")
    with pytest.raises(ValueError, match="student id"):
        build_course.collect(course, "a1", bad_name)
    two = tmp_path / "two"
    (two / "erin").mkdir(parents=True)
    for name in ("x.ipynb", "y.ipynb"):
        nbformat.write(_notebook(), two / "erin" / name)
    with pytest.raises(ValueError, match="one notebook"):
        build_course.collect(course, "a1", two)
    with pytest.raises(ValueError, match="one notebook"):
        build_course.collect(course, "nope", two)


def test_course_config_is_relocatable(tmp_path):
    course = tmp_path / "course"
    course.mkdir()
    build_course.write_config(course, exchange=str(tmp_path / "exchange"))
    text = (course / "nbgrader_config.py").read_text()
    assert str(course) not in text.replace(str(tmp_path / "exchange"), "")
    assert "c.CourseDirectory.root = HERE" in text
    assert (course / "templates" / "dgm_feedback" / "tex-svg-full.js").is_file()
    assert (course / "course_hooks.py").read_text() == (
        ROOT / "scripts/course_hooks.py"
    ).read_text()

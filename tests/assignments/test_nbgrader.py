"""Every chapter's exercises as an nbgrader assignment, graded by the real nbgrader.

Each chapter's other answers live in ``tests/assignments/answers/<chapter>.py``: for every code
solution cell, an ``ALTERNATIVE`` correct answer written differently and a ``PLANTED`` wrong answer
that passes the visible tests.

- The reference solutions score full marks; the released, unanswered notebook scores 0.
- All the alternative answers together score full marks.
- All the planted answers together pass every visible test (the notebook runs without error), and
  every exercise with a planted answer loses points in its own test cells.
- The jupytext pairing keeps the nbgrader metadata (round trip).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import build_course  # noqa: E402

ANSWERS = ROOT / "tests" / "assignments" / "answers"
NAMES = build_course.chapter_names()


def _answers(name: str) -> tuple[dict[str, str], dict[str, str]]:
    """``(ALTERNATIVE, PLANTED)`` of a chapter: {solution grade_id: code}."""
    path = ANSWERS / f"{name}.py"
    assert path.is_file(), f"{name}: expected its answers in {path}"
    spec = importlib.util.spec_from_file_location(f"answers_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.ALTERNATIVE), dict(module.PLANTED)


def _code_solutions(name: str) -> set[str]:
    nb = nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4)
    return {
        c.metadata["nbgrader"]["grade_id"]
        for c in nb.cells
        if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")
    }


def _exercise(grade_id: str) -> str:
    """``intro-ex3-solution`` and ``intro-ex3-tests-b`` -> ``intro-ex3``."""
    match = re.match(r"^(.*?-ex\d+)-", grade_id)
    assert match, f"grade_id {grade_id!r} does not follow <prefix>-exN-<part>"
    return match.group(1)


@pytest.mark.parametrize("name", NAMES)
def test_every_code_solution_has_an_alternative_and_a_planted_answer(name):
    alternative, planted = _answers(name)
    solutions = _code_solutions(name)
    assert set(alternative) == solutions, f"{name}: alternatives for {sorted(alternative)}"
    assert set(planted) == solutions, f"{name}: planted answers for {sorted(planted)}"


def _solutions(nb: nbformat.NotebookNode) -> dict[str, str]:
    return {
        c.metadata["nbgrader"]["grade_id"]: c.source
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }


def _submit(course: Path, name: str, student: str, answers: dict[str, str]) -> Path:
    released = nbformat.read(course / "release" / name / f"{name}.ipynb", as_version=4)
    for cell in released.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    target = course / "submitted" / student / name
    target.mkdir(parents=True, exist_ok=True)
    nbformat.write(released, target / f"{name}.ipynb")
    return target / f"{name}.ipynb"


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("course")
    build_course.build(root, NAMES)
    return root


def test_every_chapter_has_at_least_three_graded_exercises():
    for nb_path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert len(graded) >= 3, f"{nb_path.name} has {len(graded)} graded cells, expected >= 3"
        for c in graded:
            if c.cell_type == "markdown":  # an answer graded by hand: no tests
                continue
            assert "### BEGIN HIDDEN TESTS" in c.source, (
                f"{nb_path.name}: a test cell has no hidden tests"
            )


LEVELS = {"★": 2, "★★": 4, "★★★": 6}  # points by level


@pytest.mark.parametrize("name", NAMES)
def test_exercises_are_levelled_with_one_answer_graded_by_hand(name):
    """4-6 exercises, each headed ``**Exercise N (★… level, P points…)**`` with P set by the level
    and equal to its graded cells' points; at least one answer graded by hand; every markdown answer
    cell holds its model answer and nothing after it (no following prompt swallowed)."""
    nb = nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    heads = re.findall(r"\*\*Exercise (\d+) \((★+)[^,]*, (\d+) points", text)
    assert 4 <= len(heads) <= 6, f"{name}: {len(heads)} levelled exercises, expected 4-6"
    assert {level for _, level, _ in heads} == set(LEVELS), f"{name}: levels {heads}"
    points: dict[str, float] = {}
    manual = 0
    for c in nb.cells:
        meta = c.metadata.get("nbgrader", {})
        if meta.get("grade"):
            ex = _exercise(meta["grade_id"]).rsplit("-ex", 1)[1]
            points[ex] = points.get(ex, 0) + meta["points"]
        if c.cell_type == "markdown" and meta.get("solution"):
            manual += 1
            assert "### BEGIN SOLUTION" in c.source, (
                f"{name}: {meta['grade_id']} has no model answer"
            )
            tail = c.source.split("### END SOLUTION", 1)[1].strip()
            assert not tail, f"{name}: {meta['grade_id']} swallows the text after its answer"
    assert manual >= 1, f"{name}: no answer graded by hand"
    for number, level, stated in heads:
        assert int(stated) == LEVELS[level] == points.get(number), (name, number, points)


def test_jupytext_round_trip_keeps_nbgrader_metadata():
    for md in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md")):
        nb = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
        text = jupytext.writes(nb, fmt="md:myst")
        back = jupytext.reads(text, fmt="md:myst")
        meta = [c.metadata.get("nbgrader") for c in nb.cells]
        assert meta == [c.metadata.get("nbgrader") for c in back.cells], md.name
        assert [c.metadata.get("nbgrader") for c in jupytext.read(md).cells] == meta, md.name


def _run(path: Path) -> None:
    """Execute a submitted notebook: raises if any visible test fails."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()


@pytest.mark.parametrize("name", NAMES)
def test_autograde(course, name):
    source = nbformat.read(course / "source" / name / f"{name}.ipynb", as_version=4)
    reference = _solutions(source)
    alternative, planted = _answers(name)
    _submit(course, name, "reference", reference)
    _submit(course, name, "blank", {})
    if alternative:
        _submit(course, name, "alternative", {**reference, **alternative})
    if planted:
        _run(_submit(course, name, "planted", {**reference, **planted}))
    build_course.nbgrader(course, "autograde", name, "--force")

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        ref = gb.find_submission(name, "reference")
        assert ref.max_code_score > 0
        assert ref.code_score == ref.max_code_score, (
            f"reference solutions of {name}: {ref.code_score}/{ref.max_code_score}"
        )
        blank = gb.find_submission(name, "blank")
        assert blank.code_score == 0, f"unanswered {name} scored {blank.code_score}"
        if alternative:
            alt = gb.find_submission(name, "alternative")
            assert alt.code_score == alt.max_code_score, (
                f"alternative answers of {name}: {alt.code_score}/{alt.max_code_score}"
            )
        if planted:
            tests = [
                c.metadata["nbgrader"]["grade_id"]
                for c in source.cells
                if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")
            ]
            for gid in planted:
                own = [t for t in tests if _exercise(t) == _exercise(gid)]
                assert own, f"{name}: no graded test cell for {gid}"
                grades = [gb.find_grade(t, name, name, "planted") for t in own]
                lost = sum(g.max_score for g in grades) - sum(g.score for g in grades)
                assert lost > 0, f"{name}: the planted wrong answer for {gid} lost no points"


def test_release_strips_solutions_and_hidden_tests(course):
    for name in NAMES:
        text = (course / "release" / name / f"{name}.ipynb").read_text()
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
        assert "raise NotImplementedError()" in text


def teardown_module() -> None:
    shutil.rmtree(ROOT / "tests" / "assignments" / "__pycache__", ignore_errors=True)

"""Build an nbgrader course from the chapters' exercises.

    python scripts/build_course.py build course       # course/source + course/release
    python scripts/build_course.py build course --only 01_introduction

Each chapter becomes one assignment. Its notebook holds the chapter's set-up cell (the first code
cell), every cell tagged ``exercise-setup``, and the chapter's "Exercises" section. The chapters
already carry the nbgrader metadata (solution cells with ``### BEGIN SOLUTION`` markers, graded test
cells with hidden tests), so the real ``nbgrader generate_assignment`` does the rest: it replaces
solutions with ``raise NotImplementedError()`` and strips the hidden tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
CONFIG = """\
# nbgrader configuration of the dgm_edu course (written by scripts/build_course.py)
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "dgm_edu"
c.CourseDirectory.root = {root!r}
c.ExecutePreprocessor.timeout = 300
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
"""


def chapter_names() -> list[str]:
    """Chapters that have exercises written as nbgrader cells."""
    names = []
    for nb_path in sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        if any(c.metadata.get("nbgrader", {}).get("grade") for c in nb.cells):
            names.append(nb_path.stem)
    return names


def extract_assignment(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The set-up cell, cells tagged ``exercise-setup``, and the Exercises section."""
    keep, in_exercises, seen_setup = [], False, False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = cell.source.splitlines()
            heads = [i for i, line in enumerate(lines) if line.startswith("## ")]
            starts = [i for i in heads if lines[i].lower().startswith("## exercises")]
            if starts:  # the section may begin in the middle of a markdown cell
                cell = nbformat.from_dict({**cell, "source": "\n".join(lines[starts[-1] :])})
                in_exercises = True
            elif heads:
                in_exercises = False
        tagged = "exercise-setup" in cell.metadata.get("tags", [])
        first_code = cell.cell_type == "code" and not seen_setup
        seen_setup = seen_setup or cell.cell_type == "code"
        if in_exercises or tagged or first_code:
            keep.append(cell)
    if not any(c.metadata.get("nbgrader", {}).get("grade") for c in keep):
        raise ValueError("This chapter has no graded cells in its '## Exercises' section")
    out = nbformat.v4.new_notebook(metadata=nb.metadata)
    title = next((c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown"), "")
    intro = nbformat.v4.new_markdown_cell(
        f"{title.replace('# ', '# Assignment: ', 1)}\n\nComplete every cell that says "
        "`YOUR CODE HERE`, then run the whole notebook. The test cells grade your answers; "
        "some tests are hidden and run only when your teacher grades the notebook."
    )
    out.cells = [intro, *keep]
    return out


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the nbgrader command line in the course folder, in fast mode."""
    env = {**os.environ, "DGM_EDU_FAST": "1"}
    # nbgrader runs its database migrations through the `alembic` command of this environment
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=course,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def build(course: Path, only: list[str] | None = None) -> list[str]:
    """Write ``course/source/<name>/<name>.ipynb`` and release every assignment."""
    course = course.resolve()
    course.mkdir(parents=True, exist_ok=True)
    (course / "nbgrader_config.py").write_text(CONFIG.format(root=str(course)))
    names = only or chapter_names()
    for name in names:
        nb = nbformat.read(CHAPTERS / f"{name}.ipynb", as_version=4)
        target = course / "source" / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        nbformat.write(extract_assignment(nb), target / f"{name}.ipynb")
        nbgrader(course, "generate_assignment", name, "--force")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build course/source and course/release")
    b.add_argument("course", type=Path, help="the course folder, e.g. course")
    b.add_argument("--only", nargs="*", help="chapter names, e.g. 01_introduction")
    args = parser.parse_args()
    names = build(args.course, args.only)
    print(f"Released {len(names)} assignments into {args.course / 'release'}: {', '.join(names)}")


if __name__ == "__main__":
    main()

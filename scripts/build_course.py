"""Build an nbgrader course from the chapters' exercises, and gather hand-collected notebooks.

    python scripts/build_course.py build course       # course/source + course/release
    python scripts/build_course.py build course --only 01_introduction
    python scripts/build_course.py build course --exchange /srv/nbgrader/exchange
    python scripts/build_course.py collect course 03_vae handins/   # -> course/submitted/

Each chapter becomes one assignment. Its notebook holds the chapter's set-up cell (the first code
cell), every cell tagged ``exercise-setup``, and the chapter's "Exercises" section. The chapters
already carry the nbgrader metadata (solution cells with ``### BEGIN SOLUTION`` markers, graded test
cells with hidden tests), so the real ``nbgrader generate_assignment`` does the rest: it replaces
solutions with ``raise NotImplementedError()`` and strips the hidden tests.

The course folder is self-contained and relocatable: its ``nbgrader_config.py`` finds the course
from its own location, puts this Python's ``bin/`` on PATH (nbgrader runs ``alembic`` from there),
and loads ``course_hooks.py`` (copied next to it: feedback without hidden tests and with the
vendored MathJax, exports of the released assignments only). See book/teachers.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
MATHJAX = ROOT / "book" / "_vendor" / "mathjax" / "tex-svg-full.js"
DEFAULT_EXCHANGE = "/usr/local/share/nbgrader/exchange"  # nbgrader's own default
CONFIG = """\
# nbgrader configuration of the dgm_edu course (written by scripts/build_course.py).
# No absolute path to the course: it is this file's folder, so the course can be copied or moved.
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # course_hooks.py
# nbgrader migrates a new gradebook with the `alembic` command of its own environment: put that
# environment's bin/ on PATH, so `.venv/bin/nbgrader` works without an activated venv
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
# the exercises need only the chapters' small budgets: notebooks run in fast mode when graded
os.environ.setdefault("DGM_EDU_FAST", "1")

from course_hooks import configure_feedback  # noqa: E402

c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "dgm_edu"
c.CourseDirectory.root = HERE
c.ExecutePreprocessor.timeout = 300
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
# The exchange: a folder every student and the teacher can write (see the teacher's guide).
{exchange_line}
# Feedback without hidden tests, with the MathJax of templates/ (no CDN); exports list only the
# released assignments.
configure_feedback(c, HERE)
c.ExportApp.plugin_class = "course_hooks.ReleasedCsvExportPlugin"
"""
FEEDBACK_TEMPLATE = """\
{%- extends 'index.html.j2' -%}
{#- nbgrader's feedback page, with the vendored MathJax 3 inlined instead of a CDN's. -#}
{% block footer %}
<script>
window.MathJax = {
  tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]],
        displayMath: [["$$", "$$"], ["\\\\[", "\\\\]"]],
        processEscapes: true, processEnvironments: true},
  options: {enableMenu: false},
  svg: {fontCache: "global"}
};
</script>
{{ resources.include_js("tex-svg-full.js") }}
</html>
{% endblock footer %}
"""
# the base templates call mathjax() with nbconvert's CDN address: this one loads nothing
MATHJAX_MACRO = """\
{%- macro mathjax(url=None) -%}
<!-- MathJax: the course's own copy, inlined at the end of the page -->
{%- endmacro %}
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
    """Cells tagged ``exercise-setup`` and the Exercises section.

    The chapter's own set-up cell (its first code cell) is left out when the Exercises section
    opens with its own ``exercise-setup`` cell, so the released notebook imports only what the
    exercises need (nothing that answers them)."""
    own_setup = _exercises_have_setup(nb)
    keep, in_exercises, seen_setup = [], False, own_setup
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


def _exercises_have_setup(nb: nbformat.NotebookNode) -> bool:
    """Whether a code cell tagged ``exercise-setup`` sits inside the Exercises section."""
    in_exercises = False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            heads = [line for line in cell.source.splitlines() if line.startswith("## ")]
            if heads:
                in_exercises = heads[-1].lower().startswith("## exercises")
        elif in_exercises and "exercise-setup" in cell.metadata.get("tags", []):
            return True
    return False


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


def write_config(course: Path, exchange: str | None = None) -> None:
    """``nbgrader_config.py``, ``course_hooks.py`` and the feedback template of a course."""
    if exchange:
        line = f"c.Exchange.root = {str(Path(exchange).resolve())!r}"
    else:
        line = (
            f"# c.Exchange.root = '/srv/nbgrader/exchange'  # unset: nbgrader's {DEFAULT_EXCHANGE}"
        )
    (course / "nbgrader_config.py").write_text(CONFIG.format(exchange_line=line))
    shutil.copyfile(Path(__file__).with_name("course_hooks.py"), course / "course_hooks.py")
    template = course / "templates" / "dgm_feedback"
    template.mkdir(parents=True, exist_ok=True)
    (template / "conf.json").write_text('{"base_template": "feedback"}\n')
    # not index.html.j2: this page extends nbgrader's feedback/index.html.j2 (its base template)
    (template / "dgm_feedback.html.j2").write_text(FEEDBACK_TEMPLATE)
    (template / "mathjax.html.j2").write_text(MATHJAX_MACRO)
    if not MATHJAX.is_file():
        raise FileNotFoundError(f"{MATHJAX} is missing: run 'make setup' (it vendors MathJax)")
    shutil.copyfile(MATHJAX, template / MATHJAX.name)


def build(course: Path, only: list[str] | None = None, exchange: str | None = None) -> list[str]:
    """Write ``course/source/<name>/<name>.ipynb`` and release every assignment."""
    course = course.resolve()
    course.mkdir(parents=True, exist_ok=True)
    write_config(course, exchange)
    names = only or chapter_names()
    for name in names:
        nb = nbformat.read(CHAPTERS / f"{name}.ipynb", as_version=4)
        target = course / "source" / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        nbformat.write(extract_assignment(nb), target / f"{name}.ipynb")
        nbgrader(course, "generate_assignment", name, "--force")
    return names


TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f %Z"  # nbgrader's Exchange.timestamp_format
STUDENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")


def collect(course: Path, assignment: str, folder: Path, timestamp: str | None = None) -> list[str]:
    """Gather hand-collected notebooks into ``course/submitted/<student>/<assignment>/``.

    ``folder`` holds either ``<student>.ipynb`` files or ``<student>/`` folders with one notebook
    each (as a learning platform's download gives them). Each submission gets its notebook under
    the assignment's own name and a ``timestamp.txt`` (the file's modification time, in UTC, or
    ``timestamp``) as ``nbgrader collect`` writes it, so late penalties and
    ``nbgrader release_feedback`` work. Returns the student ids.
    """
    course, folder = course.resolve(), folder.resolve()
    names = sorted(p.name for p in (course / "source" / assignment).glob("*.ipynb"))
    if len(names) != 1:
        raise ValueError(
            f"assignment {assignment!r}: expected one notebook in {course / 'source' / assignment}"
            f", found {names}"
        )
    found: list[tuple[str, Path]] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix == ".ipynb":
            found.append((entry.stem, entry))
        elif entry.is_dir() and not entry.name.startswith("."):
            nbs = sorted(p for p in entry.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            if len(nbs) != 1:
                raise ValueError(f"{entry}: expected one notebook, found {len(nbs)}")
            found.append((entry.name, nbs[0]))
    if not found:
        raise ValueError(f"{folder} holds no <student>.ipynb file and no <student>/ folder")
    students = []
    for student, path in found:
        if not STUDENT_ID.fullmatch(student):
            raise ValueError(
                f"{path}: {student!r} is not a usable student id (letters, digits, _ . @ -): "
                "rename the file or folder to the student's id"
            )
        nbformat.read(path, as_version=4)  # refuse a file that is not a notebook
        when = timestamp or datetime.datetime.fromtimestamp(
            path.stat().st_mtime, datetime.timezone.utc
        ).strftime(TIMESTAMP_FORMAT)
        target = course / "submitted" / student / assignment
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shutil.copyfile(path, target / names[0])
        (target / "timestamp.txt").write_text(when)
        # as `nbgrader submit` writes it: release_feedback names the feedback page after it
        (target / "submission_secret.txt").write_text(secrets.token_hex(64))
        students.append(student)
    return students


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build course/source and course/release")
    b.add_argument("course", type=Path, help="the course folder, e.g. course")
    b.add_argument("--only", nargs="*", help="chapter names, e.g. 01_introduction")
    b.add_argument(
        "--exchange", help="the exchange folder (c.Exchange.root), e.g. /srv/nbgrader/exchange"
    )
    k = sub.add_parser("collect", help="gather hand-collected notebooks into course/submitted")
    k.add_argument("course", type=Path, help="the course folder, e.g. course")
    k.add_argument("assignment", help="the assignment, e.g. 03_vae")
    k.add_argument("folder", type=Path, help="<student>.ipynb files or <student>/ folders")
    k.add_argument("--timestamp", help=f"the submission time for all, as {TIMESTAMP_FORMAT!r}")
    args = parser.parse_args()
    if args.command == "collect":
        students = collect(args.course, args.assignment, args.folder, args.timestamp)
        print(f"Collected {args.assignment} of {len(students)} students: {', '.join(students)}")
        return
    names = build(args.course, args.only, args.exchange)
    print(f"Released {len(names)} assignments into {args.course / 'release'}: {', '.join(names)}")


if __name__ == "__main__":
    main()

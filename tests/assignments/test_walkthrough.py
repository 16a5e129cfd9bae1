"""The teacher's guide (book/teachers.md), followed command by command on a fresh copy of a course.

Every shell command this test types is read from the guide's ``bash`` blocks (a command missing
from the guide fails the test, so the two cannot drift); the only changes are the temporary
folders in place of ``/srv/nbgrader/exchange`` and no ``sudo``. In a temporary "clone" it builds
the course elsewhere and copies it (the course must be relocatable), releases ``01_introduction``
through the exchange, collects three submissions (one fetched and submitted through the exchange,
two gathered by hand with the collect helper), autogrades, generates and releases feedback and
exports the grades, and checks that no step logged an error, that the feedback pages show no
hidden test and load no MathJax from a CDN, and that ``grades.csv`` lists only the released
assignment. The autograding time per submission is printed and written to
``artifacts/walkthrough.json``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "book" / "teachers.md"
A = "01_introduction"  # the guide's example assignment (a small chapter: fast to grade)
UNRELEASED = "02_rbm"  # built but never released: must not appear in grades.csv
EXCHANGE = "/srv/nbgrader/exchange"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def _guide_commands() -> list[str]:
    """Every command of the guide's bash blocks, without its trailing comment."""
    out = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


class Shell:
    """Runs the guide's commands (each checked to be in the guide) with the venv activated."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.commands = _guide_commands()
        self.log: list[str] = []

    def guide(self, command: str, cwd: Path, *, extra: str = "") -> str:
        assert command in self.commands, f"the teacher's guide no longer says: {command}"
        command = command.replace(EXCHANGE, str(self.tmp / "exchange"))
        command = re.sub(r"^sudo ", "", command)
        return self.run(f"{command} {extra}".strip(), cwd)

    def run(self, command: str, cwd: Path) -> str:
        activate = shlex.quote(str(ROOT / ".venv" / "bin" / "activate"))
        done = subprocess.run(
            ["bash", "-c", f"set -euo pipefail; source {activate}; {command}"],
            cwd=cwd,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        out = done.stdout + done.stderr
        self.log.append(f"$ {command}\n{out}")
        assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{out[-3000:]}"
        errors = [ln for ln in out.splitlines() if "| ERROR]" in ln or "Traceback" in ln]
        assert not errors, f"{command} logged errors:\n" + "\n".join(errors[:10]) + out[-3000:]
        return out


def _answer(path: Path, source: Path) -> None:
    """Fill the released notebook at ``path`` with the reference solutions."""
    solutions = {
        c.metadata["nbgrader"]["grade_id"]: c.source
        for c in nbformat.read(source, as_version=4).cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in solutions:
            cell.source = solutions[gid]
    nbformat.write(nb, path)


def _hidden_lines(source: Path) -> list[str]:
    lines, inside = [], False
    for cell in nbformat.read(source, as_version=4).cells:
        for line in cell.source.splitlines():
            if "BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "END HIDDEN TESTS" in line:
                inside = False
            elif inside and len(line.strip()) >= 12:
                lines.append(line.strip())
    return lines


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh "clone": the repository's scripts and venv, nothing built."""
    tmp = tmp_path_factory.mktemp("walkthrough")
    for name in ("repo", "elsewhere"):
        (tmp / name).mkdir()
        (tmp / name / "scripts").symlink_to(ROOT / "scripts")
        (tmp / name / ".venv").symlink_to(ROOT / ".venv")
    return tmp


def test_the_guide_walkthrough(clone):
    sh = Shell(clone)
    repo, student = clone / "repo", clone / "student"
    course = repo / "course"
    # 2. the exchange, and a student's config (the guide's python block)
    sh.guide(f"sudo mkdir -p {EXCHANGE}", repo)
    sh.guide(f"sudo chmod ugo+rwx {EXCHANGE}", repo)
    (config,) = [b for b in _blocks("python") if "c.Exchange.root" in b]
    student.mkdir()
    (student / "nbgrader_config.py").write_text(config.replace(EXCHANGE, str(clone / "exchange")))
    # 3. build (two chapters, not eight, to keep it short), somewhere else, then copy the course
    build = f"python scripts/build_course.py build course --exchange {EXCHANGE}"
    sh.guide(build, clone / "elsewhere", extra=f"--only {A} {UNRELEASED}")
    config_text = (clone / "elsewhere" / "course" / "nbgrader_config.py").read_text()
    assert str(clone / "elsewhere") not in config_text, "the course config names its own path"
    shutil.copytree(clone / "elsewhere" / "course", course)
    # 4. release; a student fetches, answers and submits through the exchange
    sh.guide(f"nbgrader release_assignment {A}", course)
    sh.guide(f"nbgrader fetch_assignment {A} --course dgm_edu", student)
    _answer(student / A / f"{A}.ipynb", course / "source" / A / f"{A}.ipynb")
    sh.guide(f"nbgrader submit {A} --course dgm_edu", student)
    # 5. collect: one through the exchange, two by hand (a file and a platform-style folder)
    sh.guide(f"nbgrader collect {A}", course)
    handins = repo / "handins" / A
    (handins / "alice").mkdir(parents=True)
    shutil.copyfile(course / "release" / A / f"{A}.ipynb", handins / "alice" / "my work.ipynb")
    shutil.copyfile(course / "release" / A / f"{A}.ipynb", handins / "bob.ipynb")
    _answer(handins / "bob.ipynb", course / "source" / A / f"{A}.ipynb")
    sh.guide(f"python ../scripts/build_course.py collect . {A} ../handins/{A}", course)
    submitted = sorted(p.name for p in (course / "submitted").iterdir())
    assert len(submitted) == 3 and {"alice", "bob"} <= set(submitted), submitted
    for name in submitted:
        assert (course / "submitted" / name / A / "timestamp.txt").is_file(), name
    # 6. autograde, timed
    start = time.perf_counter()
    sh.guide(f"nbgrader autograde {A}", course)
    per_submission = (time.perf_counter() - start) / len(submitted)
    # 8. feedback; 9. export
    sh.guide(f"nbgrader generate_feedback {A}", course)
    sh.guide(f"nbgrader release_feedback {A}", course)
    sh.guide("nbgrader export", course)

    # the autograded scores (answers graded by hand wait for the teacher): the two reference
    # answers full marks, the blank one zero
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: gb.find_submission(A, s) for s in submitted}
        for name, sub in scores.items():
            expected = 0 if name == "alice" else sub.max_code_score
            assert sub.max_code_score > 0
            assert sub.code_score == expected, f"{name}: {sub.code_score}/{sub.max_code_score}"
    # grades.csv: the released assignment only
    rows = (course / "grades.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in rows[1:]} == {A}, rows
    assert len(rows) == 1 + len(submitted)
    # feedback: three pages, released to the exchange, no hidden test, no CDN, math typeset
    hidden = _hidden_lines(course / "source" / A / f"{A}.ipynb")
    assert hidden
    pages = sorted((course / "feedback").glob(f"*/{A}/{A}.html"))
    assert len(pages) == 3, pages
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert "HIDDEN TESTS" not in html and not [h for h in hidden if h in html], page
        srcs = re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", html)
        assert not [s for s in srcs if "://" in s or s.startswith("//")], (page, srcs)
        assert "window.MathJax" in html and "cdnjs" not in html, page
    released = list((clone / "exchange" / "dgm_edu" / "feedback").glob("*.html"))
    assert len(released) == 3, released
    # the course it was copied from is untouched
    assert not (clone / "elsewhere" / "course" / "submitted").exists()

    _typeset_offline(pages[0])
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "walkthrough.json").write_text(
        json.dumps({"autograde_seconds_per_submission": round(per_submission, 1)}) + "\n"
    )
    print(f"\nautograding {A}: {per_submission:.1f} s per submission")


def test_nbgrader_without_the_venv_on_path(clone, tmp_path):
    """`.venv/bin/nbgrader` on a fresh gradebook, with no venv activated, finds alembic."""
    course = tmp_path / "course"
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import build_course

    course.mkdir()
    build_course.write_config(course)
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "nbgrader"), "db", "student", "list"],
        cwd=course,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "alembic" not in out and "ERROR" not in out, out
    assert (course / "gradebook.db").is_file()


def _typeset_offline(page: Path) -> None:
    """The feedback page in headless Chromium with the network cut: MathJax typesets it."""
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():  # everything else passed: say so rather than skip it all
        warnings.warn("Debian's chromium is not installed: feedback math not checked", stacklevel=2)
        return
    from playwright.sync_api import sync_playwright

    offsite: list[str] = []

    def route(r):
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            offsite.append(r.request.url)
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        tab = browser.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.route("**/*", route)
        tab.goto(page.as_uri(), wait_until="load")
        tab.wait_for_function("() => document.querySelector('mjx-container')", timeout=30_000)
        browser.close()
    assert not offsite and not errors, (offsite, errors)

"""nbgrader hooks of the dgm_edu course. ``scripts/build_course.py`` copies this file into the
course folder, whose ``nbgrader_config.py`` imports it, so a copied or moved course keeps working.

- ``FeedbackWithoutHiddenTests``: the feedback HTML shows each graded test cell without its hidden
  tests, and a failed test as ``ErrorName: message`` only (a traceback would quote the hidden
  line that failed).
- ``configure_feedback``: the feedback HTML typesets its math with the MathJax copied into the
  course (``templates/dgm_feedback/``, inlined in each page, so it works offline and wherever
  the student opens it), never with a CDN.
- ``ReleasedCsvExportPlugin``: ``nbgrader export`` lists only the assignments that were released
  (released through the exchange, or with at least one submission), not every assignment of the
  gradebook as zeros.
"""

from __future__ import annotations

import os
from pathlib import Path

from nbconvert.preprocessors import Preprocessor
from nbgrader.plugins import CsvExportPlugin
from nbgrader.preprocessors import ClearHiddenTests
from traitlets import default

TEMPLATE = "dgm_feedback"
HIDDEN_NOTE = "(the hidden tests of this cell are not shown)"


class FeedbackWithoutHiddenTests(Preprocessor):
    """Strip the hidden tests from graded cells, and the tracebacks from their errors.

    Enabled by default, as nbgrader's own preprocessors are.
    """

    @default("enabled")
    def _enabled_default(self) -> bool:
        return True

    def preprocess_cell(self, cell, resources, index):
        nbgrader = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not nbgrader.get("grade") or nbgrader.get("solution"):
            return cell, resources
        had_hidden = "BEGIN HIDDEN TESTS" in cell.source
        ClearHiddenTests(enforce_metadata=False).preprocess_cell(cell, resources, index)
        if had_hidden:
            cell.source = cell.source.rstrip("\n") + f"\n# {HIDDEN_NOTE}"
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"]
        return cell, resources


def configure_feedback(c, course: str) -> None:
    """Feedback through the course's own template (vendored MathJax) and without hidden tests."""
    import nbgrader
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import GetGrades

    templates = Path(nbgrader.__file__).parent / "server_extensions" / "formgrader" / "templates"
    c.HTMLExporter.template_name = TEMPLATE  # its conf.json: base_template "feedback"
    c.HTMLExporter.template_file = f"{TEMPLATE}.html.j2"
    c.HTMLExporter.extra_template_basedirs = [os.path.join(course, "templates"), str(templates)]
    c.GenerateFeedback.preprocessors = [
        GetGrades,
        CSSHTMLHeaderPreprocessor,
        FeedbackWithoutHiddenTests,
    ]


class ReleasedCsvExportPlugin(CsvExportPlugin):
    """CSV export of the released assignments only (``--assignment`` still chooses others)."""

    def released(self, gradebook) -> list[str]:
        cfg = self.config
        root = cfg.Exchange.get("root", "/usr/local/share/nbgrader/exchange")
        course_id = cfg.CourseDirectory.get("course_id", "")
        outbound = Path(root) / course_id / "outbound"
        names = []
        for assignment in gradebook.assignments:
            if (outbound / assignment.name).is_dir() or assignment.submissions:
                names.append(assignment.name)
        return names

    def export(self, gradebook) -> None:
        if not self.assignment:
            released = self.released(gradebook)
            self.log.info("Exporting the released assignments: %s", released or "none")
            # an empty list would mean "all": a name no assignment has exports none
            self.assignment = released or ["<none released>"]
        super().export(gradebook)

"""The chapter map (README, book/index.md, book/_toc.yml) is generated from the chapters' front
matter: it is current, and a chapter that does not carry its entry is refused by name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import chapter_map  # noqa: E402

GOOD = """---
dgm_edu:
  modules: [dgm_edu/rbm.py]
  part: The families
  summary: energies
---

# 2. Restricted Boltzmann machines
"""


def test_the_committed_map_is_current():
    assert chapter_map.main(["--check"]) == 0, "run 'python scripts/chapter_map.py' and commit"


def test_every_chapter_is_in_the_toc_the_readme_and_the_index():
    chapters = chapter_map.chapters()
    numbers = [c.number for c in chapters]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1
    toc = chapter_map.TOC.read_text()
    readme = chapter_map.README.read_text()
    index = chapter_map.INDEX.read_text()
    for c in chapters:
        assert f"- file: chapters/{c.stem}\n" in toc
        assert f"| {c.number} | [{c.title}](chapters/{c.stem}.md) |" in readme
        assert f"| {c.number} | [{c.title}](chapters/{c.stem}.ipynb) | {c.summary} |" in index


def test_a_chapter_entry_is_read_from_its_front_matter(tmp_path):
    path = tmp_path / "02_rbm.md"
    path.write_text(GOOD)
    c = chapter_map.read_chapter(path)
    assert (c.number, c.stem, c.title, c.part) == (2, "02_rbm", "Restricted Boltzmann machines",
                                                   "The families")  # fmt: skip
    assert c.modules == ("dgm_edu/rbm.py",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("  part: The families\n", ""), "expected a 'dgm_edu' block with part"),
        (GOOD.replace("# 2.", "# 3."), "its heading says chapter 3"),
        (GOOD.replace("rbm.py]", "nope.py]"), "module dgm_edu/nope.py does not exist"),
        (GOOD.replace("# 2. ", "# "), "expected a first heading '# N. Title'"),
        (GOOD.split("---\n", 2)[2], "expected MyST front matter"),
    ],
)
def test_a_chapter_without_its_entry_is_refused_by_name(tmp_path, text, message):
    path = tmp_path / "02_rbm.md"
    path.write_text(text)
    with pytest.raises(ValueError, match="02_rbm.md: " + message.replace("(", r"\(")):
        chapter_map.read_chapter(path)


def test_a_stale_table_is_reported(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(chapter_map.README.read_text().replace("| 2 | [", "| 2 | [Old "))
    monkeypatch.setattr(chapter_map, "README", readme)
    assert chapter_map.main(["--check"]) == 1
    assert "The chapter map is stale" in capsys.readouterr().out


def test_every_library_module_is_documented_in_the_api_page():
    api = (ROOT / "book" / "api.md").read_text()
    modules = sorted(p.stem for p in (ROOT / "dgm_edu").glob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if f".. automodule:: dgm_edu.{m}\n" not in api]
    assert not missing, f"book/api.md has no automodule entry for {missing}"


def test_chapters_sharing_a_number_are_refused(tmp_path, monkeypatch):
    for stem in ("01_a", "02_b", "02_c"):
        (tmp_path / f"{stem}.md").write_text(
            f"---\ndgm_edu: {{part: P, summary: s, modules: []}}\n---\n\n# {int(stem[:2])}. Title\n"
        )
    monkeypatch.setattr(chapter_map, "CHAPTERS", tmp_path)
    with pytest.raises(ValueError, match="distinct numbers"):
        chapter_map.chapters()

"""Every notebook carries what learners and instructors need (issues 17, 18): an Open-in-Colab badge for
course_lib.REPOSITORY, slide types on every cell with speaker notes and no overfull slide, exercises whose
checkers exist and whose hidden solutions call them, a quiz, generated takeaways, links and references."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import badges  # noqa: E402
import slidify  # noqa: E402

from course_lib import exercises  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MIN_NOTES = 3


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.stem[:2])
def nb(request):
    return request.param, nbformat.read(request.param, as_version=4)


def _text(nb):
    return "\n".join(c.source for c in nb.cells)


def test_colab_badge_and_setup_cell_point_at_the_repository(nb):
    path, book = nb
    assert not badges.problems(book, path.name, badges.repository()), badges.problems(book, path.name, badges.repository())


def test_slides_and_speaker_notes(nb):
    path, _ = nb
    r = slidify.report(path)
    assert r["untyped"] == 0, f"{path.name}: {r['untyped']} cells without a slide type (run tools/slidify.py)"
    assert r["slides"] >= 5, f"{path.name}: only {r['slides']} slides"
    assert r["notes"] >= MIN_NOTES, f"{path.name}: {r['notes']} speaker-note cells, need >= {MIN_NOTES}"
    assert not r["too_tall"], f"{path.name}: slides taller than {slidify.MAX_LINES} lines: {r['too_tall']}"


def test_exercises_have_checkers_and_hidden_solutions(nb):
    path, book = nb
    num = path.name[:2]
    text = _text(book)
    ids = sorted(set(re.findall(rf'check\("({num}\.\d+)"', text)))
    assert ids, f"{path.name}: no exercise calls check('{num}.k', ...)"
    known = exercises.registered()
    for eid in ids:
        assert eid in known, f"{path.name}: exercise {eid} has no checker in course_lib/exercises/nb{num}.py"
    solved = set()
    for c in book.cells:
        if c.cell_type == "code" and "solution" in c.metadata.get("tags", []):
            assert c.metadata.get("jupyter", {}).get("source_hidden"), f"{path.name}: a solution cell is not hidden"
            solved |= set(re.findall(rf'assert check\("({num}\.\d+)"', c.source))
    assert solved == set(ids), f"{path.name}: exercises without a solution cell: {sorted(set(ids) - solved)}"
    registered_here = {e for e in known if e.startswith(num + ".")}
    assert registered_here <= set(ids), f"{path.name}: checkers never used: {sorted(registered_here - set(ids))}"


def test_quiz_takeaways_links_and_references(nb):
    path, book = nb
    text = _text(book)
    assert "quiz(" in text, f"{path.name}: no check-your-understanding quiz"
    assert "takeaways" in text.lower(), f"{path.name}: no key takeaways"
    take = [c for c in book.cells if "takeaways" in c.source.lower()]
    assert any(c.cell_type == "code" for c in take), f"{path.name}: takeaways must be generated from results (a code cell)"
    assert re.search(r"\]\(https?://", text), f"{path.name}: no clickable links"
    assert any(c.cell_type == "markdown" and c.source.lstrip().startswith("## References") for c in book.cells), \
        f"{path.name}: no '## References' cell"


def test_no_getsource_and_outputs_are_clean(nb):
    path, book = nb
    for c in book.cells:
        if c.cell_type != "code":
            continue
        for o in c.get("outputs", []):
            assert o.get("output_type") != "error", f"{path.name}: a committed error output"
            if o.get("name") == "stderr":
                assert "Warning" not in o.get("text", ""), f"{path.name}: a stray warning in a committed output:\n{o['text'][:300]}"

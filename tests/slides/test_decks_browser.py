"""The built slide decks in a real browser (headless Chromium), with the network blocked.

Builds the decks (tools/build_slides.py, offline once slides/node_modules exists), opens each in Debian's
``chromium`` through Playwright, and checks: reveal.js initialised, the number of slides matches the
notebook's slide metadata, speaker notes exist, and no request left the machine. Screenshots of the title
slide and of a result slide go to ``$SLIDES_ARTIFACTS`` (default ``slides/build/screenshots``), not git.
Skipped when Chromium or Playwright is missing, except under CI (``CI=true``), where it fails.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "slides" / "build"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _need(cond: bool, why: str):
    if not cond:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why + " (CI installs it in .ci/run)")
        pytest.skip(why)


@pytest.fixture(scope="module")
def decks():
    _need(CHROMIUM is not None, "Debian's chromium is not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need(False, "the Python package playwright is not installed")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_slides.py")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"make slides failed:\n{r.stdout}\n{r.stderr}"
    return json.loads((BUILD / "decks.json").read_text())["decks"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _open(browser, deck: str):
    """Open a deck with every non-file request aborted; returns (page, list of blocked URLs)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    blocked: list[str] = []

    def route(r):
        if r.request.url.startswith(("file://", "data:", "about:")):
            return r.continue_()
        blocked.append(r.request.url)
        return r.abort()

    ctx.route("**/*", route)
    page = ctx.new_page()
    page.goto((BUILD / deck).as_uri())
    page.wait_for_function("typeof Reveal !== 'undefined' && Reveal.isReady && Reveal.isReady()", timeout=30_000)
    return page, blocked


def test_no_remote_references_in_built_html(decks):
    for d in decks:
        assert not d["remote_refs"], f"{d['deck']} loads remote files: {d['remote_refs']}"


def test_every_deck_initialises_offline_with_slides_and_notes(decks, browser):
    art = Path(os.environ.get("SLIDES_ARTIFACTS", BUILD / "screenshots"))
    art.mkdir(parents=True, exist_ok=True)
    for d in decks:
        page, blocked = _open(browser, d["deck"])
        total = page.evaluate("Reveal.getTotalSlides()")
        horizontal = page.evaluate("Reveal.getHorizontalSlides().length")
        notes = page.evaluate("document.querySelectorAll('aside.notes').length")
        assert blocked == [], f"{d['deck']} tried to reach the network: {blocked[:5]}"
        assert total >= d["slides"] >= 1 and horizontal >= 1, (d["deck"], total, d["slides"])
        assert notes == d["notes"], f"{d['deck']}: {notes} speaker notes in the page, {d['notes']} note cells"
        if d["deck"].startswith("04_"):
            page.screenshot(path=str(art / "title_slide.png"))
            # a result slide: the first slide that shows a plot
            idx = page.evaluate("""() => { const s = Reveal.getSlides();
                 for (let i = 0; i < s.length; i++) { if (s[i].querySelector('img')) return i; } return -1; }""")
            if idx >= 0:
                page.evaluate(f"Reveal.slide(...Object.values(Reveal.getIndices(Reveal.getSlides()[{idx}])))")
                page.wait_for_timeout(400)
                page.screenshot(path=str(art / "result_slide.png"))
        page.context.close()


def test_tall_code_and_outputs_scroll_inside_the_slide(decks, browser):
    """Code inputs and output boxes are capped below the slide height, measured on the slide with the
    tallest code cell of deck 04 (the diagram cell). The first caps were in em of the deck's 42 px base
    font (22em = 924 px) and on the editor, a table cell that ignores max-height, so a long cell ran off the slide."""
    deck = next(d["deck"] for d in decks if d["deck"].startswith("04_"))
    page, _ = _open(browser, deck)
    slide_h = page.evaluate("Reveal.getConfig().height")
    idx = page.evaluate("""() => { const s = Reveal.getSlides(); let best = -1, n = 0;
         s.forEach((el, i) => el.querySelectorAll('.jp-InputArea-editor').forEach(e => {
             const k = e.textContent.split('\\n').length; if (k > n) { n = k; best = i; } })); return best; }""")
    assert idx >= 0
    page.evaluate(f"Reveal.slide(...Object.values(Reveal.getIndices(Reveal.getSlides()[{idx}])))")
    page.wait_for_timeout(400)
    boxes = page.evaluate(f"""() => [...Reveal.getSlides()[{idx}].querySelectorAll('.jp-InputArea-editor .highlight, .jp-Cell-outputWrapper')]
         .map(e => ({{cls: e.className, h: e.offsetHeight, full: e.scrollHeight}}))""")
    page.context.close()
    assert boxes and any(b["full"] > b["h"] for b in boxes), f"the tallest code cell of {deck} is not capped: {boxes}"
    for b in boxes:
        assert b["h"] <= 0.65 * slide_h, f"{deck}: a {b['cls']} box is {b['h']} px tall on a {slide_h} px slide"

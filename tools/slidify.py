#!/usr/bin/env python
"""Give every notebook cell a slide type (reveal.js via nbconvert / RISE) and report slide heights.

    python tools/slidify.py notebooks            # fill in missing slide types, in place
    python tools/slidify.py --check notebooks    # only report (what tests/slides/test_slide_metadata.py checks)

Rules, applied only to cells that have no ``slideshow.slide_type`` yet (an author's choice is kept):
``#``/``##`` headings start a slide, ``###`` a sub-slide; the Colab/pip setup cell and cells tagged
``solution`` are skipped (solutions are for learners, not the projector); a cell with a plot starts a
sub-slide; any cell that would push the current slide past :data:`MAX_LINES` starts a sub-slide.
Speaker notes are markdown cells of type ``notes`` written by the authors. Heights are estimated in
rendered lines: markdown wrapped at 100 characters, code lines, text outputs (the deck caps each
output block at :data:`OUTPUT_LINES` lines, a cell's outputs at :data:`OUTPUTS_TOTAL` and its code at
:data:`CODE_LINES`, and scrolls the rest), and :data:`IMAGE_LINES` per image.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

MAX_LINES = 44
OUTPUT_LINES = 12      # one text output block (the deck scrolls longer ones)
OUTPUTS_TOTAL = 18     # all outputs of one cell (the deck's output area scrolls beyond this)
CODE_LINES = 20        # the code of one cell (the deck's input area scrolls beyond this)
IMAGE_LINES = 16
WRAP = 100


def slide_type(cell) -> str | None:
    return cell.get("metadata", {}).get("slideshow", {}).get("slide_type")


_BADGE = re.compile(r"^\[!\[[^\]]*\]\([^)]*\)\]\([^)]*\)\s*$")


def _md_lines(text: str) -> int:
    """Rendered lines of markdown: long lines wrap at WRAP characters; a badge (an image link) is one line."""
    return sum(1 if _BADGE.match(ln) else max(1, math.ceil(len(ln) / WRAP)) for ln in text.splitlines())


def height(cell) -> int:
    """Estimated rendered height of a cell on a slide, in lines."""
    if cell.cell_type == "markdown":
        return _md_lines(cell.source)
    h = min(len(cell.source.splitlines()), CODE_LINES)
    h_out = 0
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        if "image/png" in data or "image/svg+xml" in data:
            h_out += IMAGE_LINES
        text = out.get("text") or data.get("text/plain", "") if not data.get("text/html") else data.get("text/html", "")
        if isinstance(text, list):
            text = "".join(text)
        if text and "image/png" not in data:
            n = len(text.splitlines()) if not data.get("text/html") else min(text.count("<tr"), OUTPUT_LINES) + 1
            h_out += min(n, OUTPUT_LINES)
    return h + min(h_out, OUTPUTS_TOTAL)


def is_setup(cell) -> bool:
    s = cell.source
    return cell.cell_type == "code" and ("pip install" in s or "COURSE_REPO" in s or "google.colab" in s)


def assign(nb) -> int:
    """Fill in missing slide types; returns the number of cells changed."""
    changed = 0
    current = 0
    for i, cell in enumerate(nb.cells):
        st = slide_type(cell)
        if st is None:
            tags = cell.get("metadata", {}).get("tags", [])
            src = cell.source.lstrip()
            has_img = any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
            if i == 0 or (cell.cell_type == "markdown" and (src.startswith("# ") or src.startswith("## "))):
                st = "slide"
            elif cell.cell_type == "markdown" and src.startswith("### "):
                st = "subslide"
            elif is_setup(cell) or "solution" in tags:
                st = "skip"
            elif has_img and current > 8:
                st = "subslide"
            elif current + height(cell) > MAX_LINES and current > 0:
                st = "subslide"
            else:
                st = "-"
            cell.setdefault("metadata", {}).setdefault("slideshow", {})["slide_type"] = st
            changed += 1
        if st in ("slide", "subslide"):
            current = height(cell)
        elif st in ("-", "fragment"):
            current += height(cell)
    return changed


def slides(nb) -> list[dict]:
    """The slides of a notebook: ``{"first_cell", "cells", "lines"}`` (skip and notes cells excluded)."""
    out: list[dict] = []
    for i, cell in enumerate(nb.cells):
        st = slide_type(cell) or "-"
        if st in ("skip", "notes"):
            continue
        if st in ("slide", "subslide") or not out:
            out.append({"first_cell": i, "cells": 0, "lines": 0})
        out[-1]["cells"] += 1
        out[-1]["lines"] += height(cell)
    return out


def report(path: Path) -> dict:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    sl = slides(nb)
    return {
        "notebook": path.name,
        "slides": len(sl),
        "notes": sum(slide_type(c) == "notes" for c in nb.cells),
        "untyped": sum(slide_type(c) is None for c in nb.cells),
        "too_tall": [s for s in sl if s["lines"] > MAX_LINES],
    }


def main(argv=None) -> int:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--check", action="store_true", help="report only, change nothing")
    args = ap.parse_args(argv)
    files = []
    for p in map(Path, args.paths):
        files += sorted(p.glob("[0-9][0-9]_*.ipynb")) if p.is_dir() else [p]
    bad = 0
    for f in files:
        if not args.check:
            nb = nbformat.read(f, as_version=4)
            if assign(nb):
                nbformat.write(nb, f)
        r = report(f)
        tall = ", ".join(f"cell {s['first_cell']} ({s['lines']} lines)" for s in r["too_tall"])
        print(f"{r['notebook']:<44} {r['slides']:>3} slides {r['notes']:>3} notes {r['untyped']:>3} untyped"
              + (f"  too tall: {tall}" if tall else ""))
        bad += bool(r["too_tall"] or r["untyped"] or not r["notes"])
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())

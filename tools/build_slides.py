#!/usr/bin/env python
"""Build one offline reveal.js deck per notebook, plus an index page, into slides/build/.

    python tools/build_slides.py                      # every notebooks/NN_*.ipynb
    python tools/build_slides.py notebooks/03_*.ipynb # some of them

Nothing is loaded from a CDN: reveal.js, MathJax 2, require.js and jQuery come from the pinned npm
packages in slides/package.json (installed into slides/node_modules by `npm ci`, or `npm install`
when there is no lock file), copied (MathJax: linked) into slides/build/vendor/, and the deck's
HTML points at those local files. Images are embedded in the HTML (data URIs) by nbconvert. The
deck uses each cell's ``slideshow.slide_type`` metadata (slide / subslide / fragment / skip /
notes); cells of type ``notes`` become reveal.js speaker notes (press ``s`` in the deck).
Prints slide and note counts per deck and the build time; writes slides/build/decks.json.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLIDES = ROOT / "slides"
BUILD = SLIDES / "build"
VENDOR = BUILD / "vendor"
NODE = SLIDES / "node_modules"

BADGE_LINE = re.compile(r"^\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)[ \t]*\n?", re.M)

#: what each deck loads, relative to slides/build/
LOCAL = {
    "reveal_url_prefix": "vendor/reveal.js",
    "reveal_theme": "white",  # its fonts ship with reveal.js (the "simple" theme loads web fonts)
    "require_js_url": "vendor/requirejs/require.js",
    "jquery_url": "vendor/jquery/dist/jquery.min.js",
    "mathjax_url": "vendor/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe",
}


def ensure_vendor() -> None:
    """Install the pinned front-end packages (once) and lay them out under slides/build/vendor."""
    if not (NODE / "reveal.js" / "dist" / "reveal.js").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is needed once to fetch the pinned reveal.js/MathJax packages (slides/package.json); "
                             "install Node.js (e.g. apt-get install nodejs npm) and run `make slides` again")
        cmd = [npm, "ci" if (SLIDES / "package-lock.json").exists() else "install", "--no-audit", "--no-fund"]
        subprocess.run(cmd, cwd=SLIDES, check=True)
    VENDOR.mkdir(parents=True, exist_ok=True)
    for pkg, parts in (("reveal.js", ("dist", "plugin")), ("requirejs", ("require.js",)), ("jquery", ("dist",))):
        for part in parts:
            src, dst = NODE / pkg / part, VENDOR / pkg / part
            if dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    mj = VENDOR / "mathjax"
    if not mj.exists():  # 70 MB of fonts: link rather than copy
        mj.symlink_to(NODE / "mathjax", target_is_directory=True)


def collect(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths or [str(ROOT / "notebooks")]):
        if p.is_dir():
            out.extend(sorted(p.glob("[0-9][0-9]_*.ipynb")))
        elif p.suffix == ".ipynb" and p.exists():
            out.append(p)
        else:
            raise SystemExit(f"not a notebook or folder: {p}")
    return out


def deck_stats(nb) -> dict:
    """Slides (top-level ``slide`` + ``subslide``), fragments and speaker-note cells of a notebook."""
    kinds = [c.get("metadata", {}).get("slideshow", {}).get("slide_type", "-") for c in nb.cells]
    return {
        "slides": max(1, sum(k in ("slide", "subslide") for k in kinds)),
        "fragments": sum(k == "fragment" for k in kinds),
        "notes": sum(k == "notes" for k in kinds),
        "skipped": sum(k == "skip" for k in kinds),
        "cells": len(kinds),
    }


def title_of(nb, path: Path) -> str:
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", c.source, flags=re.M)
            if m:
                return m.group(1).strip()
    return path.stem


def build_one(path: Path) -> dict:
    import nbformat
    from nbconvert import SlidesExporter

    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:  # the Open-in-Colab badge is a remote image and means nothing on a slide
        if c.cell_type == "markdown" and "colab-badge.svg" in c.source:
            c.source = BADGE_LINE.sub("", c.source).lstrip("\n")
    exporter = SlidesExporter(extra_template_basedirs=[str(SLIDES)], template_name="template", **LOCAL)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    # resources the page would load (links a reader may click are fine)
    remote = sorted(set(re.findall(r"""<(?:script|img|link|iframe|source|video|audio|embed)\b[^>]*?\b(?:src|href)=["']((?:https?:)?//[^"']+)""", body)))
    remote += sorted(set(re.findall(r"""@import\s+(?:url\()?["']?((?:https?:)?//[^"')]+)""", body)))
    out = BUILD / f"{path.stem}.slides.html"
    out.write_text(body, encoding="utf-8")
    return {"notebook": path.name, "deck": out.name, "title": title_of(nb, path), "remote_refs": remote,
            **deck_stats(nb)}


def write_index(decks: list[dict]) -> Path:
    rows = "\n".join(
        f'<li><a href="{html.escape(d["deck"])}">{html.escape(d["notebook"][:2])} · {html.escape(d["title"])}</a>'
        f' <span class="n">{d["slides"]} slides, {d["notes"]} speaker notes</span></li>' for d in decks)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Foundation models for medical imaging: slide decks</title>
<style>body{{font-family:sans-serif;max-width:48em;margin:2em auto;line-height:1.5}} .n{{color:#666;font-size:90%}}</style>
</head><body>
<h1>Foundation models for medical imaging, hands-on: slide decks</h1>
<p>One deck per notebook, built offline from the committed notebooks. Press <kbd>s</kbd> in a deck for the speaker
view (notes), <kbd>f</kbd> for full screen, <kbd>Esc</kbd> for the overview. The teaching plan is in
<code>slides/INSTRUCTOR.md</code>.</p>
<ol>
{rows}
</ol></body></html>
"""
    out = BUILD / "index.html"
    out.write_text(page, encoding="utf-8")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help="notebooks or folders (default: notebooks/)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    BUILD.mkdir(parents=True, exist_ok=True)
    ensure_vendor()
    decks = []
    for path in collect(args.paths):
        d = build_one(path)
        decks.append(d)
        flag = f"  REMOTE REFERENCES: {d['remote_refs']}" if d["remote_refs"] else ""
        print(f"{d['deck']:<48} {d['slides']:>3} slides {d['notes']:>3} notes{flag}")
    write_index(decks)
    seconds = time.perf_counter() - t0
    (BUILD / "decks.json").write_text(json.dumps({"seconds": round(seconds, 1), "decks": decks}, indent=1))
    print(f"built {len(decks)} decks + index.html into {BUILD.relative_to(ROOT)} in {seconds:.1f} s")
    return 1 if any(d["remote_refs"] for d in decks) else 0


if __name__ == "__main__":
    sys.exit(main())

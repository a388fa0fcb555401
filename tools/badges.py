#!/usr/bin/env python
"""Put an "Open in Colab" badge at the top of every notebook and point each setup cell at the repository.

    python tools/badges.py            # rewrite notebooks/NN_*.ipynb in place
    python tools/badges.py --check    # exit 1 if any notebook disagrees with course_lib.REPOSITORY

The one source is ``course_lib.REPOSITORY`` ("owner/name"): a fork changes that line and runs this tool.
The badge is the first line of each notebook's first (title) cell; the setup cell's default
``COURSE_REPO`` URL is rewritten to the same repository. Only those two places are touched.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BADGE_RE = re.compile(r"^\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]\([^)]*\)\n*")
URL_RE = re.compile(r'(COURSE_REPO", ")https://github\.com/[^"]+(")')


def repository() -> str:
    import course_lib

    return course_lib.REPOSITORY


def badge(repo: str, notebook: str) -> str:
    url = f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{notebook}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})\n\n"


def apply(nb, name: str, repo: str) -> bool:
    changed = False
    first = nb.cells[0]
    want = badge(repo, name)
    new = want + BADGE_RE.sub("", first.source)
    if first.cell_type == "markdown" and new != first.source:
        first.source, changed = new, True
    for c in nb.cells:
        if c.cell_type == "code" and "COURSE_REPO" in c.source:
            src = URL_RE.sub(rf"\g<1>https://github.com/{repo}\g<2>", c.source)
            if src != c.source:
                c.source, changed = src, True
    return changed


def problems(nb, name: str, repo: str) -> list[str]:
    out = []
    if not nb.cells or nb.cells[0].cell_type != "markdown" or not nb.cells[0].source.startswith(badge(repo, name)):
        out.append("the first cell does not start with the Open-in-Colab badge for course_lib.REPOSITORY")
    setup = [c for c in nb.cells if c.cell_type == "code" and "COURSE_REPO" in c.source]
    if not setup:
        out.append("no setup cell with COURSE_REPO")
    for c in setup:
        if f'COURSE_REPO", "https://github.com/{repo}"' not in c.source:
            out.append("the setup cell clones another repository than course_lib.REPOSITORY")
    return out


def main(argv=None) -> int:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    repo, bad = repository(), 0
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if args.check:
            for p in problems(nb, path.name, repo):
                print(f"{path.name}: {p}")
                bad += 1
        elif apply(nb, path.name, repo):
            nbformat.write(nb, path)
            print(f"updated {path.name}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

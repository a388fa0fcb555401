#!/usr/bin/env python
"""Fill the README's notebook-map time columns from the measurement files, never by hand.

    python tools/readme_times.py            # rewrite README.md's "CPU quick" and "GPU full" columns
    python tools/readme_times.py --check    # exit 1 if README.md disagrees with the files (a test runs this)

Sources: ``benchmarks/course_times.json`` (``make course``: each notebook's seconds, their sum and the wall
time with the number of parallel jobs) and ``benchmarks/gpu_times.json`` (``make gpu-check``: wall time,
peak GPU memory and pass/fail per notebook; absent until a GPU run exists, then the column says "–").
A notebook over the 90 s budget is marked ⚠.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COURSE = ROOT / "benchmarks" / "course_times.json"
GPU = ROOT / "benchmarks" / "gpu_times.json"
BUDGET_S = 90.0
ROW = re.compile(r"^\| (\d\d) \| \[`(\d\d_[^`]+)`\]")
TOTAL = re.compile(r"^\| \| \*\*whole course\*\*")


def _cells(line: str) -> list[str]:
    return line.rstrip("\n").split("|")[1:-1]


def gpu_cell(name: str, gpu: dict) -> str:
    row = gpu.get("notebooks", {}).get(f"{name}.ipynb")
    if not row:
        return "–"
    if row.get("status") != "pass":
        return f"{row.get('status', 'fail')}"
    mem = row.get("peak_gpu_mib")
    return f"{row['wall_s']:.0f} s" + (f", {mem / 1024:.1f} GiB" if mem else "")


def render(text: str, course: dict, gpu: dict) -> str:
    times = course.get("notebooks", {})
    out = []
    for line in text.splitlines(keepends=True):
        m = ROW.match(line)
        if m:
            cells = _cells(line)
            sec = times.get(f"{m.group(2)}.ipynb")
            cells[4] = f" {sec:.0f} s{' ⚠' if sec > BUDGET_S else ''} " if sec is not None else " – "
            cells[5] = f" {gpu_cell(m.group(2), gpu)} "
            line = "|" + "|".join(cells) + "|\n"
        elif TOTAL.match(line):
            cells = _cells(line)
            total = course.get("sum_seconds", course.get("total_seconds"))
            wall, jobs = course.get("wall_seconds"), course.get("jobs", 1)
            txt = f"**{total:.0f} s** in sequence ({total / 60:.1f} min)" if total is not None else "–"
            if wall is not None and jobs > 1:
                txt += f"; {wall:.0f} s wall with `JOBS={jobs}`"
            cells[4] = f" {txt} "
            g = [r["wall_s"] for r in gpu.get("notebooks", {}).values() if r.get("status") == "pass"]
            cells[5] = f" {sum(g):.0f} s " if g else " "
            line = "|" + "|".join(cells) + "|\n"
        out.append(line)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is stale")
    args = ap.parse_args(argv)
    course = json.loads(COURSE.read_text()) if COURSE.exists() else {}
    gpu = json.loads(GPU.read_text()) if GPU.exists() else {}
    old = README.read_text()
    new = render(old, course, gpu)
    if args.check:
        if new != old:
            print("README.md's notebook-map times differ from benchmarks/*.json: run python tools/readme_times.py")
            return 1
        print("README.md's notebook-map times match benchmarks/course_times.json" + (" and gpu_times.json" if gpu else ""))
        return 0
    README.write_text(new)
    print("README.md notebook map updated from benchmarks/course_times.json" + (" and gpu_times.json" if gpu else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

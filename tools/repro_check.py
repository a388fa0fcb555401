#!/usr/bin/env python
"""Reproducibility check: execute a notebook twice and diff its text outputs.

    python tools/repro_check.py notebooks/00_welcome_and_setup.ipynb     # same settings twice: must be identical
    python tools/repro_check.py notebooks                                # every notebook (make repro)
    python tools/repro_check.py --threads 1 2 notebooks/03_*.ipynb       # 1 vs 2 torch threads, within tolerance

What is compared: for every code cell, its stdout and its text results (``text/markdown`` — the
generated prose —, else ``text/html`` tables, else ``text/plain``), after the sanitising
regexes of ``tests/nbval_sanitize.cfg`` (timings, devices, addresses, progress bars, paths)
have been applied. stderr (warnings, progress bars) and images are not compared. Cells tagged ``timing``
(their outputs report wall-clock measurements: speed-ups, seconds per step) are compared with every number
masked: their text must match, their numbers cannot.

Tolerance: with the same settings twice, outputs must be identical (``--rtol 0 --atol 0``).
With ``--threads A B`` the kernels get ``COURSE_THREADS``/``OMP_NUM_THREADS`` A and B; reductions
then sum in a different order, so numbers are compared within ``|a - b| <= atol + rtol*|b|``
(defaults ``--rtol 0.02 --atol 0.011``: about one unit in the second decimal of a printed
Dice/accuracy); the text around the numbers must match exactly. Every differing cell is printed
with its first differing line and its largest numeric deviation. Exit code 1 if any notebook differs
or fails.
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_course as rc  # noqa: E402

ROOT = rc.ROOT
SANITIZE_CFG = ROOT / "tests" / "nbval_sanitize.cfg"
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
TEXT_MIMES = ("text/markdown", "text/html", "text/plain")  # the richest text a reader sees
#: cell tag of outputs that report wall-clock measurements (speed-ups, seconds per step): compared without numbers
TIMING_TAG = "timing"


def load_sanitizers(path: Path = SANITIZE_CFG) -> list[tuple[re.Pattern, str]]:
    """The (regex, replacement) pairs of an nbval sanitize file, in file order."""
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(path)
    return [(re.compile(cp[s]["regex"]), cp[s]["replace"]) for s in cp.sections()]


def sanitize(text: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for rx, rep in rules:
        text = rx.sub(rep, text)
    return text


def cell_texts(nb, rules) -> dict[int, str]:
    """Sanitised text output of every code cell, keyed by cell index."""
    out: dict[int, str] = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        parts = []
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stdout":
                parts.append(str(o.get("text", "")))
            elif o.get("output_type") in ("execute_result", "display_data"):
                data = o.get("data", {})
                for mime in TEXT_MIMES:
                    if mime in data:
                        text = data[mime]
                        parts.append(text if isinstance(text, str) else "".join(text))
                        break
            elif o.get("output_type") == "error":
                parts.append(f"ERROR {o.get('ename')}: {o.get('evalue')}")
        # object reprs like <Figure size 1200x840 with 36 Axes> are identical between runs; keep them
        text = sanitize("".join(parts), rules)
        if TIMING_TAG in cell.get("metadata", {}).get("tags", []):
            text = NUMBER.sub("#", text)  # wall-clock measurements: the text must match, the numbers cannot
        out[i] = text
    return out


def compare_text(a: str, b: str, rtol: float, atol: float) -> tuple[bool, float, str]:
    """(equal within tolerance, largest numeric deviation, first differing line pair)."""
    if a == b:
        return True, 0.0, ""
    first = ""
    for la, lb in zip(a.splitlines(), b.splitlines()):
        if la != lb:
            k = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
            lo = max(0, k - 60)
            first = f"run 1: ...{la[lo:k + 100]}\n      run 2: ...{lb[lo:k + 100]}"
            break
    if not first:
        first = f"run 1 has {len(a.splitlines())} lines, run 2 has {len(b.splitlines())}"
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False, float("inf"), first
    worst, ok = 0.0, True
    for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
        fx, fy = float(x), float(y)
        dev = abs(fx - fy)
        worst = max(worst, dev)
        if dev > atol + rtol * abs(fy):
            ok = False
    return ok, worst, first


def check(path: Path, *, envs: tuple[dict, dict], rtol: float, atol: float, cell_timeout: int,
          notebook_cap: float, rules) -> dict:
    runs = []
    nb = nbformat.read(path, as_version=4)  # read once: both runs execute the same source
    for env in envs:
        res = rc.execute(path, cell_timeout=cell_timeout, notebook_cap=notebook_cap, env=env, nb=nb)
        if not res.ok:
            return dict(notebook=path.name, ok=False, error=res.error, differing=[])
        runs.append((res, cell_texts(res.nb, rules)))
    (r1, t1), (r2, t2) = runs
    differing, overall, cells_not_identical = [], 0.0, 0
    for i in sorted(set(t1) | set(t2)):
        same, worst, first = compare_text(t1.get(i, ""), t2.get(i, ""), rtol, atol)
        cells_not_identical += t1.get(i, "") != t2.get(i, "")
        overall = max(overall, worst)
        if not same:
            differing.append(dict(cell=i, max_deviation=worst, first=first))
    return dict(notebook=path.name, ok=not differing, cells_compared=len(t1), differing=differing,
                cells_not_identical=cells_not_identical, max_deviation=overall,
                seconds=[round(r1.seconds, 1), round(r2.seconds, 1)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--threads", nargs=2, type=int, metavar=("A", "B"),
                    help="run 1 with A torch threads, run 2 with B (default: the same settings twice)")
    ap.add_argument("--rtol", type=float, default=None, help="relative tolerance (default 0, or 0.02 with --threads)")
    ap.add_argument("--atol", type=float, default=None, help="absolute tolerance (default 0, or 0.011 with --threads)")
    ap.add_argument("--cell-timeout", type=int, default=rc.DEFAULT_CELL_TIMEOUT)
    ap.add_argument("--notebook-cap", type=float, default=rc.DEFAULT_NOTEBOOK_CAP)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    os.environ.setdefault("COURSE_PROFILE", "quick")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        a, b = args.threads
        envs = ({"COURSE_THREADS": str(a), "OMP_NUM_THREADS": str(a)},
                {"COURSE_THREADS": str(b), "OMP_NUM_THREADS": str(b)})
        rtol = 0.02 if args.rtol is None else args.rtol
        atol = 0.011 if args.atol is None else args.atol
        label = f"{a} vs {b} torch threads, tolerance |a-b| <= {atol} + {rtol}*|b|"
    else:
        envs = ({}, {})
        rtol, atol = args.rtol or 0.0, args.atol or 0.0
        label = "same settings twice, " + ("identical text required" if not (rtol or atol)
                                           else f"tolerance |a-b| <= {atol} + {rtol}*|b|")
    rules = load_sanitizers()
    if args.threads:  # the thread count itself is printed (runtime summary, profile table): not a result
        rules.append((re.compile(r"(?im)^.*\bthreads\b.*$"), "THREADS-LINE"))
    notebooks = rc.collect(args.paths)
    print(f"repro check of {len(notebooks)} notebook(s): {label}", flush=True)
    results, t0 = [], time.perf_counter()
    for path in notebooks:
        r = check(path, envs=envs, rtol=rtol, atol=atol, cell_timeout=args.cell_timeout,
                  notebook_cap=args.notebook_cap, rules=rules)
        results.append(r)
        if "error" in r:
            print(f"{path.name}: FAILED to execute: {r['error'][:1500]}", flush=True)
        elif r["ok"]:
            within = (f" within tolerance ({r['cells_not_identical']} cells not byte-identical, largest numeric "
                      f"difference {r['max_deviation']:.4g})") if r["cells_not_identical"] else ""
            print(f"{path.name}: {r['cells_compared']} code cells, text outputs identical{within} "
                  f"(runs {r['seconds'][0]} s, {r['seconds'][1]} s)", flush=True)
        else:
            print(f"{path.name}: {len(r['differing'])} of {r['cells_compared']} code cells differ:", flush=True)
            for d in r["differing"]:
                dev = "text differs" if d["max_deviation"] == float("inf") else f"max |diff| {d['max_deviation']:.4g}"
                print(f"  cell {d['cell']} ({dev})\n      {d['first']}", flush=True)
    bad = [r["notebook"] for r in results if not r["ok"]]
    print(f"reproducible: {len(results) - len(bad)}/{len(results)} notebooks "
          f"({time.perf_counter() - t0:.0f} s)" + (f"; differ or failed: {', '.join(bad)}" if bad else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

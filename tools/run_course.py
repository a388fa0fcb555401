#!/usr/bin/env python
"""Re-execute course notebooks in place (quick profile) and print a wall-time table.

    python tools/run_course.py notebooks                 # every NN_*.ipynb, in order
    python tools/run_course.py notebooks/03_*.ipynb      # some of them

Outputs saved in the notebooks always come from this execution of the committed code.
A notebook that fails is *not* overwritten; the error is printed and the exit code is 1.
The table (also written to benchmarks/course_times.json) is the course's speed benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]


def collect(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.glob("[0-9][0-9]_*.ipynb")))
        elif p.suffix == ".ipynb" and p.exists():
            out.append(p)
        else:
            raise SystemExit(f"not a notebook or folder: {p} (give notebooks/ or notebooks/NN_name.ipynb)")
    return out


def run_one(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
    )
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--timeout", type=int, default=300, help="per-cell timeout in seconds (a stuck cell fails fast)")
    ap.add_argument("--no-record", action="store_true", help="do not update benchmarks/course_times.json")
    args = ap.parse_args(argv)

    os.environ.setdefault("COURSE_PROFILE", "quick")
    notebooks = collect(args.paths)
    rows, failed = [], []
    total0 = time.perf_counter()
    for nb in notebooks:
        print(f"running {nb.name} ...", flush=True)
        try:
            sec = run_one(nb, args.timeout)
            rows.append((nb.name, sec, "ok"))
        except Exception as err:  # a failing cell, a timeout or a dead kernel: report it, keep going
            failed.append(nb.name)
            rows.append((nb.name, float("nan"), "FAILED"))
            kind = "" if isinstance(err, CellExecutionError) else f"{type(err).__name__}: "
            print(kind + str(err)[-3000:], file=sys.stderr)
    total = time.perf_counter() - total0

    width = max([len(r[0]) for r in rows] + [8])
    print(f"\n{'notebook':<{width}}  {'seconds':>8}  status")
    for name, sec, status in rows:
        print(f"{name:<{width}}  {sec:8.1f}  {status}")
    print(f"{'total':<{width}}  {total:8.1f}  profile={os.environ['COURSE_PROFILE']}, cores={os.cpu_count()}")

    if not args.no_record and not failed:
        rec_path = ROOT / "benchmarks" / "course_times.json"
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else {}
        rec.setdefault("notebooks", {})
        for name, sec, _ in rows:
            rec["notebooks"][name] = round(sec, 1)
        rec["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
        rec["profile"] = os.environ["COURSE_PROFILE"]
        rec_path.parent.mkdir(exist_ok=True)
        rec_path.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Execute notebooks headless many times and count kernel-messaging stalls.

    python tools/stall_check.py -n 30                          # notebook 00, 30 times
    python tools/stall_check.py -n 30 notebooks/02_*.ipynb     # another notebook
    python tools/stall_check.py --course 5                     # the whole course (notebooks/), 5 times
    python tools/stall_check.py --course 3 -j 2 --repro --against-committed   # 3 rounds, 2 kernels at a time,
                                                               # each run diffed against the committed outputs
    python tools/stall_check.py -n 60 --stock --cell-timeout 60  # stock nbclient (to reproduce the stall)
    python tools/stall_check.py -n 8 --stock --cell-timeout 20 --widget-stress 15   # reproduces it in minutes

A run counts as a **stall** when any kernel message (the cell's ``execute_reply`` or an IOPub
message) reached the client more than ``--late-after`` seconds after the kernel sent it, or when a
cell ran into its timeout, or when the notebook hit its cap. Delivery lag is measured from the
kernel's own send stamp, so a slow but busy cell is not a stall; a reply that sat unread in the
client's socket is. With ``--pyspy`` (needs ``py-spy`` on PATH) a run that is still going after
``--dump-after`` seconds gets a ``py-spy dump`` of this process and of the kernel.

Prints one line per run (seconds, slowest cell, worst delivery lag) and ends with
``stalls: S of N runs``; exit code 1 if S > 0 or any run failed. ``--json FILE`` saves the rows.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_course as rc  # noqa: E402

ROOT = rc.ROOT
DEFAULT_NOTEBOOK = ROOT / "notebooks" / "00_welcome_and_setup.ipynb"


def _pyspy_watch(after: float, stop: threading.Event, log: list[str]) -> None:
    """After ``after`` s, dump this process and its python children (the kernel) with py-spy."""
    pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if stop.wait(after) or not pyspy:
        return
    pids = [os.getpid()]
    try:
        out = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True, timeout=5)
        pids += [int(p) for p in out.stdout.split()]
    except Exception:
        pass
    for pid in pids:
        r = subprocess.run([pyspy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
        log.append(f"--- py-spy dump pid {pid} ---\n{r.stdout}{r.stderr}")


def make_widget_stress(out: Path, copies: int = 15, source: Path = DEFAULT_NOTEBOOK) -> Path:
    """Write a notebook of notebook 00's code cells up to its ipywidgets cell, then ``copies`` more copies
    of that cell: the cell where the stall was caught, repeated to make a missed wake-up likely."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    idx = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "widgets.interactive" in c.source)
    cells = [c for c in nb.cells[: idx + 1] if c.cell_type == "code"]
    nb.cells = cells + [nbformat.v4.new_code_cell(nb.cells[idx].source) for _ in range(copies)]
    nbformat.write(nb, out)
    return out


def check_run(res: rc.RunResult, late_after: float) -> bool:
    """True when this run stalled (see module docstring)."""
    return res.kind in ("cell-timeout", "notebook-cap") or res.max_lag > late_after


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help="notebooks or folders (default: notebook 00; notebooks/ with --course)")
    ap.add_argument("-n", "--runs", type=int, default=30, help="executions of each notebook (default 30)")
    ap.add_argument("--course", type=int, default=0, metavar="N",
                    help="execute the whole course (every notebook under notebooks/) N times instead")
    ap.add_argument("--cell-timeout", type=int, default=rc.DEFAULT_CELL_TIMEOUT)
    ap.add_argument("--notebook-cap", type=float, default=rc.DEFAULT_NOTEBOOK_CAP)
    ap.add_argument("--late-after", type=float, default=rc.LATE_AFTER,
                    help="delivery lag (s) that counts as a stall (default %(default)s)")
    ap.add_argument("--stock", action="store_true",
                    help="stock nbclient: one long poll per cell and TCP transport (reproduces the old set-up)")
    ap.add_argument("--pyspy", action="store_true", help="py-spy dump both processes of a run that is still going")
    ap.add_argument("--dump-after", type=float, default=60.0)
    ap.add_argument("--json", type=Path, help="write the per-run rows here")
    ap.add_argument("--jobs", "-j", type=int, default=1,
                    help="notebooks of a round executed at the same time, one kernel each (default 1)")
    ap.add_argument("--against-committed", action="store_true",
                    help="with --repro: compare every run with the outputs saved in the notebook files instead of "
                         "with the first run (do the committed outputs come from this code?)")
    ap.add_argument("--repro", action="store_true",
                    help="also compare every run's text outputs with the first run of the same notebook "
                         "(tools/repro_check.py's sanitising; must be identical), so --course N doubles as "
                         "an N-fold reproducibility check of every notebook")
    ap.add_argument("--widget-stress", type=int, default=0, metavar="K",
                    help="run a generated notebook instead: notebook 00 up to its widgets cell, plus K copies of it")
    args = ap.parse_args(argv)

    os.environ.setdefault("COURSE_PROFILE", "quick")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.widget_stress:
        import tempfile

        stress = make_widget_stress(Path(tempfile.mkdtemp(prefix="stall-")) / "widget_stress.ipynb", args.widget_stress)
        notebooks, rounds = [stress], args.runs
    elif args.course:
        notebooks = rc.collect(args.paths or [str(ROOT / "notebooks")])
        rounds = args.course
    else:
        notebooks = rc.collect(args.paths or [str(DEFAULT_NOTEBOOK)])
        rounds = args.runs
    mode = "stock nbclient, TCP" if args.stock else "course runner (sliced polls, IPC)"
    print(f"{rounds} round(s) of {len(notebooks)} notebook(s); {mode}; cell timeout {args.cell_timeout} s; "
          f"stall = message later than {args.late_after} s", flush=True)

    rows, stalls, failures = [], 0, 0
    first_texts: dict[str, dict[int, str]] = {}
    repro_diffs: list[str] = []
    if args.repro:
        import repro_check
        rules = repro_check.load_sanitizers()
    t_all = time.perf_counter()
    import nbformat

    committed = {}
    if args.repro and args.against_committed:
        committed = {p.name: repro_check.cell_texts(nbformat.read(p, as_version=4), rules) for p in notebooks}

    def one(r: int, path: Path):
        stop, dumps = threading.Event(), []
        if args.pyspy:
            threading.Thread(target=_pyspy_watch, args=(args.dump_after, stop, dumps), daemon=True).start()
        res = rc.execute(path, cell_timeout=args.cell_timeout, notebook_cap=args.notebook_cap,
                         sliced=not args.stock, transport_fix=not args.stock)
        stop.set()
        return res, dumps

    for r in range(1, rounds + 1):
        t_round = time.perf_counter()
        round_stalled = False
        if args.jobs > 1:
            with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
                futures = [pool.submit(one, r, path) for path in notebooks]
                done = [f.result() for f in futures]
        else:
            done = (one(r, path) for path in notebooks)
        for path, (res, dumps) in zip(notebooks, done):
            stalled = check_run(res, args.late_after)
            round_stalled |= stalled
            failures += (not res.ok) and not stalled
            slow = res.slowest_cell
            row = dict(round=r, notebook=path.name, seconds=round(res.seconds, 2), ok=res.ok, kind=res.kind,
                       stalled=stalled, max_lag=round(res.max_lag, 3), late_messages=res.late,
                       missed_wakeups_caught=res.rescued,
                       slowest_cell=slow.index if slow else None,
                       slowest_cell_s=round(slow.seconds, 2) if slow else None)
            if args.repro and res.ok:
                texts = repro_check.cell_texts(res.nb, rules)
                ref = committed.get(path.name) or first_texts.setdefault(path.name, texts)
                differing = [i for i in sorted(set(ref) | set(texts)) if ref.get(i, "") != texts.get(i, "")]
                row["identical_to_first_run"] = not differing
                if differing:
                    i = differing[0]
                    _, _, first = repro_check.compare_text(ref.get(i, ""), texts.get(i, ""), 0.0, 0.0)
                    repro_diffs.append(f"{path.name} run {r}: cells {differing} differ from "
                                       f"{'the committed outputs' if committed else 'run 1'}; cell {i}: {first}")
            rows.append(row)
            print(f"[{r:>3}/{rounds}] {path.name:<40} {res.seconds:7.1f} s  "
                  f"{'ok' if res.ok else 'FAILED ' + res.kind:<8}  slowest cell "
                  f"{row['slowest_cell']} {row['slowest_cell_s']} s  worst lag {res.max_lag:.2f} s"
                  + (f"  missed wake-ups caught: {res.rescued}" if res.rescued else "")
                  + ("  << STALL" if stalled else ""), flush=True)
            if not res.ok:
                print("    " + res.error.replace("\n", "\n    ")[:1500], flush=True)
            for d in dumps:
                print(d, flush=True)
        stalls += round_stalled if args.course else 0
        if args.course:
            print(f"course round {r}: {time.perf_counter() - t_round:.1f} s" + ("  << STALL" if round_stalled else ""))
    if not args.course:
        stalls = sum(row["stalled"] for row in rows)
    secs = [row["seconds"] for row in rows if row["ok"]]
    unit = "course runs" if args.course else "runs"
    if secs:
        print(f"seconds per notebook run: median {statistics.median(secs):.1f}, max {max(secs):.1f}")
    print(f"total {time.perf_counter() - t_all:.0f} s; failed (not stalls): {failures}; "
          f"missed wake-ups caught by the sliced polls: {sum(row['missed_wakeups_caught'] for row in rows)}")
    print(f"stalls: {stalls} of {rounds} {unit}")
    print(f"stall-free: {rounds - stalls}/{rounds}")
    if args.repro:
        compared = [row for row in rows if "identical_to_first_run" in row and (row["round"] > 1 or committed)]
        for d in repro_diffs:
            print("  REPRO " + d.replace("\n", "\n        "))
        print(f"reproducible: {sum(row['identical_to_first_run'] for row in compared)} of {len(compared)} "
              f"runs identical to {'the committed outputs' if committed else 'their notebook' + chr(39) + 's first run'} "
              f"(text outputs, timings sanitised)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.widget_stress:
        notebooks[0].unlink(missing_ok=True)
    return 1 if stalls or failures or repro_diffs else 0


if __name__ == "__main__":
    sys.exit(main())

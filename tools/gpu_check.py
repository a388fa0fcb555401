#!/usr/bin/env python
"""GPU check: run every notebook in the full profile and record time, peak GPU memory and AMP dtype.

    make gpu-check                                   # on a CUDA machine: every notebook, full profile
    python tools/gpu_check.py notebooks/06_*.ipynb   # some notebooks
    python tools/gpu_check.py --dry-run              # test the script on CPU: notebook 00, quick profile

Each notebook runs headless (nothing is written back) with a time cap (``--cap``, default 1800 s)
and a per-cell timeout (``--cell-timeout``, default the cap). A small probe runs inside the kernel
(``tools/run_course.py``, ``PROBE_CODE``): after every cell it records
``torch.cuda.max_memory_allocated()`` (and ``max_memory_reserved``), the peak RSS of the kernel, the
device and the AMP dtype that ``course_lib.runtime`` picked, so a notebook that fails still reports
what it used up to its last finished cell. Results go to ``benchmarks/gpu_times.json``:

    {"cuda": true, "gpu": "...", "profile": "full", "notebooks": {"00_...": {"status": "pass",
     "wall_s": 41.2, "peak_gpu_mib": 812.0, "amp_dtype": "bfloat16", "peak_ram_mib": 2210.5, ...}}}

The README's "GPU full" column is filled from that file only (from rows with ``"cuda": true``).
Without CUDA the script refuses to run unless ``--allow-cpu``; ``--dry-run`` is ``--allow-cpu``
on notebook 00 in the quick profile, written to ``benchmarks/gpu_times_cpu_dryrun.json`` so it
never overwrites a GPU measurement. Exit code 1 if any notebook failed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_course as rc  # noqa: E402

ROOT = rc.ROOT
DEFAULT_OUT = ROOT / "benchmarks" / "gpu_times.json"
DRY_RUN_OUT = ROOT / "benchmarks" / "gpu_times_cpu_dryrun.json"
DEFAULT_CAP = 1800.0


def machine_info() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = bool(torch.cuda.is_available())
        if info["cuda"]:
            info["cuda_version"] = torch.version.cuda
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except ImportError:  # pragma: no cover
        info["cuda"] = False
    return info


def notebook_row(res: rc.RunResult) -> dict:
    """One notebook's entry of gpu_times.json from its run."""
    probe = res.probe or {}
    status = "pass" if res.ok else ("timeout" if res.kind in ("cell-timeout", "notebook-cap") else "fail")
    row = {
        "status": status,
        "wall_s": round(res.seconds, 1),
        "peak_gpu_mib": probe.get("peak_gpu_mib"),
        "peak_gpu_reserved_mib": probe.get("peak_gpu_reserved_mib"),
        "amp_dtype": probe.get("amp_dtype"),
        "device": probe.get("device"),
        "profile": probe.get("profile"),
        "smoke": probe.get("smoke"),
        "peak_ram_mib": probe.get("peak_ram_mib"),
        "children_peak_ram_mib": probe.get("children_peak_ram_mib"),
        "cells_run": probe.get("cells_run"),
    }
    if not res.ok:  # the first line names notebook and cell; the tail holds the exception
        head, _, rest = res.error.partition("\n")
        row["error"] = head + ("\n..." + rest[-1500:] if len(rest) > 1500 else ("\n" + rest if rest else ""))
    return row


def run(notebooks: list[Path], *, cap: float, cell_timeout: int, env: dict, out: Path, label: str) -> dict:
    info = machine_info()
    record = {
        "what": label,
        "generated_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cuda": info.get("cuda", False),
        "machine": info,
        "profile": env.get("COURSE_PROFILE", os.environ.get("COURSE_PROFILE", "")),
        "smoke": env.get("COURSE_SMOKE", os.environ.get("COURSE_SMOKE", "")) not in ("", "0"),
        "hub_offline": os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "yes"),
        "cap_s": cap,
        "cell_timeout_s": cell_timeout,
        "notebooks": {},
    }
    # rows of notebooks not in this run are kept from an earlier file of the same kind (profile, smoke, CUDA), each
    # with the time of the run it came from, so re-running one notebook does not erase the others' results
    kept: dict = {}
    if out.exists():
        try:
            old = json.loads(out.read_text())
        except (OSError, ValueError):
            old = {}
        if all(old.get(k) == record[k] for k in ("profile", "smoke", "cuda")):
            kept = {n: {**r, "run": r.get("run") or old.get("generated_utc")}
                    for n, r in old.get("notebooks", {}).items() if n not in {p.name for p in notebooks}}
    t0 = time.perf_counter()
    for path in notebooks:
        print(f"running {path.name} (cap {cap:.0f} s) ...", flush=True)
        res = rc.execute(path, cell_timeout=cell_timeout, notebook_cap=cap, env=env, probe=True)
        row = {**notebook_row(res), "run": record["generated_utc"]}
        record["notebooks"][path.name] = row
        gpu = f"{row['peak_gpu_mib']:.0f} MiB" if row["peak_gpu_mib"] is not None else "-"
        ram = f"{row['peak_ram_mib']:.0f} MiB" if row["peak_ram_mib"] is not None else "-"
        print(f"  {row['status']:<7} {row['wall_s']:8.1f} s  peak GPU {gpu}  peak RAM {ram}  "
              f"AMP {row['amp_dtype']}  device {row['device']}", flush=True)
        if not res.ok:
            print("  " + res.error[-1500:].replace("\n", "\n  "), flush=True)
        record["total_s"] = round(time.perf_counter() - t0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        merged = {**record, "notebooks": dict(sorted({**kept, **record["notebooks"]}.items()))}
        out.write_text(json.dumps(merged, indent=1) + "\n")  # after every notebook: a crash keeps the rest
    return record  # this run's rows only


def main(argv: list[str] | None = None, *, description: str = __doc__, defaults: dict | None = None) -> int:
    d = {"profile": "full", "smoke": False, "out": None, "cap": DEFAULT_CAP, "label": "gpu-check",
         **(defaults or {})}
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help="notebooks or folders (default notebooks/)")
    ap.add_argument("--cap", type=float, default=d["cap"], help="wall-time cap per notebook, s (default %(default)s)")
    ap.add_argument("--cell-timeout", type=int, default=None, help="per-cell timeout, s (default: the cap)")
    ap.add_argument("--profile", default=None, help=f"COURSE_PROFILE for the kernels (default {d['profile']})")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    ap.add_argument("--allow-cpu", action="store_true", help="run even without CUDA (records cuda: false)")
    ap.add_argument("--dry-run", action="store_true",
                    help="test the script on CPU: notebook 00, quick profile, output gpu_times_cpu_dryrun.json")
    args = ap.parse_args(argv)

    info = machine_info()
    allow_cpu = args.allow_cpu or args.dry_run or d.get("allow_cpu", False)
    if not info.get("cuda") and not allow_cpu:
        print("no CUDA GPU is visible here (torch.cuda.is_available() is False). Run this on a GPU machine, "
              "or add --allow-cpu (or --dry-run) to test the script on CPU.", file=sys.stderr)
        return 2
    profile = args.profile or ("quick" if args.dry_run else d["profile"])
    env = {"COURSE_PROFILE": profile}
    if d["smoke"]:
        env["COURSE_SMOKE"] = "1"
    if args.dry_run:
        paths = args.paths or [str(ROOT / "notebooks" / "00_welcome_and_setup.ipynb")]
        out = args.out or DRY_RUN_OUT
    else:
        paths = args.paths or [str(ROOT / "notebooks")]
        out = args.out or (d["out"] and Path(d["out"])) or DEFAULT_OUT
    notebooks = rc.collect(paths)
    cell_timeout = args.cell_timeout or int(args.cap)
    label = d["label"] + (" (dry run on CPU)" if args.dry_run else "")
    print(f"{label}: {len(notebooks)} notebook(s), COURSE_PROFILE={profile}"
          f"{', COURSE_SMOKE=1' if d['smoke'] else ''}, cuda={info.get('cuda')}, output {out}", flush=True)
    record = run(notebooks, cap=args.cap, cell_timeout=cell_timeout, env=env, out=out, label=label)
    failed = [n for n, r in record["notebooks"].items() if r["status"] != "pass"]
    print(f"passed {len(notebooks) - len(failed)}/{len(notebooks)} in {record.get('total_s', 0):.0f} s; wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

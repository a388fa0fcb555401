#!/usr/bin/env python
"""Smoke run of the full profile on CPU: every notebook with COURSE_PROFILE=full COURSE_SMOKE=1.

    make smoke-full                                   # every notebook, cap 300 s each
    python tools/smoke_full.py notebooks/05_*.ipynb   # some of them
    python tools/smoke_full.py --ci                   # the CI slice (about 2 min on an idle 2-core box)
    python tools/smoke_full.py --table                # benchmarks/smoke_full.json as a Markdown table

Executes each notebook headless (nothing written back) through the full profile's code paths with
``COURSE_SMOKE=1``, which asks ``course_lib.runtime`` to cap data sizes and steps so a CPU finishes in
minutes (the real architectures and input sizes stay: ``auto`` is ViT-B/16 at 224 px with random weights,
hub-only models come from random-weight folders in the hub layout, ``course_lib.models.offline_hub``).
Reports per notebook: pass/fail, wall time and peak RAM of the kernel (``resource.getrusage`` inside the
kernel, after every cell), written to ``benchmarks/smoke_full.json``. Same engine and JSON layout as
``tools/gpu_check.py`` (on a GPU it also records peak GPU memory). Exit code 1 if any notebook failed or
hit its cap. What a smoke run cannot check offline: ``benchmarks/SMOKE_FULL.md``.

``--ci``: notebook 00 in smoke mode (written to ``benchmarks/smoke_full_ci.json``) plus the unit tests that
run the real architectures at their real sizes offline (:data:`CI_TESTS`: 'auto' = ViT-B/16 at 224 px, a
TP-Seg forward of 512-px images through a 224-px ViT-B/16, the hub-layout folders of Florence-2 / SAM 2).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check  # noqa: E402

ROOT = gpu_check.ROOT
CAP_S = 300.0
CI_NOTEBOOKS = ["notebooks/00_welcome_and_setup.ipynb"]
CI_TESTS = [
    "tests/models/test_backbones.py::test_auto_in_smoke_mode_offline_is_random_vit_b16_at_224",
    "tests/methods/tpseg/test_tca.py::test_vit_b16_at_224_px_takes_other_input_sizes",
    "tests/models/test_offline_hub.py",
]


_notebook_row = gpu_check.notebook_row


def notebook_row(res) -> dict:
    """gpu_check's row plus the three slowest cells (index, seconds), to see where a smoke run spends its time."""
    row = _notebook_row(res)
    row["slowest_cells"] = [[c.index, round(c.seconds, 1)] for c in sorted(res.cells, key=lambda c: -c.seconds)[:3]]
    return row


gpu_check.notebook_row = notebook_row


def markdown_table(path: Path) -> str:
    """The per-notebook rows of a smoke_full.json as a Markdown table (for benchmarks/SMOKE_FULL.md)."""
    import json

    rec = json.loads(Path(path).read_text())
    lines = [f"Run of {rec['generated_utc']} ({rec['machine'].get('cpu_count')} CPUs, torch {rec['machine'].get('torch')}, "
             f"cap {rec['cap_s']:.0f} s per notebook, total {rec.get('total_s', 0):.0f} s):", "",
             "| notebook | status | wall (s) | peak RAM (MiB) | run |", "| --- | --- | ---: | ---: | --- |"]
    for name, row in rec["notebooks"].items():
        ram = f"{row['peak_ram_mib']:.0f}" if row.get("peak_ram_mib") is not None else "-"
        lines.append(f"| {name} | {row['status']} | {row['wall_s']:.1f} | {ram} | {row.get('run', '')} |")
    if rec.get("note"):
        lines += ["", rec["note"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--table"]:  # print the Markdown table of a results file (default benchmarks/smoke_full.json)
        print(markdown_table(Path(argv[1]) if len(argv) > 1 else ROOT / "benchmarks" / "smoke_full.json"))
        return 0
    ci = "--ci" in argv
    if ci:
        argv = [a for a in argv if a != "--ci"]
        if not any(a.endswith(".ipynb") or Path(a).is_dir() for a in argv):
            argv += [str(ROOT / p) for p in CI_NOTEBOOKS]
        if "--out" not in argv:
            argv += ["--out", str(ROOT / "benchmarks" / "smoke_full_ci.json")]
    rc = gpu_check.main(argv, description=__doc__, defaults={
        "profile": "full", "smoke": True, "allow_cpu": True, "cap": CAP_S, "label": "smoke-full" + (" (ci)" if ci else ""),
        "out": str(ROOT / "benchmarks" / "smoke_full.json")})
    if ci:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        print("smoke-full (ci): unit tests of the real architectures at real sizes, offline", flush=True)
        rc_tests = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CI_TESTS],
                                   cwd=ROOT, env=env)
        rc = rc or (1 if rc_tests else 0)
    return rc


if __name__ == "__main__":
    sys.exit(main())

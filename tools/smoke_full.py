#!/usr/bin/env python
"""Smoke run of the full profile on CPU: every notebook with COURSE_PROFILE=full COURSE_SMOKE=1.

    make smoke-full                                   # every notebook, cap 600 s each
    python tools/smoke_full.py notebooks/05_*.ipynb   # some of them

Executes each notebook headless (nothing written back) through the full profile's code paths with
``COURSE_SMOKE=1``, which asks ``course_lib.runtime`` to cap data sizes and steps so a CPU finishes in
minutes (the real architectures and input sizes stay). Reports per notebook: pass/fail, wall time
and peak RAM of the kernel (``resource.getrusage`` inside the kernel, after every cell), written to
``benchmarks/smoke_full.json``. Same engine and JSON layout as ``tools/gpu_check.py`` (on a GPU it
also records peak GPU memory). Exit code 1 if any notebook failed or hit its cap.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check  # noqa: E402

if __name__ == "__main__":
    sys.exit(gpu_check.main(description=__doc__, defaults={
        "profile": "full", "smoke": True, "allow_cpu": True, "cap": 600.0, "label": "smoke-full",
        "out": str(gpu_check.ROOT / "benchmarks" / "smoke_full.json")}))

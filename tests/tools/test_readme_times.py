"""tools/readme_times.py: the README's notebook-map times are generated from benchmarks/*.json."""
from __future__ import annotations

import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))
import readme_times as rt  # noqa: E402

TABLE = """| # | notebook | topic | mirrors | CPU quick (measured) | GPU full |
|---|---|---|---|---|---|
| 00 | [`00_a`](notebooks/00_a.ipynb) | x | y | 1 s | – |
| 01 | [`01_b`](notebooks/01_b.ipynb) | x | y | 1 s | – |
| | **whole course** (`make course`) | | | **2 s** | |
"""


def test_the_committed_readme_matches_the_measurement_files():
    assert rt.main(["--check"]) == 0


def test_render_fills_cpu_gpu_budget_marks_and_totals():
    course = {"notebooks": {"00_a.ipynb": 18.1, "01_b.ipynb": 95.4}, "sum_seconds": 113.5, "wall_seconds": 70.2, "jobs": 2}
    gpu = {"notebooks": {"00_a.ipynb": {"status": "pass", "wall_s": 9.6, "peak_gpu_mib": 2048},
                         "01_b.ipynb": {"status": "timeout", "wall_s": 600}}}
    out = rt.render(TABLE, course, gpu).splitlines()
    assert out[2].endswith("| 18 s | 10 s, 2.0 GiB |")
    assert out[3].endswith("| 95 s ⚠ | timeout |")
    assert "**114 s** in sequence (1.9 min); 70 s wall with `JOBS=2`" in out[4] and out[4].endswith("| 10 s |")
    assert out[:2] == TABLE.splitlines()[:2]


def test_without_gpu_file_the_gpu_column_stays_empty():
    out = rt.render(TABLE, {"notebooks": {"00_a.ipynb": 5.0}}, {}).splitlines()
    assert out[2].endswith("| 5 s | – |") and out[3].endswith("| – | – |")

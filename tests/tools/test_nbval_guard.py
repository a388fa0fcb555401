"""tools/nbval_guard.py: the pytest plugin of the nbval run (IPC transport, per-notebook cap)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]


def test_nbval_run_with_guard_caps_a_long_notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time\nprint('start')")] + [
        nbformat.v4.new_code_cell("time.sleep(1.5)") for _ in range(6)]
    path = tmp_path / "long.ipynb"
    nbformat.write(nb, path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                        "--nbval-current-env", "--nbval-cell-timeout=60", "-p", "tools.nbval_guard", "--nb-cap=3",
                        "--rootdir", str(tmp_path), str(path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "long.ipynb: notebook cap of 3 s exceeded" in out
    assert " passed, " in out and " errors" in out  # the first cells ran, the rest failed fast (in setup)
    assert "without encryption" not in out

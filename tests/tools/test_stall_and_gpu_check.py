"""tools/stall_check.py and tools/gpu_check.py: what counts as a stall; the GPU check's JSON on CPU."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import gpu_check  # noqa: E402
import run_course as rc  # noqa: E402
import stall_check  # noqa: E402


def _res(**kw):
    base = dict(path=Path("00_x.ipynb"), ok=True, seconds=5.0)
    base.update(kw)
    return rc.RunResult(**base)


def test_stall_is_a_late_message_or_a_timeout_not_a_slow_cell():
    slow_but_busy = _res(seconds=80.0, cells=[rc.CellRecord(3, 75.0, 0.05)], max_lag=0.1)
    assert not stall_check.check_run(slow_but_busy, late_after=2.0)
    late_reply = _res(seconds=95.0, cells=[rc.CellRecord(23, 90.0, 88.7)], max_lag=88.7, late=1)
    assert stall_check.check_run(late_reply, late_after=2.0)
    assert stall_check.check_run(_res(ok=False, kind="cell-timeout"), late_after=2.0)
    assert stall_check.check_run(_res(ok=False, kind="notebook-cap"), late_after=2.0)
    assert not stall_check.check_run(_res(ok=False, kind="cell-error"), late_after=2.0)


def test_notebook_row_status_and_probe_fields():
    ok = gpu_check.notebook_row(_res(probe={"peak_gpu_mib": 812.0, "amp_dtype": "bfloat16", "peak_ram_mib": 900.0,
                                            "device": "cuda", "profile": "full", "cells_run": 12}))
    assert ok["status"] == "pass" and ok["peak_gpu_mib"] == 812.0 and ok["amp_dtype"] == "bfloat16"
    assert "error" not in ok
    capped = gpu_check.notebook_row(_res(ok=False, kind="notebook-cap", error="00_x.ipynb: stopped at the cap"))
    assert capped["status"] == "timeout" and "cap" in capped["error"] and capped["peak_gpu_mib"] is None
    assert gpu_check.notebook_row(_res(ok=False, kind="cell-error", error="boom"))["status"] == "fail"


def test_gpu_check_refuses_cpu_without_allow(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "machine_info", lambda: {"cuda": False})
    assert gpu_check.main(["--out", "/nonexistent/never-written.json"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_gpu_check_dry_run_writes_json_from_the_kernel_probe(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from course_lib import runtime\nP = runtime.setup(quiet=True)"),
                nbformat.v4.new_code_cell("import numpy as np\nx = np.zeros((1024, 1024))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "00_tiny.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "gpu_times.json"
    assert gpu_check.main(["--dry-run", "--cap", "120", "--out", str(out), str(path)]) == 0
    rec = json.loads(out.read_text())
    assert rec["cuda"] is False and rec["profile"] == "quick"
    row = rec["notebooks"]["00_tiny.ipynb"]
    assert row["status"] == "pass" and row["cells_run"] == 2
    assert row["device"] == "cpu" and row["amp_dtype"] is None and row["profile"] == "quick"
    assert row["peak_ram_mib"] > 8 and row["peak_gpu_mib"] is None


def test_widget_stress_notebook_repeats_the_widgets_cell(tmp_path):
    path = stall_check.make_widget_stress(tmp_path / "ws.ipynb", copies=3)
    nb = nbformat.read(path, as_version=4)
    assert sum("widgets.interactive" in c.source for c in nb.cells) == 4
    assert all(c.cell_type == "code" for c in nb.cells)


def test_course_mode_counts_rounds_over_a_folder(tmp_path, capsys):
    for name in ("00_a.ipynb", "01_b.ipynb"):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(f"print({name!r})")]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / name)
    out = tmp_path / "rows.json"
    assert stall_check.main(["--course", "1", "--json", str(out), str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "stalls: 0 of 1 course runs" in text and "stall-free: 1/1" in text
    rows = json.loads(out.read_text())
    assert [r["notebook"] for r in rows] == ["00_a.ipynb", "01_b.ipynb"] and all(r["ok"] for r in rows)


def test_parallel_rounds_and_reproducibility_against_the_committed_outputs(tmp_path, capsys):
    """``--jobs 2 --repro --against-committed``: each run is compared with the outputs saved in the file; a
    deterministic notebook matches, one whose output changes from run to run is reported and fails the check."""
    def write(name, source):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / name)

    write("00_same.ipynb", "print(sum(range(10)))")
    write("01_other.ipynb", "print('x' * 3)")
    assert rc.main([str(tmp_path), "--no-record"]) == 0  # outputs saved, as a committed notebook has them
    assert stall_check.main(["--course", "2", "--jobs", "2", "--repro", "--against-committed", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "stall-free: 2/2" in text and "reproducible: 4 of 4 runs identical to the committed outputs" in text

    write("02_random.ipynb", "import random\nprint(random.random())")
    assert rc.main([str(tmp_path / "02_random.ipynb"), "--no-record"]) == 0
    assert stall_check.main(["--course", "1", "--repro", "--against-committed", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "REPRO 02_random.ipynb run 1: cells [0] differ from the committed outputs" in text
    assert "reproducible: 2 of 3 runs" in text


def test_a_partial_run_keeps_the_other_notebooks_rows(tmp_path):
    """Re-running one notebook updates its row and keeps the rows of the others (with the run they came from);
    a file of another kind (profile / smoke / CUDA) is not merged."""
    def nb(name):
        n = nbformat.v4.new_notebook()
        n.cells = [nbformat.v4.new_code_cell("x = 1")]
        n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(n, tmp_path / name)
        return tmp_path / name

    a, b = nb("00_a.ipynb"), nb("01_b.ipynb")
    out = tmp_path / "gpu_times.json"
    assert gpu_check.main(["--dry-run", "--cap", "120", "--out", str(out), str(a), str(b)]) == 0
    first = json.loads(out.read_text())
    assert gpu_check.main(["--dry-run", "--cap", "120", "--out", str(out), str(b)]) == 0
    rec = json.loads(out.read_text())
    assert list(rec["notebooks"]) == ["00_a.ipynb", "01_b.ipynb"]
    assert rec["notebooks"]["00_a.ipynb"]["run"] == first["generated_utc"]
    assert rec["notebooks"]["01_b.ipynb"]["run"] == rec["generated_utc"]
    rec["profile"] = "other"
    out.write_text(json.dumps(rec))
    assert gpu_check.main(["--dry-run", "--cap", "120", "--out", str(out), str(b)]) == 0
    assert list(json.loads(out.read_text())["notebooks"]) == ["01_b.ipynb"]

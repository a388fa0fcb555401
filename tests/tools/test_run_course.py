"""tools/run_course.py: sliced channel polls survive a missed wake-up; fail-fast timeouts name notebook,
cell and seconds; the kernel runs without the TCP warning."""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from queue import Empty

import nbformat
import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))
import run_course as rc  # noqa: E402


def _notebook(tmp_path: Path, *sources: str, name: str = "tiny.ipynb") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


class _MissedWakeupChannel:
    """A channel whose poll only notices a waiting message when its timeout expires (what a lost
    ZMQ_FD edge does to pyzmq's asyncio poll)."""

    def __init__(self, arrives_after: float):
        self.t_msg = time.monotonic() + arrives_after
        self.msg = {"header": {}, "parent_header": {}, "content": {}}

    async def get_msg(self, timeout=None):
        await asyncio.sleep(timeout if timeout is not None else 3600)
        if time.monotonic() >= self.t_msg:
            return self.msg
        raise Empty


def test_sliced_poll_bounds_a_missed_wakeup():
    client = rc.CourseClient(nbformat.v4.new_notebook())
    channel = _MissedWakeupChannel(arrives_after=0.1)
    client._wrap(channel)

    async def go():
        t0 = time.monotonic()
        msg = await channel.get_msg(timeout=30)  # one stock poll would return only after 30 s
        return msg, time.monotonic() - t0

    msg, seconds = asyncio.run(go())
    assert msg is channel.msg
    assert seconds < 2 * rc.POLL_SLICE + 0.5


def test_sliced_poll_still_times_out():
    client = rc.CourseClient(nbformat.v4.new_notebook())
    channel = _MissedWakeupChannel(arrives_after=60)
    client._wrap(channel)
    t0 = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(channel.get_msg(timeout=1.2))
    assert 1.1 < time.monotonic() - t0 < 3.0


def test_lag_is_measured_from_the_kernel_send_stamp():
    import datetime as dt

    sent = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    assert 4.9 < rc._lag({"header": {"date": sent}}) < 7
    assert 4.9 < rc._lag({"header": {"date": sent.isoformat()}}) < 7
    assert rc._lag({"header": {}}) == 0.0


def test_ipc_transport_uses_an_absolute_socket_path(tmp_path):
    cfg = rc.kernel_manager_config(str(tmp_path))
    if sys.platform.startswith("win"):
        assert cfg["transport"] == "tcp"
    else:
        assert cfg == {"transport": "ipc", "ip": str(tmp_path / "k")}
        assert Path(cfg["ip"]).is_absolute()


def test_execute_ok_probe_and_no_tcp_warning(tmp_path, capfd):
    path = _notebook(tmp_path, "x = 21 * 2\nprint(x)", "import numpy as np\na = np.ones((512, 512))")
    res = rc.execute(path, cell_timeout=60, notebook_cap=120, probe=True)
    err = capfd.readouterr().err
    assert res.ok, res.error
    assert res.nb.cells[0].outputs[0]["text"] == "42\n"
    assert [c.index for c in res.cells] == [0, 1]
    assert res.probe["cells_run"] == 2 and res.probe["peak_ram_mib"] > 10
    assert "without encryption" not in err


def test_cell_timeout_fails_fast_naming_notebook_and_cell(tmp_path):
    path = _notebook(tmp_path, "print('ok')", "import time\ntime.sleep(60)", name="slow.ipynb")
    t0 = time.perf_counter()
    res = rc.execute(path, cell_timeout=2, notebook_cap=120)
    assert time.perf_counter() - t0 < 40
    assert not res.ok and res.kind == "cell-timeout"
    assert "slow.ipynb" in res.error and "cell 1" in res.error and "2 s" in res.error


def test_notebook_cap_stops_a_long_notebook(tmp_path):
    path = _notebook(tmp_path, "import time", *["time.sleep(1)"] * 30, name="long.ipynb")
    res = rc.execute(path, cell_timeout=60, notebook_cap=6)
    assert not res.ok and res.kind == "notebook-cap"
    assert "long.ipynb" in res.error and "cap of 6 s" in res.error
    assert res.seconds < 30


def test_stock_mode_wrapper_passes_messages_through():
    client = rc.CourseClient(nbformat.v4.new_notebook())
    client.sliced = False

    class Immediate:
        msg = {"header": {}, "parent_header": {}, "content": {}}

        async def get_msg(self, timeout=None):
            return self.msg

    channel = Immediate()
    client._wrap(channel)
    assert asyncio.run(channel.get_msg(timeout=None)) is Immediate.msg
    assert client.rescued == 0


def test_jobs_run_notebooks_at_the_same_time_and_write_each(tmp_path, capsys):
    """``-j 2``: two kernels at once (their cells overlap in time), each notebook written with its own
    outputs, the table lists both in notebook order with their sum and the wall time; a failing notebook
    is not written and makes the exit code 1 without stopping the other."""
    code = "import time\nt0 = time.time()\ntime.sleep(6)\nprint(t0, time.time())"
    a = _notebook(tmp_path, code, name="01_a.ipynb")
    b = _notebook(tmp_path, code, name="02_b.ipynb")
    assert rc.main([str(a), str(b), "-j", "2", "--no-record"]) == 0
    spans = [tuple(map(float, nbformat.read(p, as_version=4).cells[0].outputs[0]["text"].split())) for p in (a, b)]
    (s1, e1), (s2, e2) = spans
    assert s2 < e1 and s1 < e2, f"the two notebooks did not overlap: {spans}"
    out = capsys.readouterr().out
    assert out.index("01_a.ipynb  ") < out.index("02_b.ipynb  ") and "sum" in out and "2 job(s)" in out

    bad = _notebook(tmp_path, "raise RuntimeError('boom')", name="03_bad.ipynb")
    before = bad.read_text()
    c = _notebook(tmp_path, "print('fine')", name="04_c.ipynb")
    assert rc.main([str(bad), str(c), "-j", "2", "--no-record"]) == 1
    assert bad.read_text() == before
    assert nbformat.read(c, as_version=4).cells[0].outputs[0]["text"] == "fine\n"


def test_jobs_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        rc.main(["notebooks", "-j", "0"])
    assert "--jobs must be at least 1" in capsys.readouterr().err

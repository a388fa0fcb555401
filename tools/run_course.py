#!/usr/bin/env python
"""Re-execute course notebooks in place (quick profile) and print a wall-time table.

    python tools/run_course.py notebooks                 # every NN_*.ipynb, in order
    python tools/run_course.py notebooks/03_*.ipynb      # some of them
    python tools/run_course.py notebooks --no-write      # execute only (a check), keep the files as they are
    python tools/run_course.py notebooks -j 2            # two notebooks at a time (one kernel each), both cores

Outputs saved in the notebooks always come from this execution of the committed code.
A notebook that fails is *not* overwritten; the error is printed and the exit code is 1.
The table (also written to benchmarks/course_times.json) is the course's speed benchmark: each
notebook's wall time, their **sum** (what a learner who runs them one after another waits) and the
**wall** time of the whole run (smaller with ``-j 2``, where two kernels share the cores; each
notebook's own time is then a little longer than alone).

Fail fast instead of stalling: every cell has a timeout (``--cell-timeout``, 120 s by default, the
slowest quick-profile cell takes well under a minute on 2 cores) and every notebook a cap
(``--notebook-cap``, 600 s); either one stops the run with a message naming the notebook, the cell
and the seconds it had run.

This module is also the execution engine of ``tools/stall_check.py``, ``tools/repro_check.py`` and
``tools/gpu_check.py`` (:func:`execute`). Two fixes to the stock ``nbclient`` set-up live here:

* **Missed wake-ups (the "300 s stall").** nbclient waits for a cell's ``execute_reply`` with *one*
  asyncio poll of the shell socket whose timeout is the whole cell timeout. pyzmq's asyncio
  sockets are driven by the edge-triggered ``ZMQ_FD``; when the edge that announces the reply is
  consumed elsewhere, the reply sits in the socket until the poll times out, and pyzmq's final
  ``poll(0)`` at the timeout then finds it, so the cell "finishes normally" exactly one cell timeout
  late (the signature measured in the README: stalls of exactly 300 s with the cell timeout at 300 s).
  :class:`CourseClient` polls both the shell and IOPub channels in short slices
  (:data:`POLL_SLICE` s), so a missed edge costs at most one slice. It also measures every
  message's delivery lag (receive time minus the kernel's send stamp) so a late delivery is visible.
* **Transport.** On POSIX the kernel talks over IPC sockets (``transport="ipc"``) instead of
  localhost TCP: no "Kernel is running over TCP without encryption" warning, no port races between
  concurrent runs. Elsewhere (Windows) it stays on TCP with CurveZMQ encryption where libzmq has it.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import copy
import datetime as _dt
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parents[1]
#: seconds per poll of a kernel channel: the most a missed socket wake-up can delay a message
POLL_SLICE = 0.5
#: a message delivered later than this after the kernel sent it counts as a late delivery
LATE_AFTER = 2.0
DEFAULT_CELL_TIMEOUT = 120
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes of IPython tracebacks
DEFAULT_NOTEBOOK_CAP = 600


def kernel_manager_config(socket_dir: str | None = None) -> dict:
    """KernelManager settings for headless runs (see module docstring, 'Transport').

    IPC socket files are ``<socket_dir>/k-<channel number>``: an absolute path, because the kernel runs
    in the notebook's folder and a relative one (jupyter_client's default ``kernel-ipc``) would name
    different files for kernel and client; a fresh folder per run keeps concurrent runs apart.
    """
    import zmq

    if os.name == "posix" and socket_dir:
        return {"transport": "ipc", "ip": str(Path(socket_dir) / "k")}
    return {"transport": "tcp", "transport_encryption": "auto" if zmq.has("curve") else "disabled"}


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


@dataclass
class CellRecord:
    index: int
    seconds: float
    reply_lag: float  # receive time of execute_reply minus the kernel's send stamp (s)


@dataclass
class RunResult:
    """What one headless execution of a notebook produced."""

    path: Path
    ok: bool
    seconds: float
    error: str = ""
    kind: str = ""  # "", "cell-error", "cell-timeout", "notebook-cap", "dead-kernel", "other"
    cells: list[CellRecord] = field(default_factory=list)
    max_lag: float = 0.0  # worst delivery lag over every shell/IOPub message (s)
    late: int = 0  # messages delivered more than LATE_AFTER s after the kernel sent them
    rescued: int = 0  # missed wake-ups caught by the sliced polls (each cost at most POLL_SLICE s)
    probe: dict | None = None  # last report of PROBE_CODE (execute(probe=True)), if any
    nb: object = None

    @property
    def slowest_cell(self) -> CellRecord | None:
        return max(self.cells, key=lambda c: c.seconds, default=None)


def _lag(msg: dict) -> float:
    date = msg.get("header", {}).get("date")
    if isinstance(date, str):
        try:
            date = _dt.datetime.fromisoformat(date.replace("Z", "+00:00"))
        except ValueError:
            return 0.0
    if not isinstance(date, _dt.datetime):
        return 0.0
    if date.tzinfo is None:
        date = date.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (_dt.datetime.now(_dt.timezone.utc) - date).total_seconds())


class CourseClient(NotebookClient):
    """nbclient with sliced channel polling and delivery-lag accounting (module docstring)."""

    poll_slice: float = POLL_SLICE
    sliced: bool = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_lag = 0.0
        self.late = 0
        self.rescued = 0  # messages found only when a poll slice timed out (missed wake-ups, caught)

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        for channel in (kc.shell_channel, kc.iopub_channel):
            self._wrap(channel)
        return kc

    def _wrap(self, channel) -> None:
        original = channel.get_msg
        client = self

        async def get_msg(timeout=None):
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                step = left if not client.sliced else (
                    client.poll_slice if left is None else max(0.0, min(client.poll_slice, left)))
                t_poll = time.monotonic()
                try:
                    msg = await original(timeout=step)
                except Empty:
                    if not client.sliced or (left is not None and left <= client.poll_slice):
                        raise
                    continue
                waited = time.monotonic() - t_poll
                lag = _lag(msg)
                client.max_lag = max(client.max_lag, lag)
                client.late += lag > LATE_AFTER
                if step is not None and step >= 0.2 and waited >= 0.95 * step and lag >= 0.25:
                    # the poll saw the message only when its timeout fired, though it had arrived a while
                    # before: a missed wake-up that the slicing caught
                    client.rescued += 1
                return msg

        channel.get_msg = get_msg


#: Runs in the kernel before the notebook (``--IPKernelApp.exec_files``) when ``execute(probe=True)``:
#: after every cell it writes the kernel's resource peaks to ``$COURSE_PROBE_FILE`` as JSON, so even a
#: notebook that fails or hits its cap reports what it had used up to its last finished cell.
PROBE_CODE = r'''
def __course_probe_install():
    import json, os, resource, time
    path = os.environ.get("COURSE_PROBE_FILE")
    if not path:
        return
    state = {"cells": 0, "t0": time.time()}

    def probe(result=None):
        state["cells"] += 1
        p = {"cells_run": state["cells"], "kernel_seconds": round(time.time() - state["t0"], 2),
             "peak_ram_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             "children_peak_ram_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}
        try:
            import sys
            if "torch" in sys.modules:
                import torch
                p["torch_threads"] = torch.get_num_threads()
                p["cuda"] = bool(torch.cuda.is_available())
                if p["cuda"]:
                    p["gpu"] = torch.cuda.get_device_name(0)
                    p["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                    p["peak_gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
            if "course_lib.runtime" in sys.modules:
                rt = sys.modules["course_lib.runtime"]
                dev = rt.get_device()
                amp = rt.amp_dtype(dev)
                p["device"] = str(dev)
                p["amp_dtype"] = str(amp).replace("torch.", "") if amp is not None else None
                prof = rt.get_profile()
                p["profile"] = prof.name
                p["smoke"] = bool(getattr(prof, "smoke", False))
        except Exception as err:  # the probe must never break a notebook
            p["probe_error"] = repr(err)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(p, f)
        os.replace(tmp, path)

    get_ipython().events.register("post_run_cell", probe)


__course_probe_install()
del __course_probe_install
'''


def _describe(cell) -> str:
    first = next((ln for ln in cell.source.splitlines() if ln.strip() and not ln.startswith("#")), "")
    return first[:80]


def execute(
    path: str | os.PathLike,
    *,
    cell_timeout: int = DEFAULT_CELL_TIMEOUT,
    notebook_cap: float = DEFAULT_NOTEBOOK_CAP,
    env: dict | None = None,
    probe: bool = False,
    sliced: bool = True,
    transport_fix: bool = True,
    nb=None,
) -> RunResult:
    """Execute one notebook headless (nothing is written). Never raises for notebook problems:
    the :class:`RunResult` says what happened, naming the notebook, the cell and the seconds.

    ``env`` adds variables to the kernel's environment. ``probe=True`` runs :data:`PROBE_CODE` in the
    kernel first (not as a cell: the notebook is unchanged) and puts its last report (peak RAM, peak
    GPU memory, AMP dtype, device ...) in ``RunResult.probe``. ``sliced=False, transport_fix=False``
    is stock nbclient. ``nb`` executes this notebook object (a copy) instead of reading ``path``
    (``path`` still names it and gives the working folder).
    """
    from traitlets.config import Config

    path = Path(path)
    nb = nbformat.read(path, as_version=4) if nb is None else copy.deepcopy(nb)
    socket_dir = tempfile.mkdtemp(prefix="nbk-") if transport_fix and os.name == "posix" else None
    config = Config({"KernelManager": kernel_manager_config(socket_dir)}) if transport_fix else Config()
    client = CourseClient(nb, timeout=cell_timeout, kernel_name="python3", config=config,
                          resources={"metadata": {"path": str(path.parent)}}, record_timing=False)
    client.sliced = sliced
    cells: list[CellRecord] = []
    current: dict = {}

    def on_cell_execute(cell, cell_index):
        current.update(index=cell_index, cell=cell, t0=time.perf_counter())

    def on_cell_executed(cell, cell_index, execute_reply):
        cells.append(CellRecord(cell_index, time.perf_counter() - current.get("t0", time.perf_counter()),
                                _lag(execute_reply) if execute_reply else 0.0))

    client.on_cell_execute = on_cell_execute
    client.on_cell_executed = on_cell_executed

    extra_args: list[str] = []
    probe_dir = probe_file = None
    if probe:
        probe_dir = Path(tempfile.mkdtemp(prefix="nbprobe-"))
        (probe_dir / "probe.py").write_text(PROBE_CODE)
        probe_file = probe_dir / "probe.json"
        extra_args.append(f"--IPKernelApp.exec_files={probe_dir / 'probe.py'}")
    client.extra_arguments = extra_args

    kernel_env = dict(os.environ)
    kernel_env.update(env or {})
    if probe_file is not None:
        kernel_env["COURSE_PROBE_FILE"] = str(probe_file)

    class _NotebookCap(Exception):
        pass

    async def run():
        task = asyncio.ensure_future(client.async_execute(env=kernel_env))
        done, _ = await asyncio.wait({task}, timeout=notebook_cap)
        if task in done:
            return task.result()
        current["capped_at"] = time.perf_counter()
        task.cancel()  # nbclient turns this into DeadKernelError; the cap is what happened
        try:
            await task
        except BaseException:
            pass
        try:
            if client.km is not None and await client.km.is_alive():
                await client.km.shutdown_kernel(now=True)
        except Exception:
            pass
        raise _NotebookCap

    t0 = time.perf_counter()
    res = RunResult(path=path, ok=True, seconds=0.0, nb=nb)
    try:
        asyncio.run(run())
    except _NotebookCap:
        res.ok, res.kind = False, "notebook-cap"
        idx = current.get("index", -1)
        cell_s = current["capped_at"] - current.get("t0", t0)
        res.error = (f"{path.name}: stopped at the notebook cap of {notebook_cap:.0f} s, in cell {idx} "
                     f"({_describe(current['cell']) if 'cell' in current else '?'}) after {cell_s:.0f} s in that cell")
    except CellTimeoutError as err:  # (a TimeoutError subclass)
        res.ok, res.kind = False, "cell-timeout"
        idx = current.get("index", -1)
        res.error = (f"{path.name}: cell {idx} ({_describe(current['cell']) if 'cell' in current else '?'}) "
                     f"ran past the cell timeout of {cell_timeout} s; stopped. {str(err)[:400]}")
    except CellExecutionError as err:
        res.ok, res.kind = False, "cell-error"
        res.error = f"{path.name}: cell {current.get('index', -1)} raised:\n{_ANSI.sub('', str(err))[-3000:]}"
    except DeadKernelError as err:
        res.ok, res.kind = False, "dead-kernel"
        res.error = f"{path.name}: the kernel died in cell {current.get('index', -1)} ({err})"
    except Exception as err:  # kernel start failures and the like
        res.ok, res.kind = False, "other"
        res.error = f"{path.name}: {type(err).__name__}: {str(err)[-2000:]}"
    res.seconds = time.perf_counter() - t0
    import atexit

    atexit.unregister(client._cleanup_kernel)  # nbclient's own exit hook; the kernel is already gone
    if socket_dir:
        shutil.rmtree(socket_dir, ignore_errors=True)
    res.cells, res.max_lag, res.late, res.rescued = cells, client.max_lag, client.late, client.rescued
    if probe_dir is not None:
        try:
            res.probe = json.loads(probe_file.read_text())
        except (OSError, ValueError):
            res.probe = None
        shutil.rmtree(probe_dir, ignore_errors=True)
    return res


@contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--cell-timeout", "--timeout", type=int, default=DEFAULT_CELL_TIMEOUT,
                    help=f"per-cell timeout in seconds (default {DEFAULT_CELL_TIMEOUT})")
    ap.add_argument("--notebook-cap", type=float, default=DEFAULT_NOTEBOOK_CAP,
                    help=f"wall-time cap per notebook in seconds (default {DEFAULT_NOTEBOOK_CAP})")
    ap.add_argument("--no-record", action="store_true", help="do not update benchmarks/course_times.json")
    ap.add_argument("--no-write", action="store_true", help="execute only; leave the notebook files untouched")
    ap.add_argument("--jobs", "-j", type=int, default=1,
                    help="notebooks executed at the same time, each in its own kernel (default 1). With N > 1 the "
                         "longest notebooks (by the recorded times) start first; each kernel keeps its own thread "
                         "count (OMP_NUM_THREADS), so on a 2-core box '-j 2' with 1 thread each uses both cores")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")

    os.environ.setdefault("COURSE_PROFILE", "quick")
    notebooks = collect(args.paths)
    rec_path = ROOT / "benchmarks" / "course_times.json"
    known = json.loads(rec_path.read_text()).get("notebooks", {}) if rec_path.exists() else {}
    results: dict[Path, RunResult] = {}
    lock = threading.Lock()

    def one(path: Path) -> None:
        with lock:
            print(f"running {path.name} ...", flush=True)
        res = execute(path, cell_timeout=args.cell_timeout, notebook_cap=args.notebook_cap)
        with lock:
            results[path] = res
            if res.ok and not args.no_write:
                nbformat.write(res.nb, path)
            print(f"  {path.name}: {res.seconds:.1f} s, {'ok' if res.ok else 'FAILED (' + res.kind + ')'}", flush=True)
            if not res.ok:
                print(res.error, file=sys.stderr, flush=True)
            if res.late:
                print(f"  note: {res.late} kernel message(s) arrived late (worst {res.max_lag:.1f} s)", flush=True)

    total0 = time.perf_counter()
    if args.jobs == 1:
        for path in notebooks:
            one(path)
    else:  # longest first (LPT), so the last notebook to finish is a short one
        order = sorted(notebooks, key=lambda p: -known.get(p.name, 60.0))
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for f in [pool.submit(one, p) for p in order]:
                f.result()
    total = time.perf_counter() - total0
    rows, failed = [], []
    for path in notebooks:
        res = results[path]
        rows.append((path.name, res.seconds, "ok" if res.ok else f"FAILED ({res.kind})"))
        if not res.ok:
            failed.append(path.name)
    serial = sum(r[1] for r in rows)

    width = max([len(r[0]) for r in rows] + [8])
    print(f"\n{'notebook':<{width}}  {'seconds':>8}  status")
    for name, sec, status in rows:
        print(f"{name:<{width}}  {sec:8.1f}  {status}")
    print(f"{'sum':<{width}}  {serial:8.1f}  (one notebook after another, as a learner runs them)")
    print(f"{'total':<{width}}  {total:8.1f}  wall, {args.jobs} job(s); profile={os.environ['COURSE_PROFILE']}, "
          f"cores={os.cpu_count()}")

    if not args.no_record and not failed and not args.no_write:
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else {}
        rec.setdefault("notebooks", {})
        # forget notebooks that no longer exist (renamed or removed), so the table never mixes in stale rows
        existing = {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
        rec["notebooks"] = {k: v for k, v in rec["notebooks"].items() if k in existing}
        for name, sec, _ in rows:
            rec["notebooks"][name] = round(sec, 1)
        rec["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
        if len(rows) == len(existing):  # a whole-course run: record its wall time and sum
            rec["jobs"], rec["wall_seconds"], rec["sum_seconds"] = args.jobs, round(total, 1), round(serial, 1)
            rec.pop("total_seconds", None)
            rec["date"] = _dt.date.today().isoformat()
            rec["note"] = (f"one whole-course run with {args.jobs} job(s): each notebook's own wall time"
                           + (" (two kernels sharing the cores)" if args.jobs > 1 else "")
                           + ", their sum (sequential) and the wall time of the run")
        rec["profile"] = os.environ["COURSE_PROFILE"]
        rec_path.parent.mkdir(exist_ok=True)
        rec_path.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        import readme_times  # the README's notebook map is generated from this file, never typed

        readme_times.main([])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

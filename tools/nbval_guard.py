"""pytest plugin for the nbval run (``make test``/``make notebooks`` load it with ``-p tools.nbval_guard``).

* **Notebook cap.** ``--nb-cap SECONDS`` (default 600): once a notebook has run that long, its
  remaining cells fail at once with a message naming the notebook, the cell and the seconds spent,
  instead of the run going on for many minutes. Each single cell is bounded by nbval's own
  ``--nbval-cell-timeout`` (the Makefile sets 120 s).
* **Transport.** nbval's kernels talk over IPC sockets in a private folder on POSIX (like
  ``tools/run_course.py``): no localhost TCP ports to race for between concurrent runs and no
  "Kernel is running over TCP without encryption" warning.

nbval itself polls the kernel with blocking (level-triggered) sockets, so the missed asyncio
wake-up that stalled ``make course`` (see ``tools/run_course.py``) cannot hold it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

_started: dict[str, float] = {}


def pytest_addoption(parser):
    parser.addoption("--nb-cap", type=float, default=600.0,
                     help="fail the rest of a notebook once it has run this many seconds (default 600)")


def _patch_nbval_transport() -> None:
    if os.name != "posix":
        return
    try:
        import nbval.kernel as nbk
    except ImportError:  # nbval not installed: nothing to patch
        return
    base = nbk.KernelManager
    if getattr(base, "_course_ipc", False):
        return

    class IPCKernelManager(base):
        _course_ipc = True

        def __init__(self, *args, **kwargs):
            self._socket_dir = tempfile.mkdtemp(prefix="nbk-")
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(Path(self._socket_dir) / "k"))  # absolute: the kernel runs elsewhere
            super().__init__(*args, **kwargs)

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart:
                shutil.rmtree(self._socket_dir, ignore_errors=True)

    nbk.KernelManager = IPCKernelManager


def pytest_configure(config):
    _patch_nbval_transport()


def pytest_runtest_setup(item):
    parent = getattr(item, "parent", None)
    if parent is None or type(item).__name__ != "IPyNbCell":
        return
    key = str(getattr(parent, "path", getattr(parent, "fspath", parent.name)))
    now = time.monotonic()
    t0 = _started.setdefault(key, now)
    cap = item.config.getoption("--nb-cap")
    if cap and now - t0 > cap:
        pytest.fail(f"{Path(key).name}: notebook cap of {cap:.0f} s exceeded after {now - t0:.0f} s; "
                    f"not running {item.name} (raise --nb-cap, or find the slow cell in the durations above)",
                    pytrace=False)

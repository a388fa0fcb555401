"""Shared test fixtures.

``real_data_dir("busi_gt")`` returns the folder of a real dataset (``../shared/data`` in a checkout,
or ``COURSE_DATA_DIR``). When it is missing the test is skipped, or *fails* when
``COURSE_REQUIRE_REAL_DATA=1`` (CI sets it), so CI can never go green without the real data.
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from course_lib import runtime  # noqa: E402


def _real_data_dir(folder: str):
    found = runtime.find_data_dir(folder)
    if found is None:
        msg = (
            f"real dataset folder '{folder}' not found in {[str(r) for r in runtime.data_roots()]}; "
            f"set COURSE_DATA_DIR (see data_cards/)"
        )
        if runtime.real_data_required():
            pytest.fail(msg + " — COURSE_REQUIRE_REAL_DATA=1, so this is a failure, not a skip")
        pytest.skip(msg)
    return found


@pytest.fixture
def real_data_dir():
    """Callable fixture: ``real_data_dir("hc18") -> Path`` (skip, or fail under CI)."""
    return _real_data_dir


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors run faster single-threaded, and tests stay quick on a busy 2-core box."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests write caches under a temporary COURSE_CACHE, never the user's."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path_factory.getbasetemp() / "course_cache"))
    yield

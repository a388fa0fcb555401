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


# --------------------------------------------------------------------------- shared model fixtures
def make_tiny_vit(layers: int = 2, width: int = 32, heads: int = 4, image_size: int = 32, patch_size: int = 8,
                  output_dim: int = 16, seed: int = 0):
    """A small open_clip ``VisionTransformer`` (same module names as ViT-B/16), random weights, eval mode."""
    import torch
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(image_size=image_size, patch_size=patch_size, width=width, layers=layers, heads=heads,
                             mlp_ratio=2.0, output_dim=output_dim).eval()


@pytest.fixture
def tiny_vit():
    """Factory fixture: ``tiny_vit(layers=3, width=32, ...)`` -> open_clip VisionTransformer (random weights)."""
    return make_tiny_vit


@pytest.fixture
def tiny_clip():
    """The course's sonoclip-tiny architecture with random weights (seed 0), eval mode."""
    from course_lib.models import build_sonoclip_tiny

    return build_sonoclip_tiny(seed=0).eval()

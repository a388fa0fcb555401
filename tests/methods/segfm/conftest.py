"""Shared fixtures of the segfm tests: random in-context inputs and a toy segmentation task."""
from __future__ import annotations

import numpy as np
import pytest
import torch


def _icl_inputs(B=2, S=3, H=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(B, 1, H, H, generator=g)
    s = torch.rand(B, S, 2, H, H, generator=g)
    s[:, :, 1] = (s[:, :, 1] > 0.5).float()
    return q, s


class _ToyTask:
    def __init__(self, n=12, H=16, seed=0):
        rng = np.random.default_rng(seed)
        self.images = rng.random((n, H, H)).astype(np.float32)
        self.labels = (self.images > 0.5).astype(np.float32)
        self.name = "toy"

    def __len__(self):
        return len(self.images)


@pytest.fixture
def icl_inputs():
    """Factory: ``icl_inputs(B, S, H, seed) -> (query (B,1,H,H), support (B,S,2,H,H) with binary labels)``."""
    return _icl_inputs


@pytest.fixture
def toy_task():
    """Factory: ``toy_task(n, H, seed)`` -> a task with ``images``, ``labels`` (image > 0.5) and ``name``."""
    return _ToyTask

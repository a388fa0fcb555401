"""Shared input checks of the few-shot CLIP methods (features, support sets, text weights) and the
single-thread context they run in; used by every module of ``clip_fewshot`` (notebooks 03, 04).

Imports nothing from ``course_lib`` above the core, so every method module can import it without
forming an import circle.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["check_features", "check_support", "check_text_weights", "single_thread"]


@contextmanager
def single_thread():
    """Run a block with one torch thread and one BLAS/OpenMP thread, then restore.

    The few-shot problems here are tiny (tens of samples x a few hundred features); on a busy
    2-core machine multi-threaded BLAS/torch spends far more time synchronising than computing
    (we measured 10-60x slow-downs), so every few-shot fit runs single-threaded.
    """
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(n)


def check_features(x, name: str = "features", dim: int | None = None) -> torch.Tensor:
    """A float 2-D tensor ``(N, D)``; raises a clear error otherwise."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(
            f"{name} must be a 2-D array (num_samples, feature_dim), got {shape}; "
            f"encode images with bb.encode_image(...) or load them from the feature cache"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows); pass at least one sample")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(
            f"{name} have width {x.shape[1]} but the text weights have width {dim}; "
            f"use image and text features from the same backbone"
        )
    return x.float()


def check_support(x, y, n_classes: int | None = None, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a labelled support set: features ``(N, D)``, integer labels ``(N,)``."""
    if isinstance(x, (list, tuple)) and len(x) == 0:
        raise ValueError("the support set is empty; sample k shots per class with few_shot_indices(labels, k)")
    x = check_features(x, "support features", dim)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long).to(x.device)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"support labels must be a 1-D array with one label per support feature; got shape "
            f"{tuple(y.shape)} for {len(x)} features"
        )
    if y.min() < 0 or (n_classes is not None and y.max() >= n_classes):
        raise ValueError(
            f"support labels must be integers in 0..{(n_classes or 0) - 1}, got {sorted(set(y.tolist()))}; "
            f"map class names to indices of the text weights"
        )
    if n_classes is not None and len(torch.unique(y)) < n_classes:
        missing = sorted(set(range(n_classes)) - set(y.tolist()))
        raise ValueError(
            f"the support set has no sample of class(es) {missing}; every class needs at least one shot "
            f"(use few_shot_indices(labels, k), which draws exactly k per class)"
        )
    return x, y


def check_text_weights(t) -> torch.Tensor:
    """L2-normalised class text embeddings ``(K, D)``, ``K >= 2``."""
    t = check_features(t, "text weights")
    if t.shape[0] < 2:
        raise ValueError(
            f"text weights must have one row per class (>= 2 classes), got {t.shape[0]}; "
            f"build them with zero-shot class prompts"
        )
    return F.normalize(t, dim=-1)

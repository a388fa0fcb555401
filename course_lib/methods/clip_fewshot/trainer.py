"""The small cross-entropy trainer of the feature-space few-shot methods (CLIP-Adapter, Tip-Adapter-F)
on cached image features, a thin call to :func:`course_lib.train.fit`; used by notebook 04.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib import train

__all__ = ["train_on_features"]


# region: fewshot-train-on-features
def train_on_features(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    desc: str = "train",
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """Cross-entropy training of ``model(features) -> logits`` with AdamW (eps 1e-4) and a per-step
    cosine schedule to zero, through :func:`course_lib.train.fit` (step mode).

    Every epoch draws one seeded permutation of the ``N`` samples and walks it in mini-batches of
    ``batch_size`` (the last one may be smaller). ``encode`` (optional) maps each mini-batch of ``x``
    to features first (under ``no_grad``): passing the frozen image encoder and raw images here is the
    "re-encode every epoch" baseline of the speed benchmark; the default trains on cached features.
    Returns the mean loss per epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameter; nothing to train")
    device = params[0].device
    x, y = x.to(device), torch.as_tensor(y, dtype=torch.long, device=device)
    n = len(y)
    per_epoch = max(1, math.ceil(n / batch_size))
    g = torch.Generator().manual_seed(seed)
    perm = [None]

    def batch(step):  # the same draws, in the same order, as one randperm per epoch
        b = step % per_epoch
        if b == 0:
            perm[0] = torch.randperm(n, generator=g).to(device)
        idx = perm[0][b * batch_size:(b + 1) * batch_size]
        return x[idx], y[idx]

    def forward(m, xy):
        xb, yb = xy
        if encode is not None:
            with torch.no_grad():
                xb = encode(xb)
        return F.cross_entropy(m(xb.float()), yb)

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=1e-4)
    hist = train.fit(model, batch, steps=epochs * per_epoch, optimizer=opt, scheduler="cosine",
                     forward=forward, progress=progress, desc=desc)
    model.eval()
    sizes = np.array([len(range(b * batch_size, min(n, (b + 1) * batch_size))) for b in range(per_epoch)])
    losses = np.asarray(hist["step_loss"]).reshape(epochs, per_epoch)
    return [float((row * sizes).sum() / n) for row in losses]
# endregion

"""Multi-level feature aggregation and the segmentation / classification heads of HT.
Used by notebook 09 (§4-§6) through :class:`course_lib.methods.ht.recipe.AdaptedViT`.

Paper: Qu et al., arXiv:2506.08849 (HT), Sec. III (task heads). Patch tokens are taken from
intermediate blocks of the ViT — blocks 3, 6 and 9 of a 12-block ViT-B/16, counted from 1 (i.e.
``resblocks[2], [5], [8]``); for other depths the same relative depths 1/4, 1/2, 3/4 (see
:func:`aggregation_blocks`). Each level ``l`` is

    P_l = Linear_l(T_l)                       project width D -> d_red
    R_l = Linear'_l(LayerNorm_l(P_l))         refine
    F_agg = Σ_l R_l                           reshaped to (B, d_red, H, W)

The paper calls the refinement "a non-linear block consisting of LayerNorm and linear layers" and names no
activation; LayerNorm is the non-linearity (it divides each token by its own standard deviation), so we add none.

Heads:

* :class:`SegmentationHead` — 1×1 convolution to class logits and bilinear upsampling to the input
  size. (The paper lists "upsample, then 1×1 conv"; both operators are linear and bilinear weights
  sum to 1, so the two orders give the same logits — we convolve first, on the small grid, which is
  ``(S/patch)²`` times cheaper.)
* :class:`ClassificationHead` — adaptive average pooling, then ``Linear → ReLU → Dropout → Linear``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .mona import infer_grid, tokens_to_map

__all__ = ["aggregation_blocks", "MultiLevelAggregation", "SegmentationHead", "ClassificationHead"]


def aggregation_blocks(depth: int, fractions: Sequence[float] = (0.25, 0.5, 0.75)) -> list[int]:
    """0-based block indices at relative depths ``fractions`` (12 blocks -> ``[2, 5, 8]`` = blocks 3, 6, 9)."""
    if not isinstance(depth, int) or depth <= 0:
        raise ValueError(f"depth must be the positive number of transformer blocks, got {depth!r}")
    out = []
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"relative depths must be in (0, 1], got {f}")
        idx = max(0, int(round(f * depth)) - 1)  # same rule as Backbone.blocks_at (course_lib.models)
        if idx not in out:
            out.append(idx)
    return out


class MultiLevelAggregation(nn.Module):
    """Project, refine and sum patch tokens from several blocks into ``(B, d_red, H, W)``."""

    def __init__(self, width: int, blocks: Sequence[int], d_red: int = 256):
        super().__init__()
        blocks = [int(b) for b in blocks]
        if not blocks:
            raise ValueError("blocks is empty; pass e.g. aggregation_blocks(depth)")
        if not isinstance(d_red, int) or d_red <= 0:
            raise ValueError(f"d_red must be a positive int, got {d_red!r}")
        self.blocks, self.width, self.d_red = blocks, width, d_red
        self.proj = nn.ModuleList(nn.Linear(width, d_red) for _ in blocks)
        self.norm = nn.ModuleList(nn.LayerNorm(d_red) for _ in blocks)
        self.refine = nn.ModuleList(nn.Linear(d_red, d_red) for _ in blocks)

    def forward(self, feats, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """``feats``: list of ``(B, N, D)`` patch tokens in ``self.blocks`` order, or a dict keyed by block."""
        if isinstance(feats, Mapping):
            missing = [b for b in self.blocks if b not in feats]
            if missing:
                raise ValueError(f"features for blocks {missing} are missing (got {sorted(feats)}); "
                                 f"extract blocks {self.blocks}")
            feats = [feats[b] for b in self.blocks]
        if len(feats) != len(self.blocks):
            raise ValueError(f"got {len(feats)} feature levels but the aggregation was built for "
                             f"blocks {self.blocks}")
        total = 0
        for t, proj, norm, ref in zip(feats, self.proj, self.norm, self.refine):
            if t.ndim != 3 or t.shape[-1] != self.width:
                raise ValueError(f"expected patch tokens (B, N, {self.width}), got {tuple(t.shape)}")
            total = total + ref(norm(proj(t)))
        return tokens_to_map(total, infer_grid(total.shape[1], hw))


class SegmentationHead(nn.Module):
    """1×1 conv to ``n_classes`` logits + bilinear upsampling to ``out_size``."""

    def __init__(self, d_red: int, n_classes: int = 2):
        super().__init__()
        if not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes must be a positive int (2 for lesion vs background), got {n_classes!r}")
        self.conv = nn.Conv2d(d_red, n_classes, 1)

    def forward(self, fmap: torch.Tensor, out_size) -> torch.Tensor:
        return F.interpolate(self.conv(fmap), size=out_size, mode="bilinear", align_corners=False)


class ClassificationHead(nn.Module):
    """Adaptive average pool + ``Linear(d_red, hidden) → ReLU → Dropout → Linear(hidden, n_classes)``."""

    def __init__(self, d_red: int, n_classes: int = 2, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        if not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2 for classification, got {n_classes!r}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(nn.Linear(d_red, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(fmap).flatten(1))

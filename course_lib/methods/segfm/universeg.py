"""UniverSeg-style in-context segmentation, the network: CrossConv, CrossBlock, the multi-scale
UniverSeg and its input contract (notebook 06; trained in :mod:`.meta_training`, used in :mod:`.evaluation`).

Paper: V. I. Butoi, J. J. G. Ortiz, T. Ma, M. R. Sabuncu, J. Guttag, A. V. Dalca,
"UniverSeg: Universal Medical Image Segmentation", ICCV 2023 (arXiv:2304.06131).

* :class:`CrossConv2d` -- the *CrossConv* operator (eq. 1): for a query feature map ``u``
  and each support feature map ``v_i`` the *same* convolution is applied to the channel
  concatenation ``u || v_i``, giving one output per support entry.
* :class:`CrossBlock` -- eq. 2::

      z_i  = A(CrossConv(u, v_i; theta_z))          # interaction query <-> support_i
      u'   = 1/n sum_i z_i                          # query update: mean over the support
      v'_i = A(Conv(z_i; theta_v))                  # support update, one per entry

  ``A`` is a LeakyReLU. Because ``u'`` is a mean over ``i`` and the same weights are
  applied to every ``i``, the query output is invariant to the order of the support set
  (tested in ``tests/methods/segfm/test_universeg.py``).
* :class:`UniverSeg` -- the multi-scale encoder-decoder of Sec. 3.2: CrossBlocks at each
  level, 2x down-sampling of query and support between levels, a decoder that up-samples,
  concatenates the encoder skip of the same level and applies another CrossBlock, and a
  final 1x1 convolution on the query stream that returns one logit map.

Input contract (checked by :func:`check_inputs`, errors name the problem and the fix):
``query`` float ``(B, 1, H, W)`` in ``[0, 1]``; ``support`` float ``(B, S, 2, H, W)`` whose
channel 0 is the image and channel 1 the binary label, both in ``[0, 1]``; ``S >= 1``;
``H`` and ``W`` equal for query and support and divisible by ``2**depth`` where ``depth`` is
the number of down-samplings (``len(channels) - 1``).

Differences from the paper (size only; the maths is the same): 4 levels of 16 channels
instead of 64, 64x64 images instead of 128x128, SonoSynth tasks instead of MegaMedical.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


# =========================================================================== input contract
def check_inputs(query, support, depth: int = 0) -> tuple[int, int, int, int]:
    """Validate the UniverSeg input contract; return ``(B, S, H, W)``.

    Raises ``TypeError``/``ValueError`` with a message naming the problem and the fix.
    """
    for name, t in (("query", query), ("support", support)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor, got {type(t).__name__}; "
                f"convert with torch.as_tensor(x, dtype=torch.float32)"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor in [0, 1], got dtype {t.dtype}; use .float() (and /255 for uint8 images)")
    if query.ndim != 4 or query.shape[1] != 1:
        raise ValueError(
            f"query must have shape (B, 1, H, W), got {tuple(query.shape)}; "
            f"for a single (H, W) image use x[None, None]"
        )
    if support.ndim != 5:
        raise ValueError(
            f"support must have shape (B, S, 2, H, W) (image and label stacked on dim 2), got "
            f"{tuple(support.shape)}; build it with torch.stack([images, labels], dim=2)[None] "
            f"from (S, H, W) images and labels"
        )
    B, S, C, H, W = support.shape
    if S == 0:
        raise ValueError(
            "support set is empty (S = 0): UniverSeg needs at least one labelled example of the task; "
            "pass support of shape (B, S>=1, 2, H, W)"
        )
    if C != 2:
        raise ValueError(
            f"support must carry 2 channels (image, label) on dim 2, got {C}; "
            f"use torch.stack([images, labels], dim=2)"
        )
    if query.shape[0] != B:
        raise ValueError(
            f"query batch ({query.shape[0]}) and support batch ({B}) differ; give every query its own "
            f"support set, e.g. support.expand({query.shape[0]}, -1, -1, -1, -1)"
        )
    if query.shape[-2:] != (H, W):
        raise ValueError(
            f"query size {tuple(query.shape[-2:])} differs from support size {(H, W)}; "
            f"resize both to the same size (e.g. course_lib.data.common.resize_image)"
        )
    mult = 2**depth
    if H % mult or W % mult:
        raise ValueError(
            f"image size {(H, W)} is not divisible by 2**depth = {mult} (depth={depth} down-samplings); "
            f"resize to a multiple of {mult}, e.g. {max(mult, (H // mult) * mult)}"
        )
    for name, t in (("query", query), ("support images", support[:, :, 0]), ("support labels", support[:, :, 1])):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contain NaN or inf values; clean the inputs")
        lo, hi = float(t.min()), float(t.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name} must lie in [0, 1], found values in [{lo:.3g}, {hi:.3g}]; "
                f"rescale images with (x - x.min()) / (x.max() - x.min()) and use 0/1 labels"
            )
    return B, S, H, W


# =========================================================================== building blocks
class CrossConv2d(nn.Module):
    """CrossConv (paper eq. 1): one shared convolution applied to ``u || v_i`` for every i.

    ``u``: ``(B, Cu, H, W)``; ``v``: ``(B, S, Cv, H, W)`` -> ``(B, S, Cout, H, W)``.
    """

    def __init__(self, in_query: int, in_support: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_query + in_support, out_channels, kernel_size, padding=kernel_size // 2)

    # region: universeg-crossconv
    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, S = v.shape[:2]
        uu = u.unsqueeze(1).expand(-1, S, -1, -1, -1)
        x = torch.cat([uu, v], dim=2).flatten(0, 1)  # (B*S, Cu+Cv, H, W)
        y = self.conv(x)
        return y.view(B, S, *y.shape[1:])
    # endregion


class CrossBlock(nn.Module):
    """CrossBlock (paper eq. 2).

    ``z_i = A(CrossConv(u, v_i))``; ``u' = mean_i z_i``; ``v'_i = A(Conv(z_i))``.
    Returns ``(u', v')`` with shapes ``(B, C, H, W)`` and ``(B, S, C, H, W)``.
    """

    def __init__(self, in_query: int, in_support: int, channels: int, negative_slope: float = 0.1):
        super().__init__()
        self.cross = CrossConv2d(in_query, in_support, channels)
        self.conv_v = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(negative_slope)

    # region: universeg-crossblock
    def forward(self, u: torch.Tensor, v: torch.Tensor, need_support: bool = True):
        z = self.act(self.cross(u, v))  # (B, S, C, H, W)
        u_new = z.mean(dim=1)  # average over the support set -> order invariant
        if not need_support:
            return u_new, None
        B, S = z.shape[:2]
        v_new = self.act(self.conv_v(z.flatten(0, 1)))
        return u_new, v_new.view(B, S, *v_new.shape[1:])
    # endregion


def _pool(u, v):
    B, S = v.shape[:2]
    vp = F.avg_pool2d(v.flatten(0, 1), 2)
    return F.avg_pool2d(u, 2), vp.view(B, S, *vp.shape[1:])


def _up(u, v):
    B, S = v.shape[:2]
    vu = F.interpolate(v.flatten(0, 1), scale_factor=2, mode="nearest")
    return F.interpolate(u, scale_factor=2, mode="nearest"), vu.view(B, S, *vu.shape[1:])


def crossblock_levels(channels: Sequence[int], query_in: int, support_in: int) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The encoder and decoder CrossBlocks of a UniverSeg-style U-Net (Sec. 3.2): one encoder block per
    level (``query_in``/``support_in`` input channels at the first level), one decoder block per up-sampling
    taking the level below concatenated with the skip. Shared by :class:`UniverSeg` and Tyche."""
    enc, cu, cv = [], query_in, support_in
    for c in channels:
        enc.append(CrossBlock(cu, cv, c))
        cu = cv = c
    dec = []
    for lvl in range(len(channels) - 2, -1, -1):
        c_in = channels[lvl + 1] + channels[lvl]
        dec.append(CrossBlock(c_in, c_in, channels[lvl]))
    return nn.ModuleList(enc), nn.ModuleList(dec)


class UniverSeg(nn.Module):
    """Multi-scale encoder-decoder of CrossBlocks (Sec. 3.2). ``forward(query, support) -> logits``.

    ``channels`` gives the width of each level; ``len(channels) - 1`` down-samplings (``depth``).
    """

    def __init__(self, channels: Sequence[int] = (16, 16, 16, 16), validate: bool = True):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or any(c <= 0 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}; e.g. (16, 16, 16, 16)")
        self.channels = channels
        self.depth = len(channels) - 1
        self.validate = validate
        self.enc, self.dec = crossblock_levels(channels, query_in=1, support_in=2)
        self.out = nn.Conv2d(channels[0], 1, 1)

    # region: universeg-forward
    def forward(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        if self.validate:
            check_inputs(query, support, self.depth)
        u, v = query, support
        skips = []
        for i, blk in enumerate(self.enc):
            u, v = blk(u, v)
            if i < self.depth:
                skips.append((u, v))
                u, v = _pool(u, v)
        for j, blk in enumerate(self.dec):
            su, sv = skips.pop()
            u, v = _up(u, v)
            u = torch.cat([u, su], 1)
            v = torch.cat([v, sv], 2)
            u, v = blk(u, v, need_support=j < len(self.dec) - 1)
        return self.out(u)
    # endregion

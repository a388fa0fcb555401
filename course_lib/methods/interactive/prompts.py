"""Prompts for interactive segmentation: points, boxes and correction clicks simulated from a mask.
Used by the SAM training recipe and the Dice-vs-clicks evaluation (notebook 07).

SAM (Kirillov et al., "Segment Anything", ICCV 2023, Sec. 3 and App. A "Training algorithm")
simulates a user: the first prompt is a foreground point drawn uniformly inside the object, or the
object's box with noise (standard deviation 10 % of the box side, at most 20 px); each following
click is drawn uniformly from the *error region* of the previous prediction — a positive click on a
missed pixel (false negative), a negative click on a wrongly included one (false positive).
For evaluation the clicks are deterministic (the interactive-segmentation protocol of RITM, Sofiiuk
et al. 2022): each click goes to the point farthest from the boundary of the largest error region,
positive if that region is missed object, negative if it is spurious.

Coordinates are ``(x, y)`` = (column, row) in the pixel space of the image given to the model, as
SAM's prompt encoder expects.
"""
from __future__ import annotations

import numpy as np

POSITIVE, NEGATIVE = 1, 0


def _check_mask(mask, name: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name} must be one (H, W) binary mask, got shape {m.shape}; index one image of a batch")
    if m.dtype != bool and m.size and not np.isin(m, (0, 1)).all():
        raise ValueError(f"{name} must be binary (0/1 or bool); threshold it first, e.g. probs > 0.5")
    return m.astype(bool)


def check_point(point, image_size: int) -> tuple[float, float]:
    """Validate an ``(x, y)`` point against a square image of side ``image_size``."""
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError):
        raise ValueError(f"a point is two numbers (x, y) = (column, row), got {point!r}") from None
    if not (0 <= x < image_size and 0 <= y < image_size):
        raise ValueError(f"point (x={x:g}, y={y:g}) lies outside the {image_size}x{image_size} image; "
                         f"use pixel coordinates of the model's input, 0 <= x, y < {image_size}")
    return x, y


def check_box(box, image_size: int) -> tuple[float, float, float, float]:
    """Validate an ``(x0, y0, x1, y1)`` box: non-empty, not inverted, inside the image."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"a box is four numbers (x0, y0, x1, y1), got {box!r}") from None
    if x1 <= x0 or y1 <= y0:
        kind = "empty" if (x1 == x0 or y1 == y0) else "inverted"
        raise ValueError(f"box {box!r} is {kind}: need x0 < x1 and y0 < y1 (top-left, then bottom-right corner)")
    if x0 < 0 or y0 < 0 or x1 > image_size or y1 > image_size:
        raise ValueError(f"box {box!r} reaches outside the {image_size}x{image_size} image; clip it to [0, {image_size}]")
    return x0, y0, x1, y1


def random_point(mask, rng: np.random.Generator) -> tuple[float, float]:
    """A point drawn uniformly inside ``mask`` (SAM's first-point simulation)."""
    m = _check_mask(mask)
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        raise ValueError("cannot place a point in an empty mask; skip images without the object")
    i = rng.integers(len(ys))
    return float(xs[i]) + 0.5, float(ys[i]) + 0.5


def jittered_box(mask, rng: np.random.Generator, noise: float = 0.1, max_px: float = 20.0) -> tuple:
    """The mask's bounding box with SAM's noise: each coordinate moved by N(0, noise * side), capped at ``max_px``."""
    m = _check_mask(mask)
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        raise ValueError("cannot draw a box around an empty mask; skip images without the object")
    x0, x1, y0, y1 = xs.min(), xs.max() + 1.0, ys.min(), ys.max() + 1.0
    w, h = x1 - x0, y1 - y0
    d = rng.normal(0.0, noise, 4) * np.array([w, h, w, h])
    d = np.clip(d, -max_px, max_px)
    H, W = m.shape
    bx = np.array([x0, y0, x1, y1], float) + d
    bx[[0, 2]] = np.clip(bx[[0, 2]], 0, W)
    bx[[1, 3]] = np.clip(bx[[1, 3]], 0, H)
    if bx[2] - bx[0] < 1:
        bx[2] = min(W, bx[0] + 1)
    if bx[3] - bx[1] < 1:
        bx[3] = min(H, bx[1] + 1)
    return tuple(float(v) for v in bx)


def tight_box(mask) -> tuple:
    """The mask's exact bounding box ``(x0, y0, x1, y1)`` (evaluation)."""
    m = _check_mask(mask)
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        raise ValueError("cannot draw a box around an empty mask")
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def random_correction(pred, target, rng: np.random.Generator):
    """A click drawn uniformly from the error region ``pred xor target`` (training): ``((x, y), label)``,
    label 1 on a missed pixel, 0 on a false positive; ``None`` when the prediction is perfect."""
    p, t = _check_mask(pred, "pred"), _check_mask(target, "target")
    err = p ^ t
    ys, xs = np.nonzero(err)
    if len(ys) == 0:
        return None
    i = rng.integers(len(ys))
    y, x = ys[i], xs[i]
    return (float(x) + 0.5, float(y) + 0.5), POSITIVE if t[y, x] else NEGATIVE


# region: interactive-correction-click
def center_click(pred, target):
    """The deterministic evaluation click: the pixel farthest from the boundary of the largest error
    region (false negatives and false positives are separate regions). Returns ``((x, y), label)``
    with label 1 (add: the region is missed object) or 0 (remove: the region is spurious), or
    ``None`` when ``pred == target``."""
    from scipy import ndimage

    p, t = _check_mask(pred, "pred"), _check_mask(target, "target")
    best = None
    for region, label in ((t & ~p, POSITIVE), (p & ~t, NEGATIVE)):
        lab, n = ndimage.label(region)
        if n == 0:
            continue
        sizes = ndimage.sum(region, lab, index=np.arange(1, n + 1))
        k = int(np.argmax(sizes)) + 1
        if best is None or sizes[k - 1] > best[0]:
            best = (sizes[k - 1], lab == k, label)
    if best is None:
        return None
    _, comp, label = best
    dist = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return (float(x) + 0.5, float(y) + 0.5), label
# endregion

"""Plotting helpers: image grids, GT/FP/TP mask overlays and learning curves (matplotlib).

Overlay colours follow the qualitative figures of the hybrid-tuning (HT) paper: ground truth
missed by the prediction (false negative) in **red**, predicted but not in the ground truth
(false positive) in **green**, and their overlap (true positive) in **yellow** (red + green).

Functions that draw return the matplotlib ``Figure``. In a notebook end the line with ``;``
(or assign the result) so the figure is shown once.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

#: RGB colours in [0, 1]
FN_COLOR = (1.0, 0.0, 0.0)  # GT only: red
FP_COLOR = (0.0, 1.0, 0.0)  # prediction only: green
TP_COLOR = (1.0, 1.0, 0.0)  # both: yellow


def _np(x) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def _as_display(img) -> np.ndarray:
    """(H, W), (1, H, W), (3, H, W), (H, W, 3) -> (H, W) or (H, W, 3) for imshow."""
    a = _np(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(f"cannot display an image of shape {a.shape}; expected (H, W), (H, W, 3) or (C, H, W)")
    if a.ndim == 3 and a.dtype.kind == "f":
        a = np.clip(a, 0, 1)  # normalised RGB; imshow would warn otherwise
    return a


def _grey(image) -> np.ndarray:
    a = _as_display(image).astype(np.float64)
    if a.ndim == 3:
        a = a.mean(-1)
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:  # not in [0, 1]: stretch for display
        a = (a - lo) / max(hi - lo, 1e-8)
    return a


def overlay(image, pred=None, gt=None, alpha: float = 0.6) -> np.ndarray:
    """RGB ``(H, W, 3)`` float array: the grey image with GT-only red, FP green, TP yellow.

    ``pred``/``gt`` are binary masks (either may be None). ``alpha`` = opacity of the colours
    (``alpha=1`` paints the pure colours).
    """
    g = _grey(image)
    rgb = np.repeat(g[..., None], 3, axis=-1)
    p = np.zeros(g.shape, bool) if pred is None else _np(pred).astype(bool)
    t = np.zeros(g.shape, bool) if gt is None else _np(gt).astype(bool)
    for name, m in (("pred", p), ("gt", t)):
        if m.shape != g.shape:
            raise ValueError(f"{name} mask shape {m.shape} differs from image shape {g.shape}; resize it first")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    for region, color in ((t & ~p, FN_COLOR), (p & ~t, FP_COLOR), (p & t, TP_COLOR)):
        rgb[region] = (1 - alpha) * rgb[region] + alpha * np.asarray(color)
    return rgb


def _layout(n: int, ncols: int, size: float):
    import matplotlib.pyplot as plt

    if n == 0:
        raise ValueError("nothing to show: got 0 images")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes.ravel()


def show_grid(images, titles: Sequence[str] | None = None, ncols: int = 8, cmap: str = "gray", masks=None,
              size: float = 1.8, suptitle: str | None = None):
    """Images in a grid (list or ``(N, H, W)``/``(N, C, H, W)`` array/tensor).

    ``masks`` (same count): each is drawn as a contour (or, for a multi-label map, a
    translucent colour overlay). Returns the Figure.
    """
    imgs = list(images) if not hasattr(images, "shape") else [images[i] for i in range(len(images))]
    if titles is not None and len(titles) != len(imgs):
        raise ValueError(f"got {len(titles)} titles for {len(imgs)} images")
    if masks is not None and len(masks) != len(imgs):
        raise ValueError(f"got {len(masks)} masks for {len(imgs)} images")
    fig, axes = _layout(len(imgs), ncols, size)
    for i, (ax, img) in enumerate(zip(axes, imgs)):
        a = _as_display(img)
        ax.imshow(a, cmap=cmap if a.ndim == 2 else None, interpolation="nearest")
        if masks is not None and masks[i] is not None:
            m = _np(masks[i])
            if m.max() > 1:  # label map
                ax.imshow(np.ma.masked_equal(m, 0), cmap="tab10", alpha=0.45, vmin=0, vmax=10, interpolation="nearest")
            elif m.any():
                ax.contour(m.astype(float), levels=[0.5], colors=[FN_COLOR], linewidths=0.8)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_overlays(images, preds, gts, titles: Sequence[str] | None = None, ncols: int = 4, alpha: float = 0.6,
                  size: float = 2.4, legend: bool = True):
    """A grid of :func:`overlay` panels with a GT-only / FP / TP legend. Returns the Figure."""
    from matplotlib.patches import Patch

    n = len(images)
    if len(preds) != n or len(gts) != n:
        raise ValueError(f"images, preds and gts must have the same length, got {n}, {len(preds)}, {len(gts)}")
    fig, axes = _layout(n, ncols, size)
    for i, ax in enumerate(axes[:n]):
        ax.imshow(overlay(images[i], preds[i], gts[i], alpha), interpolation="nearest")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    if legend:
        handles = [Patch(color=FN_COLOR, label="GT only (FN)"), Patch(color=FP_COLOR, label="prediction only (FP)"),
                   Patch(color=TP_COLOR, label="overlap (TP)")]
        fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    return fig


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(y) < k:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = (c[k:] - c[:-k]) / k
    return np.concatenate([y[: k - 1].cumsum() / np.arange(1, k), out])


def plot_history(history: Mapping, smooth: int | None = None, title: str | None = None):
    """Learning curves of a :func:`course_lib.train.fit` history: loss per step (raw + moving
    average) and per epoch, validation metrics per epoch, and the learning rate. Returns the Figure."""
    import matplotlib.pyplot as plt

    steps = np.asarray(history.get("step_loss", []), dtype=float)
    if steps.size == 0:
        raise ValueError("history has no 'step_loss'; pass the dict returned by course_lib.train.fit")
    val_keys = [k for k in history if k.startswith("val_") and len(history[k])]
    ncols = 3 if val_keys else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.2))
    ax = axes[0]
    x = np.arange(1, len(steps) + 1)
    k = smooth or max(1, len(steps) // 20)
    ax.plot(x, steps, alpha=0.3, lw=0.8, label="step")
    ax.plot(x, _smooth(steps, k), lw=1.5, label=f"moving avg ({k})")
    ep = history.get("train_loss", [])
    if len(ep):
        spe = len(steps) / len(ep)
        ax.plot(np.arange(1, len(ep) + 1) * spe, ep, "o-", ms=3, label="epoch mean")
    ax.set(xlabel="step", ylabel="training loss", title="loss")
    ax.legend(fontsize=7)
    if val_keys:
        ax = axes[1]
        for kk in val_keys:
            v = history[kk]
            ax.plot(np.arange(1, len(v) + 1), v, "o-", ms=3, label=kk[4:])
        ax.set(xlabel="epoch", title="validation")
        ax.legend(fontsize=7)
    ax = axes[-1]
    ax.plot(x, history.get("lr", [np.nan] * len(steps)))
    ax.set(xlabel="step", ylabel="learning rate", title="schedule")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(curves: Mapping, xlabel: str = "", ylabel: str = "", title: str = "", logx: bool = False,
                errors: Mapping | None = None, ax=None):
    """Several named series on one axis (e.g. Dice vs shots per method). Returns the Figure.

    Each value of ``curves`` is a list of y (x = 1..n), a ``{x: y}`` dict, or an ``(xs, ys)``
    pair. ``errors`` (same keys) draws ``y +- err`` bands.
    """
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("plot_curves got no series; pass e.g. {'method': [0.5, 0.6]}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
    else:
        fig = ax.figure
    for name, series in curves.items():
        xs, ys = _xy(series)
        ax.plot(xs, ys, "o-", ms=3, label=str(name))
        if errors is not None and name in errors:
            _, es = _xy(errors[name])
            ax.fill_between(xs, ys - es, ys + es, alpha=0.2)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _xy(series):
    if isinstance(series, Mapping):
        xs = np.asarray(list(series.keys()), dtype=float)
        ys = np.asarray(list(series.values()), dtype=float)
    elif isinstance(series, tuple) and len(series) == 2 and np.ndim(series[0]) == 1:
        xs, ys = np.asarray(series[0], dtype=float), np.asarray(series[1], dtype=float)
    else:
        ys = np.asarray(_np(series), dtype=float)
        xs = np.arange(1, len(ys) + 1, dtype=float)
    if xs.shape != ys.shape:
        raise ValueError(f"series x and y lengths differ: {xs.shape} vs {ys.shape}")
    return xs, ys

"""File and folder helpers shared by the real-data loaders (BUSI, HC18, TotalSegmentator, folders).
Used through those loaders by notebooks 00, 02, 05, 08 and 09 (which also reads its dataset folder).

Finding a dataset folder without silent fallbacks, decoding images/masks with clear errors,
resizing with or without keeping the aspect ratio, seeded subsets, and building a sample
with every key of the schema in :mod:`course_lib.data.common`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import runtime
from .common import SAMPLE_KEYS, check_positive, resize_image, resize_labels


def resolve_dir(folder: str, dataset: str, url: str, path=None, expect: Sequence[str] = ()) -> Path:
    """Find a real dataset folder.

    ``path=None``: :func:`course_lib.runtime.require_data_dir` (``COURSE_DATA_DIR``, then
    ``../shared/data``). An explicit ``path`` is used *alone* (no silent fallback to another
    copy): it may be the dataset folder itself (any name, e.g. ``Dataset_BUSI_with_GT``) or a
    folder that contains ``<folder>/``. ``expect`` lists entries the dataset folder must contain.
    """
    if path is None:
        return runtime.require_data_dir(folder, dataset, url)
    p = Path(path).expanduser()
    for cand in (p / folder, p):
        if not cand.is_dir():
            continue
        if not any(cand.iterdir()):
            raise runtime.DatasetNotFoundError(
                f"{dataset}: the folder {cand} is empty. Download the data from {url} and "
                f"unpack it there (see data_cards/)."
            )
        if not expect or any((cand / e).exists() for e in expect):
            return cand
    want = f" containing {', '.join(expect)}" if expect else ""
    raise runtime.DatasetNotFoundError(
        f"{dataset}: no dataset folder{want} at {p} or {p / folder}. Download it from {url} and pass "
        f"path= to the unpacked folder, or set COURSE_DATA_DIR to the folder that contains '{folder}/' "
        f"(see data_cards/)."
    )


def _open(file: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(file)
        im.load()  # decode now, so truncated files fail here and not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(
            f"corrupted or unreadable image file {file} ({type(e).__name__}: {e}); "
            f"re-download this file (or the dataset), or delete it and its mask(s) to leave it out"
        ) from None
    return im


def read_grey(file: Path) -> np.ndarray:
    """Image file -> ``float32`` ``(H, W)`` in ``[0, 1]`` (RGB/RGBA/16-bit are converted)."""
    im = _open(file)
    if im.mode in ("I;16", "I;16B", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        return (a - a.min()) / max(float(a.max() - a.min()), 1e-8)
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def read_binary(file: Path) -> np.ndarray:
    """Mask file (1-bit, grey, RGB or RGBA) -> ``uint8`` ``(H, W)`` in ``{0, 1}`` (grey > 127)."""
    im = _open(file)
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    return (np.asarray(im.convert("L")) > 127).astype(np.uint8)


def fit_to_size(image: np.ndarray, labels: Sequence[np.ndarray], size: int | None, keep_aspect: bool):
    """Resize ``image`` (bilinear) and each label array (nearest) to ``size x size``.

    ``keep_aspect=True`` first zero-pads the shorter side (centred) so anatomy is not
    stretched. Returns ``(image, labels, geometry)`` where geometry maps original pixel
    coordinates to returned ones: ``x' = x * sx + ox``, ``y' = y * sy + oy``.
    """
    h, w = image.shape
    geo = dict(sx=1.0, sy=1.0, ox=0.0, oy=0.0, orig_h=float(h), orig_w=float(w))
    if size is None:
        return image.astype(np.float32, copy=False), [lab.astype(np.uint8, copy=False) for lab in labels], geo
    size = check_positive("image_size", size)
    if keep_aspect and h != w:
        s = max(h, w)
        py, px = (s - h) // 2, (s - w) // 2
        image = np.pad(image, ((py, s - h - py), (px, s - w - px)))
        labels = [np.pad(lab, ((py, s - h - py), (px, s - w - px))) for lab in labels]
        geo.update(ox=px * size / s, oy=py * size / s)
        h = w = s
    geo.update(sx=size / w, sy=size / h)
    return resize_image(image, size), [resize_labels(lab, size) for lab in labels], geo


def natural_key(name: str):
    """Sort ``benign (2)`` before ``benign (10)`` (and ``010_2HC`` after ``010_HC``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def seeded_subset(items: list, limit: int | None, seed: int) -> list:
    """At most ``limit`` items chosen with ``numpy.random.default_rng(seed)``, in original order."""
    if limit is None or limit >= len(items):
        return list(items)
    check_positive("limit", limit)
    keep = np.random.default_rng(seed).choice(len(items), size=limit, replace=False)
    return [items[i] for i in sorted(keep.tolist())]


def make_sample(**kw) -> dict:
    """A sample with every key of the schema; missing entries get their 'absent' value."""
    h, w = kw["image"].shape
    base = dict(
        mask=np.zeros((h, w), np.uint8),
        label_map=np.zeros((h, w), np.uint8),
        structures=("background",),
        box=np.full(4, np.nan, np.float32),
        measurement=float("nan"),
        label=0,
        class_names=(),
        attributes={},
        report="",
        anatomy="",
        center="",
        pixel_spacing_mm=float("nan"),
        source="",
        id="",
    )
    base.update(kw)
    if set(base) != set(SAMPLE_KEYS):  # pragma: no cover - programming error
        raise KeyError(f"sample keys {sorted(set(base) ^ set(SAMPLE_KEYS))} do not match the schema")
    return {k: base[k] for k in SAMPLE_KEYS}

"""HC18: fetal head circumference from 2D ultrasound, in its published layout (real-data loader).
Used by notebook 00 (tour of the real data worlds; measurement task).

van den Heuvel TLA, de Bruijn D, de Korte CL, van Ginneken B. *Automated measurement of fetal
head circumference using 2D ultrasound images.* PLoS ONE 13(8):e0200412 (2018),
doi:10.1371/journal.pone.0200412. See ``data_cards/hc18.md``.

Layout (folder ``hc18``)::

    hc18/training_set_pixel_size_and_HC.csv     filename, pixel size(mm), head circumference (mm)
    hc18/training_set/NNN_HC.png                 grey image (mostly 800x540)
    hc18/training_set/NNN_HC_Annotation.png      the head annotation (same size)

(the images may also sit directly in ``hc18/``). Some subjects have several images
(``010_HC.png``, ``010_2HC.png``): ``attributes["subject"]`` holds the subject number so that
splits can keep a subject's images together.

The challenge annotates the head as an **ellipse** drawn by a sonographer. Depending on the
copy, the annotation file holds the ellipse outline (the original challenge release) or the
filled ellipse; we fill holes either way, so ``mask`` is always the **filled** head.
We then fit an ellipse to the mask from its second-order moments (for a uniformly filled ellipse
with semi-axes ``a >= b`` the covariance of the pixel coordinates has eigenvalues ``a^2/4`` and
``b^2/4``) and report its circumference with Ramanujan's approximation
``pi * (3(a+b) - sqrt((3a+b)(a+3b)))``, the quantity the challenge scores.

Returned per sample: ``measurement`` = the CSV head circumference in mm (the reference);
``pixel_spacing_mm`` = the CSV pixel size rescaled to the returned size; ``box`` from the mask;
``attributes`` = ``ellipse_cx, ellipse_cy, ellipse_a, ellipse_b`` (semi-axes, pixels at the
returned size), ``ellipse_angle_deg`` (major axis from the +x/column axis towards +y/down,
in ``[0, 180)``; draw it with ``matplotlib.patches.Ellipse((cx, cy), 2a, 2b, angle=angle_deg)`` on
an ``imshow`` axis), ``hc_fit_mm`` (circumference of the fitted ellipse, from the full-resolution
mask), ``subject``, ``orig_h``, ``orig_w``.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from .. import runtime
from .files import fit_to_size, make_sample, natural_key, read_binary, read_grey, resolve_dir, seeded_subset
from .common import box_from_mask, check_positive

DATASET = "HC18 (fetal head circumference, van den Heuvel et al. 2018)"
URL = "https://zenodo.org/records/1327317 (challenge: https://hc18.grand-challenge.org/)"
CSV_NAME = "training_set_pixel_size_and_HC.csv"
CLASS_NAMES = ("fetal_head",)
CENTER = "Radboud University Medical Center, Nijmegen"
_IMG_RE = re.compile(r"^(?P<subject>\d+)_(?:(?P<rep>\d+))?HC$")


def fit_ellipse(mask: np.ndarray) -> dict:
    """Moment fit of a filled ellipse: ``cx, cy, a, b`` (semi-axes, a >= b), ``angle_deg``.

    Exact for a uniformly filled, unclipped ellipse (up to pixelisation); NaNs for an empty mask.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return dict(cx=math.nan, cy=math.nan, a=math.nan, b=math.nan, angle_deg=math.nan)
    cx, cy = xs.mean(), ys.mean()
    cov = np.cov(np.stack([xs - cx, ys - cy]).astype(np.float64), bias=True)
    return _ellipse_from_moments(cx, cy, cov)


def _ellipse_from_moments(cx, cy, cov) -> dict:
    evals, evecs = np.linalg.eigh(cov)  # ascending
    b, a = (2.0 * np.sqrt(np.clip(evals, 0, None))).tolist()
    vx, vy = evecs[:, 1]
    angle = math.degrees(math.atan2(vy, vx)) % 180.0
    return dict(cx=float(cx), cy=float(cy), a=float(a), b=float(b), angle_deg=float(angle), cov=cov)


def ellipse_circumference(a: float, b: float) -> float:
    """Ramanujan's approximation of the perimeter of an ellipse with semi-axes ``a``, ``b``."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def _fill(mask: np.ndarray) -> np.ndarray:
    """Fill the inside of an outline (a no-op on a filled mask); works on the bounding box only."""
    from scipy import ndimage

    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return mask.astype(np.uint8)
    out = np.zeros_like(mask, dtype=np.uint8)
    sl = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    out[sl] = ndimage.binary_fill_holes(mask[sl])
    return out


def _read_csv(file: Path) -> dict[str, tuple[float, float]]:
    rows: dict[str, tuple[float, float]] = {}
    with open(file, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or len(header) < 3 or "pixel" not in header[1].lower():
            raise ValueError(
                f"{file} does not look like HC18's CSV (expected the header "
                f"'filename,pixel size(mm),head circumference (mm)', got {header}); re-download it from {URL}"
            )
        for i, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                rows[row[0].strip()] = (float(row[1]), float(row[2]))
            except (IndexError, ValueError):
                raise ValueError(f"{file}, line {i}: cannot parse {row}; re-download the CSV from {URL}") from None
    return rows


def load(
    path=None,
    image_size: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    keep_aspect: bool = True,
) -> list[dict]:
    """Load HC18 training images with filled head masks, spacing and HC (see module docstring).

    ``limit`` = at most this many images (a seeded choice, returned in file order).
    ``keep_aspect=True`` zero-pads to square before resizing so that one ``pixel_spacing_mm``
    holds in both directions; with ``False`` the image is stretched, ``pixel_spacing_mm`` is the
    column (x) spacing and ``attributes["pixel_spacing_y_mm"]`` the row spacing.
    """
    if limit is not None:
        check_positive("limit", limit)
    root = resolve_dir("hc18", DATASET, URL, path, expect=(CSV_NAME, "training_set"))
    csv_file = next((c for c in (root / CSV_NAME, root / "training_set" / CSV_NAME) if c.is_file()), None)
    if csv_file is None:
        raise runtime.DatasetNotFoundError(
            f"{DATASET}: {CSV_NAME} not found in {root}; download it from {URL} and put it next to training_set/"
        )
    table = _read_csv(csv_file)
    img_dir = root / "training_set" if (root / "training_set").is_dir() else root
    images = sorted((p for p in img_dir.glob("*.png") if _IMG_RE.match(p.stem)), key=lambda p: natural_key(p.name))
    if not images:
        raise runtime.DatasetNotFoundError(
            f"{DATASET}: no NNN_HC.png images in {img_dir}; the folder is empty or incomplete. "
            f"Download training_set.zip from {URL} and unpack it there."
        )
    return [_load_one(f, table, image_size, keep_aspect) for f in seeded_subset(images, limit, seed)]


def _load_one(file: Path, table, image_size, keep_aspect) -> dict:
    if file.name not in table:
        raise KeyError(
            f"{file.name} has no row in {CSV_NAME}; use the CSV that ships with the same training set ({URL})"
        )
    ann = file.with_name(file.stem + "_Annotation.png")
    if not ann.is_file():
        raise FileNotFoundError(f"HC18 annotation {ann.name} is missing next to {file}; re-download training_set.zip ({URL})")
    spacing, hc_mm = table[file.name]
    image = read_grey(file)
    mask = _fill(read_binary(ann))
    h, w = image.shape
    if mask.shape != (h, w):
        raise ValueError(
            f"mask/image size mismatch: {ann} is {mask.shape[1]}x{mask.shape[0]} but {file.name} is {w}x{h}; "
            f"re-download both files ({URL})"
        )
    e = fit_ellipse(mask)
    hc_fit = ellipse_circumference(e["a"], e["b"]) * spacing if mask.any() else math.nan
    image, (mask,), geo = fit_to_size(image, [mask], image_size, keep_aspect)
    sx, sy = geo["sx"], geo["sy"]
    if mask.any() and "cov" in e:  # moments transform linearly under the resize
        S = np.diag([sx, sy])
        e = _ellipse_from_moments(e["cx"] * sx + geo["ox"], e["cy"] * sy + geo["oy"], S @ e["cov"] @ S)
    attrs = {f"ellipse_{k}": float(v) for k, v in e.items() if k != "cov"}
    attrs.update(
        hc_fit_mm=float(hc_fit),
        subject=_IMG_RE.match(file.stem)["subject"],
        orig_h=geo["orig_h"],
        orig_w=geo["orig_w"],
    )
    if abs(sx - sy) > 1e-9:
        attrs["pixel_spacing_y_mm"] = float(spacing / sy)
    return make_sample(
        image=image,
        mask=mask,
        label_map=mask.copy(),
        structures=("background", "fetal_head"),
        box=box_from_mask(mask),
        measurement=float(hc_mm),
        label=0,
        class_names=CLASS_NAMES,
        attributes=attrs,
        anatomy="fetal_head",
        center=CENTER,
        pixel_spacing_mm=float(spacing / sx),
        source="hc18",
        id=file.stem,
    )

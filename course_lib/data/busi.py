"""BUSI, the Breast Ultrasound Images dataset, in its published folder layout (real-data loader).
Used by notebooks 00 (tour), 02 (zero-shot on real images), 05 (PEFT) and 09 (hybrid tuning).

Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. *Dataset of breast ultrasound images.*
Data in Brief 28:104863 (2020), doi:10.1016/j.dib.2019.104863. See ``data_cards/busi.md``.

Two variants are read (both as published, never copied into the repository):

``variant="gt"`` (folder ``busi_gt``, e.g. Kaggle's ``Dataset_BUSI_with_GT``)
    ``benign/``, ``malignant/``, ``normal/``; each image ``NAME.png`` has a mask
    ``NAME_mask.png`` and, for some lesions, extra masks ``NAME_mask_1.png``, ``NAME_mask_2.png``...
    (a second lesion, or a second outline): the returned mask is their **union**. Images are
    stored as RGB and masks as 1-bit, RGB or RGBA files: both are converted to grey ``[0, 1]``
    images and ``{0, 1}`` masks. Masks of ``normal`` images are empty. Stray non-PNG files
    (the published folders contain a ``test.txt``) are ignored.
``variant="256"`` (folder ``busi_256``)
    all 780 images resized to 256x256, class folders only, **no masks**: ``mask`` and
    ``label_map`` are all zero, ``box`` is NaN and ``attributes["has_mask"] == 0.0``.

BUSI carries no pixel spacing, so ``pixel_spacing_mm`` and ``measurement`` are NaN.

One published mask does not match its image's size (``benign (4)_mask_1.png`` is 555x465 while
``benign (4).png`` is 416x416; the outline cannot be aligned). ``on_mismatch="skip"`` (default)
leaves such a mask out of the union and names it in ``attributes["skipped_masks"]``;
``on_mismatch="error"`` raises instead.

File/folder helpers shared with the HC18 and TotalSegmentator loaders live in
:mod:`course_lib.data.files`.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import runtime
from .common import box_from_mask, check_positive, resize_image
from .files import fit_to_size, make_sample, natural_key, read_binary, read_grey, resolve_dir, seeded_subset  # noqa: F401

DATASET = "BUSI (Breast Ultrasound Images, Al-Dhabyani et al. 2020)"
URL = "https://scholar.cu.edu.eg/?q=afahmy/pages/dataset (mirror: https://www.kaggle.com/datasets/aryashah2k/breast-ultrasound-images-dataset)"
CLASS_NAMES = ("benign", "malignant", "normal")
FOLDERS = {"gt": "busi_gt", "256": "busi_256"}
CENTER = "Baheya Hospital, Cairo"

_MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?$")
_NUM_RE = re.compile(r"\((\d+)\)")


# --------------------------------------------------------------------------- BUSI
def _check_classes(classes) -> tuple[str, ...]:
    if classes is None:
        return CLASS_NAMES
    if isinstance(classes, str):
        classes = (classes,)
    classes = tuple(classes)
    bad = [c for c in classes if c not in CLASS_NAMES]
    if bad or not classes or len(set(classes)) != len(classes):
        raise ValueError(
            f"classes={classes!r} is not a non-empty selection of distinct BUSI classes {CLASS_NAMES}; "
            f"pass e.g. classes=('benign', 'malignant')"
        )
    return classes


def list_images(variant: str = "gt", path=None, classes: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """``{class: [image files]}`` in natural order, without reading any pixels (cheap counts)."""
    if variant not in FOLDERS:
        raise ValueError(f"unknown BUSI variant {variant!r}: use 'gt' (images + masks) or '256' (resized, no masks)")
    classes = _check_classes(classes)
    root = resolve_dir(FOLDERS[variant], DATASET, URL, path, expect=CLASS_NAMES)
    out = {}
    for cname in classes:
        cdir = root / cname
        if not cdir.is_dir():
            raise runtime.DatasetNotFoundError(
                f"{DATASET}: class folder {cdir} is missing; the published layout has "
                f"{'/, '.join(CLASS_NAMES)}/ side by side. Re-download from {URL}."
            )
        out[cname] = sorted(
            (p for p in cdir.iterdir() if p.suffix.lower() == ".png" and not _MASK_RE.match(p.stem)),
            key=lambda p: natural_key(p.name),
        )
        if not out[cname]:
            raise runtime.DatasetNotFoundError(
                f"{DATASET}: no images (*.png) in {cdir}; the folder is empty or incomplete. "
                f"Re-download from {URL}."
            )
    return out


def load(
    variant: str = "gt",
    path=None,
    image_size: int | None = None,
    classes: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    keep_aspect: bool = False,
    on_mismatch: str = "skip",
) -> list[dict]:
    """Load BUSI as a list of samples (schema of :mod:`course_lib.data.common`).

    Parameters
    ----------
    variant : ``"gt"`` (images + masks, folder ``busi_gt``) or ``"256"`` (780 images, no masks,
        folder ``busi_256``).
    path : dataset folder (or a folder containing ``busi_gt/``/``busi_256/``); default: see
        :func:`resolve_dir`.
    image_size : square output size; ``None`` keeps each file's own size.
    classes : subset and order of classes; ``class_names`` and ``label`` follow it (so
        ``classes=("benign", "malignant")`` gives labels 0/1).
    limit : at most this many images *per class*, a seeded choice (keeps notebooks fast).
    keep_aspect : zero-pad to square before resizing instead of stretching (BUSI practice,
        and ``busi_256``, is to stretch).
    on_mismatch : ``"skip"`` leaves masks whose size differs from the image out of the union
        (named in ``attributes["skipped_masks"]``); ``"error"`` raises.
    """
    if variant not in FOLDERS:
        raise ValueError(f"unknown BUSI variant {variant!r}: use 'gt' (images + masks) or '256' (resized, no masks)")
    if on_mismatch not in ("skip", "error"):
        raise ValueError(f"on_mismatch={on_mismatch!r}: use 'skip' or 'error'")
    classes = _check_classes(classes)
    if limit is not None:
        check_positive("limit", limit)
    files = list_images(variant, path, classes)
    samples: list[dict] = []
    for label, cname in enumerate(classes):
        masks: dict[str, list[Path]] = {}
        if variant == "gt":
            for p in files[cname][0].parent.glob("*_mask*.png"):
                m = _MASK_RE.match(p.stem)
                if m:
                    masks.setdefault(m["stem"], []).append(p)
        for file in seeded_subset(files[cname], limit, seed + CLASS_NAMES.index(cname)):
            samples.append(_load_one(file, masks.get(file.stem, []), variant, label, classes,
                                     image_size, keep_aspect, on_mismatch))
    return samples


def near_duplicates(samples: Sequence[dict], size: int = 32, threshold: float = 0.995) -> list[tuple[str, str, float]]:
    """Pairs of near-identical images: Pearson correlation of ``size``-px grey thumbnails above
    ``threshold``. Returns ``(id_a, id_b, corr)`` sorted by decreasing correlation.

    BUSI holds many such pairs (consecutive frames or re-exported copies, a few of them across
    classes; see ``data_cards/busi.md``). Keep each pair in the same split to avoid leakage.
    """
    if len(samples) < 2:
        return []
    thumbs = np.stack([resize_image(s["image"], size).ravel() for s in samples]).astype(np.float64)
    thumbs -= thumbs.mean(1, keepdims=True)
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True) + 1e-12
    corr = thumbs @ thumbs.T
    ii, jj = np.nonzero(np.triu(corr > threshold, k=1))
    pairs = [(samples[i]["id"], samples[j]["id"], float(corr[i, j])) for i, j in zip(ii, jj)]
    return sorted(pairs, key=lambda t: -t[2])


def _load_one(file, mask_files, variant, label, classes, image_size, keep_aspect, on_mismatch) -> dict:
    image = read_grey(file)
    h, w = image.shape
    attrs: dict = {}
    mask = np.zeros((h, w), np.uint8)
    if variant == "gt":
        if not mask_files:
            raise FileNotFoundError(
                f"BUSI image {file} has no mask file (expected {file.stem}_mask.png next to it); "
                f"re-download the dataset, or use variant='256' if you do not need masks"
            )
        skipped = []
        for mf in sorted(mask_files, key=lambda p: natural_key(p.name)):
            m = read_binary(mf)
            if m.shape != (h, w):
                msg = (
                    f"mask/image size mismatch: {mf} is {m.shape[1]}x{m.shape[0]} but {file.name} is "
                    f"{w}x{h} (width x height)"
                )
                if on_mismatch == "error":
                    raise ValueError(
                        msg + "; fix or delete the mask file, or pass on_mismatch='skip' to leave "
                        "misaligned masks out of the union"
                    )
                skipped.append(mf.name)
                continue
            mask |= m
        if skipped and len(skipped) == len(mask_files) and classes[label] != "normal":
            warnings.warn(f"BUSI {file.name}: every mask was skipped for a size mismatch; its mask is empty")
        attrs = {"n_masks": float(len(mask_files) - len(skipped)), "has_mask": 1.0}
        if skipped:
            attrs["skipped_masks"] = ";".join(skipped)
    else:
        attrs = {"n_masks": 0.0, "has_mask": 0.0}
    image, (mask,), geo = fit_to_size(image, [mask], image_size, keep_aspect)
    attrs.update(orig_h=geo["orig_h"], orig_w=geo["orig_w"])
    return make_sample(
        image=image,
        mask=mask,
        label_map=mask.copy(),
        structures=("background", "lesion"),
        box=box_from_mask(mask),
        label=label,
        class_names=tuple(classes),
        attributes=attrs,
        anatomy="breast",
        center=CENTER,
        source=FOLDERS[variant],
        id=file.stem,
    )

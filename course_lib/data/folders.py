"""Bring your own data: a folder of images and a folder of masks with matching names, as course samples.
For a learner's own data and for external validation (train on one dataset, score on a folder); meant for notebook 09.

Quick use::

    from course_lib.data import folders
    samples = folders.load("my_data/images", "my_data/masks", image_size=64)
    pairs = folders.list_pairs("my_data/images", "my_data/masks")   # [(image, mask)], no pixels read
    images_dir, masks_dir = folders.save(images, masks, "out")      # arrays -> out/images, out/masks (PNG)

Rules (each broken rule raises an error that names the files and the fix):

* image files: ``.png .jpg .jpeg .bmp .tif .tiff`` (any case); greyscale, RGB(A) or 16-bit, read
  as ``float32`` in ``[0, 1]``.
* a mask matches the image with the same stem (``case_07.jpg`` <-> ``case_07.png``), optionally
  after removing ``mask_suffix`` from the mask's stem (``case_07_mask.png`` with
  ``mask_suffix="_mask"``). Unmatched images or masks are an error (``on_unmatched="skip"`` leaves
  them out and records them in each sample's ``attributes["skipped_files"]``); two files with one
  stem (``a.png`` and ``a.jpg``) are an error. Images and masks may share one folder (BUSI-style
  ``case_1.png`` + ``case_1_mask.png``) when ``mask_suffix`` is given.
* masks are **binary** (values {0, 1} or {0, 255}: ``mask`` = ``label_map`` = 0/1, structures
  ``("background", foreground)``) or **label maps** (integer ids 0..255: ``label_map`` keeps
  them, ``mask`` = any non-background id). ``mask_kind="auto"`` decides from the values of all
  masks; ``"binary"`` thresholds grey masks at 127 (for lossy JPEG masks); ``"labels"`` forces
  label maps. Colour-coded RGB masks are refused (convert them to one id per pixel first).
* a mask must have the size of its image (no silent resize of labels).

The samples follow the schema of :mod:`course_lib.data.common` (``source`` = ``source=``,
``id`` = ``"<source>:<stem>"``, ``attributes`` = the two file names).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .common import box_from_mask, check_positive
from .files import _open, fit_to_size, make_sample, natural_key, read_grey, seeded_subset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_KINDS = ("auto", "binary", "labels")
_MAX_LABELS = 64  # more distinct values than this in "auto" mode: not a label map (grey image / JPEG mask)


def _files(folder, what: str) -> dict[str, Path]:
    """``{stem: file}`` of the image files in ``folder`` (clear errors: missing, empty, duplicate stems)."""
    if folder is None:
        raise TypeError(f"{what} folder is None; pass the path of the folder that holds the {what}")
    root = Path(folder).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{what} folder {root} does not exist; check the path (relative paths start at {Path.cwd()})")
    if not root.is_dir():
        raise NotADirectoryError(f"{what} folder {root} is a file, not a folder; pass the folder that holds the {what}")
    found = sorted((p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: natural_key(p.name))
    if not found:
        others = sorted(p.name for p in root.iterdir())[:5]
        raise ValueError(
            f"{what} folder {root} has no image files ({' '.join(IMAGE_SUFFIXES)}); "
            + (f"it holds e.g. {others}: convert them to PNG" if others else "it is empty: copy your files there")
        )
    out: dict[str, Path] = {}
    for p in found:
        if p.stem in out:
            raise ValueError(
                f"two {what} files share the name {p.stem!r}: {out[p.stem].name} and {p.name}; "
                f"keep one of them (names must be unique without the extension)"
            )
        out[p.stem] = p
    return out


def list_pairs(images, masks, mask_suffix: str = "", on_unmatched: str = "error") -> list[tuple[Path, Path]]:
    """Matched ``(image, mask)`` files in natural name order, without reading pixels.

    ``on_unmatched="error"`` (default) raises when an image has no mask or a mask no image, listing
    them; ``"skip"`` leaves them out (see :func:`load`, which records them).
    """
    return _match(images, masks, mask_suffix, on_unmatched)[0]


def _match(images, masks, mask_suffix: str, on_unmatched: str):
    if on_unmatched not in ("error", "skip"):
        raise ValueError(f"on_unmatched={on_unmatched!r}: use 'error' (default) or 'skip'")
    if not isinstance(mask_suffix, str):
        raise TypeError(f"mask_suffix must be a string such as '_mask', got {mask_suffix!r}")
    imgs = _files(images, "images")
    raw = _files(masks, "masks")
    if Path(images).expanduser().resolve() == Path(masks).expanduser().resolve():  # one folder (BUSI-style)
        if not mask_suffix:
            raise ValueError(
                f"images and masks are the same folder {Path(images)}; pass the suffix that marks mask files, "
                f"e.g. mask_suffix='_mask' for case_1.png + case_1_mask.png"
            )
        imgs = {k: v for k, v in imgs.items() if not k.endswith(mask_suffix)}
        raw = {k: v for k, v in raw.items() if k.endswith(mask_suffix)}
    msk: dict[str, Path] = {}
    for stem, p in raw.items():
        key = stem[: -len(mask_suffix)] if mask_suffix and stem.endswith(mask_suffix) else stem
        if mask_suffix and key == stem:
            raise ValueError(
                f"mask {p.name} does not end with mask_suffix={mask_suffix!r}; rename it, or pass the suffix "
                f"your masks use (mask_suffix='' when masks have exactly the image names)"
            )
        if key in msk:
            raise ValueError(f"masks {msk[key].name} and {p.name} both match image {key!r}; keep one of them")
        msk[key] = p
    no_mask = [imgs[s].name for s in imgs if s not in msk]
    no_image = [msk[s].name for s in msk if s not in imgs]
    if (no_mask or no_image) and on_unmatched == "error":
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} image(s) without a mask (e.g. {no_mask[:5]})")
        if no_image:
            parts.append(f"{len(no_image)} mask(s) without an image (e.g. {no_image[:5]})")
        hint = (f"; masks named like {no_image[0]!r} may need mask_suffix='_mask' (or whatever they add to the image name)"
                if no_image and not mask_suffix else "")
        raise ValueError(
            f"images in {Path(images)} and masks in {Path(masks)} do not match by name: {' and '.join(parts)}{hint}. "
            f"A mask must have its image's name (extension aside); rename the files, or pass on_unmatched='skip' "
            f"to leave the unmatched ones out"
        )
    pairs = [(imgs[s], msk[s]) for s in imgs if s in msk]
    if not pairs:
        raise ValueError(f"no image in {Path(images)} has a mask in {Path(masks)} with the same name; nothing to load")
    return pairs, no_mask + no_image


def _read_mask_values(file: Path) -> np.ndarray:
    """Mask file -> integer array ``(H, W)`` of its stored values (no thresholding)."""
    im = _open(file)
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("L", "P"):
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("RGB", "RGBA", "LA", "La", "RGBa"):
        a = np.asarray(im.convert("RGB"))
        if not ((a[..., 0] == a[..., 1]) & (a[..., 1] == a[..., 2])).all():
            raise ValueError(
                f"mask {file} is a colour image (R, G, B differ); colour-coded masks are not read, because the "
                f"colour -> class mapping is unknown: save one class id per pixel (greyscale or palette PNG)"
            )
        return a[..., 0].copy()
    a = np.asarray(im)
    if a.ndim != 2 or (a.dtype.kind == "f" and not np.all(a == np.round(a))):
        raise ValueError(f"mask {file} (mode {im.mode}) does not hold integer ids per pixel; save it as a greyscale PNG")
    return a.astype(np.int64)


def load(
    images,
    masks,
    *,
    image_size: int | None = None,
    keep_aspect: bool = False,
    mask_suffix: str = "",
    mask_kind: str = "auto",
    structures: Sequence[str] | None = None,
    on_unmatched: str = "error",
    limit: int | None = None,
    seed: int = 0,
    source: str = "folders",
    anatomy: str = "",
    center: str = "",
    pixel_spacing_mm: float | None = None,
) -> list[dict]:
    """Load matched image/mask pairs as samples in the course schema.

    Parameters
    ----------
    images, masks : the two folders (see the module docstring for names, formats and masks).
    image_size : square output size (image bilinear, masks nearest); None keeps each file's size.
    keep_aspect : zero-pad to square before resizing instead of stretching.
    mask_suffix : what mask names add to their image's name, e.g. ``"_mask"``.
    mask_kind : ``"auto"``, ``"binary"`` (threshold grey masks at 127) or ``"labels"``.
    structures : names of the label ids, index 0 = background (default: ``("background",
        "foreground")`` for binary masks, ``("background", "label_1", ...)`` for label maps).
    on_unmatched : ``"error"`` or ``"skip"`` (see :func:`list_pairs`).
    limit, seed : at most ``limit`` pairs, a seeded choice (keeps notebooks fast).
    source, anatomy, center : copied into every sample (``id`` = ``"<source>:<stem>"``).
    pixel_spacing_mm : mm per pixel of the files (rescaled with ``image_size``); None -> NaN.
    """
    if mask_kind not in MASK_KINDS:
        raise ValueError(f"mask_kind={mask_kind!r}: use one of {MASK_KINDS}")
    if limit is not None:
        check_positive("limit", limit)
    if image_size is not None:
        check_positive("image_size", image_size)
    if pixel_spacing_mm is not None and not (isinstance(pixel_spacing_mm, (int, float)) and pixel_spacing_mm > 0):
        raise ValueError(f"pixel_spacing_mm must be a positive number (mm per pixel) or None, got {pixel_spacing_mm!r}")
    pairs, skipped = _match(images, masks, mask_suffix, on_unmatched)
    pairs = seeded_subset(pairs, limit, seed)
    loaded = []
    for img_file, mask_file in pairs:
        img = read_grey(img_file)
        vals = _read_mask_values(mask_file)
        if vals.shape != img.shape:
            raise ValueError(
                f"mask {mask_file.name} is {vals.shape[1]}x{vals.shape[0]} (W x H) but its image {img_file.name} is "
                f"{img.shape[1]}x{img.shape[0]}; masks must have their image's size (resize the mask with nearest "
                f"neighbour, or re-export it from the annotation tool)"
            )
        loaded.append((img_file, mask_file, img, vals))
    kind = mask_kind
    if kind == "auto":
        seen = np.unique(np.concatenate([np.unique(v) for *_, v in loaded]))
        if set(seen.tolist()) <= {0, 1} or set(seen.tolist()) <= {0, 255}:
            kind = "binary"
        elif len(seen) > _MAX_LABELS:
            raise ValueError(
                f"the masks hold {len(seen)} distinct values, too many for a label map: they look like grey images "
                f"or lossy (JPEG) binary masks; pass mask_kind='binary' to threshold at 127, or check the masks folder"
            )
        else:
            kind = "labels"
    if kind == "labels":
        top = max(int(v.max()) for *_, v in loaded)
        if top > 255 or min(int(v.min()) for *_, v in loaded) < 0:
            raise ValueError(f"label ids must be in 0..255 (uint8 label maps), found up to {top}; renumber the classes")
        names = tuple(structures) if structures is not None else ("background",) + tuple(f"label_{i}" for i in range(1, top + 1))
        if len(names) <= top:
            raise ValueError(f"structures has {len(names)} names but the masks use ids up to {top}; name ids 0..{top}")
    else:
        names = tuple(structures) if structures is not None else ("background", "foreground")
        if len(names) != 2:
            raise ValueError(f"binary masks need 2 structure names (background, foreground), got {names!r}")
    thr = 0
    if kind == "binary":
        top = max(int(v.max()) for *_, v in loaded)
        thr = 0 if top <= 1 else 127
        if 1 < top <= 127:
            raise ValueError(
                f"mask_kind='binary' but the largest mask value is {top}: thresholding at 127 would empty every mask; "
                f"these look like label ids, so pass mask_kind='labels' (or 'auto')"
            )
    note = {"skipped_files": skipped} if skipped else {}
    samples = []
    for img_file, mask_file, img, vals in loaded:
        lab = (vals > thr).astype(np.uint8) if kind == "binary" else vals.astype(np.uint8)
        img_r, (lab_r,), geo = fit_to_size(img, [lab], image_size, keep_aspect)
        mask = (lab_r > 0).astype(np.uint8)
        spacing = float("nan") if pixel_spacing_mm is None else float(pixel_spacing_mm) / geo["sx"]
        samples.append(make_sample(
            image=img_r, mask=mask, label_map=lab_r, structures=names, box=box_from_mask(mask),
            attributes={"image_file": img_file.name, "mask_file": mask_file.name, **note},
            anatomy=anatomy, center=center, pixel_spacing_mm=spacing, source=source, id=f"{source}:{img_file.stem}",
        ))
    return samples


def save(images, masks, folder, names: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write images and binary masks in the layout :func:`load` reads: ``folder/images/NAME.png`` (8-bit grey)
    and ``folder/masks/NAME.png`` (0/255), same names. For exporting any data (e.g. SonoSynth samples) to a
    folder, e.g. to run an external validation through the same loader a learner's own data goes through.

    ``images``: ``(N, H, W)`` floats in ``[0, 1]`` (stored rounded to 1/255) or uint8; ``masks``: ``(N, H, W)`` binary
    (bool or 0/1); ``names``: one file stem per image (default ``case_000`` ...). The two sub-folders are
    created; existing files of the same names are overwritten. Returns ``(images_dir, masks_dir)``.
    """
    from PIL import Image

    imgs, msks = np.asarray(images), np.asarray(masks)
    if imgs.ndim != 3 or msks.ndim != 3:
        raise ValueError(f"images and masks must be (N, H, W) stacks, got {imgs.shape} and {msks.shape}")
    if imgs.shape != msks.shape:
        raise ValueError(f"images {imgs.shape} and masks {msks.shape} differ; one mask per image, at its size")
    if imgs.dtype != np.uint8 and imgs.dtype.kind != "f":
        raise TypeError(f"images must be floats in [0, 1] or uint8, got {imgs.dtype}")
    if imgs.dtype.kind == "f" and imgs.size and (np.isnan(imgs).any() or imgs.min() < 0 or imgs.max() > 1):
        raise ValueError(f"images must be floats in [0, 1] (min {np.nanmin(imgs):.3g}, max {np.nanmax(imgs):.3g}); "
                         f"rescale them first")
    if msks.size and not np.isin(msks, (0, 1)).all():
        raise ValueError("masks must be binary (bool or 0/1); threshold them first, e.g. probs > 0.5")
    names = [f"case_{i:03d}" for i in range(len(imgs))] if names is None else [str(n) for n in names]
    if len(names) != len(imgs) or len(set(names)) != len(names):
        raise ValueError(f"names must be {len(imgs)} distinct file stems, got {len(names)} ({len(set(names))} distinct)")
    root = Path(folder).expanduser()
    out_i, out_m = root / "images", root / "masks"
    out_i.mkdir(parents=True, exist_ok=True)
    out_m.mkdir(parents=True, exist_ok=True)
    for name, im, m in zip(names, imgs, msks):
        a = np.round(im.astype(np.float64) * 255).astype(np.uint8) if imgs.dtype.kind == "f" else im
        Image.fromarray(a).save(out_i / f"{name}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(out_m / f"{name}.png")
    return out_i, out_m

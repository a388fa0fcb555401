"""TotalSegmentator example CT: 2D slices with organ label maps, from the published NIfTI files.
Used by notebooks 00 (tour) and 08 (partial labels on real CT).

Wasserthal J, Breit H-C, Meyer MT, et al. *TotalSegmentator: robust segmentation of 104
anatomic structures in CT images.* Radiology: Artificial Intelligence 5(5):e230024 (2023),
doi:10.1148/ryai.230024. See ``data_cards/totalseg.md``.

Layout (folder ``totalseg``)::

    example_ct_sm.nii.gz   CT, 122x101x30 voxels of 3 mm, Hounsfield units
    example_seg.nii.gz     TotalSegmentator's multi-label output for example_ct_sm (ids 1..117)
    example_ct.nii.gz      the same body, 112 slices (no matching segmentation)
    labels.json            {"1": "spleen", "2": "kidney_right", ...}

**The segmentation is the model's own output, not manual ground truth.**

:func:`load_slices` reorients both volumes to RAS (``nibabel.as_closest_canonical``), checks
that their shapes match, cuts 2D slices along ``axis`` (2 = axial), keeps the slices on which
at least one chosen structure covers ``min_pixels`` pixels, windows the CT to ``window``
(HU) and scales it to ``[0, 1]``. Slices are shown in the radiological convention: axial
slices with anterior at the top and the patient's right on the image's left.
``label_map`` uses ids ``1..K`` in the order of ``structures``; ``mask`` is their union;
``structures = ("background", *structures)``; ``measurement`` is the slice position in mm.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import runtime
from .files import fit_to_size, make_sample, resolve_dir
from .common import box_from_mask

DATASET = "TotalSegmentator example CT (Wasserthal et al. 2023)"
URL = "https://github.com/wasserth/TotalSegmentator (tests/reference_files; full dataset: https://zenodo.org/records/10047292)"
DEFAULT_STRUCTURES = ("liver", "spleen", "kidney_right", "kidney_left")
CENTER = "University Hospital Basel"
_AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}


def label_names(path=None) -> dict[int, str]:
    """``{id: name}`` from ``labels.json``."""
    root = resolve_dir("totalseg", DATASET, URL, path, expect=("labels.json",))
    return _labels(root)


def _labels(root: Path) -> dict[int, str]:
    f = root / "labels.json"
    if not f.is_file():
        raise runtime.DatasetNotFoundError(f"{DATASET}: labels.json is missing in {root}; get it from {URL}")
    try:
        return {int(k): str(v) for k, v in json.loads(f.read_text()).items()}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{f} is not a JSON object of id -> name ({e}); re-download it from {URL}") from None


def _read_nifti(file: Path):
    import nibabel as nib

    if not file.is_file():
        raise runtime.DatasetNotFoundError(f"{DATASET}: {file.name} is missing in {file.parent}; get it from {URL}")
    try:
        img = nib.as_closest_canonical(nib.load(str(file)))
        data = np.asarray(img.dataobj)
    except Exception as e:  # nibabel raises several types for broken files
        raise ValueError(
            f"corrupted or unreadable NIfTI file {file} ({type(e).__name__}: {e}); re-download it from {URL}"
        ) from None
    return data, tuple(float(z) for z in img.header.get_zooms()[:3]), img.affine


def _orient(slice2d: np.ndarray, axis: int) -> np.ndarray:
    """RAS slice ``(u, v)`` -> display orientation ``(rows, cols)``.

    In RAS+ voxel order +x points to the patient's right, +y anterior, +z superior. Displayed
    axial slices have anterior at the top and the patient's right on the image's left; coronal
    slices superior at the top and the patient's right on the left; sagittal slices superior at
    the top and anterior on the left. In all three cases ``out[r, c] = slice[U-1-c, V-1-r]``.
    """
    return slice2d[::-1, ::-1].T


def load_slices(
    path=None,
    structures: Sequence[str] = DEFAULT_STRUCTURES,
    volume: str = "example_ct_sm",
    axis: int = 2,
    image_size: int | None = None,
    min_pixels: int = 20,
    window: tuple[float, float] = (-150, 250),
    seg: str = "example_seg",
    keep_aspect: bool = True,
) -> list[dict]:
    """2D slices of a TotalSegmentator CT with the chosen structures (see module docstring).

    ``min_pixels`` counts pixels at the volume's own resolution; ``keep_aspect=True``
    zero-pads (air, after windowing) to square before resizing so one ``pixel_spacing_mm``
    holds in both directions. ``class_names`` = the structure names; ``label`` = the id
    (0-based, into ``class_names``) of the largest chosen structure on the slice.
    """
    if axis not in _AXIS_NAMES:
        raise ValueError(f"axis={axis!r}: use 2 (axial), 1 (coronal) or 0 (sagittal)")
    if not isinstance(min_pixels, (int, np.integer)) or min_pixels < 0:
        raise ValueError(f"min_pixels must be an integer >= 0, got {min_pixels!r}; e.g. min_pixels=20")
    lo, hi = (float(w) for w in window)
    if not hi > lo:
        raise ValueError(f"window={window!r} must be (low, high) in HU with high > low, e.g. (-150, 250)")
    if isinstance(structures, str):
        structures = (structures,)
    structures = tuple(structures)
    if not structures or len(set(structures)) != len(structures):
        raise ValueError(f"structures={structures!r} must be a non-empty tuple of distinct names, e.g. ('liver', 'spleen')")
    if len(structures) > 255:
        raise ValueError("at most 255 structures fit a uint8 label map")
    root = resolve_dir("totalseg", DATASET, URL, path, expect=("labels.json",))
    names = _labels(root)
    by_name = {v: k for k, v in names.items()}
    unknown = [s for s in structures if s not in by_name]
    if unknown:
        raise ValueError(
            f"unknown TotalSegmentator structure(s) {unknown}; names come from {root / 'labels.json'}, "
            f"e.g. {', '.join(list(by_name)[:8])} (see totalseg.label_names())"
        )
    ct, zooms, _ = _read_nifti(root / f"{volume}.nii.gz")
    lab, _, _ = _read_nifti(root / f"{seg}.nii.gz")
    if ct.shape != lab.shape:
        raise ValueError(
            f"size mismatch: {seg}.nii.gz has shape {lab.shape} but {volume}.nii.gz has {ct.shape}; "
            f"the example segmentation belongs to example_ct_sm, so pass volume='example_ct_sm' "
            f"(or a segmentation of {volume} via seg=...)"
        )
    # remap chosen ids to 1..K, everything else to 0
    lut = np.zeros(int(max(lab.max(), max(by_name[s] for s in structures))) + 1, np.uint8)
    for k, s in enumerate(structures, start=1):
        lut[by_name[s]] = k
    lab = lut[lab.astype(np.int64)]
    ct = (np.clip(ct.astype(np.float32), lo, hi) - lo) / (hi - lo)

    in_plane = [d for d in range(3) if d != axis]
    sp_rows, sp_cols = zooms[in_plane[1]], zooms[in_plane[0]]  # after _orient, rows follow the 2nd in-plane axis
    samples = []
    for i in range(ct.shape[axis]):
        lab2 = _orient(np.take(lab, i, axis=axis), axis)
        counts = np.bincount(lab2.ravel(), minlength=len(structures) + 1)[1:]
        if counts.max() < max(min_pixels, 1):
            continue
        img2 = _orient(np.take(ct, i, axis=axis), axis)
        img2, (lab2,), geo = fit_to_size(np.ascontiguousarray(img2), [np.ascontiguousarray(lab2)], image_size, keep_aspect)
        mask = (lab2 > 0).astype(np.uint8)
        attrs = {
            "volume": volume,
            "slice_index": float(i),
            "plane": _AXIS_NAMES[axis],
            **{f"pixels_{s}": float(c) for s, c in zip(structures, counts)},
            "orig_h": geo["orig_h"],
            "orig_w": geo["orig_w"],
        }
        if abs(sp_rows / geo["sy"] - sp_cols / geo["sx"]) > 1e-6:
            attrs["pixel_spacing_y_mm"] = float(sp_rows / geo["sy"])
        samples.append(
            make_sample(
                image=img2,
                mask=mask,
                label_map=lab2,
                structures=("background", *structures),
                box=box_from_mask(mask),
                measurement=float(i * zooms[axis]),
                label=int(np.argmax(counts)),
                class_names=structures,
                attributes=attrs,
                anatomy="ct_abdomen",
                center=CENTER,
                pixel_spacing_mm=float(sp_cols / geo["sx"]),
                source="totalseg",
                id=f"{volume}:{_AXIS_NAMES[axis]}:{i:03d}",
            )
        )
    if not samples:
        raise ValueError(
            f"no {_AXIS_NAMES[axis]} slice of {volume} has >= {min_pixels} pixels of {structures}; "
            f"lower min_pixels or choose other structures"
        )
    return samples

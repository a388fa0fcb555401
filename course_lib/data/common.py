"""The sample schema shared by SonoSynth and every real-data loader, plus splits, few-shot sampling,
resizing and conversion to Hugging Face ``datasets``. Used by notebooks 00 (schema tour), 02-05 and 09.

A *sample* is a plain ``dict`` with these keys (absent information is ``None``/NaN,
never a missing key, so code can treat every source alike):

==================  ===========================================================
``image``           ``float32`` array ``(H, W)`` in ``[0, 1]`` (greyscale B-mode / CT window)
``mask``            ``uint8`` array ``(H, W)``, 1 = the target structure (lesion, head...), may be all 0
``label_map``       ``uint8`` array ``(H, W)``: multi-structure ids (0 = background); names in ``structures``
``structures``      ``tuple[str, ...]``: name of each id in ``label_map`` (index 0 = "background")
``box``             ``float32`` ``(4,)`` ``[x0, y0, x1, y1]`` in pixels (inclusive-exclusive), NaN if mask empty
``measurement``     ``float``: a scalar in mm (lesion max diameter, head circumference...), NaN if none
``label``           ``int``: index into ``class_names``
``class_names``     ``tuple[str, ...]``: e.g. ``("benign", "malignant", "normal")``
``attributes``      ``dict[str, str | float]``: clinical attributes (may be empty)
``report``          ``str``: free-text report ("" if none)
``anatomy``         ``str``: "breast", "thyroid", "lymph_node", "abdomen", "fetal_head", "ct_abdomen"...
``center``          ``str``: acquisition site / scanner ("" if unknown)
``pixel_spacing_mm`` ``float``: mm per pixel *at the returned size*
``source``          ``str``: "sonosynth", "busi_gt", "busi_256", "hc18", "totalseg"
``id``              ``str``: stable identifier (file stem, or "sonosynth:<seed>:<index>")
==================  ===========================================================
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

SAMPLE_KEYS = (
    "image",
    "mask",
    "label_map",
    "structures",
    "box",
    "measurement",
    "label",
    "class_names",
    "attributes",
    "report",
    "anatomy",
    "center",
    "pixel_spacing_mm",
    "source",
    "id",
)


def check_positive(name: str, value: int) -> int:
    """Raise a clear error for zero/negative counts (sample counts, shots, sizes)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}; pass e.g. {name}=16")
    return int(value)


def check_image_size(size: int, multiple: int = 1, name: str = "image_size") -> int:
    """Image sizes must be positive and divisible by ``multiple`` (patch size, UNet depth...)."""
    check_positive(name, size)
    if size % multiple:
        lo, hi = (size // multiple) * multiple, (size // multiple + 1) * multiple
        raise ValueError(
            f"{name}={size} is not divisible by {multiple} (required by this model); "
            f"use {lo or hi} or {hi} instead"
        )
    return int(size)


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """``[x0, y0, x1, y1]`` of the non-zero pixels (x1/y1 exclusive); NaN for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.full(4, np.nan, dtype=np.float32)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased) resize of a float image to ``size`` (int = square)."""
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else size
    if image.shape == (h, w):
        return image.astype(np.float32, copy=False)
    im = Image.fromarray(image.astype(np.float32), mode="F")
    return np.asarray(im.resize((w, h), Image.BILINEAR), dtype=np.float32)


def resize_labels(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label map/mask."""
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else size
    if labels.shape == (h, w):
        return labels.astype(np.uint8, copy=False)
    im = Image.fromarray(labels.astype(np.uint8), mode="L")
    return np.asarray(im.resize((w, h), Image.NEAREST), dtype=np.uint8)


def split_indices(
    n: int, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0, stratify: Sequence[int] | None = None
) -> list[np.ndarray]:
    """Seeded split of ``range(n)`` into parts with the given fractions (optionally stratified)."""
    check_positive("n", n)
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    rng = np.random.default_rng(seed)
    groups = defaultdict(list)
    keys = stratify if stratify is not None else [0] * n
    if len(keys) != n:
        raise ValueError(f"stratify has {len(keys)} entries but n={n}")
    for i, k in enumerate(keys):
        groups[k].append(i)
    parts: list[list[int]] = [[] for _ in fractions]
    for k in sorted(groups, key=str):
        idx = np.array(groups[k])
        rng.shuffle(idx)
        bounds = np.round(np.cumsum([0, *fractions]) * len(idx)).astype(int)
        for p in range(len(fractions)):
            parts[p].extend(idx[bounds[p] : bounds[p + 1]].tolist())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def few_shot_indices(labels: Sequence[int], k: int, seed: int = 0, classes: Iterable[int] | None = None) -> np.ndarray:
    """Exactly ``k`` indices per class (seeded). Raises if a class has fewer than ``k``."""
    check_positive("k (shots per class)", k)
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    rng = np.random.default_rng(seed)
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if len(idx) < k:
            raise ValueError(
                f"class {c} has only {len(idx)} samples but k={k} shots were asked; "
                f"lower k or provide more samples"
            )
        out.extend(rng.choice(idx, size=k, replace=False).tolist())
    return np.array(out, dtype=np.int64)


def stack(samples: Sequence[dict], key: str) -> np.ndarray:
    """``np.stack`` one key over samples (e.g. ``stack(s, "image")`` -> ``(N, H, W)``)."""
    if len(samples) == 0:
        raise ValueError(f"cannot stack {key!r} of an empty list of samples")
    return np.stack([s[key] for s in samples])


def to_hf_dataset(samples: Sequence[dict]):
    """Samples -> ``datasets.Dataset`` (arrays stored as nested lists; attributes as JSON text).

    ``ds.with_format("torch")`` then yields tensors; :func:`from_hf_row` restores a sample.
    """
    import json

    import datasets

    if len(samples) == 0:
        raise ValueError("to_hf_dataset got no samples")
    h, w = samples[0]["image"].shape
    features = datasets.Features(
        {
            "image": datasets.Array2D((h, w), "float32"),
            "mask": datasets.Array2D((h, w), "uint8"),
            "label_map": datasets.Array2D((h, w), "uint8"),
            "structures": datasets.Sequence(datasets.Value("string")),
            "box": datasets.Sequence(datasets.Value("float32"), length=4),
            "measurement": datasets.Value("float32"),
            "label": datasets.Value("int64"),
            "class_names": datasets.Sequence(datasets.Value("string")),
            "attributes": datasets.Value("string"),
            "report": datasets.Value("string"),
            "anatomy": datasets.Value("string"),
            "center": datasets.Value("string"),
            "pixel_spacing_mm": datasets.Value("float32"),
            "source": datasets.Value("string"),
            "id": datasets.Value("string"),
        }
    )
    cols = {k: [] for k in features}
    for s in samples:
        for k in features:
            v = s[k]
            if k == "attributes":
                v = json.dumps(v, sort_keys=True, default=float)
            elif k in ("structures", "class_names"):
                v = list(v)
            elif k in ("measurement", "pixel_spacing_mm"):
                v = float(v)
            elif k == "box":
                v = np.asarray(v, dtype=np.float32).tolist()
            cols[k].append(v)
    return datasets.Dataset.from_dict(cols, features=features)


def from_hf_row(row: dict) -> dict:
    """Inverse of :func:`to_hf_dataset` for one row (numpy arrays, tuples, dict attributes)."""
    import json

    out = dict(row)
    out["image"] = np.asarray(row["image"], dtype=np.float32)
    out["mask"] = np.asarray(row["mask"], dtype=np.uint8)
    out["label_map"] = np.asarray(row["label_map"], dtype=np.uint8)
    out["box"] = np.asarray(row["box"], dtype=np.float32)
    out["structures"] = tuple(row["structures"])
    out["class_names"] = tuple(row["class_names"])
    out["attributes"] = json.loads(row["attributes"]) if isinstance(row["attributes"], str) else row["attributes"]
    out["label"] = int(row["label"])
    return out

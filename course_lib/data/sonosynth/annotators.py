"""SonoSynth's simulated annotators: several plausible expert masks per image (boundary jitter, hypoechoic
halo in or out, a seeded style per annotator). Used by notebook 06 (Tyche) and course_lib.methods.segfm.tyche.

Real segmentations disagree: two sonographers trace the same lesion with different boundaries, and one includes
the dark (hypoechoic) rim around it while another does not. This module turns one reference mask into ``n``
such expert masks, deterministically from a seed, so that a stochastic segmenter can be scored against a
*set* of annotations (generalised energy distance, best-candidate Dice).

Model (ours; a simple, explicit one). With the signed distance ``sd(x)`` to the reference boundary (pixels,
negative inside), annotator ``j`` on image ``i`` draws the mask

    A_ij = { x : sd(x) < s * (b_j + h_ij * halo_px + jitter_j * g_ij(x)) }

* ``b_j`` -- the style's boundary bias (``tight`` < 0: draws inside the edge; ``generous`` > 0: outside),
  plus a small per-image perturbation;
* ``h_ij`` -- 1 if this annotator includes the halo on this image (Bernoulli with the style's
  ``halo_prob``): a dilation ring of ``halo_px`` pixels around the object;
* ``g_ij`` -- a smooth random displacement of the contour: Gaussian noise on a coarse ``grid x grid``
  lattice, bilinearly up-sampled (unit standard deviation at the lattice points), scaled by ``jitter_j``;
* ``s = H / 64 * min(1, r / small_radius)`` -- distances are given for 64-pixel images and scale with the
  image size, and shrink for small objects (equivalent radius ``r = sqrt(area / pi)`` below ``small_radius``
  pixels) so that a 3-pixel nodule is not doubled by a 2-pixel halo.

With ``b = h = jitter = 0`` the reference mask comes back unchanged (tested). Annotator ``j`` uses style
``styles[j % len(styles)]``; the draw of image ``i`` depends only on ``(seed, i, j)``, not on the batch.
A non-empty reference never yields an empty mask (a tight annotator on a tiny object keeps its deepest pixels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AnnotatorStyle:
    """How one annotator draws: boundary ``bias_px`` (negative = tight), probability ``halo_prob`` of
    including the hypoechoic halo, amplitude ``jitter_px`` of the smooth contour displacement (pixels at 64 px)."""

    bias_px: float
    halo_prob: float
    jitter_px: float


#: the built-in annotator styles (pixels at 64 px)
STYLES = {
    "tight": AnnotatorStyle(bias_px=-1.0, halo_prob=0.1, jitter_px=0.8),
    "average": AnnotatorStyle(bias_px=0.0, halo_prob=0.5, jitter_px=1.0),
    "generous": AnnotatorStyle(bias_px=1.0, halo_prob=0.9, jitter_px=1.2),
}
DEFAULT_STYLES = ("tight", "average", "generous")


def _resolve_styles(styles) -> list[AnnotatorStyle]:
    if isinstance(styles, (str, AnnotatorStyle)):
        styles = (styles,)
    styles = list(styles)
    if not styles:
        raise ValueError(f"styles is empty; pass names from {sorted(STYLES)} or AnnotatorStyle objects")
    out = []
    for s in styles:
        if isinstance(s, AnnotatorStyle):
            out.append(s)
        elif isinstance(s, str) and s in STYLES:
            out.append(STYLES[s])
        else:
            raise ValueError(f"unknown annotator style {s!r}; use one of {sorted(STYLES)} or an AnnotatorStyle(bias_px, halo_prob, jitter_px)")
        if not 0.0 <= out[-1].halo_prob <= 1.0:
            raise ValueError(f"halo_prob must lie in [0, 1], got {out[-1].halo_prob}")
    return out


def _check_masks(mask) -> tuple[np.ndarray, bool]:
    m = np.asarray(mask)
    if m.ndim not in (2, 3):
        raise ValueError(f"mask must be (H, W) or (N, H, W), got shape {m.shape}; pass one binary mask or a stack of them")
    if m.size == 0:
        raise ValueError(f"mask is empty (shape {m.shape}); pass at least one (H, W) mask")
    if m.dtype != bool:
        if not np.isfinite(m).all() or not np.isin(m, (0, 1)).all():
            vals = np.unique(m)[:6]
            raise ValueError(f"mask must be binary (bool or 0/1), found values {vals.tolist()}...; binarise first, "
                             f"e.g. mask > 0.5 (or label_map == structure_id for a label map)")
    single = m.ndim == 2
    return (m[None] if single else m).astype(bool), single


def smooth_field(shape: tuple[int, int], rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    """A smooth random field on ``shape``: N(0, 1) values on a ``grid x grid`` lattice, bilinearly up-sampled."""
    H, W = shape
    coarse = rng.standard_normal((grid, grid))
    yy = np.linspace(0, grid - 1, H)
    xx = np.linspace(0, grid - 1, W)
    return ndimage.map_coordinates(coarse, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest")


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance to the boundary of a binary ``(H, W)`` mask: <= -1 inside, >= 1 outside
    (so ``sd < t`` returns the mask itself for any ``t`` in ``(-1, 1]``)."""
    return ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)


# region: sonosynth-annotators
def annotate_mask(m: np.ndarray, sty: AnnotatorStyle, seed: int, i: int, j: int, halo_px: float = 2.0, grid: int = 4,
                  small_radius: float = 6.0) -> np.ndarray:
    """One annotator's mask of the bool ``(H, W)`` reference ``m`` (image ``i``, annotator ``j``, style ``sty``)."""
    H, W = m.shape
    if not m.any():
        return np.zeros_like(m)  # nothing to annotate: every annotator leaves the image empty
    sd = signed_distance(m)
    f = H / 64.0 * min(1.0, float(np.sqrt(m.sum() / np.pi)) / small_radius)
    rng = np.random.default_rng([int(seed), int(i), int(j)])
    bias = sty.bias_px + 0.25 * rng.standard_normal()
    halo = halo_px if rng.random() < sty.halo_prob else 0.0
    a = sd < f * (bias + halo + sty.jitter_px * smooth_field((H, W), rng, grid))
    if not a.any():  # a tight annotator erased a tiny object: keep its deepest pixels
        a = sd <= sd.min()
    return a
# endregion


def annotators(mask, n: int, seed: int = 0, *, styles: Sequence = DEFAULT_STYLES, halo_px: float = 2.0,
               grid: int = 4, small_radius: float = 6.0) -> np.ndarray:
    """``n`` simulated expert masks of every reference mask (module docstring for the model).

    ``mask``: binary ``(H, W)`` or ``(N, H, W)``; returns bool ``(n, H, W)`` or ``(N, n, H, W)``.
    Annotator ``j`` has style ``styles[j % len(styles)]`` (names from :data:`STYLES` or
    :class:`AnnotatorStyle` objects); the same ``seed`` gives the same masks.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"the number of annotators n must be a positive int, got {n!r}; e.g. n=3 (one per style)")
    st = _resolve_styles(styles)
    m, single = _check_masks(mask)
    N, H, W = m.shape
    out = np.zeros((N, int(n), H, W), dtype=bool)
    for i in range(N):
        for j in range(int(n)):
            out[i, j] = annotate_mask(m[i], st[j % len(st)], seed, i, j, halo_px, grid, small_radius)
    return out[0] if single else out


def annotator(mask, j: int, seed: int = 0, *, image_index: int = 0, styles: Sequence = DEFAULT_STYLES,
              halo_px: float = 2.0, grid: int = 4, small_radius: float = 6.0) -> np.ndarray:
    """Annotator ``j``'s mask of one ``(H, W)`` reference, equal to ``annotators(masks, n > j, seed)[image_index, j]``
    when ``mask = masks[image_index]`` (draw only the masks you need, e.g. inside a training loop)."""
    if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or j < 0:
        raise ValueError(f"annotator index j must be an int >= 0, got {j!r}")
    st = _resolve_styles(styles)
    m, single = _check_masks(mask)
    if not single:
        raise ValueError(f"annotator() takes one (H, W) mask, got shape {np.shape(mask)}; use annotators() for stacks")
    return annotate_mask(m[0], st[j % len(st)], seed, image_index, j, halo_px, grid, small_radius)


def annotate_batch(batch: dict, n: int, seed: int = 0, *, key: str = "mask", **kw) -> np.ndarray:
    """:func:`annotators` of a :func:`course_lib.data.sonosynth.generate_batch` result (its ``key`` masks):
    bool ``(N, n, H, W)``."""
    if key not in batch:
        raise KeyError(f"batch has no {key!r}; its keys are {sorted(batch)} (generate it with sonosynth.generate_batch)")
    return annotators(np.asarray(batch[key]), n, seed, **kw).reshape(len(batch[key]), int(n), *np.shape(batch[key])[-2:])

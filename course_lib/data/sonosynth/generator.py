"""SonoSynth: a procedural, vectorised B-mode ultrasound world with lesions, reports and centers.

What it is
----------
A fast generator of *synthetic* ultrasound images for teaching: every sample carries an image, a
lesion mask, a multi-structure label map, a box, a scalar measurement (lesion max diameter in mm), a
benign/malignant/normal label decided by an explicit BI-RADS/TI-RADS-like points rule, the clinical
attribute dict that drove both the appearance and the label, and a free-text report with varied
wording. "Centers" (scanners/sites) change speckle, resolution, gain and artifacts, to create
domain shift. It is not real ultrasound: see ``data_cards/sonosynth.md`` for the limitations.

Quick use::

    from course_lib.data import sonosynth as ss
    samples = ss.generate(8, seed=0, image_size=64)             # list of dicts (common schema)
    batch = ss.generate_batch(512, seed=0, anatomies=["breast"])  # stacked arrays (fast path)
    ds = ss.make_dataset(256, split="train").with_format("torch")

Generative model
----------------
Randomness: every random number of sample ``i`` is a counter-based hash of ``(seed, i, slot)``
(SplitMix64, Steele, Lea & Flood 2014), drawn for the whole batch with a few integer operations;
scene, attributes, label and report use slots that do not depend on ``image_size``.

1. *Scene* (in beam space: rows = depth, columns = scan lines; for the sector probe each beam-space
   point is placed at its Cartesian position, so organs keep their shapes): anatomy-specific layers
   and ellipses paint the echo-amplitude map ``R``, the attenuation factor ``F`` (1 for soft
   tissue, ~0.1 for fluid), the extra attenuation ``S`` of strong reflectors (bone, air, calcium,
   shadowing lesions) and the label map.
2. *Lesion*: an ellipse whose radius is modulated by a margin profile ``1 + P(theta)`` (irregular:
   low harmonics; microlobulated: bumps; angular: triangle wave; spiculated: spikes; indistinct:
   soft edge); echogenicity scales ``R`` relative to the host tissue; posterior features set ``F``
   (enhancement) or ``S`` (shadowing) inside the lesion; calcifications are bright point
   scatterers with their own attenuation (macro ones shadow). Computed in windows around lesions.
3. *Image formation*, the convolution model of speckle (Bamber & Dickinson 1980, Phys Med Biol
   25(3); statistics in Wagner et al. 1983, "Statistics of speckle in ultrasound B-scans", IEEE
   T-SU 30(3), eqs. for the Rayleigh and Rician envelopes): scatterer field
   ``R (w n + mu sigma)`` with white complex noise ``n`` (diffuse part, weight ``w`` = the center's
   ``speckle``) and a coherent part ``mu`` (``coherent``; Rician envelope, fewer dark nulls),
   blurred by a separable Gaussian PSF (axial/lateral widths = the center's resolution), envelope
   ``|.|``; depth gain ``TGC(z) - att(z) + gain`` with ``att(z) = int_0^z (a0 F + S) dz'`` along
   each beam (so shadows and posterior enhancement follow the beam) and
   ``TGC(z) = a0 z + tgc_error z``; reverberation ghosts ``r sum_k 0.85**(k-1) g(z - k Delta)``
   (horizontal, equally spaced bands; spacing ``Delta`` set by the center) and TGC-amplified
   thermal noise; log compression ``20 log10`` to the center's dynamic range gives the [0, 1]
   image. The sector probe is then scan-converted (bilinear; 0 outside the fan).

Everything above is vectorised over a batch with numpy (blurs and the depth integral are small
matrix products); only the attribute draw and the report loop over samples in Python. Sample
``i`` is the same whether generated alone or in a batch of any size (tested), and batches are
split over ``min(2, CPUs)`` threads (``SONOSYNTH_THREADS`` overrides).

Malignancy rule (:func:`malignancy_rule`), points added over attributes, malignant if total >= 5:

==============  =========================================================================
shape           oval 0, round 1, irregular 2
margin          circumscribed 0, indistinct 1, microlobulated 2, angular 2, spiculated 3
echogenicity    anechoic 0, hyperechoic 0, isoechoic 1, heterogeneous 1, hypoechoic 2
posterior       none 0, enhancement 0, combined 1, shadowing 2
calcifications  none 0, macro 1, micro 3
orientation     parallel 0, taller_than_wide 3
size_mm         < 20 mm 0, >= 20 mm 1
==============  =========================================================================

The points mimic ACR TI-RADS (echogenicity, taller-than-wide, punctate echogenic foci) and BI-RADS
(irregular shape, non-circumscribed margins, shadowing) in spirit; they are a teaching rule, not a
clinical one.
"""
from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np

from ._sonosynth_report import (
    CONCEPTS,
    DEFAULT_CONCEPT_FREQ,
    Chooser,
    report_concepts,
    write_report,
)
from .common import SAMPLE_KEYS, check_positive

__all__ = [
    "ANATOMIES",
    "ANATOMY_INFO",
    "ATTRIBUTES",
    "CENTERS",
    "CLASS_NAMES",
    "CONCEPTS",
    "DEFAULT_CONCEPT_FREQ",
    "PROBES",
    "RULE_POINTS",
    "RULE_THRESHOLD",
    "STRUCTURES",
    "CenterSettings",
    "generate",
    "generate_batch",
    "make_dataset",
    "malignancy_rule",
    "report_concepts",
    "structure_id",
]

# =============================================================================== constants
ANATOMIES = ("breast", "thyroid", "lymph_node", "abdomen")
PROBES = ("linear", "sector")
CLASS_NAMES = ("benign", "malignant", "normal")

#: global structure names; index == id in ``label_map``
STRUCTURES = (
    "background",
    "skin",
    "fat",
    "fibroglandular",
    "muscle",
    "rib",
    "lesion",
    "thyroid",
    "trachea",
    "vessel",
    "node_cortex",
    "node_hilum",
    "liver",
    "kidney",
    "renal_sinus",
    "spleen",
    "gallbladder",
    "diaphragm",
)
_SID = {n: i for i, n in enumerate(STRUCTURES)}


def structure_id(name: str) -> int:
    """Id of a structure name in ``label_map`` (clear error listing the valid names)."""
    if name not in _SID:
        raise ValueError(f"unknown structure {name!r}; valid names: {', '.join(STRUCTURES)}")
    return _SID[name]


#: attribute -> values (plus the overall ``size_mm`` range; each anatomy samples a sub-range)
ATTRIBUTES = {
    "shape": ("oval", "round", "irregular"),
    "margin": ("circumscribed", "indistinct", "microlobulated", "angular", "spiculated"),
    "echogenicity": ("anechoic", "hypoechoic", "isoechoic", "hyperechoic", "heterogeneous"),
    "posterior": ("none", "enhancement", "shadowing", "combined"),
    "calcifications": ("none", "micro", "macro"),
    "orientation": ("parallel", "taller_than_wide"),
    "size_mm": (5.0, 45.0),
}

RULE_POINTS = {
    "shape": {"oval": 0, "round": 1, "irregular": 2},
    "margin": {"circumscribed": 0, "indistinct": 1, "microlobulated": 2, "angular": 2, "spiculated": 3},
    "echogenicity": {"anechoic": 0, "hyperechoic": 0, "isoechoic": 1, "heterogeneous": 1, "hypoechoic": 2},
    "posterior": {"none": 0, "enhancement": 0, "combined": 1, "shadowing": 2},
    "calcifications": {"none": 0, "macro": 1, "micro": 3},
    "orientation": {"parallel": 0, "taller_than_wide": 3},
}
RULE_SIZE_MM = 20.0  # size_mm >= this adds one point
RULE_THRESHOLD = 5  # malignant iff score >= this

#: per anatomy: field-of-view depth (mm, = image height), default probe, lesion size range (mm),
#: echo level of the lesion's host tissue, nominal round-trip attenuation over the full depth (dB)
ANATOMY_INFO = {
    "breast": dict(depth_mm=40.0, probe="linear", size_mm=(5.0, 22.0), host=0.8, atten_db=36.0),
    "thyroid": dict(depth_mm=40.0, probe="linear", size_mm=(5.0, 20.0), host=1.4, atten_db=36.0),
    "lymph_node": dict(depth_mm=35.0, probe="linear", size_mm=(6.0, 20.0), host=0.6, atten_db=30.0),
    "abdomen": dict(depth_mm=150.0, probe="sector", size_mm=(12.0, 45.0), host=0.85, atten_db=50.0),
}


@dataclass(frozen=True)
class CenterSettings:
    """Acquisition settings of one simulated center/scanner (the source of domain shift).

    speckle:          weight ``w`` of the diffuse (random-phase) scatterers; speckle contrast grows
                      with ``speckle / coherent`` (coherent = 0: fully developed, Rayleigh)
    coherent:         coherent part ``mu`` of the scatterer field, in units of the blurred diffuse
                      std: > 0 gives a Rician envelope (fewer dark nulls, smoother texture)
    psf_axial:        PSF sigma along depth, pixels at 64 px (scaled with image size) - resolution
    psf_lateral:      PSF sigma across scan lines, pixels at 64 px
    reverberation:    amplitude of the periodic reverberation bands (0 = none; tissue ~ 1)
    reverb_spacing:   band spacing as a fraction of the image depth (bands at k * spacing)
    shadow_strength:  multiplier on the extra attenuation of shadowing structures
    gain:             overall gain offset in dB
    dynamic_range:    log-compression dynamic range in dB (smaller = more contrast)
    tgc_error:        residual depth gain in dB over the full depth (+ brighter at depth)
    noise:            thermal noise amplitude (amplified by TGC, so it shows at depth)
    """

    name: str
    description: str
    speckle: float
    coherent: float
    psf_axial: float
    psf_lateral: float
    reverberation: float
    reverb_spacing: float
    shadow_strength: float
    gain: float
    dynamic_range: float
    tgc_error: float
    noise: float

    @property
    def resolution(self) -> tuple[float, float]:
        """(axial, lateral) PSF sigma in pixels at 64 px; larger = blurrier."""
        return (self.psf_axial, self.psf_lateral)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


CENTERS = {
    "A": CenterSettings("A", "clean reference scanner: fine resolution, mild speckle, almost no artifacts",
                        speckle=0.8, coherent=1.6, psf_axial=0.6, psf_lateral=0.9, reverberation=0.03, reverb_spacing=0.125,
                        shadow_strength=1.0, gain=0.0, dynamic_range=55.0, tgc_error=0.0, noise=0.0005),
    "B": CenterSettings("B", "other vendor: brighter gain, more contrast, moderate reverberation",
                        speckle=0.9, coherent=1.0, psf_axial=0.8, psf_lateral=1.2, reverberation=0.3, reverb_spacing=0.1,
                        shadow_strength=0.85, gain=4.0, dynamic_range=45.0, tgc_error=4.0, noise=0.001),
    "C": CenterSettings("C", "noisy site: strong reverberation bands and fully developed speckle",
                        speckle=1.0, coherent=0.0, psf_axial=0.8, psf_lateral=1.2, reverberation=1.2, reverb_spacing=0.0625,
                        shadow_strength=1.3, gain=0.0, dynamic_range=55.0, tgc_error=-3.0, noise=0.002),
    "D": CenterSettings("D", "old portable device: low resolution, darker (gain shift), depth fall-off",
                        speckle=0.8, coherent=1.2, psf_axial=1.6, psf_lateral=2.6, reverberation=0.08, reverb_spacing=0.1,
                        shadow_strength=0.7, gain=-4.0, dynamic_range=50.0, tgc_error=-5.0, noise=0.003),
}

SPLIT_OFFSETS = {"train": 0, "val": 100_000_000, "test": 200_000_000}
_SPLIT_ALIASES = {"validation": "val", "valid": "val"}
_SALT = 0x50_70_5E  # separates SonoSynth's random streams from other users of the same seed
_NU = 96  # uniforms per sample for the scene/lesion (fixed layout)
_NREP = 64  # uniforms per sample for the report wording
_G1, _G2 = 6, 14  # texture grids (low / mid frequency)
_NTEX = _G1 * _G1 + _G2 * _G2
_NTH = 128  # angular resolution of the margin profile
_SECTOR_APEX = 0.25  # curvilinear probe radius, in units of the image depth
_SECTOR_HALF = math.radians(38.0)


# =============================================================================== rule
def malignancy_rule(attrs: dict) -> tuple[int, int]:
    """Points score and label (0 = benign, 1 = malignant) of a lesion attribute dict.

    ``attrs`` needs the keys of :data:`ATTRIBUTES` (``size_mm`` optional, default 0). Points per value
    are in :data:`RULE_POINTS` (table in the module docstring); ``size_mm >= RULE_SIZE_MM`` adds one.

    malignant iff score >= 5 (:data:`RULE_THRESHOLD`). Example: an oval, circumscribed, anechoic
    lesion with enhancement scores 0 (benign); an irregular, spiculated, hypoechoic, shadowing one
    scores 9 (malignant).
    """
    if not isinstance(attrs, dict):
        raise TypeError(f"malignancy_rule expects an attribute dict, got {type(attrs).__name__}")
    score = 0
    for key, table in RULE_POINTS.items():
        if key not in attrs:
            raise ValueError(f"attribute {key!r} is missing; malignancy_rule needs keys {tuple(RULE_POINTS)}")
        val = attrs[key]
        if val not in table:
            raise ValueError(f"unknown {key} value {val!r}; valid values: {', '.join(table)}")
        score += table[val]
    size = float(attrs.get("size_mm", 0.0) or 0.0)
    score += int(size >= RULE_SIZE_MM)
    return score, int(score >= RULE_THRESHOLD)


# =============================================================================== config checks
def _check_choice(kind: str, given, valid: tuple) -> tuple:
    if given is None:
        return valid
    if isinstance(given, str):
        given = (given,)
    given = tuple(given)
    if not given:
        raise ValueError(f"{kind} is empty; pass some of: {', '.join(valid)} (or None for all)")
    bad = [g for g in given if g not in valid]
    if bad:
        raise ValueError(f"unknown {kind} {bad[0]!r}; valid {kind}: {', '.join(valid)} (or None for all)")
    return given


def _check_size(image_size) -> int:
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool):
        raise TypeError(f"image_size must be an int such as 64, got {image_size!r}")
    if image_size < 32 or image_size % 8:
        raise ValueError(
            f"image_size={image_size} is not supported: SonoSynth needs a multiple of 8 that is >= 32 "
            f"(e.g. 32, 64, 96, 128, 224, 256)"
        )
    return int(image_size)


def _check_prob(name: str, p, hi: float = 1.0) -> float:
    if not isinstance(p, (int, float, np.floating, np.integer)) or not (0.0 <= float(p) <= hi):
        raise ValueError(f"{name} must be a number in [0, {hi:g}], got {p!r}")
    return float(p)


def _check_freq(concept_freq) -> dict:
    freq = dict(DEFAULT_CONCEPT_FREQ)
    if concept_freq is None:
        return freq
    if not isinstance(concept_freq, dict):
        raise TypeError("concept_freq must be a dict concept -> probability, e.g. {'calcifications': 0.05}")
    for k, v in concept_freq.items():
        if k not in freq:
            raise ValueError(f"unknown concept {k!r} in concept_freq; valid concepts: {', '.join(CONCEPTS)}")
        freq[k] = _check_prob(f"concept_freq[{k!r}]", v)
    return freq


@dataclass(frozen=True)
class _Config:
    seed: int
    image_size: int
    anatomies: tuple
    centers: tuple
    probe: str | None
    label_noise: float
    p_lesion: float
    freq: tuple
    fixed: tuple
    artifacts: bool


def _check_fixed(attributes) -> tuple:
    if attributes is None:
        return ()
    if not isinstance(attributes, dict):
        raise TypeError("attributes must be a dict attribute -> value, e.g. {'margin': 'spiculated'}")
    out = []
    for k, v in attributes.items():
        if k not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {k!r}; valid attributes: {', '.join(ATTRIBUTES)}")
        if k == "size_mm":
            lo, hi = ATTRIBUTES["size_mm"]
            if not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"size_mm must be a number in [{lo:g}, {hi:g}], got {v!r}")
            v = float(v)
        elif v not in ATTRIBUTES[k]:
            raise ValueError(f"unknown {k} value {v!r}; valid values: {', '.join(ATTRIBUTES[k])}")
        out.append((k, v))
    return tuple(sorted(out))


def _make_config(seed, image_size, anatomies, centers, probe, label_noise, p_lesion, concept_freq, artifacts,
                 attributes=None):
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2 ** 31:
        raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    if probe is not None and probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid probes: {', '.join(PROBES)} (or None = anatomy default)")
    return _Config(
        seed=int(seed),
        image_size=_check_size(image_size),
        anatomies=_check_choice("anatomies", anatomies, ANATOMIES),
        centers=_check_choice("centers", centers, tuple(CENTERS)),
        probe=probe,
        label_noise=_check_prob("label_noise", label_noise),
        p_lesion=_check_prob("p_lesion", p_lesion),
        freq=tuple(sorted(_check_freq(concept_freq).items())),
        fixed=_check_fixed(attributes),
        artifacts=bool(artifacts),
    )


# =============================================================================== per-sample draws
def _cat(x: float, values: tuple, probs: tuple) -> str:
    acc = 0.0
    for v, p in zip(values, probs):
        acc += p
        if x < acc:
            return v
    return values[-1]


# attribute distributions of the two latent "looks" (benign-looking, malignant-looking)
_DIST = {
    0: {
        "shape": (0.65, 0.25, 0.10),
        "margin": (0.70, 0.15, 0.10, 0.03, 0.02),
        "echogenicity": (0.25, 0.30, 0.25, 0.12, 0.08),
        "posterior": (0.45, 0.40, 0.05, 0.10),
        "calcifications": (0.85, 0.03, 0.12),
        "orientation": (0.90, 0.10),
    },
    1: {
        "shape": (0.20, 0.20, 0.60),
        "margin": (0.05, 0.25, 0.20, 0.20, 0.30),
        "echogenicity": (0.0, 0.70, 0.10, 0.02, 0.18),
        "posterior": (0.30, 0.05, 0.50, 0.15),
        "calcifications": (0.45, 0.40, 0.15),
        "orientation": (0.45, 0.55),
    },
}
_ATTR_KEYS = ("shape", "margin", "echogenicity", "posterior", "calcifications", "orientation")
_CODE = {k: {v: i for i, v in enumerate(ATTRIBUTES[k])} for k in _ATTR_KEYS}


def _draw_attributes(u: list, anatomy: str) -> dict:
    z = int(u[3] < 0.5)
    d = _DIST[z]
    a = {k: _cat(u[4 + j], ATTRIBUTES[k], d[k]) for j, k in enumerate(_ATTR_KEYS)}
    if a["echogenicity"] == "anechoic":  # simple cysts: smooth, enhancing, no calcium
        a["calcifications"] = "none"
        if u[11] < 0.85:
            a["posterior"] = "enhancement"
            a["margin"] = "circumscribed"
    lo, hi = ANATOMY_INFO[anatomy]["size_mm"]
    t = u[10] ** (1.3 if z else 1.8)  # malignant-looking lesions tend to be larger
    a["size_mm"] = round(lo + (hi - lo) * t, 1)
    return a


def _location(u: list, anatomy: str) -> dict:
    side = "left" if u[24] < 0.5 else "right"
    if anatomy == "breast":
        return {"side": side, "clock": 1 + int(u[25] * 12) % 12}
    if anatomy == "thyroid":
        return {"side": side, "pole": ("upper", "mid", "lower")[int(u[25] * 3) % 3]}
    if anatomy == "lymph_node":
        return {"side": side, "region": ("axilla", "neck level II", "neck level III", "neck level IV")[int(u[25] * 4) % 4]}
    organ = "liver" if u[27] < 0.6 else "spleen"
    return {"side": "right" if organ == "liver" else "left", "organ": organ,
            "segment": ("V", "VI", "VII", "VIII")[int(u[25] * 4) % 4], "pole": ("upper", "lower")[int(u[25] * 2) % 2]}


def _location_text(anatomy: str, loc: dict) -> str:
    if anatomy == "breast":
        return f"{loc['side']} breast, {loc['clock']} o'clock"
    if anatomy == "thyroid":
        return f"{loc['side']} lobe, {loc['pole']}"
    if anatomy == "lymph_node":
        return f"{loc['side']} {loc['region']}"
    return loc["organ"]


# =============================================================================== geometry helpers
@lru_cache(maxsize=16)
def _probe_geometry(probe: str, size: int):
    """Beam-space sample positions (U lateral, V depth; image depth = 1) and scan conversion."""
    H = W = size
    if probe == "linear":
        U = (((np.arange(W) + 0.5) / W - 0.5)[None, :]).astype(np.float32)  # (1, W)
        V = (((np.arange(H) + 0.5) / H)[:, None]).astype(np.float32)  # (H, 1)
        return dict(U=U, V=V, Uf=np.ascontiguousarray(np.broadcast_to(U, (H, W))),
                    Vf=np.ascontiguousarray(np.broadcast_to(V, (H, W))), conv=None)
    a, th = _SECTOR_APEX, _SECTOR_HALF
    r = a + (np.arange(H) + 0.5) / H
    t = -th + (np.arange(W) + 0.5) * (2 * th / W)
    U = (r[:, None] * np.sin(t)[None, :]).astype(np.float32)
    V = (r[:, None] * np.cos(t)[None, :] - a).astype(np.float32)
    # scan conversion: Cartesian pixel centres -> fractional beam indices
    x = (np.arange(size) + 0.5) / size - 0.5
    y = (np.arange(size) + 0.5) / size
    X, Y = np.meshgrid(x, y)
    rr = np.sqrt(X ** 2 + (Y + a) ** 2)
    tt = np.arctan2(X, Y + a)
    inside = (rr >= a) & (rr <= a + 1) & (np.abs(tt) <= th)
    fi = np.clip((rr - a) * H - 0.5, 0, H - 1)
    fj = np.clip((tt + th) / (2 * th) * W - 0.5, 0, W - 1)
    i0 = np.minimum(np.floor(fi).astype(np.int64), H - 2)
    j0 = np.minimum(np.floor(fj).astype(np.int64), W - 2)
    di, dj = (fi - i0), (fj - j0)
    idx = [(i0 * W + j0), (i0 * W + j0 + 1), ((i0 + 1) * W + j0), ((i0 + 1) * W + j0 + 1)]
    wts = [(1 - di) * (1 - dj), (1 - di) * dj, di * (1 - dj), di * dj]
    inside_f = inside.astype(np.float32)
    conv = dict(
        idx=[k.ravel() for k in idx],
        wts=[(w * inside_f).ravel().astype(np.float32) for w in wts],
        nearest=(np.rint(fi).astype(np.int64) * W + np.rint(fj).astype(np.int64)).ravel(),
        inside=inside.ravel(),
    )
    return dict(U=U, V=V, Uf=U, Vf=V, conv=conv)


def _cart_to_beam(probe: str, size: int, u: np.ndarray, v: np.ndarray):
    """Cartesian (u lateral, v depth) -> integer beam-space (row, col), clipped to the grid."""
    if probe == "linear":
        i, j = v * size, (u + 0.5) * size
    else:
        a, th = _SECTOR_APEX, _SECTOR_HALF
        r = np.sqrt(u ** 2 + (v + a) ** 2)
        i = (r - a) * size
        j = (np.arctan2(u, v + a) + th) / (2 * th) * size
    return (np.clip(i.astype(np.int64), 0, size - 1), np.clip(j.astype(np.int64), 0, size - 1))


@lru_cache(maxsize=16)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Bilinear up-sampling matrix (n_out, n_in) for smooth texture fields."""
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = pos - i0
    M = np.zeros((n_out, n_in), np.float32)
    M[np.arange(n_out), i0] = 1 - w
    M[np.arange(n_out), i0 + 1] = w
    return M


@lru_cache(maxsize=64)
def _gauss_kernel(sigma: float) -> np.ndarray:
    sigma = max(float(sigma), 0.3)
    r = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _ell(U, V, cx, cy, ax, ay, tilt=None):
    du, dv = U - cx, V - cy
    if tilt is not None:
        c, s = np.cos(tilt), np.sin(tilt)
        du, dv = du * c + dv * s, dv * c - du * s
    return (du / ax) ** 2 + (dv / ay) ** 2


class _Painter:
    """Holds the scene maps of a group (views into the chunk arrays) and paints back to front."""

    def __init__(self, R, F, S, L, bg):
        self.R, self.F, self.S, self.L = R, F, S, L
        R[...] = bg
        F[...] = 1.0
        S[...] = 0.0
        L[...] = 0

    def paint(self, m, name, r, f=None, s=None):
        np.copyto(self.L, np.uint8(_SID[name]), where=m)
        np.copyto(self.R, np.asarray(r, np.float32), where=m)
        if f is not None:
            np.copyto(self.F, np.asarray(f, np.float32), where=m)
        if s is not None:
            np.copyto(self.S, np.asarray(s, np.float32), where=m)

    def shine(self, m, r, s=None):
        """Specular reflector (bright wall/line): changes R (and S) but not the label."""
        np.copyto(self.R, np.asarray(r, np.float32), where=m)
        if s is not None:
            np.copyto(self.S, np.asarray(s, np.float32), where=m)


def _col(P, k, lo=0.0, hi=1.0):
    return (lo + (hi - lo) * P[:, k]).astype(np.float32)[:, None, None]


# =============================================================================== scenes
def _scene_breast(maps, U, V, P, T1, T2, H):
    c = lambda k, lo=0.0, hi=1.0: _col(P, k, lo, hi)
    pi2 = np.float32(2 * np.pi)
    s1 = c(28, 0.03, 0.05)
    fat_bot = c(29, 0.10, 0.24) + c(30, 0.01, 0.04) * np.sin(pi2 * (c(31, 0.6, 1.6) * U + c(32)))
    gl_bot = fat_bot + c(33, 0.20, 0.36) + c(34, 0.01, 0.04) * np.sin(pi2 * (c(35, 0.8, 2.0) * U + c(36)))
    rmf = gl_bot + c(37, 0.02, 0.05)
    mus_bot = rmf + c(38, 0.10, 0.18)
    p = _Painter(*maps, bg=0.35)
    p.R *= 0.7 + 0.6 * T2
    stri = 0.5 + 0.5 * np.cos(pi2 * (V * c(39, 14, 24) + U * c(40, -1.5, 1.5)))
    p.paint(V < mus_bot, "muscle", 0.45 * (0.5 + 0.9 * stri) * (0.8 + 0.4 * T2))
    p.paint(V < rmf, "fat", 0.2 * (0.6 + 0.8 * T1))
    p.paint(V < gl_bot, "fibroglandular", 1.0 * (0.55 + 0.9 * T2))
    lig = np.abs(np.sin(np.float32(np.pi) * (U * c(41, 2, 5) + V * c(42, 4, 9)) + c(43, 0, 3))) < 0.07
    p.paint(V < fat_bot, "fat", np.where(lig, 1.0, 0.2 * (0.6 + 0.8 * T1)))
    p.paint(V < s1, "skin", 1.0)
    p.shine(V < np.minimum(s1 * 0.4, 2.0 / H), 2.2)
    # rib under the pectoralis (half of the images): bright curved cortex, shadow beneath
    has_rib = (P[:, 44] < 0.5)[:, None, None]
    e = _ell(U, V, c(45, -0.3, 0.3), mus_bot + 0.07, c(46, 0.10, 0.16), 0.05)
    rib = has_rib & (e < 1)
    p.paint(rib, "rib", 0.15, s=0.0)
    p.shine(rib & (e > 0.55) & (V < mus_bot + 0.07), 2.5, s=np.float32(30.0 / (0.04)))
    pos = dict(cx=_col(P, 13, -0.28, 0.28)[:, 0, 0], cy=(fat_bot.mean((1, 2)) + (gl_bot - fat_bot).mean((1, 2)) * _col(P, 14, 0.3, 0.8)[:, 0, 0]))
    return p, pos


def _scene_thyroid(maps, U, V, P, T1, T2, H):
    c = lambda k, lo=0.0, hi=1.0: _col(P, k, lo, hi)
    s1 = c(28, 0.025, 0.04)
    fat_bot = s1 + c(29, 0.04, 0.08)
    strap_bot = fat_bot + c(30, 0.05, 0.09)
    shift = c(35, -0.04, 0.04)
    lobe_ax, lobe_ay = c(32, 0.12, 0.16), c(33, 0.10, 0.13)
    lobe_cy = strap_bot + lobe_ay + c(31, 0.0, 0.03)
    lobe_dx = c(34, 0.2, 0.25)
    p = _Painter(*maps, bg=0.4)
    p.R *= 0.7 + 0.6 * T2
    pi2 = np.float32(2 * np.pi)
    deep = lobe_cy + lobe_ay + c(41, 0.12, 0.22)
    stri = 0.5 + 0.5 * np.cos(pi2 * (V * c(39, 14, 24)))
    p.paint(V > deep, "muscle", 0.42 * (0.5 + 0.9 * stri))
    tex = 1.4 * (0.8 + 0.4 * T2)  # thyroid parenchyma: bright, fine and homogeneous
    for sgn in (-1.0, 1.0):
        p.paint(_ell(U, V, shift + sgn * lobe_dx, lobe_cy, lobe_ax, lobe_ay) < 1, "thyroid", tex)
    isth = (np.abs(U - shift) < c(42, 0.1, 0.16)) & (V > strap_bot) & (V < strap_bot + c(43, 0.035, 0.06))
    p.paint(isth, "thyroid", tex)
    # trachea: air behind a bright anterior wall -> shadow + ring-down reverberation
    tr_r = c(37, 0.08, 0.1)
    tr_cy = strap_bot + c(36, 0.06, 0.08) + tr_r
    e = np.sqrt(_ell(U, V, shift, tr_cy, tr_r, tr_r))
    p.paint(e < 1, "trachea", 0.05 + 0.5 * (np.cos(pi2 * V * c(40, 25, 35)) > 0.7))
    wall = (e > 0.8) & (e < 1.0) & (V < tr_cy)
    p.shine(wall, 2.8, s=np.float32(800.0))  # air: ~16-25 dB of shadow through the wall, any image size
    # carotid arteries and jugular veins (anechoic, bright walls)
    for sgn in (-1.0, 1.0):
        cx = np.clip(shift + sgn * (lobe_dx + lobe_ax + c(38, 0.03, 0.06)), -0.44, 0.44)
        cr = c(44, 0.05, 0.07)
        e = np.sqrt(_ell(U, V, cx, lobe_cy + 0.02, cr, cr))
        p.shine((e >= 1) & (e < 1.2), 1.6)
        p.paint(e < 1, "vessel", 0.01, f=0.1)
        ej = _ell(U, V, cx + sgn * 0.05, lobe_cy - cr * 0.9, c(45, 0.05, 0.08), c(46, 0.02, 0.035))
        p.paint(ej < 1, "vessel", 0.01, f=0.1)
    strap = (V > fat_bot) & (V < strap_bot)
    p.paint(strap, "muscle", 0.3 * (0.8 + 0.4 * T1))
    p.paint(V <= fat_bot, "fat", 0.32 * (0.6 + 0.8 * T1))
    p.paint(V < s1, "skin", 1.0)
    p.shine(V < np.minimum(s1 * 0.4, 2.0 / H), 2.2)
    sgn = np.where(P[:, 24] < 0.5, -1.0, 1.0).astype(np.float32)
    pos = dict(cx=(shift[:, 0, 0] + sgn * lobe_dx[:, 0, 0] + _col(P, 13, -0.04, 0.04)[:, 0, 0]),
               cy=lobe_cy[:, 0, 0] + _col(P, 14, -0.03, 0.03)[:, 0, 0])
    return p, pos


def _scene_node(maps, U, V, P, T1, T2, H):
    c = lambda k, lo=0.0, hi=1.0: _col(P, k, lo, hi)
    pi2 = np.float32(2 * np.pi)
    s1 = c(28, 0.025, 0.04)
    fat_bot = s1 + c(29, 0.4, 0.55) + c(30, 0.01, 0.05) * np.sin(pi2 * (c(31, 0.5, 1.5) * U + c(32)))
    mus_bot = fat_bot + c(33, 0.15, 0.25)
    p = _Painter(*maps, bg=0.4)
    p.R *= 0.7 + 0.6 * T2
    has_v = (P[:, 34] < 0.5)[:, None, None]
    vr = c(35, 0.04, 0.07)
    e = np.sqrt(_ell(U, V, c(36, -0.3, 0.3), mus_bot + vr + c(37, 0.02, 0.06), vr, vr))
    p.paint(has_v & (e < 1), "vessel", 0.01, f=0.1)
    stri = 0.5 + 0.5 * np.cos(pi2 * (V * c(39, 14, 24) + U * c(40, -1, 1)))
    p.paint(V < mus_bot, "muscle", 0.45 * (0.5 + 0.9 * stri))
    sept = np.abs(np.sin(np.float32(np.pi) * (U * c(41, 3, 6) - V * c(42, 3, 7)) + c(43, 0, 3))) < 0.06
    p.paint(V < fat_bot, "fat", np.where(sept, 1.0, 0.3 * (0.6 + 0.8 * T1)))
    p.paint(V < s1, "skin", 1.0)
    p.shine(V < np.minimum(s1 * 0.4, 2.0 / H), 2.2)
    pos = dict(cx=_col(P, 13, -0.2, 0.2)[:, 0, 0], cy=(s1[:, 0, 0] + _col(P, 14, 0.18, 0.3)[:, 0, 0]))
    return p, pos


def _scene_abdomen(maps, U, V, P, T1, T2, H):
    c = lambda k, lo=0.0, hi=1.0: _col(P, k, lo, hi)
    s1 = c(28, 0.012, 0.02)
    fat_bot = s1 + c(29, 0.03, 0.06)
    wall_bot = fat_bot + c(30, 0.03, 0.05)
    ruq = (P[:, 27] < 0.6)[:, None, None]  # right upper quadrant (liver) vs left (spleen)
    p = _Painter(*maps, bg=0.5)
    p.R *= 0.5 + 1.0 * T1 * T2 + 0.2 * T2
    # main organ: liver (RUQ) or spleen (LUQ)
    ocx = np.where(ruq, c(31, -0.12, 0.05), c(31, -0.08, 0.08))
    ocy = np.where(ruq, c(32, 0.42, 0.52), c(32, 0.36, 0.44))
    oax = np.where(ruq, c(33, 0.55, 0.75), c(33, 0.38, 0.5))
    oay = np.where(ruq, c(34, 0.3, 0.38), c(34, 0.2, 0.26))
    e_org = np.sqrt(_ell(U, V, ocx, ocy, oax, oay))
    # diaphragm + lung (mirror-like bright region) deep to the organ
    deep_side = V > ocy
    p.paint(deep_side & (e_org >= 1.0) & (e_org < 1.06), "diaphragm", 2.0)
    p.shine(deep_side & (e_org >= 1.06) & (V < ocy + oay + 0.25), 0.9 * (0.6 + 0.8 * T2))
    organ = (e_org < 1) & (V > wall_bot)
    p.paint(organ & ruq, "liver", 0.8 * (0.85 + 0.3 * T2))
    p.paint(organ & ~ruq, "spleen", 0.95 * (0.9 + 0.2 * T2))
    # kidney (cortex + bright sinus), posterior to the organ
    has_k = (P[:, 47] < 0.8)[:, None, None]
    kcx = ocx + c(35, 0.05, 0.25)
    kcy = ocy + oay * c(36, 0.55, 0.8)
    kax, kay, kt = c(37, 0.16, 0.22), c(38, 0.08, 0.11), c(39, -0.4, 0.4)
    ek = np.sqrt(_ell(U, V, kcx, kcy, kax, kay, kt))
    p.shine(has_k & (ek >= 1) & (ek < 1.1), 1.5)
    p.paint(has_k & (ek < 1), "kidney", 0.4 * (0.8 + 0.4 * T2))
    p.paint(has_k & (ek < 0.5), "renal_sinus", 1.6 * (0.5 + 1.0 * T2))
    # gallbladder (RUQ only), anechoic with posterior enhancement
    has_g = ruq & (P[:, 40] < 0.7)[:, None, None]
    eg = np.sqrt(_ell(U, V, ocx + c(41, -0.3, -0.1), ocy + c(42, -0.12, 0.02), c(43, 0.08, 0.14), c(46, 0.04, 0.07), c(45, -0.5, 0.5)))
    p.shine(has_g & (eg >= 1) & (eg < 1.15), 1.6)
    p.paint(has_g & (eg < 1), "gallbladder", 0.01, f=0.08)
    # two vessels in the organ (portal/hepatic veins or splenic vein)
    for k in range(2):
        vr = c(48 + k, 0.02, 0.04)
        ev = np.sqrt(_ell(U, V, ocx + c(50 + k, -0.3, 0.3), ocy + c(52 + k, -0.15, 0.1), vr * 1.4, vr))
        inside = organ & (ev < 1)
        p.shine(organ & (ev >= 1) & (ev < 1.25), 1.4 if k == 0 else 0.8)
        p.paint(inside, "vessel", 0.01, f=0.2)
    # body wall
    p.paint((V > fat_bot) & (V <= wall_bot), "muscle", 0.4 * (0.8 + 0.4 * T1))
    p.paint(V <= fat_bot, "fat", 0.3 * (0.6 + 0.8 * T1))
    p.paint(V < s1, "skin", 1.0)
    pos = dict(cx=ocx[:, 0, 0] + _col(P, 13, -0.35, 0.35)[:, 0, 0] * oax[:, 0, 0],
               cy=ocy[:, 0, 0] + _col(P, 14, -0.45, 0.1)[:, 0, 0] * oay[:, 0, 0])
    return p, pos


_SCENES = {"breast": _scene_breast, "thyroid": _scene_thyroid, "lymph_node": _scene_node, "abdomen": _scene_abdomen}


# =============================================================================== lesion
_THETA = np.linspace(0, 2 * np.pi, _NTH, endpoint=False)


def _margin_profiles(P: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Radius modulation ``P(theta)`` (B, _NTH) from shape/margin codes and uniforms.

    irregular shape: two low harmonics; indistinct: a faint 5-lobe ripple (plus a soft edge, see
    :func:`_draw_lesion`); microlobulated: |sin| bumps (8-12 per turn); angular: a triangle wave
    (4-6 corners); spiculated: spikes ``max(0, cos(k theta))**3`` (6-10 per turn).
    """
    t = _THETA[None, :]
    prof = np.zeros((P.shape[0], _NTH), np.float32)
    shape, margin = codes[:, 0], codes[:, 1]
    ph = 2 * np.pi * P[:, 17:21]

    def add(sel, fn):
        r = np.flatnonzero(sel)
        if len(r):
            prof[r] += fn(r).astype(np.float32)

    add(shape == 2, lambda r: (0.12 + 0.1 * P[r, 19:20]) * (0.6 * np.cos(2 * t + ph[r, 0:1]) + 0.5 * np.cos(3 * t + ph[r, 1:2])))
    add(margin == 1, lambda r: 0.03 * np.cos(5 * t + ph[r, 2:3]))
    add(margin == 2, lambda r: 0.12 * np.abs(np.sin(np.floor(8 + 5 * P[r, 21:22]) * t / 2 + ph[r, 2:3])))
    add(margin == 3, lambda r: 0.4 * np.abs(((np.floor(4 + 3 * P[r, 22:23]) * t / (2 * np.pi) + P[r, 20:21]) % 1.0) - 0.5))
    add(margin == 4, lambda r: 0.75 * np.maximum(0, np.cos(np.floor(6 + 5 * P[r, 21:22]) * t + ph[r, 3:4])) ** 3)
    return prof


_ECHO = np.array([0.012, 0.2, 0.8, 2.8, 1.0], np.float32)  # anechoic, hypo, iso, hyper, heterogeneous


def _cart_to_beam_f(probe: str, size: int, u, v):
    """Cartesian (u lateral, v depth) -> fractional beam-space (row, col)."""
    if probe == "linear":
        return v * size - 0.5, (u + 0.5) * size - 0.5
    a, th = _SECTOR_APEX, _SECTOR_HALF
    r = np.sqrt(u ** 2 + (v + a) ** 2)
    return (r - a) * size - 0.5, (np.arctan2(u, v + a) + th) / (2 * th) * size - 0.5


_LESION_SUB = 24  # lesions per window sub-batch
# polar lookup on a canonical grid: normalised ellipse coordinates (xn, yn) in [-2, 2)^2 ->
# radius and angle bin (saves a sqrt and an arctan2 per pixel)
_TAB_N, _TAB_R = 256, 2.0
_tg = (np.arange(_TAB_N) + 0.5) / _TAB_N * 2 * _TAB_R - _TAB_R
_TAB_E = np.sqrt(_tg[None, :] ** 2 + _tg[:, None] ** 2).astype(np.float32).ravel()
_TAB_K = ((np.arctan2(_tg[:, None], _tg[None, :]) + np.pi) * (_NTH / (2 * np.pi))).astype(np.int64).clip(0, _NTH - 1).astype(np.uint8).ravel()
del _tg


def _render_lesions(p, geo, T1, T2, size, idx, i0, j0, h, w, cx, cy, ax, ay, tilt, prof, lvl, echo, wsoft,
                    f_les, s_db, hilum, side, mask):
    """Lesion interiors of one sub-batch, computed in (len(idx), h, w) windows at rows i0, cols j0."""
    m = len(idx)
    I = i0[:, None, None] + np.arange(h)[None, :, None]
    J = j0[:, None, None] + np.arange(w)[None, None, :]
    pix = (I * size + J).reshape(m, -1)  # flat pixel index inside one image
    FI = (idx[:, None] * (size * size) + pix).reshape(-1)  # flat index into the group's maps
    shp = (m, h, w)
    col = lambda a: np.asarray(a, np.float32)[:, None, None]
    du = geo["Uf"].reshape(-1)[pix].reshape(shp) - col(cx)
    dv = geo["Vf"].reshape(-1)[pix].reshape(shp) - col(cy)
    ct, st = np.cos(tilt), np.sin(tilt)
    # normalised, rotated ellipse coordinates -> lookup-table cell
    q = np.float32(_TAB_N / (2 * _TAB_R))
    xq = du * col(ct / ax * q) + dv * col(st / ax * q)
    xq += np.float32(_TAB_N / 2)
    yq = dv * col(ct / ay * q) - du * col(st / ay * q)
    yq += np.float32(_TAB_N / 2)
    np.clip(xq, 0, _TAB_N - 1, out=xq)
    np.clip(yq, 0, _TAB_N - 1, out=yq)
    cell = yq.astype(np.int32)
    cell *= _TAB_N
    cell += xq.astype(np.int32)
    rho = _TAB_E[cell]
    if prof is not None:  # margin profile: radius scaled by 1 + P(theta)
        kk = _TAB_K[cell].astype(np.int32)
        kk += (np.arange(m, dtype=np.int32) * _NTH)[:, None, None]
        rho /= 1 + prof.reshape(-1)[kk]
    inside = rho < 1
    soft = np.clip((1 - rho) / col(wsoft) + 0.5, 0, 1)
    Rf, Ff, Sf, Lf = p.R.reshape(-1), p.F.reshape(-1), p.S.reshape(-1), p.L.reshape(-1)
    t2 = T2.reshape(-1)[FI].reshape(shp)
    target = col(lvl) * (0.8 + 0.4 * t2)
    het = np.flatnonzero(echo == 4)
    if len(het):  # blotchy mixture of dark and bright patches at the lesion's own scale
        xs, ys = (xq[het] - np.float32(_TAB_N / 2)) / q, (yq[het] - np.float32(_TAB_N / 2)) / q
        ph1, ph2 = col(6.28 * T1.reshape(len(T1), -1)[idx[het], 0]), col(6.28 * T1.reshape(len(T1), -1)[idx[het], -1])
        blot = np.cos(np.float32(7.0) * xs + ph1) * np.cos(np.float32(6.0) * ys + ph2) + 0.5 * np.cos(np.float32(11.0) * (xs + ys) + ph2)
        target[het] = col(lvl[het]) * (0.2 + 1.8 * np.clip(0.5 + 0.5 * blot, 0, 1)) * (0.8 + 0.4 * t2[het])
    Ri = Rf[FI].reshape(shp)
    iso = np.flatnonzero(echo == 2)
    if len(iso):  # isoechoic lesions get a thin hypoechoic halo so that they stay (barely) visible
        ri = rho[iso]
        Ri[iso] = np.where((ri >= 0.9) & (ri < 1.08), Ri[iso] * 0.55, Ri[iso])
    Ri += soft * (target - Ri)
    ins = inside.reshape(-1)
    FIin = FI[ins]
    bidx = np.broadcast_to(np.arange(m)[:, None, None], shp).reshape(-1)[ins]
    Ff[FIin] = f_les[bidx]
    Sf[FIin] += s_db[bidx]
    if hilum is not None:  # lymph node: echogenic fatty hilum off-centre, only for benign-looking nodes
        x = (du * col(ct) + dv * col(st) - col(0.25 * ax * side)) / col(0.45 * ax)
        y = (dv * col(ct) - du * col(st)) / col(0.3 * ay)
        hil = col(hilum).astype(bool) & inside & (x * x + y * y < 1)
        Ri = np.where(hil, 1.5 * (0.7 + 0.6 * t2), Ri)
        Lf[FIin] = _SID["node_cortex"]
        Lf[FI[hil.reshape(-1)]] = _SID["node_hilum"]
    else:
        Lf[FIin] = _SID["lesion"]
    Rf[FI] = Ri.reshape(-1)
    mask.reshape(-1)[FIin] = True


def _draw_lesion(p: _Painter, geo: dict, P, T1, T2, lp: dict, probe: str, size: int, node: bool, mask):
    """Paint the lesion of every sample with ``lp['has']`` into the painter's maps (in place).

    Work is done in a window around each lesion (same window size for the group) to save time.
    """
    idx = np.flatnonzero(lp["has"])
    H = size
    if len(idx) == 0:
        return
    centre = lp["centre"]
    Pi, codes = P[idx], lp["codes"][idx]
    prof = _margin_profiles(Pi, codes)
    pmax = prof.max(1)
    rmax = lp["radius"][idx] / (1.0 + pmax)
    shape, margin, echo, post, calc, orient = (codes[:, k] for k in range(6))
    aspect = np.where(shape == 1, 0.88 + 0.1 * Pi[:, 16], np.where(shape == 0, 0.55 + 0.25 * Pi[:, 16], 0.7 + 0.25 * Pi[:, 16]))
    tall = orient == 1
    aspect = np.where(tall, np.minimum(aspect, 0.8), aspect)
    ax = np.where(tall, rmax * aspect, rmax).astype(np.float32)
    ay = np.where(tall, rmax, rmax * aspect).astype(np.float32)
    tilt = ((Pi[:, 15] - 0.5) * 0.4).astype(np.float32)
    R_ext = (rmax * (1 + pmax)).astype(np.float32)
    # keep the lesion inside the image (and the fan)
    cx = np.clip(lp["cx"][idx], -0.5 + R_ext + 0.02, 0.5 - R_ext - 0.02)
    cy = np.clip(lp["cy"][idx], R_ext + 0.06, 1.0 - R_ext - 0.04)
    if probe == "sector":
        half = (cy - R_ext + _SECTOR_APEX) * math.tan(_SECTOR_HALF) - R_ext - 0.02
        cx = np.clip(cx, -np.maximum(half, 0), np.maximum(half, 0))
    # beam-space window around each lesion (soft margins reach ~1.2 x the radius); lesions are
    # processed in size-sorted sub-batches so that small lesions get small windows
    Rw = R_ext * 1.25 + 2.0 / size
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)[None, :]
    fi, fj = _cart_to_beam_f(probe, size, cx[:, None] + Rw[:, None] * np.cos(t), cy[:, None] + Rw[:, None] * np.sin(t))
    hh = np.minimum(size, np.ceil(fi.max(1) - fi.min(1)) + 4).astype(np.int64)
    ww = np.minimum(size, np.ceil(fj.max(1) - fj.min(1)) + 4).astype(np.int64)
    mids = ((fi.max(1) + fi.min(1)) / 2, (fj.max(1) + fj.min(1)) / 2)
    f_les = np.array([1.0, 0.0, 1.0, 0.5], np.float32)[post]  # enhancement lowers attenuation
    s_db = np.array([0.0, 0.0, 22.0, 10.0], np.float32)[post] / (2 * ay)  # shadowing adds (dB per depth)
    lvl = (_ECHO[echo] * lp["host"][idx]).astype(np.float32)
    wsoft = np.where(margin == 1, 0.35, 0.06).astype(np.float32)
    side = np.sign(Pi[:, 26] - 0.5)
    hilum = lp["hilum"][idx] if node else None
    centre[idx, 0], centre[idx, 1] = cx, cy
    flat = ~prof.any(1)  # smooth oval/round, circumscribed: no angular profile needed
    order = np.lexsort((np.maximum(hh, ww), flat))
    runs = []
    for grp in (order[flat[order]], order[~flat[order]]):
        runs += [grp[b0:b0 + _LESION_SUB] for b0 in range(0, len(grp), _LESION_SUB)]
    for r in runs:
        h, w = int(hh[r].max()), int(ww[r].max())
        i0 = np.clip(np.round(mids[0][r] - h / 2), 0, size - h).astype(np.int64)
        j0 = np.clip(np.round(mids[1][r] - w / 2), 0, size - w).astype(np.int64)
        _render_lesions(p, geo, T1, T2, size, idx[r], i0, j0, h, w, cx[r], cy[r], ax[r], ay[r], tilt[r],
                        None if flat[r[0]] else prof[r], lvl[r], echo[r], wsoft[r], f_les[r], s_db[r],
                        None if hilum is None else hilum[r], side[r], mask)
    # calcifications: bright point scatterers (micro: many, weak attenuation; macro: few, shadowing)
    ncal = np.where(calc == 1, 5 + np.floor(7.99 * Pi[:, 23]), np.where(calc == 2, 1 + np.floor(2.99 * Pi[:, 23]), 0)).astype(int)
    if ncal.any():
        on = np.arange(12)[None, :] < ncal[:, None]
        rad = 0.7 * np.sqrt(Pi[:, 56:68])
        ang = 2 * np.pi * Pi[:, 68:80]
        lx, ly = rad * np.cos(ang) * ax[:, None], rad * np.sin(ang) * ay[:, None]
        gu = cx[:, None] + lx * np.cos(tilt)[:, None] - ly * np.sin(tilt)[:, None]
        gv = cy[:, None] + lx * np.sin(tilt)[:, None] + ly * np.cos(tilt)[:, None]
        ii, jj = _cart_to_beam(probe, size, gu, gv)
        b = np.broadcast_to(idx[:, None], ii.shape)
        macro = np.broadcast_to((calc == 2)[:, None], ii.shape)
        scale = np.float32((size / 64.0) ** 2)
        p.R[b[on], ii[on], jj[on]] = np.where(macro[on], 14.0, 9.0) * scale
        p.S[b[on], ii[on], jj[on]] += np.where(macro[on], 28.0, 3.0) * H
        sel2 = on & macro
        i2, j2 = np.minimum(ii + 1, size - 1), np.minimum(jj + 1, size - 1)
        for a_, b_ in ((i2, jj), (ii, j2), (i2, j2)):
            p.R[b[sel2], a_[sel2], b_[sel2]] = 14.0 * scale
        p.S[b[sel2], ii[sel2], j2[sel2]] += 28.0 * H


# =============================================================================== image formation
@lru_cache(maxsize=64)
def _reverb_profile(size: int, spacing: float, width: float) -> np.ndarray:
    z = (np.arange(size) + 0.5) / size
    prof = np.zeros(size)
    k = 1
    while k * spacing < 1.0:
        prof += 0.85 ** (k - 1) * np.exp(-0.5 * ((z - k * spacing) / width) ** 2)
        k += 1
    return prof.astype(np.float32)


@lru_cache(maxsize=64)
def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) Gaussian blur as a matrix (rows sum to 1, edges replicate), so a separable
    blur of a batch is two matrix products (fast BLAS on small images)."""
    k = _gauss_kernel(sigma).astype(np.float64)
    r = len(k) // 2
    M = np.zeros((size, size))
    for o, wt in zip(range(-r, r + 1), k):
        j = np.clip(np.arange(size) + o, 0, size - 1)
        np.add.at(M, (np.arange(size), j), wt)
    return M.astype(np.float32)


@lru_cache(maxsize=8)
def _cumsum_matrix(size: int) -> np.ndarray:
    return (np.tril(np.ones((size, size))) / size).astype(np.float32)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` where one side is a (S, S) blur/cumsum matrix and the other a stack of images.

    numpy's stacked matmul is fastest for small images (<= 64 px) but degrades badly above;
    there the stack is reshaped into one large 2-D GEMM (BLAS) instead.
    """
    S = a.shape[-1] if a.ndim == 2 else b.shape[-1]
    if S <= 64:
        return np.matmul(a, b)
    if b.ndim == 2:  # images @ K: contract the last axis
        return (np.ascontiguousarray(a).reshape(-1, S) @ b).reshape(a.shape)
    Y = np.ascontiguousarray(np.moveaxis(b, -2, 0)).reshape(S, -1)  # K @ images: contract rows
    Z = (a @ Y).reshape((S,) + b.shape[:-2] + (b.shape[-1],))
    return np.ascontiguousarray(np.moveaxis(Z, 0, -2))


_REF_FRAC = 0.45  # the 0 dB level (R = 1) sits this fraction of the dynamic range below white
_NOISE_STD = math.sqrt((256.0 ** 2 - 1) / 12.0)  # std of uniform int8 scatterer amplitudes


def _form_image(R, F, S, noise, cen: CenterSettings, atten_db, size: int, artifacts: bool, out):
    """Beam-space B-mode image (B, H, W) in [0, 1] from the scene maps (see module docstring).

    Convolution model: scatterer field ``R * (w n + mu sigma)`` (``n`` complex, circular; ``w`` the
    center's diffuse weight ``speckle``; ``mu`` its coherent part) blurred by the separable PSF,
    envelope ``|.|``, depth gain, log compression. Done in the log domain to save passes.
    """
    H = size
    sc = size / 64.0
    Ka = _blur_matrix(size, cen.psf_axial * sc)
    KlT = np.ascontiguousarray(_blur_matrix(size, cen.psf_lateral * sc).T)
    B = R.shape[0]
    z = ((np.arange(H, dtype=np.float32) + 0.5) / H)[None, :, None]
    if artifacts and cen.reverberation > 0:  # ghost echoes at k * spacing, speckled like tissue
        R = R + np.float32(cen.reverberation) * _reverb_profile(size, cen.reverb_spacing, 0.6 / 64)[None, :, None]
    # std of the blurred diffuse noise (interior pixels)
    sig = _NOISE_STD * math.sqrt(float((Ka[H // 2].astype(np.float64) ** 2).sum() * (KlT[:, H // 2].astype(np.float64) ** 2).sum()))
    w, mu = np.float32(cen.speckle), np.float32(cen.coherent * sig)
    X = np.empty((2, B, H, H), np.float32)
    # one white field per sample; the quadrature component is the same field rolled by half the
    # image (independent pixels, hence independent after the short PSF)
    np.multiply(noise, w, out=X[0], dtype=np.float32)
    X[1, :, : H // 2] = X[0, :, H // 2:]
    X[1, :, H // 2:] = X[0, :, : H // 2]
    X[0] += mu
    X[0] *= R
    X[1] *= R
    X = _mm(_mm(Ka, X), KlT)
    q = X[0]
    q *= q
    X[1] *= X[1]
    q += X[1]
    a0 = np.asarray(atten_db, np.float32)[:, None, None]
    norm2 = sig * sig * (2.0 * cen.speckle ** 2 + cen.coherent ** 2)  # E q for R = 1
    dr = float(cen.dynamic_range)
    if artifacts and cen.noise > 0:  # thermal noise power, amplified by the (nominal) TGC
        nt = np.roll(noise, size // 2, axis=2).astype(np.float32)
        nt *= nt
        nt *= (np.float32(cen.noise ** 2 * norm2 / _NOISE_STD ** 2) * np.power(np.float32(10), a0 * z / 10))
        q += nt
    q += np.float32(1e-10 * norm2)
    # image = 10 log10(q / norm2) / dr + (TGC + gain - attenuation) / dr + (1 - ref)
    img = np.log(q)
    img *= np.float32(10.0 / math.log(10) / dr)
    tgc = (a0 * z + np.float32(cen.tgc_error) * z + np.float32(cen.gain)) / np.float32(dr)
    if artifacts:
        A = F * (a0 / np.float32(dr))
        A += np.float32(cen.shadow_strength / dr) * S
        img -= _mm(_mm(_cumsum_matrix(size), A), KlT)  # cumulative along the beam, soft lateral edges
    else:
        tgc = tgc - a0 * z / np.float32(dr)
    img += tgc + np.float32(1.0 - _REF_FRAC - 10.0 * math.log10(norm2) / dr)
    np.clip(img, 0.0, 1.0, out=out)


def _scan_convert(img: np.ndarray, lab: np.ndarray, mask: np.ndarray, conv: dict):
    B = img.shape[0]
    f = img.reshape(B, -1)
    out = f[:, conv["idx"][0]] * conv["wts"][0]
    for i in range(1, 4):
        out += f[:, conv["idx"][i]] * conv["wts"][i]
    near, ins = conv["nearest"], conv["inside"]
    lab_c = np.where(ins, lab.reshape(B, -1)[:, near], 0).astype(np.uint8)
    mask_c = np.where(ins, mask.reshape(B, -1)[:, near], False)
    s = img.shape[1:]
    return out.reshape(B, *s), lab_c.reshape(B, *s), mask_c.reshape(B, *s)


# =============================================================================== batch generation
_ANG = np.linspace(0, np.pi, 16, endpoint=False)
_DIRS = np.stack([np.cos(_ANG), np.sin(_ANG)]).astype(np.float32)


def _feret_px(mask: np.ndarray) -> np.ndarray:
    """Max Feret diameter (pixels, + 1 for the pixel size) of each mask, NaN if empty; vectorised.

    The extreme projections of a set are attained at the left/right-most pixel of some row, so
    only 2 points per row are projected on 16 directions.
    """
    _, H, W = mask.shape
    rows = mask.any(2)
    xl = mask.argmax(2).astype(np.float32)
    xr = (W - 1 - mask[:, :, ::-1].argmax(2)).astype(np.float32)
    y = np.arange(H, dtype=np.float32)[None, :, None]
    c, s = _DIRS[0][None, None, :], _DIRS[1][None, None, :]
    pl, pr = xl[..., None] * c + y * s, xr[..., None] * c + y * s
    big = np.float32(1e9)
    v = rows[..., None]
    hi = np.where(v, np.maximum(pl, pr), -big).max(1)
    lo = np.where(v, np.minimum(pl, pr), big).min(1)
    d = (hi - lo).max(1) + 1.0
    d[~rows.any(1)] = np.nan
    return d


def _boxes(mask: np.ndarray) -> np.ndarray:
    _, H, W = mask.shape
    rows, cols = mask.any(2), mask.any(1)
    has = rows.any(1)
    y0 = rows.argmax(1)
    y1 = H - rows[:, ::-1].argmax(1)
    x0 = cols.argmax(1)
    x1 = W - cols[:, ::-1].argmax(1)
    box = np.stack([x0, y0, x1, y1], 1).astype(np.float32)
    box[~has] = np.nan
    return box


def generate_batch(
    n: int,
    *,
    seed: int = 0,
    start: int = 0,
    image_size: int = 64,
    anatomies=None,
    centers=None,
    probe: str | None = None,
    label_noise: float = 0.0,
    p_lesion: float = 1.0,
    concept_freq: dict | None = None,
    artifacts: bool = True,
    attributes: dict | None = None,
) -> dict:
    """Generate samples ``start .. start+n-1`` as stacked arrays (the fast path).

    Returns a dict with every key of the common schema: ``image`` (n,H,W) float32 in [0,1],
    ``mask``/``label_map`` (n,H,W) uint8, ``box`` (n,4) float32, ``measurement`` (n,) float32 (lesion
    max diameter in mm, NaN when normal), ``label`` (n,) int64 into ``class_names``,
    ``pixel_spacing_mm`` (n,) float32, lists ``attributes``/``report``/``anatomy``/``center``/
    ``source``/``id`` (and ``probe``), and the shared tuples ``structures``/``class_names``.

    Arguments: ``anatomies``/``centers``: names to draw uniformly from (None = all);
    ``probe``: None = anatomy default, "linear" or "sector"; ``label_noise``: probability that a
    lesion's benign/malignant label is flipped (the report and attributes keep the rule's reading);
    ``p_lesion``: probability that an image contains a lesion (else class "normal");
    ``concept_freq``: concept -> probability of being mentioned in the report (see :data:`CONCEPTS`);
    ``artifacts``: False removes reverberation, shadowing/enhancement and thermal noise;
    ``attributes``: optional dict imposing attribute values on every lesion, e.g.
    ``{"margin": "spiculated", "size_mm": 15}`` (the others are sampled; the label still follows
    the rule) - handy for controlled experiments and interactive explorers.
    """
    check_positive("n", n)
    if not isinstance(start, (int, np.integer)) or isinstance(start, bool) or start < 0:
        raise ValueError(f"start must be a non-negative integer (first sample index), got {start!r}")
    if start + n > 2 ** 32:
        raise ValueError(f"sample indices must stay below 2**32 (got start={start}, n={n}); use another seed instead")
    cfg = _make_config(seed, image_size, anatomies, centers, probe, label_noise, p_lesion, concept_freq, artifacts,
                       attributes)
    S = cfg.image_size
    out = dict(
        image=np.empty((n, S, S), np.float32),
        mask=np.empty((n, S, S), np.uint8),
        label_map=np.empty((n, S, S), np.uint8),
        box=np.empty((n, 4), np.float32),
        measurement=np.empty(n, np.float32),
        label=np.empty(n, np.int64),
        pixel_spacing_mm=np.empty(n, np.float32),
        attributes=[], report=[], anatomy=[], center=[], probe=[], id=[],
    )
    chunk = max(8, min(512, (1 << 21) // (S * S)))
    bounds = [(c0, min(n, c0 + chunk)) for c0 in range(0, n, chunk)]
    if len(bounds) == 1 and n >= 2 * _MIN_PARALLEL:  # split so that both cores get work
        half = (n + 1) // 2
        bounds = [(0, half), (half, n)]
    workers = min(_threads(), len(bounds))

    def run(b):
        return _generate_chunk(cfg, start + b[0], b[1] - b[0])

    with _single_thread_blas(S):
        if workers > 1:  # numpy releases the GIL in the heavy array work
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as ex:
                parts = list(ex.map(run, bounds))
        else:
            parts = [run(b) for b in bounds]
    for (c0, c1), part in zip(bounds, parts):
        for k in ("image", "mask", "label_map", "box", "measurement", "label", "pixel_spacing_mm"):
            out[k][c0:c1] = part[k]
        for k in ("attributes", "report", "anatomy", "center", "probe", "id"):
            out[k].extend(part[k])
    out["structures"] = STRUCTURES
    out["class_names"] = CLASS_NAMES
    out["source"] = ["sonosynth"] * n
    return out


#: worker threads used by generate_batch (None = min(2, CPU count)); override with the environment
#: variable SONOSYNTH_THREADS=1 when another process needs the cores (results do not change)
NUM_THREADS: int | None = None
_MIN_PARALLEL = 128  # samples per thread below which threading is not worth it


def _threads() -> int:
    env = os.environ.get("SONOSYNTH_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"SONOSYNTH_THREADS must be an integer such as 1 or 2, got {env!r}") from None
    if NUM_THREADS is not None:
        return max(1, int(NUM_THREADS))
    return max(1, min(2, os.cpu_count() or 1))


def _single_thread_blas(size: int):
    """Above 64 px the blur runs through BLAS; one thread is faster on a busy 2-core machine (no
    spinning threads) and leaves the other core to the training loop that consumes the data."""
    if size <= 64:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl missing
        return nullcontext()


# ---- counter-based random numbers: word (i, slot) = SplitMix64(key + (i * 2**32 + slot) * golden)
# (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators", OOPSLA). Every
# number of sample i depends only on (seed, i, slot), so any batch gives the same sample, and the
# whole batch is drawn with a few vectorised integer operations.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_NOISE_SLOT = 1 << 20  # noise words start here (uniform slots stay below)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def _sample_key(seed: int) -> np.uint64:
    return _mix64(np.array([(_SALT << 32) + seed], np.uint64) * _GOLDEN)[0]


def _words(key: np.uint64, idx: np.ndarray, n_words: int, offset: int) -> np.ndarray:
    c = (idx[:, None] << np.uint64(32)) + np.arange(offset, offset + n_words, dtype=np.uint64)[None, :]
    c *= _GOLDEN
    c += key
    return _mix64(c)


def _uniforms(key: np.uint64, idx: np.ndarray, n: int, offset: int) -> np.ndarray:
    return (_words(key, idx, n, offset) >> np.uint64(11)).astype(np.float64) * (1.0 / 2 ** 53)


def _generate_chunk(cfg: _Config, start: int, n: int) -> dict:
    S = cfg.image_size
    freq = dict(cfg.freq)
    idx = np.arange(start, start + n, dtype=np.uint64)
    key = _sample_key(cfg.seed)
    Uall = _uniforms(key, idx, _NU + _NREP + _NTEX, 0)
    Pm = Uall[:, :_NU]
    REP = Uall[:, _NU:_NU + _NREP]
    TX = Uall[:, _NU + _NREP:].astype(np.float32)
    noise = _words(key, idx, S * S // 8, _NOISE_SLOT).view(np.int8).reshape(n, S, S)
    meta = []
    na, nc = len(cfg.anatomies), len(cfg.centers)
    rep_l, u_l = REP.tolist(), Pm[:, :28].tolist()
    for k in range(n):
        rnd = Chooser(rep_l[k])
        u = u_l[k]
        anatomy = cfg.anatomies[min(int(u[0] * na), na - 1)]
        center = cfg.centers[min(int(u[1] * nc), nc - 1)]
        probe = cfg.probe or ANATOMY_INFO[anatomy]["probe"]
        has = u[2] < cfg.p_lesion
        loc = _location(u, anatomy)
        if has:
            attrs = _draw_attributes(u, anatomy)
            if cfg.fixed:
                attrs.update(cfg.fixed)
            score, rule_label = malignancy_rule(attrs)
            label = 1 - rule_label if u[12] < cfg.label_noise else rule_label
            attrs.update(score=float(score), rule_label=CLASS_NAMES[rule_label], location=_location_text(anatomy, loc))
            report = write_report(rnd, anatomy, attrs, loc, CLASS_NAMES[rule_label], freq)
        else:
            attrs, label, rule_label = {}, 2, 2
            report = write_report(rnd, anatomy, None, loc, "normal", freq)
        meta.append((anatomy, center, probe, has, attrs, label, report, rule_label))
    anat = np.array([m[0] for m in meta])
    cen = np.array([m[1] for m in meta])
    prb = np.array([m[2] for m in meta])
    # process in sorted order (probe, center, anatomy) so that every group is a contiguous slice
    keys = [(m[2], m[1], m[0]) for m in meta]
    order = np.array(sorted(range(n), key=keys.__getitem__), dtype=np.int64)
    keys = [keys[k] for k in order]
    Pm, TX, noise = Pm[order], TX[order], noise[order]
    has = np.array([meta[k][3] for k in order])
    codes = np.zeros((n, 6), np.int64)
    radius = np.zeros(n, np.float32)
    for r, k in enumerate(order):
        m = meta[k]
        if m[3]:
            codes[r] = [_CODE[a][m[4][a]] for a in _ATTR_KEYS]
            radius[r] = m[4]["size_mm"] / 2.0 / ANATOMY_INFO[m[0]]["depth_mm"]
    hilum = np.array([meta[k][7] == 0 for k in order])
    atten = np.array([ANATOMY_INFO[meta[k][0]]["atten_db"] for k in order], np.float32)
    M1, M2 = _interp_matrix(S, _G1), _interp_matrix(S, _G2)
    T1 = M1 @ TX[:, : _G1 * _G1].reshape(n, _G1, _G1) @ M1.T
    T2 = M2 @ TX[:, _G1 * _G1:].reshape(n, _G2, _G2) @ M2.T
    R = np.empty((n, S, S), np.float32)
    F = np.empty_like(R)
    Sx = np.empty_like(R)
    L = np.empty((n, S, S), np.uint8)
    mask = np.zeros((n, S, S), bool)
    img = np.empty((n, S, S), np.float32)
    centre = np.zeros((n, 2), np.float32)  # lesion centre (u, v), filled by _draw_lesion

    def runs(keyfun):
        out, s0 = [], 0
        for r in range(1, n + 1):
            if r == n or keyfun(keys[r]) != keyfun(keys[s0]):
                out.append((keyfun(keys[s0]), slice(s0, r)))
                s0 = r
        return out

    for (pr, _, a), sl in runs(lambda kk: kk):
        geo = _probe_geometry(pr, S)
        p, pos = _SCENES[a]((R[sl], F[sl], Sx[sl], L[sl]), geo["U"], geo["V"], Pm[sl], T1[sl], T2[sl], S)
        m = sl.stop - sl.start
        lp = dict(has=has[sl], codes=codes[sl], radius=radius[sl], cx=pos["cx"], cy=pos["cy"], centre=centre[sl],
                  host=np.full(m, ANATOMY_INFO[a]["host"], np.float32), hilum=hilum[sl])
        _draw_lesion(p, geo, Pm[sl], T1[sl], T2[sl], lp, pr, S, a == "lymph_node", mask[sl])
    for (pr, cname), sl in runs(lambda kk: kk[:2]):
        _form_image(R[sl], F[sl], Sx[sl], noise[sl], CENTERS[cname], atten[sl], S, cfg.artifacts, img[sl])
        if pr == "sector":
            img[sl], L[sl], mask[sl] = _scan_convert(img[sl], L[sl], mask[sl], _probe_geometry("sector", S)["conv"])
    # back to index order
    inv = np.empty(n, np.int64)
    inv[order] = np.arange(n)
    img, L, mask = img[inv], L[inv], mask[inv]
    has, centre = has[inv], centre[inv]
    # a lesion smaller than a pixel (tiny image_size, imposed tiny size_mm) still gets its centre pixel
    for k in np.flatnonzero(has & ~mask.any((1, 2))):
        y = min(S - 1, max(0, int(centre[k, 1] * S)))
        x = min(S - 1, max(0, int((centre[k, 0] + 0.5) * S)))
        mask[k, y, x] = True
        L[k, y, x] = _SID["node_cortex"] if anat[k] == "lymph_node" else _SID["lesion"]
    spacing = np.array([ANATOMY_INFO[a]["depth_mm"] / S for a in anat], np.float32)
    meas = (_feret_px(mask) * spacing).astype(np.float32)
    return dict(
        image=img, mask=mask.view(np.uint8), label_map=L, box=_boxes(mask), measurement=meas,
        label=np.array([m[5] for m in meta], np.int64), pixel_spacing_mm=spacing,
        attributes=[m[4] for m in meta], report=[m[6] for m in meta], anatomy=anat.tolist(), center=cen.tolist(),
        probe=prb.tolist(), id=[f"sonosynth:{cfg.seed}:{start + k}" for k in range(n)],
    )


def generate(n: int, *, seed: int = 0, start: int = 0, image_size: int = 64, anatomies=None, centers=None,
             probe: str | None = None, label_noise: float = 0.0, p_lesion: float = 1.0,
             concept_freq: dict | None = None, artifacts: bool = True, attributes: dict | None = None) -> list[dict]:
    """``n`` samples (indices ``start..start+n-1``) as dicts in the common schema (all keys).

    Extra key: ``probe``. See :func:`generate_batch` for the arguments.
    """
    b = generate_batch(n, seed=seed, start=start, image_size=image_size, anatomies=anatomies, centers=centers,
                       probe=probe, label_noise=label_noise, p_lesion=p_lesion, concept_freq=concept_freq,
                       artifacts=artifacts, attributes=attributes)
    return [
        dict(
            image=b["image"][k], mask=b["mask"][k], label_map=b["label_map"][k], structures=STRUCTURES,
            box=b["box"][k], measurement=float(b["measurement"][k]), label=int(b["label"][k]),
            class_names=CLASS_NAMES, attributes=b["attributes"][k], report=b["report"][k],
            anatomy=b["anatomy"][k], center=b["center"][k], pixel_spacing_mm=float(b["pixel_spacing_mm"][k]),
            source="sonosynth", id=b["id"][k], probe=b["probe"][k],
        )
        for k in range(n)
    ]


def make_dataset(n: int, split: str = "train", seed: int = 0, **kw):
    """A ``datasets.Dataset`` of ``n`` samples of one split (disjoint index ranges per split).

    ``split``: "train" (indices from 0), "val" (from 1e8) or "test" (from 2e8); ``kw`` as in
    :func:`generate`. Use ``ds.with_format("torch")`` for tensors and
    :func:`course_lib.data.common.from_hf_row` to get a schema dict back.
    """
    from .common import to_hf_dataset

    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_OFFSETS)}")
    if "start" in kw:
        raise ValueError("make_dataset chooses the index range from split=; call generate(start=...) for custom ranges")
    check_positive("n", n)
    if n > 100_000_000:
        raise ValueError(f"n={n} exceeds the 1e8 samples reserved per split")
    samples = generate(n, seed=seed, start=SPLIT_OFFSETS[split], **kw)
    for s in samples:
        s.pop("probe", None)
    assert all(set(SAMPLE_KEYS) <= set(s) for s in samples)
    return to_hf_dataset(samples)

"""SonoSynth's world: anatomies, probes, classes, the structure vocabulary of label maps, per-anatomy
geometry and the split offsets. Used by notebook 00 (tour) and everything that draws SonoSynth data.
"""
from __future__ import annotations

import math

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


#: per anatomy: field-of-view depth (mm, = image height), default probe, lesion size range (mm),
#: echo level of the lesion's host tissue, nominal round-trip attenuation over the full depth (dB)
ANATOMY_INFO = {
    "breast": dict(depth_mm=40.0, probe="linear", size_mm=(5.0, 22.0), host=0.8, atten_db=36.0),
    "thyroid": dict(depth_mm=40.0, probe="linear", size_mm=(5.0, 20.0), host=1.4, atten_db=36.0),
    "lymph_node": dict(depth_mm=35.0, probe="linear", size_mm=(6.0, 20.0), host=0.6, atten_db=30.0),
    "abdomen": dict(depth_mm=150.0, probe="sector", size_mm=(12.0, 45.0), host=0.85, atten_db=50.0),
}


#: first sample index of each split (disjoint index ranges; make_dataset uses them)
SPLIT_OFFSETS = {"train": 0, "val": 100_000_000, "test": 200_000_000}
_SPLIT_ALIASES = {"validation": "val", "valid": "val"}

_SECTOR_APEX = 0.25  # curvilinear probe radius, in units of the image depth
_SECTOR_HALF = math.radians(38.0)

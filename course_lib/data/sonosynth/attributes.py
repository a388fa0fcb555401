"""SonoSynth's lesion attributes, the BI-RADS/TI-RADS-like malignancy rule and the per-sample draws
of attributes and report locations. Used by notebook 00 (the rule table) and notebooks 01-02 (reports).
"""
from __future__ import annotations

from .rng import ATTRIBUTE_COLUMNS, Col
from .world import ANATOMY_INFO

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


def malignancy_rule(attrs: dict) -> tuple[int, int]:
    """Points score and label (0 = benign, 1 = malignant) of a lesion attribute dict.

    ``attrs`` needs the keys of :data:`ATTRIBUTES` (``size_mm`` optional, default 0). Points per value
    are in :data:`RULE_POINTS` (table in the docstring of :mod:`course_lib.data.sonosynth`); ``size_mm >= RULE_SIZE_MM`` adds one.

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


# ------------------------------------------------------------------------------------ per-sample draws
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
#: the six categorical attributes, in the column order of the integer ``codes`` of a batch
ATTRIBUTE_KEYS = tuple(ATTRIBUTE_COLUMNS)
#: attribute -> value -> integer code (index in ATTRIBUTES[attribute])
CODE = {k: {v: i for i, v in enumerate(ATTRIBUTES[k])} for k in ATTRIBUTE_KEYS}


def _draw_attributes(u: list, anatomy: str) -> dict:
    """Attribute dict of one lesion from its shared uniforms ``u`` (columns :class:`.rng.Col`)."""
    z = int(u[Col.LOOK] < 0.5)  # 1 = malignant-looking distribution
    d = _DIST[z]
    a = {k: _cat(u[col], ATTRIBUTES[k], d[k]) for k, col in ATTRIBUTE_COLUMNS.items()}
    if a["echogenicity"] == "anechoic":  # simple cysts: smooth, enhancing, no calcium
        a["calcifications"] = "none"
        if u[Col.CYST] < 0.85:
            a["posterior"] = "enhancement"
            a["margin"] = "circumscribed"
    lo, hi = ANATOMY_INFO[anatomy]["size_mm"]
    t = u[Col.SIZE] ** (1.3 if z else 1.8)  # malignant-looking lesions tend to be larger
    a["size_mm"] = round(lo + (hi - lo) * t, 1)
    return a


def _location(u: list, anatomy: str) -> dict:
    """Where the lesion is, for the report (side, clock face / pole / region / organ)."""
    side = "left" if u[Col.SIDE] < 0.5 else "right"
    if anatomy == "breast":
        return {"side": side, "clock": 1 + int(u[Col.LOCATION] * 12) % 12}
    if anatomy == "thyroid":
        return {"side": side, "pole": ("upper", "mid", "lower")[int(u[Col.LOCATION] * 3) % 3]}
    if anatomy == "lymph_node":
        return {"side": side, "region": ("axilla", "neck level II", "neck level III", "neck level IV")[int(u[Col.LOCATION] * 4) % 4]}
    organ = "liver" if u[Col.ABDOMEN_ORGAN] < 0.6 else "spleen"
    return {"side": "right" if organ == "liver" else "left", "organ": organ,
            "segment": ("V", "VI", "VII", "VIII")[int(u[Col.LOCATION] * 4) % 4], "pole": ("upper", "lower")[int(u[Col.LOCATION] * 2) % 2]}


def _location_text(anatomy: str, loc: dict) -> str:
    if anatomy == "breast":
        return f"{loc['side']} breast, {loc['clock']} o'clock"
    if anatomy == "thyroid":
        return f"{loc['side']} lobe, {loc['pole']}"
    if anatomy == "lymph_node":
        return f"{loc['side']} {loc['region']}"
    return loc["organ"]

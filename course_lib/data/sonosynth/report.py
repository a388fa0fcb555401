"""SonoSynth's free-text reports (several phrasings per concept, random order and omissions) and
``report_concepts``, which parses a report back. Used by notebooks 01-02 (pretraining corpus, concept frequency).

Each *concept* (an attribute of the lesion, its location, the overall impression) is written with
one of several phrasings; whether a concept appears at all is decided by ``concept_freq``
(probability per concept), so a notebook can control how often, e.g., "calcifications" appears in a
pretraining corpus. :func:`report_concepts` parses a report back into the concepts it mentions;
the vocabulary below is designed so that every phrasing of a value is recognised by exactly one
pattern (tested in ``tests/data/test_sonosynth.py``). Public path: ``course_lib.data.sonosynth.report``
(``report_concepts`` is also re-exported by the package).
"""
from __future__ import annotations

import re

#: concepts a report can mention (lesion attributes + location + impression)
CONCEPTS = (
    "size",
    "shape",
    "margin",
    "echogenicity",
    "posterior",
    "calcifications",
    "orientation",
    "location",
    "impression",
)

#: default probability that each concept's phrase appears in a report
DEFAULT_CONCEPT_FREQ = {
    "size": 0.85,
    "shape": 0.9,
    "margin": 0.9,
    "echogenicity": 0.9,
    "posterior": 0.75,
    "calcifications": 0.7,
    "orientation": 0.7,
    "location": 0.8,
    "impression": 0.8,
}


class Chooser:
    """Tiny deterministic random source over a fixed list of uniforms (faster than ``random.Random``
    for the few dozen choices a report needs; wraps around if the list runs out)."""

    __slots__ = ("i", "n", "u")

    def __init__(self, uniforms: list):
        self.u, self.i, self.n = uniforms, 0, len(uniforms)

    def random(self) -> float:
        x = self.u[self.i % self.n]
        self.i += 1
        return x

    def choice(self, seq):
        return seq[int(self.random() * len(seq))]

    def shuffle(self, seq: list) -> None:
        for k in range(len(seq) - 1, 0, -1):
            j = int(self.random() * (k + 1))
            seq[k], seq[j] = seq[j], seq[k]


# ----------------------------------------------------------------------------- vocabulary
# phrases are used in two styles: "prose" (a full sentence, {n} = lesion noun) and "terse"
# (a short fragment joined with commas). Every phrase must match its value's pattern only.
_PHRASES = {
    "shape": {
        "oval": (["The {n} is oval.", "The {n} has an ovoid shape.", "It is oval-shaped."], ["oval", "ovoid shape"]),
        "round": (["The {n} is round.", "It has a rounded, spherical shape.", "The {n} appears round."], ["round", "rounded shape"]),
        "irregular": (["The {n} is irregular in shape.", "It has an irregular shape.", "The {n} is irregularly shaped."], ["irregular shape", "irregularly shaped"]),
    },
    "margin": {
        "circumscribed": (["Margins are circumscribed.", "The {n} is well-defined with smooth borders.", "It is sharply marginated."], ["circumscribed margins", "well-defined borders"]),
        "indistinct": (["Margins are indistinct.", "The borders are ill-defined.", "The {n} is poorly defined from the surrounding tissue."], ["indistinct margins", "ill-defined borders"]),
        "microlobulated": (["Margins are microlobulated.", "The {n} shows microlobulation of its border.", "It has small lobulations along the margin."], ["microlobulated margins", "microlobulated border"]),
        "angular": (["Margins are angular.", "The {n} has angulated borders.", "Angular margins are noted."], ["angular margins", "angulated borders"]),
        "spiculated": (["Margins are spiculated.", "Spiculations radiate from the {n}.", "The {n} has a spiculated border."], ["spiculated margins", "spiculated border"]),
    },
    "echogenicity": {
        "anechoic": (["The {n} is anechoic.", "It is echo-free.", "The {n} is anechoic, consistent with fluid content."], ["anechoic", "echo-free"]),
        "hypoechoic": (["The {n} is hypoechoic.", "It is darker than the adjacent tissue (hypoechoic).", "Echogenicity is decreased (hypoechoic)."], ["hypoechoic", "hypoechogenic"]),
        "isoechoic": (["The {n} is isoechoic.", "It is isoechoic to the adjacent tissue.", "Echogenicity is similar to the parenchyma (isoechoic)."], ["isoechoic", "isoechogenic"]),
        "hyperechoic": (["The {n} is hyperechoic.", "It is brighter than the adjacent tissue (hyperechoic).", "Echogenicity is increased (hyperechoic)."], ["hyperechoic", "hyperechogenic"]),
        "heterogeneous": (["The {n} is heterogeneous.", "It shows mixed echogenicity.", "Internal echoes are heterogeneous."], ["heterogeneous", "mixed echogenicity"]),
    },
    "posterior": {
        "none": (["No posterior acoustic features.", "There are no posterior features.", "Posterior features are absent."], ["no posterior features", "no posterior acoustic features"]),
        "enhancement": (["Posterior acoustic enhancement is present.", "There is increased through-transmission.", "The {n} shows posterior enhancement."], ["posterior enhancement", "posterior acoustic enhancement"]),
        "shadowing": (["Posterior acoustic shadowing is present.", "The {n} casts a posterior shadow.", "There is posterior shadowing."], ["posterior shadowing", "posterior acoustic shadowing"]),
        "combined": (["A combined posterior pattern is seen.", "Posterior features are combined (partial shadowing with enhancement).", "The {n} shows a combined posterior pattern."], ["combined posterior pattern", "combined posterior features"]),
    },
    "calcifications": {
        "none": (["No calcifications are seen.", "There are no calcifications.", "No echogenic foci."], ["no calcifications", "no echogenic foci"]),
        "micro": (["Microcalcifications are present.", "Punctate echogenic foci are seen within the {n}.", "The {n} contains microcalcifications."], ["microcalcifications", "punctate echogenic foci"]),
        "macro": (["Coarse calcifications are present.", "The {n} contains macrocalcifications.", "Coarse calcifications are seen."], ["coarse calcifications", "macrocalcifications"]),
    },
    "orientation": {
        "parallel": (["The {n} is parallel to the skin.", "It is wider than tall.", "Orientation is horizontal (wider than tall)."], ["parallel orientation", "wider than tall"]),
        "taller_than_wide": (["The {n} is taller than wide.", "It is not parallel to the skin.", "Orientation is vertical (taller than wide)."], ["taller than wide", "non-parallel orientation"]),
    },
    "impression": {
        "benign": (["Impression: likely benign.", "Findings favour a benign lesion.", "Probably benign; short-interval follow-up."], ["likely benign", "probably benign"]),
        "malignant": (["Impression: suspicious for malignancy.", "Findings are highly suggestive of malignancy; biopsy recommended.", "Features are concerning for malignancy."], ["suspicious for malignancy", "concerning for malignancy"]),
        "normal": (["Impression: normal study.", "No focal lesion is identified.", "Unremarkable examination; no focal lesion."], ["normal study", "no focal lesion"]),
    },
}

# parse patterns, checked in this order (first match wins within a concept)
_PATTERNS = {
    "shape": [("irregular", r"\birregular"), ("round", r"\bround(ed)?\b"), ("oval", r"\boval|\bovoid")],
    "margin": [
        ("circumscribed", r"circumscribed|well-defined|sharply marginated"),
        ("indistinct", r"indistinct|ill-defined|poorly defined"),
        ("microlobulated", r"microlobulat|small lobulations"),
        ("angular", r"\bangula"),
        ("spiculated", r"spicul"),
    ],
    "echogenicity": [
        ("anechoic", r"\banechoic|echo-free"),
        ("hypoechoic", r"hypoecho"),
        ("isoechoic", r"isoecho"),
        ("hyperechoic", r"hyperecho"),
        ("heterogeneous", r"heterogeneous|mixed echogenicity"),
    ],
    "posterior": [
        ("none", r"no posterior|posterior features are absent"),
        ("combined", r"combined posterior|posterior features are combined|posterior pattern"),
        ("shadowing", r"shadow"),
        ("enhancement", r"enhancement|through-transmission"),
    ],
    "calcifications": [
        ("none", r"no calcifications|no echogenic foci"),
        ("micro", r"microcalc|punctate"),
        ("macro", r"coarse calc|macrocalc"),
    ],
    "orientation": [
        ("taller_than_wide", r"taller than wide|not parallel|non-parallel"),
        ("parallel", r"parallel|wider than tall"),
    ],
    "impression": [
        ("malignant", r"suspicious for malignancy|suggestive of malignancy|concerning for malignancy"),
        ("benign", r"\bbenign"),
        ("normal", r"normal study|no focal lesion"),
    ],
}
_COMPILED = {c: [(v, re.compile(p, re.IGNORECASE)) for v, p in pats] for c, pats in _PATTERNS.items()}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(mm|cm)\b")
_LOC_RE = re.compile(r"(\d{1,2} o'clock|(left|right) (thyroid )?lobe|isthmus|level [IV]+|axilla|"
                     r"right lobe of the liver|segment [IVX]+|(in|within) the (spleen|liver)|(upper|lower) pole)",
                     re.IGNORECASE)

_NOUN = {"breast": ("mass", "lesion"), "thyroid": ("nodule",), "lymph_node": ("lymph node", "node"),
         "abdomen": ("lesion", "mass")}

_INTRO = {
    "breast": ["Breast ultrasound, {side} side.", "Targeted sonography of the {side} breast.", "{Side} breast ultrasound."],
    "thyroid": ["Thyroid ultrasound.", "Sonography of the thyroid gland.", "Neck ultrasound, thyroid."],
    "lymph_node": ["Lymph node ultrasound.", "Sonography of superficial lymph nodes, {side} side.", "{Side} soft-tissue ultrasound."],
    "abdomen": ["Abdominal ultrasound.", "Ultrasound of the upper abdomen.", "Sonography of the {organ}."],
}
_BACKGROUND = {
    "breast": ["Breast tissue is predominantly fibroglandular.", "Scattered fibroglandular tissue.", "The skin and subcutaneous fat are unremarkable."],
    "thyroid": ["The thyroid gland is normal in size.", "The trachea is midline.", "The carotid arteries are visualised laterally."],
    "lymph_node": ["The surrounding soft tissues are unremarkable.", "The adjacent muscle is normal."],
    "abdomen": ["The liver has homogeneous echotexture.", "The visualised kidney is normal.", "The spleen is normal in size."],
}


def _location_phrase(rnd: Chooser, anatomy: str, loc: dict) -> str:
    side = loc.get("side", "right")
    if anatomy == "breast":
        c = loc["clock"]
        return rnd.choice([f"at the {c} o'clock position", f"in the {side} breast at {c} o'clock", f"located at {c} o'clock"])
    if anatomy == "thyroid":
        pole = loc.get("pole", "mid")
        lobe = f"{side} lobe"
        return rnd.choice([f"in the {lobe}", f"within the {side} thyroid lobe", f"in the {pole} part of the {lobe}"])
    if anatomy == "lymph_node":
        return rnd.choice([f"in the {side} {loc['region']}", f"at {loc['region']} on the {side}", f"located in the {loc['region']}"])
    organ = loc.get("organ", "liver")
    if organ == "liver":
        return rnd.choice(["in the right lobe of the liver", f"in segment {loc.get('segment', 'VI')}", "within the liver"])
    return rnd.choice([f"within the {organ}", f"in the {organ}", f"in the {loc.get('pole', 'upper')} pole of the {organ}"])


def _size_phrase(rnd: Chooser, size_mm: float, terse: bool) -> str:
    mm = int(round(size_mm))
    if terse:
        return rnd.choice([f"{mm} mm", f"{size_mm / 10:.1f} cm"])
    return rnd.choice([f"It measures {mm} mm.", f"Maximal diameter {mm} mm.", f"Size approximately {size_mm / 10:.1f} cm."])


def write_report(rnd: Chooser, anatomy: str, attrs: dict | None, loc: dict, impression: str, freq: dict) -> str:
    """Compose one report. ``attrs`` None = no lesion. ``freq``: concept -> probability of mention."""
    side = loc.get("side", "right")
    intro = rnd.choice(_INTRO[anatomy]).format(side=side, Side=side.capitalize(), region=loc.get("region", "neck"),
                                                organ=loc.get("organ", "liver"))
    parts = [intro]
    if rnd.random() < 0.5:
        parts.append(rnd.choice(_BACKGROUND[anatomy]))
    if attrs is None:
        if rnd.random() < freq["impression"]:
            parts.append(rnd.choice(_PHRASES["impression"]["normal"][0]))
        return " ".join(parts)
    noun = rnd.choice(_NOUN[anatomy])
    mention = {c: rnd.random() < freq[c] for c in CONCEPTS}
    terse = rnd.random() < 0.35
    order = ["shape", "margin", "echogenicity", "posterior", "calcifications", "orientation"]
    if terse:
        frags = []
        if mention["size"]:
            frags.append(_size_phrase(rnd, attrs["size_mm"], True))
        rnd.shuffle(order)
        for c in order:
            if mention[c]:
                frags.append(rnd.choice(_PHRASES[c][attrs[c]][1]))
        head = f"Findings: {noun}"
        if mention["location"]:
            head += " " + _location_phrase(rnd, anatomy, loc)
        parts.append(head + (": " + ", ".join(frags) if frags else "") + ".")
    else:
        first = rnd.choice([f"A {noun} is seen", f"There is a {noun}", f"A focal {noun} is identified"])
        if mention["location"]:
            first += " " + _location_phrase(rnd, anatomy, loc)
        parts.append(first + ".")
        body = []
        if mention["size"]:
            body.append(_size_phrase(rnd, attrs["size_mm"], False))
        for c in order:
            if mention[c]:
                body.append(rnd.choice(_PHRASES[c][attrs[c]][0]).format(n=noun))
        rnd.shuffle(body)
        parts.extend(body)
    if mention["impression"]:
        parts.append(rnd.choice(_PHRASES["impression"][impression][0]))
    return " ".join(parts)


def report_concepts(report: str) -> dict:
    """Concepts mentioned in ``report`` -> their value (size as float mm, location as the matched text).

    Example: ``report_concepts("A nodule is seen in the left lobe. Margins are spiculated.")``
    -> ``{"location": "left lobe", "margin": "spiculated"}``.
    """
    if not isinstance(report, str):
        raise TypeError(f"report_concepts expects a report string, got {type(report).__name__}")
    out: dict = {}
    m = _SIZE_RE.search(report)
    if m:
        out["size"] = float(m.group(1)) * (10.0 if m.group(2) == "cm" else 1.0)
    for concept, pats in _COMPILED.items():
        for value, pat in pats:
            if pat.search(report):
                out[concept] = value
                break
    m = _LOC_RE.search(report)
    if m:
        out["location"] = m.group(0)
    return out

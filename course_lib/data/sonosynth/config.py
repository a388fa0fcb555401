"""SonoSynth's argument checks: every generator argument is validated into one frozen config, with
errors that name the argument and the valid values. Internal to :mod:`course_lib.data.sonosynth`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attributes import ATTRIBUTES
from .centers import CENTERS
from .report import CONCEPTS, DEFAULT_CONCEPT_FREQ
from .world import ANATOMIES, PROBES


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

"""SonoSynth random numbers: the counter-based generator and the NAMED per-sample column layout.
Internal to :mod:`course_lib.data.sonosynth` (notebook 00 tours its output).

Every random number of sample ``i`` is word ``(i, slot)`` of a counter-based hash of the seed
(SplitMix64; Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators", OOPSLA),
so a sample does not depend on the batch it is drawn in. Per sample there are three blocks of
uniforms, drawn at once: ``SCENE`` (``N_SCENE`` = 96 columns: the matrix ``P`` of the scene and
lesion code), ``REPORT`` (wording of the report) and ``TEXTURE`` (two coarse texture grids); the
speckle noise words start at ``NOISE_SLOT``.

Columns of ``P`` have names instead of numbers: :class:`Col` holds the columns shared by every
anatomy (which anatomy/center, lesion attributes, lesion placement and outline, location), the
slices ``MARGIN_PHASES``/``CALC_RADIUS``/``CALC_ANGLE`` hold vectors, and :class:`Breast`,
:class:`Thyroid`, :class:`Node` and :class:`Abdomen` name the scene columns (28 onwards) that each
anatomy reads. The numbers are part of the generator's definition: changing one changes every
image (``tests/data/test_sonosynth_golden.py`` catches it).
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np

# ------------------------------------------------------------------------------------ block sizes
N_SCENE = 96  # uniforms per sample for the scene/lesion (the matrix P; fixed layout below)
N_REPORT = 64  # uniforms per sample for the report wording
TEXTURE_GRIDS = (6, 14)  # low- and mid-frequency texture grids (G x G uniforms each)
N_TEXTURE = sum(g * g for g in TEXTURE_GRIDS)
SCENE = slice(0, N_SCENE)
REPORT = slice(N_SCENE, N_SCENE + N_REPORT)
TEXTURE = slice(N_SCENE + N_REPORT, N_SCENE + N_REPORT + N_TEXTURE)
N_UNIFORMS = N_SCENE + N_REPORT + N_TEXTURE
NOISE_SLOT = 1 << 20  # speckle noise words start here (uniform slots stay below)


class Col(IntEnum):
    """Columns of ``P`` shared by every anatomy (``u`` in the per-sample Python code)."""

    ANATOMY = 0  # which of the requested anatomies
    CENTER = 1  # which of the requested centers
    HAS_LESION = 2  # lesion iff < p_lesion
    LOOK = 3  # latent benign-looking (>= 0.5) / malignant-looking (< 0.5) attribute distribution
    SHAPE = 4  # categorical draws of the six attributes, in ATTRIBUTE_COLUMNS order
    MARGIN = 5
    ECHOGENICITY = 6
    POSTERIOR = 7
    CALCIFICATIONS = 8
    ORIENTATION = 9
    SIZE = 10  # lesion size within the anatomy's range
    CYST = 11  # anechoic lesions become simple cysts (enhancing, circumscribed) iff < 0.85
    LABEL_NOISE = 12  # label flipped iff < label_noise
    LESION_X = 13  # lesion centre within the anatomy's lesion region
    LESION_Y = 14
    TILT = 15  # lesion axis tilt
    ASPECT = 16  # lesion aspect ratio
    PHASE_1 = 17  # phases of the margin profile (irregular shape: 1-2; margins: 3, spiculated: 4)
    PHASE_2 = 18
    PHASE_3 = 19
    IRREGULAR_AMPLITUDE = 19  # the same draw as PHASE_3, reused for the irregular-shape amplitude
    PHASE_4 = 20
    ANGULAR_OFFSET = 20  # the same draw as PHASE_4, reused for the angular (triangle-wave) offset
    LOBES = 21  # number of microlobulations / spicules
    CORNERS = 22  # number of corners of an angular margin
    N_CALCIFICATIONS = 23
    SIDE = 24  # left/right (report location; thyroid: which lobe holds the nodule)
    LOCATION = 25  # clock face / pole / region / segment of the report location
    HILUM_SIDE = 26  # side of a lymph node's fatty hilum
    ABDOMEN_ORGAN = 27  # liver (right upper quadrant) iff < 0.6, else spleen


N_SHARED = 28  # columns 0..27 are read per sample in Python (attributes, report location)
ATTRIBUTE_COLUMNS = {"shape": Col.SHAPE, "margin": Col.MARGIN, "echogenicity": Col.ECHOGENICITY,
                     "posterior": Col.POSTERIOR, "calcifications": Col.CALCIFICATIONS, "orientation": Col.ORIENTATION}
MARGIN_PHASES = slice(int(Col.PHASE_1), int(Col.PHASE_4) + 1)
CALC_RADIUS = slice(56, 68)  # radial position of up to 12 calcifications (sqrt-distributed)
CALC_ANGLE = slice(68, 80)  # angular position of up to 12 calcifications
MAX_CALCIFICATIONS = CALC_RADIUS.stop - CALC_RADIUS.start


def one(k: int) -> slice:
    """Column ``k`` as a one-wide slice (``P[:, one(k)]`` has shape (B, 1))."""
    return slice(k, k + 1)


class Breast(IntEnum):
    """Scene columns of the breast (skin, subcutaneous fat with Cooper's ligaments, gland,
    retromammary fat, pectoralis with striations, sometimes a rib)."""

    SKIN = 28
    FAT_DEPTH = 29
    FAT_WAVE_AMPLITUDE = 30
    FAT_WAVE_FREQUENCY = 31
    FAT_WAVE_PHASE = 32
    GLAND_THICKNESS = 33
    GLAND_WAVE_AMPLITUDE = 34
    GLAND_WAVE_FREQUENCY = 35
    GLAND_WAVE_PHASE = 36
    RETROMAMMARY_FAT = 37
    MUSCLE_THICKNESS = 38
    STRIATION_FREQUENCY = 39
    STRIATION_TILT = 40
    LIGAMENT_FREQUENCY_U = 41
    LIGAMENT_FREQUENCY_V = 42
    LIGAMENT_PHASE = 43
    HAS_RIB = 44
    RIB_X = 45
    RIB_WIDTH = 46


class Thyroid(IntEnum):
    """Scene columns of the thyroid (skin, fat, strap muscles, two lobes and the isthmus,
    trachea, carotid arteries and jugular veins, deep muscle)."""

    SKIN = 28
    FAT = 29
    STRAP_MUSCLE = 30
    LOBE_DEPTH = 31
    LOBE_WIDTH = 32
    LOBE_HEIGHT = 33
    LOBE_SPREAD = 34
    MIDLINE_SHIFT = 35
    TRACHEA_DEPTH = 36
    TRACHEA_RADIUS = 37
    CAROTID_GAP = 38
    STRIATION_FREQUENCY = 39
    TRACHEA_RINGS = 40
    DEEP_MUSCLE_GAP = 41
    ISTHMUS_HALF_WIDTH = 42
    ISTHMUS_THICKNESS = 43
    CAROTID_RADIUS = 44
    JUGULAR_WIDTH = 45
    JUGULAR_HEIGHT = 46


class Node(IntEnum):
    """Scene columns of the lymph-node region (skin, fat with septa, muscle, sometimes a vessel)."""

    SKIN = 28
    FAT_DEPTH = 29
    FAT_WAVE_AMPLITUDE = 30
    FAT_WAVE_FREQUENCY = 31
    FAT_WAVE_PHASE = 32
    MUSCLE_THICKNESS = 33
    HAS_VESSEL = 34
    VESSEL_RADIUS = 35
    VESSEL_X = 36
    VESSEL_GAP = 37
    STRIATION_FREQUENCY = 39
    STRIATION_TILT = 40
    SEPTA_FREQUENCY_U = 41
    SEPTA_FREQUENCY_V = 42
    SEPTA_PHASE = 43


class Abdomen(IntEnum):
    """Scene columns of the upper abdomen (body wall, liver or spleen, diaphragm, kidney,
    gallbladder, two vessels in the organ); liver vs spleen is ``Col.ABDOMEN_ORGAN``."""

    SKIN = 28
    FAT = 29
    WALL_MUSCLE = 30
    ORGAN_X = 31
    ORGAN_Y = 32
    ORGAN_WIDTH = 33
    ORGAN_HEIGHT = 34
    KIDNEY_X = 35
    KIDNEY_Y = 36
    KIDNEY_WIDTH = 37
    KIDNEY_HEIGHT = 38
    KIDNEY_TILT = 39
    HAS_GALLBLADDER = 40
    GALLBLADDER_X = 41
    GALLBLADDER_Y = 42
    GALLBLADDER_WIDTH = 43
    GALLBLADDER_TILT = 45
    GALLBLADDER_HEIGHT = 46
    HAS_KIDNEY = 47
    VESSEL_1_RADIUS = 48
    VESSEL_2_RADIUS = 49
    VESSEL_1_X = 50
    VESSEL_2_X = 51
    VESSEL_1_Y = 52
    VESSEL_2_Y = 53


SCENE_COLUMNS = {"breast": Breast, "thyroid": Thyroid, "lymph_node": Node, "abdomen": Abdomen}


# ------------------------------------------------------------------------------------ SplitMix64
# word (i, slot) = mix64(key + (i * 2**32 + slot) * golden), key = mix64((SALT * 2**32 + seed) * golden)
SALT = 0x50_70_5E  # separates SonoSynth's random streams from other users of the same seed
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (bijective 64-bit mixing)."""
    z = z ^ (z >> np.uint64(30))
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def sample_key(seed: int) -> np.uint64:
    """The stream key of a seed."""
    return mix64(np.array([(SALT << 32) + seed], np.uint64) * _GOLDEN)[0]


def words(key: np.uint64, idx: np.ndarray, n_words: int, offset: int) -> np.ndarray:
    """(len(idx), n_words) uint64 words at slots ``offset .. offset + n_words - 1`` of samples ``idx``."""
    c = (idx[:, None] << np.uint64(32)) + np.arange(offset, offset + n_words, dtype=np.uint64)[None, :]
    c *= _GOLDEN
    c += key
    return mix64(c)


def uniforms(key: np.uint64, idx: np.ndarray, n: int, offset: int) -> np.ndarray:
    """(len(idx), n) float64 uniforms in [0, 1) (53-bit) at slots ``offset ..``."""
    return (words(key, idx, n, offset) >> np.uint64(11)).astype(np.float64) * (1.0 / 2 ** 53)

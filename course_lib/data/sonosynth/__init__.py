"""SonoSynth: a procedural, vectorised B-mode ultrasound world with lesions, reports and centers (a package).
Used by notebook 00 (tour) and as the synthetic data world of notebooks 01-09 (quick profile).

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

Package layout (the public names are re-exported by the package: import it, not its modules)
--------------------------------------------------------------------------------------------
============================  ========================================================================
``sonosynth.world``           anatomies, probes, classes, structures (label-map ids), split offsets
``sonosynth.centers``         ``CenterSettings`` and the four ``CENTERS`` (domain shift)
``sonosynth.attributes``      lesion attributes, the malignancy rule, per-sample attribute draws
``sonosynth.rng``             counter-based random numbers and the NAMED columns of the uniforms ``P``
``sonosynth.geometry``        probe geometry (linear/sector), scan conversion, the scene painter
``sonosynth.anatomy``         the four anatomy scenes (breast, thyroid, lymph node, abdomen)
``sonosynth.lesion``          lesion outline, echogenicity, posterior features, calcifications
``sonosynth.imaging``         image formation (speckle, gain, attenuation, artifacts, log compression)
``sonosynth.report``          free-text reports and ``report_concepts`` (parse a report back)
``sonosynth.config``          argument checks (clear errors)
``sonosynth.generator``       ``generate_batch``, ``generate``, ``make_dataset`` (Hugging Face)
============================  ========================================================================

Generative model
----------------
Randomness: every random number of sample ``i`` is a counter-based hash of ``(seed, i, slot)``
(SplitMix64, Steele, Lea & Flood 2014), drawn for the whole batch with a few integer operations;
scene, attributes, label and report use slots that do not depend on ``image_size``. The scene's
uniforms ``P`` have named columns (:mod:`.rng`: ``Col.LESION_X``, ``Breast.HAS_RIB``, ...).

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

from .attributes import ATTRIBUTES, RULE_POINTS, RULE_SIZE_MM, RULE_THRESHOLD, malignancy_rule
from .centers import CENTERS, CenterSettings
from .generator import generate, generate_batch, make_dataset, num_threads
from .report import CONCEPTS, DEFAULT_CONCEPT_FREQ, report_concepts
from .world import ANATOMIES, ANATOMY_INFO, CLASS_NAMES, PROBES, SPLIT_OFFSETS, STRUCTURES, structure_id

#: worker threads used by generate_batch (None = min(2, CPU count)); override with the environment
#: variable SONOSYNTH_THREADS=1 when another process needs the cores (results do not change)
NUM_THREADS: int | None = None

__all__ = [
    "ANATOMIES",
    "ANATOMY_INFO",
    "ATTRIBUTES",
    "CENTERS",
    "CLASS_NAMES",
    "CONCEPTS",
    "DEFAULT_CONCEPT_FREQ",
    "NUM_THREADS",
    "PROBES",
    "RULE_POINTS",
    "RULE_SIZE_MM",
    "RULE_THRESHOLD",
    "SPLIT_OFFSETS",
    "STRUCTURES",
    "CenterSettings",
    "generate",
    "generate_batch",
    "make_dataset",
    "malignancy_rule",
    "num_threads",
    "report_concepts",
    "structure_id",
]

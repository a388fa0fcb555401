"""SonoSynth's simulated centers/scanners (speckle, resolution, gain, artifacts): the domain shift.
Used by notebook 00 (centers tour) and notebooks 03-04 (train on one center, test on another).
"""
from __future__ import annotations

from dataclasses import dataclass, fields


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

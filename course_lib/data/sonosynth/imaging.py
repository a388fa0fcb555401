"""SonoSynth's image formation: speckle (convolution model), depth gain and attenuation, shadowing,
reverberation, thermal noise, log compression, scan conversion. Internal (notebook 00 shows the result).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .centers import CenterSettings
from .geometry import _gauss_kernel


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
    """Beam-space B-mode image (B, H, W) in [0, 1] from the scene maps (see the docstring of :mod:`course_lib.data.sonosynth`).

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

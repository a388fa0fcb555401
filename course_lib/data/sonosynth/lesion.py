"""SonoSynth's lesions: margin profiles, echogenicity, posterior features, calcifications, lymph-node
hilum, rendered in windows around each lesion. Internal to :mod:`course_lib.data.sonosynth` (notebook 00).
"""
from __future__ import annotations

import math

import numpy as np

from .attributes import ATTRIBUTE_KEYS, CODE
from .geometry import _cart_to_beam, _cart_to_beam_f, _Painter
from .rng import CALC_ANGLE, CALC_RADIUS, MARGIN_PHASES, MAX_CALCIFICATIONS, Col, one
from .world import _SECTOR_APEX, _SECTOR_HALF, _SID

_NTH = 128  # angular resolution of the margin profile
# columns of the integer attribute ``codes`` (ATTRIBUTE_KEYS order) and the codes the renderer tests
_SHAPE, _MARGIN, _ECHOGENICITY, _POSTERIOR, _CALCIFICATIONS, _ORIENTATION = range(len(ATTRIBUTE_KEYS))
assert ATTRIBUTE_KEYS == ("shape", "margin", "echogenicity", "posterior", "calcifications", "orientation")
_OVAL, _ROUND, _IRREGULAR = (CODE["shape"][v] for v in ("oval", "round", "irregular"))
_INDISTINCT, _MICROLOBULATED, _ANGULAR, _SPICULATED = (
    CODE["margin"][v] for v in ("indistinct", "microlobulated", "angular", "spiculated"))
_HETEROGENEOUS, _ISOECHOIC = CODE["echogenicity"]["heterogeneous"], CODE["echogenicity"]["isoechoic"]
_TALLER_THAN_WIDE = CODE["orientation"]["taller_than_wide"]
_MICRO, _MACRO = CODE["calcifications"]["micro"], CODE["calcifications"]["macro"]
_THETA = np.linspace(0, 2 * np.pi, _NTH, endpoint=False)


def _margin_profiles(P: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Radius modulation ``P(theta)`` (B, _NTH) from shape/margin codes and uniforms.

    irregular shape: two low harmonics; indistinct: a faint 5-lobe ripple (plus a soft edge, see
    :func:`_draw_lesion`); microlobulated: |sin| bumps (8-12 per turn); angular: a triangle wave
    (4-6 corners); spiculated: spikes ``max(0, cos(k theta))**3`` (6-10 per turn).
    """
    t = _THETA[None, :]
    prof = np.zeros((P.shape[0], _NTH), np.float32)
    shape, margin = codes[:, _SHAPE], codes[:, _MARGIN]
    ph = 2 * np.pi * P[:, MARGIN_PHASES]  # columns 0..3 = Col.PHASE_1..PHASE_4

    def add(sel, fn):
        r = np.flatnonzero(sel)
        if len(r):
            prof[r] += fn(r).astype(np.float32)

    add(shape == _IRREGULAR, lambda r: (0.12 + 0.1 * P[r, one(Col.IRREGULAR_AMPLITUDE)]) * (0.6 * np.cos(2 * t + ph[r, 0:1]) + 0.5 * np.cos(3 * t + ph[r, 1:2])))
    add(margin == _INDISTINCT, lambda r: 0.03 * np.cos(5 * t + ph[r, 2:3]))
    add(margin == _MICROLOBULATED, lambda r: 0.12 * np.abs(np.sin(np.floor(8 + 5 * P[r, one(Col.LOBES)]) * t / 2 + ph[r, 2:3])))
    add(margin == _ANGULAR, lambda r: 0.4 * np.abs(((np.floor(4 + 3 * P[r, one(Col.CORNERS)]) * t / (2 * np.pi)
                                                    + P[r, one(Col.ANGULAR_OFFSET)]) % 1.0) - 0.5))
    add(margin == _SPICULATED, lambda r: 0.75 * np.maximum(0, np.cos(np.floor(6 + 5 * P[r, one(Col.LOBES)]) * t + ph[r, 3:4])) ** 3)
    return prof


#: lesion echo level relative to its host tissue, indexed by echogenicity code
_ECHO = np.array([0.012, 0.2, 0.8, 2.8, 1.0], np.float32)  # anechoic, hypo, iso, hyper, heterogeneous
assert tuple(CODE["echogenicity"]) == ("anechoic", "hypoechoic", "isoechoic", "hyperechoic", "heterogeneous")


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
    het = np.flatnonzero(echo == _HETEROGENEOUS)
    if len(het):  # blotchy mixture of dark and bright patches at the lesion's own scale
        xs, ys = (xq[het] - np.float32(_TAB_N / 2)) / q, (yq[het] - np.float32(_TAB_N / 2)) / q
        ph1, ph2 = col(6.28 * T1.reshape(len(T1), -1)[idx[het], 0]), col(6.28 * T1.reshape(len(T1), -1)[idx[het], -1])
        blot = np.cos(np.float32(7.0) * xs + ph1) * np.cos(np.float32(6.0) * ys + ph2) + 0.5 * np.cos(np.float32(11.0) * (xs + ys) + ph2)
        target[het] = col(lvl[het]) * (0.2 + 1.8 * np.clip(0.5 + 0.5 * blot, 0, 1)) * (0.8 + 0.4 * t2[het])
    Ri = Rf[FI].reshape(shp)
    iso = np.flatnonzero(echo == _ISOECHOIC)
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
    shape, margin, echo, post, calc, orient = (codes[:, k] for k in range(len(ATTRIBUTE_KEYS)))
    u_asp = Pi[:, Col.ASPECT]
    aspect = np.where(shape == _ROUND, 0.88 + 0.1 * u_asp, np.where(shape == _OVAL, 0.55 + 0.25 * u_asp, 0.7 + 0.25 * u_asp))
    tall = orient == _TALLER_THAN_WIDE
    aspect = np.where(tall, np.minimum(aspect, 0.8), aspect)
    ax = np.where(tall, rmax * aspect, rmax).astype(np.float32)
    ay = np.where(tall, rmax, rmax * aspect).astype(np.float32)
    tilt = ((Pi[:, Col.TILT] - 0.5) * 0.4).astype(np.float32)
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
    # per posterior code (none, enhancement, shadowing, combined): enhancement lowers the attenuation
    # factor F, shadowing adds attenuation S (dB over the lesion's depth extent)
    f_les = np.array([1.0, 0.0, 1.0, 0.5], np.float32)[post]
    s_db = np.array([0.0, 0.0, 22.0, 10.0], np.float32)[post] / (2 * ay)
    lvl = (_ECHO[echo] * lp["host"][idx]).astype(np.float32)
    wsoft = np.where(margin == _INDISTINCT, 0.35, 0.06).astype(np.float32)
    side = np.sign(Pi[:, Col.HILUM_SIDE] - 0.5)
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
    u_cal = Pi[:, Col.N_CALCIFICATIONS]
    ncal = np.where(calc == _MICRO, 5 + np.floor(7.99 * u_cal), np.where(calc == _MACRO, 1 + np.floor(2.99 * u_cal), 0)).astype(int)
    if ncal.any():
        on = np.arange(MAX_CALCIFICATIONS)[None, :] < ncal[:, None]
        rad = 0.7 * np.sqrt(Pi[:, CALC_RADIUS])
        ang = 2 * np.pi * Pi[:, CALC_ANGLE]
        lx, ly = rad * np.cos(ang) * ax[:, None], rad * np.sin(ang) * ay[:, None]
        gu = cx[:, None] + lx * np.cos(tilt)[:, None] - ly * np.sin(tilt)[:, None]
        gv = cy[:, None] + lx * np.sin(tilt)[:, None] + ly * np.cos(tilt)[:, None]
        ii, jj = _cart_to_beam(probe, size, gu, gv)
        b = np.broadcast_to(idx[:, None], ii.shape)
        macro = np.broadcast_to((calc == _MACRO)[:, None], ii.shape)
        scale = np.float32((size / 64.0) ** 2)
        p.R[b[on], ii[on], jj[on]] = np.where(macro[on], 14.0, 9.0) * scale
        p.S[b[on], ii[on], jj[on]] += np.where(macro[on], 28.0, 3.0) * H
        sel2 = on & macro
        i2, j2 = np.minimum(ii + 1, size - 1), np.minimum(jj + 1, size - 1)
        for a_, b_ in ((i2, jj), (ii, j2), (i2, j2)):
            p.R[b[sel2], a_[sel2], b_[sel2]] = 14.0 * scale
        p.S[b[sel2], ii[sel2], j2[sel2]] += 28.0 * H


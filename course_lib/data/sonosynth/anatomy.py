"""SonoSynth's anatomies: the breast, thyroid, lymph-node and abdomen scenes painted from NAMED columns
of the per-sample uniforms (see :mod:`.rng`). Internal to :mod:`course_lib.data.sonosynth` (notebook 00).
"""
from __future__ import annotations

import numpy as np

from .geometry import _col, _ell, _Painter
from .rng import Abdomen, Breast, Col, Node, Thyroid


def _scene_breast(maps, U, V, P, T1, T2, H):
    c = lambda k, lo=0.0, hi=1.0: _col(P, k, lo, hi)
    pi2 = np.float32(2 * np.pi)
    s1 = c(Breast.SKIN, 0.03, 0.05)
    fat_bot = c(Breast.FAT_DEPTH, 0.10, 0.24) + c(Breast.FAT_WAVE_AMPLITUDE, 0.01, 0.04) * np.sin(pi2 * (c(Breast.FAT_WAVE_FREQUENCY, 0.6, 1.6) * U + c(Breast.FAT_WAVE_PHASE)))
    gl_bot = fat_bot + c(Breast.GLAND_THICKNESS, 0.20, 0.36) + c(Breast.GLAND_WAVE_AMPLITUDE, 0.01, 0.04) * np.sin(pi2 * (c(Breast.GLAND_WAVE_FREQUENCY, 0.8, 2.0) * U + c(Breast.GLAND_WAVE_PHASE)))
    rmf = gl_bot + c(Breast.RETROMAMMARY_FAT, 0.02, 0.05)
    mus_bot = rmf + c(Breast.MUSCLE_THICKNESS, 0.10, 0.18)
    p = _Painter(*maps, bg=0.35)
    p.R *= 0.7 + 0.6 * T2
    stri = 0.5 + 0.5 * np.cos(pi2 * (V * c(Breast.STRIATION_FREQUENCY, 14, 24) + U * c(Breast.STRIATION_TILT, -1.5, 1.5)))
    p.paint(V < mus_bot, "muscle", 0.45 * (0.5 + 0.9 * stri) * (0.8 + 0.4 * T2))
    p.paint(V < rmf, "fat", 0.2 * (0.6 + 0.8 * T1))
    p.paint(V < gl_bot, "fibroglandular", 1.0 * (0.55 + 0.9 * T2))
    lig = np.abs(np.sin(np.float32(np.pi) * (U * c(Breast.LIGAMENT_FREQUENCY_U, 2, 5) + V * c(Breast.LIGAMENT_FREQUENCY_V, 4, 9)) + c(Breast.LIGAMENT_PHASE, 0, 3))) < 0.07
    p.paint(V < fat_bot, "fat", np.where(lig, 1.0, 0.2 * (0.6 + 0.8 * T1)))
    p.paint(V < s1, "skin", 1.0)
    p.shine(V < np.minimum(s1 * 0.4, 2.0 / H), 2.2)
    # rib under the pectoralis (half of the images): bright curved cortex, shadow beneath
    has_rib = (P[:, Breast.HAS_RIB] < 0.5)[:, None, None]
    e = _ell(U, V, c(Breast.RIB_X, -0.3, 0.3), mus_bot + 0.07, c(Breast.RIB_WIDTH, 0.10, 0.16), 0.05)
    rib = has_rib & (e < 1)
    p.paint(rib, "rib", 0.15, s=0.0)
    p.shine(rib & (e > 0.55) & (V < mus_bot + 0.07), 2.5, s=np.float32(30.0 / (0.04)))
    pos = dict(cx=_col(P, Col.LESION_X, -0.28, 0.28)[:, 0, 0], cy=(fat_bot.mean((1, 2)) + (gl_bot - fat_bot).mean((1, 2)) * _col(P, Col.LESION_Y, 0.3, 0.8)[:, 0, 0]))
    return p, pos


def _scene_thyroid(maps, U, V, P, T1, T2, H):
    c = lambda k, lo=0.0, hi=1.0: _col(P, k, lo, hi)
    s1 = c(Thyroid.SKIN, 0.025, 0.04)
    fat_bot = s1 + c(Thyroid.FAT, 0.04, 0.08)
    strap_bot = fat_bot + c(Thyroid.STRAP_MUSCLE, 0.05, 0.09)
    shift = c(Thyroid.MIDLINE_SHIFT, -0.04, 0.04)
    lobe_ax, lobe_ay = c(Thyroid.LOBE_WIDTH, 0.12, 0.16), c(Thyroid.LOBE_HEIGHT, 0.10, 0.13)
    lobe_cy = strap_bot + lobe_ay + c(Thyroid.LOBE_DEPTH, 0.0, 0.03)
    lobe_dx = c(Thyroid.LOBE_SPREAD, 0.2, 0.25)
    p = _Painter(*maps, bg=0.4)
    p.R *= 0.7 + 0.6 * T2
    pi2 = np.float32(2 * np.pi)
    deep = lobe_cy + lobe_ay + c(Thyroid.DEEP_MUSCLE_GAP, 0.12, 0.22)
    stri = 0.5 + 0.5 * np.cos(pi2 * (V * c(Thyroid.STRIATION_FREQUENCY, 14, 24)))
    p.paint(V > deep, "muscle", 0.42 * (0.5 + 0.9 * stri))
    tex = 1.4 * (0.8 + 0.4 * T2)  # thyroid parenchyma: bright, fine and homogeneous
    for sgn in (-1.0, 1.0):
        p.paint(_ell(U, V, shift + sgn * lobe_dx, lobe_cy, lobe_ax, lobe_ay) < 1, "thyroid", tex)
    isth = (np.abs(U - shift) < c(Thyroid.ISTHMUS_HALF_WIDTH, 0.1, 0.16)) & (V > strap_bot) & (V < strap_bot + c(Thyroid.ISTHMUS_THICKNESS, 0.035, 0.06))
    p.paint(isth, "thyroid", tex)
    # trachea: air behind a bright anterior wall -> shadow + ring-down reverberation
    tr_r = c(Thyroid.TRACHEA_RADIUS, 0.08, 0.1)
    tr_cy = strap_bot + c(Thyroid.TRACHEA_DEPTH, 0.06, 0.08) + tr_r
    e = np.sqrt(_ell(U, V, shift, tr_cy, tr_r, tr_r))
    p.paint(e < 1, "trachea", 0.05 + 0.5 * (np.cos(pi2 * V * c(Thyroid.TRACHEA_RINGS, 25, 35)) > 0.7))
    wall = (e > 0.8) & (e < 1.0) & (V < tr_cy)
    p.shine(wall, 2.8, s=np.float32(800.0))  # air: ~16-25 dB of shadow through the wall, any image size
    # carotid arteries and jugular veins (anechoic, bright walls)
    for sgn in (-1.0, 1.0):
        cx = np.clip(shift + sgn * (lobe_dx + lobe_ax + c(Thyroid.CAROTID_GAP, 0.03, 0.06)), -0.44, 0.44)
        cr = c(Thyroid.CAROTID_RADIUS, 0.05, 0.07)
        e = np.sqrt(_ell(U, V, cx, lobe_cy + 0.02, cr, cr))
        p.shine((e >= 1) & (e < 1.2), 1.6)
        p.paint(e < 1, "vessel", 0.01, f=0.1)
        ej = _ell(U, V, cx + sgn * 0.05, lobe_cy - cr * 0.9, c(Thyroid.JUGULAR_WIDTH, 0.05, 0.08), c(Thyroid.JUGULAR_HEIGHT, 0.02, 0.035))
        p.paint(ej < 1, "vessel", 0.01, f=0.1)
    strap = (V > fat_bot) & (V < strap_bot)
    p.paint(strap, "muscle", 0.3 * (0.8 + 0.4 * T1))
    p.paint(V <= fat_bot, "fat", 0.32 * (0.6 + 0.8 * T1))
    p.paint(V < s1, "skin", 1.0)
    p.shine(V < np.minimum(s1 * 0.4, 2.0 / H), 2.2)
    sgn = np.where(P[:, Col.SIDE] < 0.5, -1.0, 1.0).astype(np.float32)
    pos = dict(cx=(shift[:, 0, 0] + sgn * lobe_dx[:, 0, 0] + _col(P, Col.LESION_X, -0.04, 0.04)[:, 0, 0]),
               cy=lobe_cy[:, 0, 0] + _col(P, Col.LESION_Y, -0.03, 0.03)[:, 0, 0])
    return p, pos


def _scene_node(maps, U, V, P, T1, T2, H):
    c = lambda k, lo=0.0, hi=1.0: _col(P, k, lo, hi)
    pi2 = np.float32(2 * np.pi)
    s1 = c(Node.SKIN, 0.025, 0.04)
    fat_bot = s1 + c(Node.FAT_DEPTH, 0.4, 0.55) + c(Node.FAT_WAVE_AMPLITUDE, 0.01, 0.05) * np.sin(pi2 * (c(Node.FAT_WAVE_FREQUENCY, 0.5, 1.5) * U + c(Node.FAT_WAVE_PHASE)))
    mus_bot = fat_bot + c(Node.MUSCLE_THICKNESS, 0.15, 0.25)
    p = _Painter(*maps, bg=0.4)
    p.R *= 0.7 + 0.6 * T2
    has_v = (P[:, Node.HAS_VESSEL] < 0.5)[:, None, None]
    vr = c(Node.VESSEL_RADIUS, 0.04, 0.07)
    e = np.sqrt(_ell(U, V, c(Node.VESSEL_X, -0.3, 0.3), mus_bot + vr + c(Node.VESSEL_GAP, 0.02, 0.06), vr, vr))
    p.paint(has_v & (e < 1), "vessel", 0.01, f=0.1)
    stri = 0.5 + 0.5 * np.cos(pi2 * (V * c(Node.STRIATION_FREQUENCY, 14, 24) + U * c(Node.STRIATION_TILT, -1, 1)))
    p.paint(V < mus_bot, "muscle", 0.45 * (0.5 + 0.9 * stri))
    sept = np.abs(np.sin(np.float32(np.pi) * (U * c(Node.SEPTA_FREQUENCY_U, 3, 6) - V * c(Node.SEPTA_FREQUENCY_V, 3, 7)) + c(Node.SEPTA_PHASE, 0, 3))) < 0.06
    p.paint(V < fat_bot, "fat", np.where(sept, 1.0, 0.3 * (0.6 + 0.8 * T1)))
    p.paint(V < s1, "skin", 1.0)
    p.shine(V < np.minimum(s1 * 0.4, 2.0 / H), 2.2)
    pos = dict(cx=_col(P, Col.LESION_X, -0.2, 0.2)[:, 0, 0], cy=(s1[:, 0, 0] + _col(P, Col.LESION_Y, 0.18, 0.3)[:, 0, 0]))
    return p, pos


def _scene_abdomen(maps, U, V, P, T1, T2, H):
    c = lambda k, lo=0.0, hi=1.0: _col(P, k, lo, hi)
    s1 = c(Abdomen.SKIN, 0.012, 0.02)
    fat_bot = s1 + c(Abdomen.FAT, 0.03, 0.06)
    wall_bot = fat_bot + c(Abdomen.WALL_MUSCLE, 0.03, 0.05)
    ruq = (P[:, Col.ABDOMEN_ORGAN] < 0.6)[:, None, None]  # right upper quadrant (liver) vs left (spleen)
    p = _Painter(*maps, bg=0.5)
    p.R *= 0.5 + 1.0 * T1 * T2 + 0.2 * T2
    # main organ: liver (RUQ) or spleen (LUQ)
    ocx = np.where(ruq, c(Abdomen.ORGAN_X, -0.12, 0.05), c(Abdomen.ORGAN_X, -0.08, 0.08))
    ocy = np.where(ruq, c(Abdomen.ORGAN_Y, 0.42, 0.52), c(Abdomen.ORGAN_Y, 0.36, 0.44))
    oax = np.where(ruq, c(Abdomen.ORGAN_WIDTH, 0.55, 0.75), c(Abdomen.ORGAN_WIDTH, 0.38, 0.5))
    oay = np.where(ruq, c(Abdomen.ORGAN_HEIGHT, 0.3, 0.38), c(Abdomen.ORGAN_HEIGHT, 0.2, 0.26))
    e_org = np.sqrt(_ell(U, V, ocx, ocy, oax, oay))
    # diaphragm + lung (mirror-like bright region) deep to the organ
    deep_side = V > ocy
    p.paint(deep_side & (e_org >= 1.0) & (e_org < 1.06), "diaphragm", 2.0)
    p.shine(deep_side & (e_org >= 1.06) & (V < ocy + oay + 0.25), 0.9 * (0.6 + 0.8 * T2))
    organ = (e_org < 1) & (V > wall_bot)
    p.paint(organ & ruq, "liver", 0.8 * (0.85 + 0.3 * T2))
    p.paint(organ & ~ruq, "spleen", 0.95 * (0.9 + 0.2 * T2))
    # kidney (cortex + bright sinus), posterior to the organ
    has_k = (P[:, Abdomen.HAS_KIDNEY] < 0.8)[:, None, None]
    kcx = ocx + c(Abdomen.KIDNEY_X, 0.05, 0.25)
    kcy = ocy + oay * c(Abdomen.KIDNEY_Y, 0.55, 0.8)
    kax, kay, kt = c(Abdomen.KIDNEY_WIDTH, 0.16, 0.22), c(Abdomen.KIDNEY_HEIGHT, 0.08, 0.11), c(Abdomen.KIDNEY_TILT, -0.4, 0.4)
    ek = np.sqrt(_ell(U, V, kcx, kcy, kax, kay, kt))
    p.shine(has_k & (ek >= 1) & (ek < 1.1), 1.5)
    p.paint(has_k & (ek < 1), "kidney", 0.4 * (0.8 + 0.4 * T2))
    p.paint(has_k & (ek < 0.5), "renal_sinus", 1.6 * (0.5 + 1.0 * T2))
    # gallbladder (RUQ only), anechoic with posterior enhancement
    has_g = ruq & (P[:, Abdomen.HAS_GALLBLADDER] < 0.7)[:, None, None]
    eg = np.sqrt(_ell(U, V, ocx + c(Abdomen.GALLBLADDER_X, -0.3, -0.1), ocy + c(Abdomen.GALLBLADDER_Y, -0.12, 0.02), c(Abdomen.GALLBLADDER_WIDTH, 0.08, 0.14), c(Abdomen.GALLBLADDER_HEIGHT, 0.04, 0.07), c(Abdomen.GALLBLADDER_TILT, -0.5, 0.5)))
    p.shine(has_g & (eg >= 1) & (eg < 1.15), 1.6)
    p.paint(has_g & (eg < 1), "gallbladder", 0.01, f=0.08)
    # two vessels in the organ (portal/hepatic veins or splenic vein)
    for k in range(2):
        vr = c((Abdomen.VESSEL_1_RADIUS, Abdomen.VESSEL_2_RADIUS)[k], 0.02, 0.04)
        ev = np.sqrt(_ell(U, V, ocx + c((Abdomen.VESSEL_1_X, Abdomen.VESSEL_2_X)[k], -0.3, 0.3), ocy + c((Abdomen.VESSEL_1_Y, Abdomen.VESSEL_2_Y)[k], -0.15, 0.1), vr * 1.4, vr))
        inside = organ & (ev < 1)
        p.shine(organ & (ev >= 1) & (ev < 1.25), 1.4 if k == 0 else 0.8)
        p.paint(inside, "vessel", 0.01, f=0.2)
    # body wall
    p.paint((V > fat_bot) & (V <= wall_bot), "muscle", 0.4 * (0.8 + 0.4 * T1))
    p.paint(V <= fat_bot, "fat", 0.3 * (0.6 + 0.8 * T1))
    p.paint(V < s1, "skin", 1.0)
    pos = dict(cx=ocx[:, 0, 0] + _col(P, Col.LESION_X, -0.35, 0.35)[:, 0, 0] * oax[:, 0, 0],
               cy=ocy[:, 0, 0] + _col(P, Col.LESION_Y, -0.45, 0.1)[:, 0, 0] * oay[:, 0, 0])
    return p, pos


_SCENES = {"breast": _scene_breast, "thyroid": _scene_thyroid, "lymph_node": _scene_node, "abdomen": _scene_abdomen}

"""SonoSynth's probe geometry (linear and sector beam spaces, scan conversion), smoothing matrices and
the painter that fills the scene maps. Internal to :mod:`course_lib.data.sonosynth` (notebook 00).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .world import _SECTOR_APEX, _SECTOR_HALF, _SID


@lru_cache(maxsize=16)
def _probe_geometry(probe: str, size: int):
    """Beam-space sample positions (U lateral, V depth; image depth = 1) and scan conversion."""
    H = W = size
    if probe == "linear":
        U = (((np.arange(W) + 0.5) / W - 0.5)[None, :]).astype(np.float32)  # (1, W)
        V = (((np.arange(H) + 0.5) / H)[:, None]).astype(np.float32)  # (H, 1)
        return dict(U=U, V=V, Uf=np.ascontiguousarray(np.broadcast_to(U, (H, W))),
                    Vf=np.ascontiguousarray(np.broadcast_to(V, (H, W))), conv=None)
    a, th = _SECTOR_APEX, _SECTOR_HALF
    r = a + (np.arange(H) + 0.5) / H
    t = -th + (np.arange(W) + 0.5) * (2 * th / W)
    U = (r[:, None] * np.sin(t)[None, :]).astype(np.float32)
    V = (r[:, None] * np.cos(t)[None, :] - a).astype(np.float32)
    # scan conversion: Cartesian pixel centres -> fractional beam indices
    x = (np.arange(size) + 0.5) / size - 0.5
    y = (np.arange(size) + 0.5) / size
    X, Y = np.meshgrid(x, y)
    rr = np.sqrt(X ** 2 + (Y + a) ** 2)
    tt = np.arctan2(X, Y + a)
    inside = (rr >= a) & (rr <= a + 1) & (np.abs(tt) <= th)
    fi = np.clip((rr - a) * H - 0.5, 0, H - 1)
    fj = np.clip((tt + th) / (2 * th) * W - 0.5, 0, W - 1)
    i0 = np.minimum(np.floor(fi).astype(np.int64), H - 2)
    j0 = np.minimum(np.floor(fj).astype(np.int64), W - 2)
    di, dj = (fi - i0), (fj - j0)
    idx = [(i0 * W + j0), (i0 * W + j0 + 1), ((i0 + 1) * W + j0), ((i0 + 1) * W + j0 + 1)]
    wts = [(1 - di) * (1 - dj), (1 - di) * dj, di * (1 - dj), di * dj]
    inside_f = inside.astype(np.float32)
    conv = dict(
        idx=[k.ravel() for k in idx],
        wts=[(w * inside_f).ravel().astype(np.float32) for w in wts],
        nearest=(np.rint(fi).astype(np.int64) * W + np.rint(fj).astype(np.int64)).ravel(),
        inside=inside.ravel(),
    )
    return dict(U=U, V=V, Uf=U, Vf=V, conv=conv)


def _cart_to_beam(probe: str, size: int, u: np.ndarray, v: np.ndarray):
    """Cartesian (u lateral, v depth) -> integer beam-space (row, col), clipped to the grid."""
    if probe == "linear":
        i, j = v * size, (u + 0.5) * size
    else:
        a, th = _SECTOR_APEX, _SECTOR_HALF
        r = np.sqrt(u ** 2 + (v + a) ** 2)
        i = (r - a) * size
        j = (np.arctan2(u, v + a) + th) / (2 * th) * size
    return (np.clip(i.astype(np.int64), 0, size - 1), np.clip(j.astype(np.int64), 0, size - 1))


@lru_cache(maxsize=16)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Bilinear up-sampling matrix (n_out, n_in) for smooth texture fields."""
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = pos - i0
    M = np.zeros((n_out, n_in), np.float32)
    M[np.arange(n_out), i0] = 1 - w
    M[np.arange(n_out), i0 + 1] = w
    return M


@lru_cache(maxsize=64)
def _gauss_kernel(sigma: float) -> np.ndarray:
    sigma = max(float(sigma), 0.3)
    r = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _ell(U, V, cx, cy, ax, ay, tilt=None):
    du, dv = U - cx, V - cy
    if tilt is not None:
        c, s = np.cos(tilt), np.sin(tilt)
        du, dv = du * c + dv * s, dv * c - du * s
    return (du / ax) ** 2 + (dv / ay) ** 2


class _Painter:
    """Holds the scene maps of a group (views into the chunk arrays) and paints back to front."""

    def __init__(self, R, F, S, L, bg):
        self.R, self.F, self.S, self.L = R, F, S, L
        R[...] = bg
        F[...] = 1.0
        S[...] = 0.0
        L[...] = 0

    def paint(self, m, name, r, f=None, s=None):
        np.copyto(self.L, np.uint8(_SID[name]), where=m)
        np.copyto(self.R, np.asarray(r, np.float32), where=m)
        if f is not None:
            np.copyto(self.F, np.asarray(f, np.float32), where=m)
        if s is not None:
            np.copyto(self.S, np.asarray(s, np.float32), where=m)

    def shine(self, m, r, s=None):
        """Specular reflector (bright wall/line): changes R (and S) but not the label."""
        np.copyto(self.R, np.asarray(r, np.float32), where=m)
        if s is not None:
            np.copyto(self.S, np.asarray(s, np.float32), where=m)


def _col(P, k, lo=0.0, hi=1.0):
    return (lo + (hi - lo) * P[:, k]).astype(np.float32)[:, None, None]


def _cart_to_beam_f(probe: str, size: int, u, v):
    """Cartesian (u lateral, v depth) -> fractional beam-space (row, col)."""
    if probe == "linear":
        return v * size - 0.5, (u + 0.5) * size - 0.5
    a, th = _SECTOR_APEX, _SECTOR_HALF
    r = np.sqrt(u ** 2 + (v + a) ** 2)
    return (r - a) * size - 0.5, (np.arctan2(u, v + a) + th) / (2 * th) * size - 0.5

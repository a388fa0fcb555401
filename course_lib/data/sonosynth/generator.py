"""SonoSynth's generator: batches of samples in the common schema (``generate_batch``, ``generate``) and
Hugging Face datasets (``make_dataset``). Used by notebook 00 and every notebook that draws SonoSynth data.
"""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext

import numpy as np

from ..common import SAMPLE_KEYS, check_positive
from . import rng
from .anatomy import _SCENES
from .attributes import ATTRIBUTE_KEYS, CODE, _draw_attributes, _location, _location_text, malignancy_rule
from .centers import CENTERS
from .config import _Config, _make_config
from .geometry import _interp_matrix, _probe_geometry
from .imaging import _form_image, _scan_convert
from .lesion import _draw_lesion
from .report import Chooser, write_report
from .rng import N_SHARED, Col
from .world import _SID, _SPLIT_ALIASES, ANATOMY_INFO, CLASS_NAMES, SPLIT_OFFSETS, STRUCTURES

_ANG = np.linspace(0, np.pi, 16, endpoint=False)
_DIRS = np.stack([np.cos(_ANG), np.sin(_ANG)]).astype(np.float32)


def _feret_px(mask: np.ndarray) -> np.ndarray:
    """Max Feret diameter (pixels, + 1 for the pixel size) of each mask, NaN if empty; vectorised.

    The extreme projections of a set are attained at the left/right-most pixel of some row, so
    only 2 points per row are projected on 16 directions.
    """
    _, H, W = mask.shape
    rows = mask.any(2)
    xl = mask.argmax(2).astype(np.float32)
    xr = (W - 1 - mask[:, :, ::-1].argmax(2)).astype(np.float32)
    y = np.arange(H, dtype=np.float32)[None, :, None]
    c, s = _DIRS[0][None, None, :], _DIRS[1][None, None, :]
    pl, pr = xl[..., None] * c + y * s, xr[..., None] * c + y * s
    big = np.float32(1e9)
    v = rows[..., None]
    hi = np.where(v, np.maximum(pl, pr), -big).max(1)
    lo = np.where(v, np.minimum(pl, pr), big).min(1)
    d = (hi - lo).max(1) + 1.0
    d[~rows.any(1)] = np.nan
    return d


def _boxes(mask: np.ndarray) -> np.ndarray:
    _, H, W = mask.shape
    rows, cols = mask.any(2), mask.any(1)
    has = rows.any(1)
    y0 = rows.argmax(1)
    y1 = H - rows[:, ::-1].argmax(1)
    x0 = cols.argmax(1)
    x1 = W - cols[:, ::-1].argmax(1)
    box = np.stack([x0, y0, x1, y1], 1).astype(np.float32)
    box[~has] = np.nan
    return box


def generate_batch(
    n: int,
    *,
    seed: int = 0,
    start: int = 0,
    image_size: int = 64,
    anatomies=None,
    centers=None,
    probe: str | None = None,
    label_noise: float = 0.0,
    p_lesion: float = 1.0,
    concept_freq: dict | None = None,
    artifacts: bool = True,
    attributes: dict | None = None,
) -> dict:
    """Generate samples ``start .. start+n-1`` as stacked arrays (the fast path).

    Returns a dict with every key of the common schema: ``image`` (n,H,W) float32 in [0,1],
    ``mask``/``label_map`` (n,H,W) uint8, ``box`` (n,4) float32, ``measurement`` (n,) float32 (lesion
    max diameter in mm, NaN when normal), ``label`` (n,) int64 into ``class_names``,
    ``pixel_spacing_mm`` (n,) float32, lists ``attributes``/``report``/``anatomy``/``center``/
    ``source``/``id`` (and ``probe``), and the shared tuples ``structures``/``class_names``.

    Arguments: ``anatomies``/``centers``: names to draw uniformly from (None = all);
    ``probe``: None = anatomy default, "linear" or "sector"; ``label_noise``: probability that a
    lesion's benign/malignant label is flipped (the report and attributes keep the rule's reading);
    ``p_lesion``: probability that an image contains a lesion (else class "normal");
    ``concept_freq``: concept -> probability of being mentioned in the report (see :data:`CONCEPTS`);
    ``artifacts``: False removes reverberation, shadowing/enhancement and thermal noise;
    ``attributes``: optional dict imposing attribute values on every lesion, e.g.
    ``{"margin": "spiculated", "size_mm": 15}`` (the others are sampled; the label still follows
    the rule) - handy for controlled experiments and interactive explorers.
    """
    check_positive("n", n)
    if not isinstance(start, (int, np.integer)) or isinstance(start, bool) or start < 0:
        raise ValueError(f"start must be a non-negative integer (first sample index), got {start!r}")
    if start + n > 2 ** 32:
        raise ValueError(f"sample indices must stay below 2**32 (got start={start}, n={n}); use another seed instead")
    cfg = _make_config(seed, image_size, anatomies, centers, probe, label_noise, p_lesion, concept_freq, artifacts,
                       attributes)
    S = cfg.image_size
    out = dict(
        image=np.empty((n, S, S), np.float32),
        mask=np.empty((n, S, S), np.uint8),
        label_map=np.empty((n, S, S), np.uint8),
        box=np.empty((n, 4), np.float32),
        measurement=np.empty(n, np.float32),
        label=np.empty(n, np.int64),
        pixel_spacing_mm=np.empty(n, np.float32),
        attributes=[], report=[], anatomy=[], center=[], probe=[], id=[],
    )
    chunk = max(8, min(512, (1 << 21) // (S * S)))
    bounds = [(c0, min(n, c0 + chunk)) for c0 in range(0, n, chunk)]
    if len(bounds) == 1 and n >= 2 * _MIN_PARALLEL:  # split so that both cores get work
        half = (n + 1) // 2
        bounds = [(0, half), (half, n)]
    workers = min(num_threads(), len(bounds))

    def run(b):
        return _generate_chunk(cfg, start + b[0], b[1] - b[0])

    with _single_thread_blas(S):
        if workers > 1:  # numpy releases the GIL in the heavy array work
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as ex:
                parts = list(ex.map(run, bounds))
        else:
            parts = [run(b) for b in bounds]
    for (c0, c1), part in zip(bounds, parts):
        for k in ("image", "mask", "label_map", "box", "measurement", "label", "pixel_spacing_mm"):
            out[k][c0:c1] = part[k]
        for k in ("attributes", "report", "anatomy", "center", "probe", "id"):
            out[k].extend(part[k])
    out["structures"] = STRUCTURES
    out["class_names"] = CLASS_NAMES
    out["source"] = ["sonosynth"] * n
    return out


_MIN_PARALLEL = 128  # samples per thread below which threading is not worth it


def num_threads() -> int:
    """Worker threads of :func:`generate_batch`: ``SONOSYNTH_THREADS``, else ``sonosynth.NUM_THREADS``,
    else ``min(2, CPU count)``. The output does not depend on it."""
    env = os.environ.get("SONOSYNTH_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"SONOSYNTH_THREADS must be an integer such as 1 or 2, got {env!r}") from None
    num = getattr(sys.modules[__package__], "NUM_THREADS", None)  # settable as sonosynth.NUM_THREADS
    if num is not None:
        return max(1, int(num))
    return max(1, min(2, os.cpu_count() or 1))


def _single_thread_blas(size: int):
    """Above 64 px the blur runs through BLAS; one thread is faster on a busy 2-core machine (no
    spinning threads) and leaves the other core to the training loop that consumes the data."""
    if size <= 64:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl missing
        return nullcontext()


# ---- counter-based random numbers: word (i, slot) = SplitMix64(key + (i * 2**32 + slot) * golden)
# (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators", OOPSLA). Every


def _generate_chunk(cfg: _Config, start: int, n: int) -> dict:
    S = cfg.image_size
    freq = dict(cfg.freq)
    idx = np.arange(start, start + n, dtype=np.uint64)
    key = rng.sample_key(cfg.seed)
    Uall = rng.uniforms(key, idx, rng.N_UNIFORMS, 0)
    Pm = Uall[:, rng.SCENE]  # the named columns of rng.Col / rng.Breast / ...
    REP = Uall[:, rng.REPORT]
    TX = Uall[:, rng.TEXTURE].astype(np.float32)
    noise = rng.words(key, idx, S * S // 8, rng.NOISE_SLOT).view(np.int8).reshape(n, S, S)
    meta = []
    na, nc = len(cfg.anatomies), len(cfg.centers)
    rep_l, u_l = REP.tolist(), Pm[:, :N_SHARED].tolist()
    for k in range(n):
        rnd = Chooser(rep_l[k])
        u = u_l[k]
        anatomy = cfg.anatomies[min(int(u[Col.ANATOMY] * na), na - 1)]
        center = cfg.centers[min(int(u[Col.CENTER] * nc), nc - 1)]
        probe = cfg.probe or ANATOMY_INFO[anatomy]["probe"]
        has = u[Col.HAS_LESION] < cfg.p_lesion
        loc = _location(u, anatomy)
        if has:
            attrs = _draw_attributes(u, anatomy)
            if cfg.fixed:
                attrs.update(cfg.fixed)
            score, rule_label = malignancy_rule(attrs)
            label = 1 - rule_label if u[Col.LABEL_NOISE] < cfg.label_noise else rule_label
            attrs.update(score=float(score), rule_label=CLASS_NAMES[rule_label], location=_location_text(anatomy, loc))
            report = write_report(rnd, anatomy, attrs, loc, CLASS_NAMES[rule_label], freq)
        else:
            attrs, label, rule_label = {}, 2, 2
            report = write_report(rnd, anatomy, None, loc, "normal", freq)
        meta.append((anatomy, center, probe, has, attrs, label, report, rule_label))
    anat = np.array([m[0] for m in meta])
    cen = np.array([m[1] for m in meta])
    prb = np.array([m[2] for m in meta])
    # process in sorted order (probe, center, anatomy) so that every group is a contiguous slice
    keys = [(m[2], m[1], m[0]) for m in meta]
    order = np.array(sorted(range(n), key=keys.__getitem__), dtype=np.int64)
    keys = [keys[k] for k in order]
    Pm, TX, noise = Pm[order], TX[order], noise[order]
    has = np.array([meta[k][3] for k in order])
    codes = np.zeros((n, 6), np.int64)
    radius = np.zeros(n, np.float32)
    for r, k in enumerate(order):
        m = meta[k]
        if m[3]:
            codes[r] = [CODE[a][m[4][a]] for a in ATTRIBUTE_KEYS]
            radius[r] = m[4]["size_mm"] / 2.0 / ANATOMY_INFO[m[0]]["depth_mm"]
    hilum = np.array([meta[k][7] == 0 for k in order])
    atten = np.array([ANATOMY_INFO[meta[k][0]]["atten_db"] for k in order], np.float32)
    G1, G2 = rng.TEXTURE_GRIDS
    M1, M2 = _interp_matrix(S, G1), _interp_matrix(S, G2)
    T1 = M1 @ TX[:, : G1 * G1].reshape(n, G1, G1) @ M1.T
    T2 = M2 @ TX[:, G1 * G1:].reshape(n, G2, G2) @ M2.T
    R = np.empty((n, S, S), np.float32)
    F = np.empty_like(R)
    Sx = np.empty_like(R)
    L = np.empty((n, S, S), np.uint8)
    mask = np.zeros((n, S, S), bool)
    img = np.empty((n, S, S), np.float32)
    centre = np.zeros((n, 2), np.float32)  # lesion centre (u, v), filled by _draw_lesion

    def runs(keyfun):
        out, s0 = [], 0
        for r in range(1, n + 1):
            if r == n or keyfun(keys[r]) != keyfun(keys[s0]):
                out.append((keyfun(keys[s0]), slice(s0, r)))
                s0 = r
        return out

    for (pr, _, a), sl in runs(lambda kk: kk):
        geo = _probe_geometry(pr, S)
        p, pos = _SCENES[a]((R[sl], F[sl], Sx[sl], L[sl]), geo["U"], geo["V"], Pm[sl], T1[sl], T2[sl], S)
        m = sl.stop - sl.start
        lp = dict(has=has[sl], codes=codes[sl], radius=radius[sl], cx=pos["cx"], cy=pos["cy"], centre=centre[sl],
                  host=np.full(m, ANATOMY_INFO[a]["host"], np.float32), hilum=hilum[sl])
        _draw_lesion(p, geo, Pm[sl], T1[sl], T2[sl], lp, pr, S, a == "lymph_node", mask[sl])
    for (pr, cname), sl in runs(lambda kk: kk[:2]):
        _form_image(R[sl], F[sl], Sx[sl], noise[sl], CENTERS[cname], atten[sl], S, cfg.artifacts, img[sl])
        if pr == "sector":
            img[sl], L[sl], mask[sl] = _scan_convert(img[sl], L[sl], mask[sl], _probe_geometry("sector", S)["conv"])
    # back to index order
    inv = np.empty(n, np.int64)
    inv[order] = np.arange(n)
    img, L, mask = img[inv], L[inv], mask[inv]
    has, centre = has[inv], centre[inv]
    # a lesion smaller than a pixel (tiny image_size, imposed tiny size_mm) still gets its centre pixel
    for k in np.flatnonzero(has & ~mask.any((1, 2))):
        y = min(S - 1, max(0, int(centre[k, 1] * S)))
        x = min(S - 1, max(0, int((centre[k, 0] + 0.5) * S)))
        mask[k, y, x] = True
        L[k, y, x] = _SID["node_cortex"] if anat[k] == "lymph_node" else _SID["lesion"]
    spacing = np.array([ANATOMY_INFO[a]["depth_mm"] / S for a in anat], np.float32)
    meas = (_feret_px(mask) * spacing).astype(np.float32)
    return dict(
        image=img, mask=mask.view(np.uint8), label_map=L, box=_boxes(mask), measurement=meas,
        label=np.array([m[5] for m in meta], np.int64), pixel_spacing_mm=spacing,
        attributes=[m[4] for m in meta], report=[m[6] for m in meta], anatomy=anat.tolist(), center=cen.tolist(),
        probe=prb.tolist(), id=[f"sonosynth:{cfg.seed}:{start + k}" for k in range(n)],
    )


def generate(n: int, *, seed: int = 0, start: int = 0, image_size: int = 64, anatomies=None, centers=None,
             probe: str | None = None, label_noise: float = 0.0, p_lesion: float = 1.0,
             concept_freq: dict | None = None, artifacts: bool = True, attributes: dict | None = None) -> list[dict]:
    """``n`` samples (indices ``start..start+n-1``) as dicts in the common schema (all keys).

    Extra key: ``probe``. See :func:`generate_batch` for the arguments.
    """
    b = generate_batch(n, seed=seed, start=start, image_size=image_size, anatomies=anatomies, centers=centers,
                       probe=probe, label_noise=label_noise, p_lesion=p_lesion, concept_freq=concept_freq,
                       artifacts=artifacts, attributes=attributes)
    return [
        dict(
            image=b["image"][k], mask=b["mask"][k], label_map=b["label_map"][k], structures=STRUCTURES,
            box=b["box"][k], measurement=float(b["measurement"][k]), label=int(b["label"][k]),
            class_names=CLASS_NAMES, attributes=b["attributes"][k], report=b["report"][k],
            anatomy=b["anatomy"][k], center=b["center"][k], pixel_spacing_mm=float(b["pixel_spacing_mm"][k]),
            source="sonosynth", id=b["id"][k], probe=b["probe"][k],
        )
        for k in range(n)
    ]


def make_dataset(n: int, split: str = "train", seed: int = 0, **kw):
    """A ``datasets.Dataset`` of ``n`` samples of one split (disjoint index ranges per split).

    ``split``: "train" (indices from 0), "val" (from 1e8) or "test" (from 2e8); ``kw`` as in
    :func:`generate`. Use ``ds.with_format("torch")`` for tensors and
    :func:`course_lib.data.common.from_hf_row` to get a schema dict back.
    """
    from ..common import to_hf_dataset

    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_OFFSETS)}")
    if "start" in kw:
        raise ValueError("make_dataset chooses the index range from split=; call generate(start=...) for custom ranges")
    check_positive("n", n)
    if n > 100_000_000:
        raise ValueError(f"n={n} exceeds the 1e8 samples reserved per split")
    samples = generate(n, seed=seed, start=SPLIT_OFFSETS[split], **kw)
    for s in samples:
        s.pop("probe", None)
    assert all(set(SAMPLE_KEYS) <= set(s) for s in samples)
    return to_hf_dataset(samples)

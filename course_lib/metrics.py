"""Evaluation metrics used across the course (Dice/IoU via MONAI, surface distances, classification, boxes).
Used by every notebook that scores a model: 02-05 (classification), 06-11 (segmentation), 00 (measurements).

Segmentation (binary masks, numpy or torch, ``(H, W)`` or ``(N, H, W)``; every function returns
a per-sample ``float64`` array of shape ``(N,)``, ``N = 1`` for a single ``(H, W)`` mask):

* :func:`dice` ``= 2|P∩G| / (|P| + |G|)`` and :func:`iou` ``= |P∩G| / |P∪G|``
  (Dice 1945; Jaccard 1912; definitions as reviewed by Taha & Hanbury, BMC Med Imaging 15:29, 2015),
  computed by MONAI (``monai.metrics.compute_dice`` / ``compute_iou`` with ``ignore_empty=False``,
  whose documented empty-ground-truth rule gives exactly the conventions below) in float64.
* **Inputs must already be binary** (bool, or 0/1 integers/floats). There is no hidden threshold:
  probabilities or logits raise a ValueError that says how to binarise (``probs > 0.5`` for
  probabilities, ``logits > 0`` for logits), because which threshold is right depends on what the
  numbers are, and a silent 0.0 or 0.5 cut would give a wrong Dice without an error.
* :func:`hd95`: the 95th-percentile symmetric Hausdorff distance and :func:`asd`: the average
  symmetric surface distance, both computed by MONAI
  (``monai.metrics.compute_hausdorff_distance(percentile=95)``,
  ``compute_average_surface_distance(symmetric=True)``) on mask boundaries, in units of
  ``spacing`` (pixels when ``spacing`` is None; ``spacing=(row_mm, col_mm)`` or one float).

**Empty-mask conventions** (fixed here, tested, and used by every notebook):

==========================  ======  ======  ==========================================
case                        Dice    IoU     HD95 / ASD
==========================  ======  ======  ==========================================
both empty                  1.0     1.0     0.0 (nothing to find, nothing found)
exactly one empty           0.0     0.0     the image diagonal ``sqrt((H*sy)^2 + (W*sx)^2)``
==========================  ======  ======  ==========================================

The diagonal is the largest distance possible in the image, so a missed or hallucinated
structure is penalised maximally while means stay finite; pass ``one_empty="nan"`` to
:func:`hd95`/:func:`asd`/:func:`segmentation` to get NaN instead (then means ignore them).

Classification: :func:`classification` (scikit-learn) returns accuracy, precision, recall, F1,
ROC-AUC and Matthews correlation (binary: threshold on the positive-class probability;
multiclass: argmax, macro averages, one-vs-rest AUC). ``y_true`` must be integer class ids: float
labels are accepted only when integer-valued (0.0, 1.0), never cast silently; probabilities in
``y_true`` (arguments swapped) and string labels raise. Detection: :func:`box_iou`
(``torchvision.ops.box_iou``). Measurement: :func:`mean_relative_error`.

Intervals (percentile bootstrap over test images, seeded; Efron & Tibshirani 1993, ch. 13):
:func:`bootstrap_interval` of a mean (e.g. per-image Dice) and :func:`auc_interval` of the binary ROC-AUC.
The one place for both (notebooks 04, 07, 09 and the experiment runners call them).
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

ONE_EMPTY_CHOICES = ("diagonal", "nan")


# --------------------------------------------------------------------------- input handling
def _to_numpy(x, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def _binary_pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to bool arrays of shape ``(N, H, W)``."""
    p, t = _to_numpy(pred, "pred"), _to_numpy(target, "target")
    for name, a in (("pred", p), ("target", t)):
        if a.ndim not in (2, 3):
            raise ValueError(
                f"{name} must be a binary mask (H, W) or a batch (N, H, W), got shape {a.shape}; "
                f"for (N, 1, H, W) use x[:, 0], for one-hot (N, C, H, W) compare one class at a time"
            )
        if a.dtype != bool:
            if a.size and not np.isin(a, (0, 1)).all():
                raise ValueError(
                    f"{name} has values other than 0/1 (min {a.min():.3g}, max {a.max():.3g}); "
                    f"binarise it first, e.g. probs > 0.5 or logits > 0"
                )
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}; resize one to the other first")
    if p.ndim == 2:
        p, t = p[None], t[None]
    return p.astype(bool), t.astype(bool)


def _spacing2(spacing) -> tuple[float, float]:
    if spacing is None:
        return 1.0, 1.0
    if np.isscalar(spacing):
        s = float(spacing)
        sy = sx = s
    else:
        sp = [float(v) for v in spacing]
        if len(sp) != 2:
            raise ValueError(f"spacing must be one number or (row_mm, col_mm), got {spacing!r}")
        sy, sx = sp
    if not (sy > 0 and sx > 0):
        raise ValueError(f"spacing must be positive, got {spacing!r}")
    return sy, sx


# --------------------------------------------------------------------------- overlap
_OVERLAP_CHUNK = 256  # samples per MONAI call (bounds the float64 one-hot copy)


def dice(pred, target) -> np.ndarray:
    """Per-sample Dice ``2|P∩G| / (|P|+|G|)`` (MONAI ``compute_dice``); 1 when both masks are empty,
    0 when exactly one is. ``pred``/``target`` must be binary: binarise probabilities/logits first."""
    import torch
    from monai.metrics import compute_dice

    p, t = _binary_pair(pred, target)
    out = np.empty(len(p), dtype=np.float64)
    for a in range(0, len(p), _OVERLAP_CHUNK):
        pp, tt = torch.from_numpy(p[a:a + _OVERLAP_CHUNK]), torch.from_numpy(t[a:a + _OVERLAP_CHUNK])
        # two channels (background, foreground), background excluded: MONAI then sums the float64
        # target directly (a single channel would be compared to a class id and scored in float32)
        yp = torch.stack([~pp, pp], 1)
        yt = torch.stack([~tt, tt], 1).double()
        d = compute_dice(yp, yt, include_background=False, ignore_empty=False)
        out[a:a + len(pp)] = d[:, 0].double().numpy()
    return out


def iou(pred, target) -> np.ndarray:
    """Per-sample IoU (Jaccard) ``|P∩G| / |P∪G|`` (MONAI ``compute_iou``); 1 when both masks are
    empty, 0 when exactly one is. ``pred``/``target`` must be binary: binarise first."""
    import torch
    from monai.metrics import compute_iou

    p, t = _binary_pair(pred, target)
    out = np.empty(len(p), dtype=np.float64)
    for a in range(0, len(p), _OVERLAP_CHUNK):
        yp = torch.from_numpy(p[a:a + _OVERLAP_CHUNK, None]).double()
        yt = torch.from_numpy(t[a:a + _OVERLAP_CHUNK, None]).double()
        out[a:a + len(yp)] = compute_iou(yp, yt, include_background=True, ignore_empty=False)[:, 0].numpy()
    return out


# --------------------------------------------------------------------------- surface distances
def _surface(pred, target, spacing, one_empty: str, kind: str) -> np.ndarray:
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    if one_empty not in ONE_EMPTY_CHOICES:
        raise ValueError(f"one_empty={one_empty!r}: use one of {ONE_EMPTY_CHOICES}")
    p, t = _binary_pair(pred, target)
    sy, sx = _spacing2(spacing)
    n, h, w = p.shape
    out = np.zeros(n, dtype=np.float64)
    pe, te = ~p.any((1, 2)), ~t.any((1, 2))
    one = pe ^ te
    out[one] = math.hypot(h * sy, w * sx) if one_empty == "diagonal" else math.nan
    both = ~(pe | te)
    if both.any():
        yp = torch.from_numpy(p[both][:, None].astype(np.float32))
        yt = torch.from_numpy(t[both][:, None].astype(np.float32))
        with warnings.catch_warnings():
            # MONAI 1.5+ warns about its own internal use of a deprecated argument
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            if kind == "hd95":
                d = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=[sy, sx])
            else:
                d = compute_average_surface_distance(yp, yt, include_background=True, symmetric=True, spacing=[sy, sx])
        out[both] = d[:, 0].double().numpy()
    return out


def hd95(pred, target, spacing=None, one_empty: str = "diagonal") -> np.ndarray:
    """Per-sample 95th-percentile symmetric Hausdorff distance (MONAI), in units of ``spacing``.

    Both empty -> 0; one empty -> image diagonal (or NaN with ``one_empty="nan"``).
    """
    return _surface(pred, target, spacing, one_empty, "hd95")


def asd(pred, target, spacing=None, one_empty: str = "diagonal") -> np.ndarray:
    """Per-sample average symmetric surface distance (MONAI), in units of ``spacing``.

    Both empty -> 0; one empty -> image diagonal (or NaN with ``one_empty="nan"``).
    """
    return _surface(pred, target, spacing, one_empty, "asd")


def segmentation(pred, target, spacing=None, one_empty: str = "diagonal") -> dict[str, float]:
    """Means over samples of ``dice``, ``iou``, ``hd95``, ``asd`` (NaNs ignored) as plain floats."""
    vals = {
        "dice": dice(pred, target),
        "iou": iou(pred, target),
        "hd95": hd95(pred, target, spacing, one_empty),
        "asd": asd(pred, target, spacing, one_empty),
    }
    out = {}
    for k, v in vals.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN -> NaN, silently
            out[k] = float(np.nanmean(v)) if v.size else math.nan
    return out


# --------------------------------------------------------------------------- classification
def _class_labels(y_true, y_score: np.ndarray) -> np.ndarray:
    """``y_true`` as int64 class ids, refusing anything a cast would silently change."""
    yt = _to_numpy(y_true, "y_true").ravel()
    if yt.dtype.kind in "USO":
        numeric = yt.dtype.kind == "O" and all(isinstance(v, (int, float, np.number)) for v in yt.tolist())
        if not numeric:
            examples = ", ".join(repr(v) for v in list(dict.fromkeys(yt.tolist()))[:3])
            raise TypeError(
                f"y_true holds strings/objects ({examples}); classification needs integer class ids: "
                f"map names to ids first, e.g. ids = [class_names.index(name) for name in y_true]"
            )
        yt = yt.astype(np.float64)
    if yt.dtype.kind == "b":
        return yt.astype(np.int64)
    if yt.dtype.kind == "f":
        if not np.isfinite(yt).all():
            raise ValueError("y_true contains NaN or inf; it must hold integer class ids (0, 1, ...)")
        frac = yt != np.round(yt)
        if frac.any():
            in_unit = bool(((yt >= 0) & (yt <= 1)).all())
            ys = np.asarray(y_score)
            score_is_labels = ys.dtype.kind in "biu" or (ys.dtype.kind == "f" and bool((ys == np.round(ys)).all()))
            if in_unit and score_is_labels:  # probabilities in y_true, labels in y_score
                hint = "the arguments look swapped: call classification(y_true=labels, y_score=probabilities)"
            elif in_unit:
                hint = "y_true must hold integer class ids (0, 1, ...), not probabilities or scores"
            else:
                hint = "y_true must hold integer class ids (0, 1, ...)"
            raise ValueError(f"y_true has non-integer values (e.g. {yt[frac][:3].tolist()}); {hint}. Float labels are "
                             f"not cast silently: pass integer labels (np.asarray(y_true, dtype=int) once you know they are ids)")
    elif yt.dtype.kind not in "iu":
        raise TypeError(f"y_true must hold integer class ids, got dtype {yt.dtype}")
    return yt.astype(np.int64)


def classification(y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1, ROC-AUC and MCC (scikit-learn).

    ``y_true``: integer class ids ``(N,)`` (bool or integer-valued floats are accepted; non-integer
    floats raise, with a hint when the arguments look swapped; strings raise). ``y_score``: probabilities, either ``(N,)`` = P(class 1)
    for a binary task (prediction ``score >= threshold``), or ``(N, C)`` rows summing to 1
    (prediction = argmax; ``C == 2`` is treated as binary on column 1). Binary precision/recall/F1
    are for class 1; multiclass ones are macro averages and AUC is one-vs-rest macro.
    AUC is NaN when ``y_true`` holds a single class (it is undefined then).
    """
    from sklearn import metrics as skm

    ys_raw = _to_numpy(y_score, "y_score")
    yt = _class_labels(y_true, ys_raw)
    if ys_raw.dtype.kind not in "biuf":
        raise TypeError(f"y_score must hold numbers (probabilities), got dtype {ys_raw.dtype}")
    ys = ys_raw.astype(np.float64)
    if ys.ndim == 2 and ys.shape[1] == 1:
        ys = ys[:, 0]
    if ys.ndim not in (1, 2) or len(ys) != len(yt):
        raise ValueError(
            f"y_score must be (N,) or (N, C) with N = len(y_true) = {len(yt)}, got shape {ys.shape}"
        )
    if len(yt) == 0:
        raise ValueError("classification() got no samples; pass at least one prediction")
    if ys.size and (ys.min() < -1e-6 or ys.max() > 1 + 1e-6):
        raise ValueError(
            f"y_score must hold probabilities in [0, 1] (got min {ys.min():.3g}, max {ys.max():.3g}); "
            f"apply torch.sigmoid (binary) or softmax (multiclass) to logits first"
        )
    binary = ys.ndim == 1 or ys.shape[1] == 2
    if not binary and ((yt < 0) | (yt >= ys.shape[1])).any():
        raise ValueError(
            f"y_true has labels {sorted(set(yt.tolist()))} but y_score has {ys.shape[1]} columns; "
            f"labels must be class ids 0..{ys.shape[1] - 1} (one column per class)"
        )
    if binary:
        pos = ys if ys.ndim == 1 else ys[:, 1]
        if not set(np.unique(yt)) <= {0, 1}:
            raise ValueError(f"binary scores need labels in {{0, 1}}, got {sorted(set(yt.tolist()))}; pass (N, C) scores")
        pred = (pos >= threshold).astype(np.int64)
        avg, auc_score = "binary", pos
    else:
        pred = ys.argmax(1)
        avg, auc_score = "macro", ys
    out = {
        "accuracy": float(skm.accuracy_score(yt, pred)),
        "precision": float(skm.precision_score(yt, pred, average=avg, zero_division=0)),
        "recall": float(skm.recall_score(yt, pred, average=avg, zero_division=0)),
        "f1": float(skm.f1_score(yt, pred, average=avg, zero_division=0)),
        "auc": math.nan,
        "mcc": float(skm.matthews_corrcoef(yt, pred)),
    }
    if len(np.unique(yt)) > 1:
        if binary:
            out["auc"] = float(skm.roc_auc_score(yt, auc_score))
        else:
            out["auc"] = float(
                skm.roc_auc_score(yt, auc_score, multi_class="ovr", average="macro", labels=np.arange(ys.shape[1]))
            )
    return out


# --------------------------------------------------------------------------- boxes / measurements
def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """Pairwise IoU ``(N, M)`` of ``[x0, y0, x1, y1]`` boxes (``torchvision.ops.box_iou``).

    Accepts ``(4,)`` or ``(N, 4)`` (numpy or torch). NaN boxes (empty masks) give NaN rows.
    """
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    a = np.atleast_2d(_to_numpy(boxes_a, "boxes_a").astype(np.float64))
    b = np.atleast_2d(_to_numpy(boxes_b, "boxes_b").astype(np.float64))
    for name, x in (("boxes_a", a), ("boxes_b", b)):
        if x.ndim != 2 or x.shape[1] != 4:
            raise ValueError(f"{name} must be (4,) or (N, 4) [x0, y0, x1, y1], got shape {x.shape}")
        ok = ~np.isnan(x).any(1)
        if ((x[ok, 2] < x[ok, 0]) | (x[ok, 3] < x[ok, 1])).any():
            raise ValueError(f"{name} has boxes with x1 < x0 or y1 < y0; boxes are [x0, y0, x1, y1]")
    out = tv_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    out[np.isnan(a).any(1), :] = np.nan
    out[:, np.isnan(b).any(1)] = np.nan
    return out


def mean_relative_error(pred, true) -> float:
    """``mean(|pred - true| / |true|)`` (e.g. 0.05 = 5 %), as in HC18's evaluation of HC in mm."""
    p = _to_numpy(pred, "pred").astype(np.float64).ravel()
    t = _to_numpy(true, "true").astype(np.float64).ravel()
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"pred and true must be non-empty and of equal length, got {p.size} and {t.size}")
    if (t == 0).any():
        raise ValueError("true contains zeros, where relative error is undefined; use absolute error there")
    return float(np.mean(np.abs(p - t) / np.abs(t)))


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, std)`` of per-seed results (sample std, ddof=1; std 0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("summarize() got no values")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def bootstrap_interval(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the **mean** of ``values`` (resampled with replacement, ``n_boot`` times,
    seeded). One value gives the degenerate interval ``(v, v)``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no values to bootstrap; evaluate at least one image")
    if not np.isfinite(v).all():
        raise ValueError("values contain NaN/inf; a per-image score must be finite (Dice always is)")
    _check_boot(n_boot, level)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(int(n_boot), v.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def auc_interval(y_true, score, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the binary ROC-AUC, resampling test images with replacement; the AUC
    of each resample from the Mann-Whitney rank statistic (ties averaged, equal to ``roc_auc_score``);
    resamples with a single class are skipped."""
    from scipy.stats import rankdata

    y = np.asarray(y_true)
    sc = np.asarray(score, dtype=np.float64).ravel()
    if y.ndim != 1 or len(y) != len(sc) or len(y) < 2:
        raise ValueError(f"auc_interval needs 1-D labels and scores of the same length >= 2, got {y.shape} and {sc.shape}")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError(f"auc_interval is binary: y_true must hold 0/1 labels, got {np.unique(y)[:5]}")
    _check_boot(n_boot, level)
    rng = np.random.default_rng(seed)
    n = len(y)
    idx = rng.integers(0, n, size=(int(n_boot), n))
    yb, sb = y[idx].astype(np.float64), sc[idx]
    ranks = rankdata(sb, axis=1)
    npos = yb.sum(1)
    nneg = n - npos
    ok = (npos > 0) & (nneg > 0)
    if not ok.any():
        raise ValueError("every bootstrap resample holds a single class: the test set needs both classes")
    auc = ((ranks * yb).sum(1) - npos * (npos + 1) / 2) / np.where(ok, npos * nneg, 1)
    lo, hi = np.quantile(auc[ok], [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _check_boot(n_boot, level) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot}")

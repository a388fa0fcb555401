"""External validation: score an already-trained segmentation model on another dataset or folder (no retraining),
next to its in-domain score with the same metric (per-image Dice, mean with a bootstrap 95 % interval). Notebook 09 (§8).

A model is passed as ``predict``: a callable that maps an image stack ``(N, H, W)`` (floats in ``[0, 1]``, as in
the course's samples) to **binary** masks ``(N, H, W)`` (threshold inside it, e.g. ``probs > 0.5``). Data is a
list of course samples (``course_lib.data.folders.load``, ``busi.load`` ...) or an ``(images, masks)`` pair.

* :func:`bootstrap_interval` — :func:`course_lib.metrics.bootstrap_interval` (interval of a mean over images), re-exported.
* :func:`evaluate` — per-image Dice (:func:`course_lib.metrics.dice`), mean, interval, number of empty predictions.
* :func:`external_validation` — :func:`evaluate` on an in-domain and an external set, same model, same metric.
* :func:`seed_summary` — runs of several training seeds: mean ± sd of the mean Dice over seeds, the per-seed
  intervals, and whether the in-domain vs external gap is beyond the intervals (``gap``) or within them (``tie``).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from .. import metrics
from ..metrics import bootstrap_interval

__all__ = ["bootstrap_interval", "as_arrays", "evaluate", "external_validation", "seed_summary", "verdict",
           "report_table"]


def as_arrays(data, what: str = "data") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images (N, H, W) float32, masks (N, H, W) bool, ids)`` from a list of course samples or an
    ``(images, masks)`` pair; clear errors for empty data and for images/masks of different sizes."""
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], Mapping):
        sizes = sorted({tuple(np.shape(s["image"])) for s in data})
        if len(sizes) > 1:
            raise ValueError(f"{what}: images have different sizes {sizes[:4]}; load them at one size "
                             f"(e.g. folders.load(..., image_size=bb.image_size))")
        images = np.stack([np.asarray(s["image"], np.float32) for s in data])
        masks = np.stack([np.asarray(s["mask"]) for s in data])
        ids = [str(s.get("id", i)) for i, s in enumerate(data)]
    elif isinstance(data, (list, tuple)) and len(data) == 2 and not isinstance(data[0], Mapping):
        images, masks = np.asarray(data[0], np.float32), np.asarray(data[1])
        ids = [str(i) for i in range(len(images))]
    else:
        raise TypeError(f"{what}: pass a non-empty list of course samples or an (images, masks) pair, "
                        f"got {type(data).__name__}{' (empty)' if isinstance(data, (list, tuple)) and not data else ''}")
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"{what}: images must be a non-empty (N, H, W) stack, got shape {images.shape}")
    if masks.shape != images.shape:
        raise ValueError(f"{what}: masks {masks.shape} and images {images.shape} differ in shape; one mask per "
                         f"image, at the image's size")
    if masks.size and not np.isin(masks, (0, 1)).all():
        raise ValueError(f"{what}: masks must be binary (bool or 0/1); threshold them first")
    return images, masks.astype(bool), ids


# region: external-evaluate
def evaluate(predict: Callable[[np.ndarray], np.ndarray], data, *, n_boot: int = 1000, seed: int = 0,
             level: float = 0.95, what: str = "data") -> dict:
    """Score ``predict`` on ``data`` without training anything.

    Returns ``{"dice": per-image Dice (N,), "mean", "lo", "hi" (bootstrap interval of the mean), "n",
    "empty" (images where the prediction is empty but the mask is not), "ids", "pred" (the binary masks)}``.
    """
    images, masks, ids = as_arrays(data, what)
    pred = predict(images)
    try:
        import torch

        if isinstance(pred, torch.Tensor):
            pred = pred.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    pred = np.asarray(pred)
    if pred.shape != masks.shape:
        raise ValueError(f"{what}: predict returned shape {pred.shape} for {len(images)} images of "
                         f"{images.shape[1]}x{images.shape[2]} px; it must return one binary mask (N, H, W) per image "
                         f"at the image's size")
    dice = metrics.dice(pred, masks)  # raises when pred is not binary
    pred = pred.astype(bool)
    lo, hi = bootstrap_interval(dice, n_boot=n_boot, seed=seed, level=level)
    return {"dice": dice, "mean": float(dice.mean()), "lo": lo, "hi": hi, "n": int(len(dice)),
            "empty": int((~pred.any((1, 2)) & masks.any((1, 2))).sum()), "ids": ids, "pred": pred}
# endregion


def external_validation(predict: Callable[[np.ndarray], np.ndarray], in_domain, external, *, n_boot: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """:func:`evaluate` of one model on its in-domain test set and on an external one (same metric, same
    bootstrap settings): ``{"in-domain": report, "external": report}``."""
    return {"in-domain": evaluate(predict, in_domain, n_boot=n_boot, seed=seed, level=level, what="in-domain data"),
            "external": evaluate(predict, external, n_boot=n_boot, seed=seed, level=level, what="external data")}


def verdict(a: tuple[float, float], b: tuple[float, float]) -> str:
    """``"gap"`` when two intervals ``(lo, hi)`` do not overlap, ``"tie"`` when they do."""
    return "gap" if a[1] < b[0] or b[1] < a[0] else "tie"


def seed_summary(reports: Mapping[int, Mapping[str, dict]], domains: Sequence[str] = ("in-domain", "external")):
    """Summarise :func:`external_validation` reports of several training seeds (``{seed: {domain: report}}``).

    Returns ``(per_seed, summary)``, two ``pandas.DataFrame``: ``per_seed`` has one row per seed and domain (mean
    Dice, interval, n, empty) and the seed's verdict (:func:`verdict` of the two domains' intervals); ``summary``
    has one row per domain with the mean ± sd over seeds of the mean Dice (sd with ddof=1), the mean empty count,
    ``seeds apart`` (how many seeds' intervals do not overlap) and ``verdict``: ``"gap"`` when every seed's intervals are apart, ``"tie"`` when every seed's overlap, else
    ``"mixed"``.
    """
    import pandas as pd

    if len(domains) != 2:
        raise ValueError(f"domains must name two reports (reference, other), got {domains}")
    rows = []
    for s, rep in reports.items():
        missing = [d for d in domains if d not in rep]
        if missing:
            raise ValueError(f"seed {s}: no report for {missing}; pass external_validation(...) results")
        v = verdict((rep[domains[0]]["lo"], rep[domains[0]]["hi"]), (rep[domains[1]]["lo"], rep[domains[1]]["hi"]))
        for d in domains:
            r = rep[d]
            rows.append({"seed": s, "domain": d, "dice": r["mean"], "lo": r["lo"], "hi": r["hi"], "n": r["n"],
                         "empty": r["empty"], "verdict": v})
    per_seed = pd.DataFrame(rows)
    g = per_seed.groupby("domain", sort=False)
    verdicts = set(per_seed.verdict)
    overall = verdicts.pop() if len(verdicts) == 1 else "mixed"
    summary = pd.DataFrame({"dice mean": g.dice.mean(), "dice sd": g.dice.std(ddof=1), "seeds": g.size(),
                            "n images": g.n.first(), "empty (mean)": g.empty.mean()})
    summary["seeds apart"] = int((per_seed.drop_duplicates("seed").verdict == "gap").sum())
    summary["verdict"] = overall
    return per_seed, summary


def report_table(per_seed, summary, fmt: str = "{:.3f}"):
    """Display table of :func:`seed_summary`'s frames: one row per domain with the images, the mean ± sd over seeds
    of the mean Dice, each seed's ``mean [lo, hi]``, the mean number of empty predictions and the verdict."""
    import pandas as pd

    out = pd.DataFrame(index=summary.index)
    out["images"] = summary["n images"].astype(int)
    out["Dice, mean ± sd over seeds"] = [f"{fmt.format(m)} ± {fmt.format(d)}"
                                         for m, d in zip(summary["dice mean"], summary["dice sd"])]
    for s, g in per_seed.groupby("seed", sort=False):
        g = g.set_index("domain")
        out[f"seed {s}: Dice [95 % CI]"] = [f"{fmt.format(g.loc[d, 'dice'])} [{fmt.format(g.loc[d, 'lo'])}, "
                                            f"{fmt.format(g.loc[d, 'hi'])}]" for d in out.index]
    out["empty predictions (mean)"] = summary["empty (mean)"].round(1)
    out["verdict"] = summary["verdict"]
    return out

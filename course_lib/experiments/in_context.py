"""The in-context segmentation study: UniverSeg vs a per-task UNet on held-out and real tasks, Dice vs
support size S and ensemble size M over several split seeds, and the query viewer (notebook 06).

Every number is a mean over the query images of one task; :func:`run_support_sweep`,
:func:`run_ensemble_sweep` and :func:`run_unet_baseline` repeat the protocol of
:mod:`course_lib.methods.segfm.evaluation` for several seeds (each seed is a new query/pool split and
new support draws), and :func:`seed_summary` reduces the rows to mean ± sd per (task, setting).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from course_lib import metrics
from course_lib.methods.segfm import evaluation as ev


def _n_queries(task, held_names, eval_queries: int, real_queries: int) -> int:
    return eval_queries if task.name in held_names else real_queries


def run_support_sweep(model, tasks, held_names, sizes: Sequence[int], *, eval_queries: int, real_queries: int,
                      seeds: Sequence[int] = (0,), progress: bool = True):
    """Rows ``{task, kind, S, M=1, seed, dice}``: UniverSeg Dice vs support size for every task and seed."""
    from tqdm.auto import tqdm

    rows = []
    for t in tqdm(tasks, desc="Dice vs support size", disable=not progress):
        for seed in seeds:
            nq = _n_queries(t, held_names, eval_queries, real_queries)
            for r in ev.evaluate_task(model, t, sizes, ensembles=(1,), n_queries=nq, seed=int(seed)):
                rows.append(dict(r, seed=int(seed), kind="held-out SonoSynth" if t.name in held_names else "real (never seen)"))
    return rows


def run_ensemble_sweep(model, tasks, held_names, support_size: int, ensembles: Sequence[int], *, eval_queries: int,
                       real_queries: int, seeds: Sequence[int] = (1,), progress: bool = True):
    """Rows ``{task, S, M, seed, dice}``: UniverSeg Dice vs ensemble size M at one support size."""
    from tqdm.auto import tqdm

    rows = []
    for t in tqdm(tasks, desc="Dice vs ensemble M", disable=not progress):
        for seed in seeds:
            nq = _n_queries(t, held_names, eval_queries, real_queries)
            rows += [dict(r, seed=int(seed)) for r in ev.evaluate_task(model, t, (support_size,), ensembles=ensembles,
                                                                      n_queries=nq, seed=int(seed))]
    return rows


def run_unet_baseline(tasks, sizes: Sequence[int], *, n_queries: int, steps: int, seeds: Sequence[int] = (0,),
                      progress: bool = True):
    """Rows ``{task, S, M=0, seed, dice}``: the per-task UNet on the same queries and support images that
    :func:`run_support_sweep` gives UniverSeg (same seeds)."""
    from tqdm.auto import tqdm

    rows = []
    for t in tqdm(tasks, desc="per-task UNet", disable=not progress):
        for seed in seeds:
            rows += [dict(r, seed=int(seed)) for r in ev.evaluate_unet(t, sizes, n_queries=n_queries, steps=steps, seed=int(seed))]
    return rows


def seed_summary(rows, index: str = "task", column: str = "S"):
    """``(mean, sd, n)`` pivot tables over seeds: per ``index`` x ``column`` the mean and sample sd
    (:func:`course_lib.metrics.summarize`) of ``dice`` and the number of seeds."""
    import pandas as pd

    df = pd.DataFrame(rows)
    g = df.groupby([index, column])["dice"]
    stats = g.apply(lambda v: metrics.summarize(v.to_numpy()))
    mean = stats.map(lambda s: s[0]).unstack(column)
    sd = stats.map(lambda s: s[1]).unstack(column)
    n = g.size().unstack(column)
    return mean, sd, n


def plot_query(model, task, *, support_size: int = 8, ensemble: int = 2, query: int = 0, n_queries: int = 6, seed: int = 3):
    """Segment query ``query`` of ``task`` (split by :func:`evaluation.query_split` with seed 0) from a support
    set of the rest; draw the query, the mean probability and the contours (white truth, red prediction)."""
    import matplotlib.pyplot as plt

    qi, pool = ev.query_split(task, n_queries, 0)
    i = int(qi[query])
    prob = ev.predict(model, task.images[i:i + 1], task.images[pool], task.labels[pool],
                      support_size=min(support_size, len(pool)), ensemble=ensemble, seed=seed)
    p = prob[0, 0].numpy()
    d = float(metrics.dice(p > 0.5, task.labels[i] > 0.5)[0])
    fig, ax = plt.subplots(1, 3, figsize=(8, 2.9))
    ax[0].imshow(task.images[i], cmap="gray"); ax[0].set_title("query")
    ax[1].imshow(p, cmap="magma", vmin=0, vmax=1); ax[1].set_title(f"mean prob., S={support_size}, M={ensemble}")
    ax[2].imshow(task.images[i], cmap="gray")
    ax[2].contour(task.labels[i], [0.5], colors="w"); ax[2].contour(p, [0.5], colors="r")
    ax[2].set_title(f"Dice {d:.2f}")
    for a in ax:
        a.axis("off")
    plt.tight_layout(); plt.show()
    return d


def location_prior(task, sizes: Sequence[int], *, n_queries: int, seed: int = 0, threshold: float = 0.5):
    """Rows ``{task, S, M=-1, seed, dice}`` of a baseline that ignores the query image: the pixel-wise mean of
    the S support labels, thresholded -- "where this structure usually is". Same queries and the same
    first support subset as :func:`evaluation.evaluate_task` with ``M = 1``. If in-context Dice is no
    better than this, the model segments by position, not appearance."""
    qi, pi = ev.query_split(task, n_queries, seed)
    rows = []
    for S in sizes:
        if S > len(pi):
            continue
        sub = pi if S >= len(pi) else pi[np.random.default_rng(seed + S).choice(len(pi), size=S, replace=False)]
        prior = task.labels[sub].mean(0) >= threshold
        d = metrics.dice(np.broadcast_to(prior, task.labels[qi].shape), task.labels[qi] > 0.5)
        rows.append(dict(task=task.name, S=int(S), M=-1, seed=int(seed), dice=float(d.mean())))
    return rows


def contrast_to_noise(task, ring: int = 3) -> float:
    """Median over the task's images of ``|mean(inside) - mean(ring)| / std(ring)``: how much the structure
    stands out from a ``ring``-pixel band around it (a low value = hard to see, whatever the model)."""
    from scipy.ndimage import binary_dilation

    vals = []
    for img, lab in zip(task.images, task.labels > 0.5):
        if not lab.any():
            continue
        band = binary_dilation(lab, iterations=ring) & ~lab
        if band.sum() < 2:
            continue
        vals.append(abs(img[lab].mean() - img[band].mean()) / max(float(img[band].std()), 1e-6))
    return float(np.median(vals)) if vals else float("nan")


def pm_table(mean, sd, prefix: str = ""):
    """``"0.62 ± 0.03"`` strings from a mean and an sd table ("–" where the mean is missing); columns prefixed."""
    t = mean.round(3).astype(str) + " ± " + sd.round(3).astype(str)
    t = t.where(mean.notna(), "–")
    t.columns = [f"{prefix}{c}" for c in t.columns]
    return t


def trend(mean, sd, row, a, b) -> str:
    """``"grows"``/``"falls"`` when ``mean.loc[row]`` changes from column ``a`` to ``b`` by more than the larger
    of the two seed sds, else ``"is flat (within the seed sd)"``."""
    d, m = mean.loc[row, b] - mean.loc[row, a], max(sd.loc[row, a], sd.loc[row, b])
    return "grows" if d > m else "falls" if d < -m else "is flat (within the seed sd)"

"""Tyche vs deterministic UniverSeg vs test-time augmentation against simulated annotator sets: best-candidate
Dice and GED over support sizes and support draws, the summary table, plots and sentences (notebook 06).

Protocol (:func:`run_tyche_study`): for each task, query images are split off with the seed of the support draw
(:func:`course_lib.methods.segfm.evaluation.query_split`); every query gets a fixed set of ``A`` simulated expert
masks (:func:`course_lib.data.sonosynth.annotators.annotators`, seeded by the task's position); for each support
size ``S`` a support set is drawn from the rest of the task and each support label is a random annotator's mask
(as in Tyche's training). Each method returns a set of binary masks per query (probability > 0.5): Tyche's ``K``
candidates, TTA's ``K`` augmented predictions, UniverSeg's single prediction. Scores per query (then averaged over
the queries of a task, then over tasks for each seed): :func:`.tyche.best_candidate_dice` and
:func:`.tyche.generalized_energy_distance` (lower is better). The lead may move the two metrics into
:mod:`course_lib.metrics`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from course_lib.data.sonosynth.annotators import annotator, annotators
from course_lib.methods.segfm.evaluation import query_split
from course_lib.methods.segfm.tyche import (best_candidate_dice, deterministic_candidates, generalized_energy_distance,
                                            tta_candidates, tyche_candidates)

METHODS = ("UniverSeg", "TTA", "Tyche")


def _check_positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def query_annotations(task, task_index: int, query_idx, n_annotators: int) -> np.ndarray:
    """The fixed annotator set of each query: bool ``(Q, A, H, W)`` (seeded by the task's position only)."""
    return annotators(task.labels[query_idx] > 0.5, _check_positive("n_annotators", n_annotators), seed=10_000 + task_index)


def support_draw(task, pool_idx, support_size: int, n_annotators: int, seed: int):
    """``(images, labels)`` of a support set of ``support_size`` from ``pool_idx``, each label a random annotator's."""
    rng = np.random.default_rng([seed, support_size])
    sub = pool_idx[rng.choice(len(pool_idx), size=min(support_size, len(pool_idx)), replace=False)]
    who = rng.integers(n_annotators, size=len(sub))
    labels = np.stack([annotator(task.labels[i] > 0.5, int(j), 20_000 + seed, image_index=int(i)) for i, j in zip(sub, who)])
    return task.images[sub], labels.astype(np.float32)


def method_candidates(name: str, tyche, universeg, query, s_img, s_lab, *, k: int, seed: int, shift: int = 2):
    """Probabilities ``(Q, K', H, W)`` of one method (``"Tyche"``, ``"TTA"`` or ``"UniverSeg"``)."""
    if name == "Tyche":
        return tyche_candidates(tyche, query, s_img, s_lab, k=k, seed=seed)
    if name == "TTA":
        return tta_candidates(universeg, query, s_img, s_lab, k=k, shift=shift)
    if name == "UniverSeg":
        return deterministic_candidates(universeg, query, s_img, s_lab)
    raise ValueError(f"unknown method {name!r}; use one of {METHODS}")


# region: tyche-study
def run_tyche_study(tyche, universeg, tasks, *, support_sizes: Sequence[int], seeds: Sequence[int], k: int,
                    n_annotators: int, n_queries: int, shift: int = 2, methods: Sequence[str] = METHODS) -> list[dict]:
    """Rows ``{task, seed, S, method, K, bc_dice, ged}`` (means over the queries of a task); protocol in the module docstring."""
    k, n_annotators = _check_positive("K (candidates)", k), _check_positive("n_annotators", n_annotators)
    rows = []
    for ti, task in enumerate(tasks):
        for seed in seeds:
            qi, pi = query_split(task, n_queries, seed)
            ann = query_annotations(task, ti, qi, n_annotators)
            for S in support_sizes:
                if S > len(pi):
                    continue
                s_img, s_lab = support_draw(task, pi, S, n_annotators, seed)
                for name in methods:
                    cand = method_candidates(name, tyche, universeg, task.images[qi], s_img, s_lab, k=k, seed=seed,
                                             shift=shift).numpy() > 0.5
                    bc = [best_candidate_dice(c, a) for c, a in zip(cand, ann)]
                    ged = [generalized_energy_distance(c, a) for c, a in zip(cand, ann)]
                    rows.append(dict(task=task.name, seed=int(seed), S=int(S), method=name, K=cand.shape[1],
                                     bc_dice=float(np.mean(bc)), ged=float(np.mean(ged))))
    return rows
# endregion


def summary(rows) -> pd.DataFrame:
    """Mean and sd over seeds (of the task-averaged scores) for each (method, S): columns
    ``bc_dice_mean, bc_dice_sd, ged_mean, ged_sd, n_seeds``."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        raise ValueError("no rows to summarise: run_tyche_study returned nothing (support sizes larger than the pools?)")
    per_seed = df.groupby(["method", "S", "seed"])[["bc_dice", "ged"]].mean().reset_index()
    g = per_seed.groupby(["method", "S"])
    out = pd.DataFrame({"bc_dice_mean": g.bc_dice.mean(), "bc_dice_sd": g.bc_dice.std(ddof=1),
                        "ged_mean": g.ged.mean(), "ged_sd": g.ged.std(ddof=1), "n_seeds": g.seed.nunique()})
    return out.reset_index()


def table(summ: pd.DataFrame) -> pd.DataFrame:
    """The notebook's table: rows = method, columns = (metric, S), cells ``"mean ± sd"``."""
    cells = {}
    for _, r in summ.iterrows():
        cells.setdefault(r["method"], {})[("best-candidate Dice ↑", int(r["S"]))] = f"{r.bc_dice_mean:.3f} ± {r.bc_dice_sd:.3f}"
        cells[r["method"]][("GED ↓", int(r["S"]))] = f"{r.ged_mean:.3f} ± {r.ged_sd:.3f}"
    order = [m for m in METHODS if m in cells] + [m for m in cells if m not in METHODS]
    out = pd.DataFrame.from_dict(cells, orient="index").loc[order]
    return out[sorted(out.columns, key=lambda c: (c[0] != "best-candidate Dice ↑", c[1]))]


def compare(summ: pd.DataFrame, a: str, b: str, metric: str, S: int) -> str:
    """A sentence fragment comparing method ``a`` with ``b`` on ``metric`` (``bc_dice`` or ``ged``) at ``S``:
    "better"/"worse" only when the gap exceeds the larger seed sd, else "within the seed sd"."""
    ra = summ[(summ.method == a) & (summ.S == S)].iloc[0]
    rb = summ[(summ.method == b) & (summ.S == S)].iloc[0]
    ma, sa, mb, sb = ra[f"{metric}_mean"], ra[f"{metric}_sd"], rb[f"{metric}_mean"], rb[f"{metric}_sd"]
    sign = 1 if metric == "bc_dice" else -1  # GED: lower is better
    gap = sign * (ma - mb)
    verdict = "better than" if gap > max(sa, sb) else "worse than" if -gap > max(sa, sb) else "within the seed sd of"
    return f"{a} {ma:.3f} ± {sa:.3f} is {verdict} {b} {mb:.3f} ± {sb:.3f}"


def plot_summary(summ: pd.DataFrame, axes=None):
    """Best-candidate Dice and GED vs support size, one line per method (error bars = sd over seeds)."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name in [m for m in METHODS if m in set(summ.method)]:
        d = summ[summ.method == name].sort_values("S")
        axes[0].errorbar(d.S, d.bc_dice_mean, yerr=d.bc_dice_sd, marker="o", capsize=3, label=name)
        axes[1].errorbar(d.S, d.ged_mean, yerr=d.ged_sd, marker="o", capsize=3, label=name)
    for ax, t in zip(axes, ("best-candidate Dice (higher is better)", "GED, d = 1 - IoU (lower is better)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("support size S")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    axes[0].legend()
    return axes


def plot_candidates(tyche, universeg, task, *, task_index: int = 0, support_size: int = 8, k: int = 4,
                    n_annotators: int = 3, query: int = 0, n_queries: int = 4, seed: int = 0, shift: int = 2):
    """One query: the annotators' masks (top row), Tyche's K candidates, TTA's K predictions and UniverSeg's one."""
    import matplotlib.pyplot as plt

    qi, pi = query_split(task, n_queries, seed)
    ann = query_annotations(task, task_index, qi, n_annotators)[query]
    s_img, s_lab = support_draw(task, pi, support_size, n_annotators, seed)
    x = task.images[qi[query: query + 1]]
    rows = [("annotator", ann)] + [(m, method_candidates(m, tyche, universeg, x, s_img, s_lab, k=k, seed=seed,
                                                          shift=shift)[0].numpy() > 0.5) for m in ("Tyche", "TTA", "UniverSeg")]
    ncol = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.9 * ncol, 1.9 * len(rows)), squeeze=False)
    for r, (name, masks) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(masks):
                ax.imshow(x[0], cmap="gray", vmin=0, vmax=1)
                ax.contour(masks[c].astype(float), levels=[0.5], colors=["w" if r == 0 else "r"], linewidths=1)
                ax.set_title(f"{name} {c + 1}" if len(masks) > 1 else name, fontsize=8)
    fig.suptitle(f"{task.name}, S = {support_size}", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv=None):
    """Command line. ``--train`` rebuilds the ``tyche-tiny`` checkpoint (:func:`.tyche.train_checkpoint`; ``--steps``,
    ``--out``). Otherwise: the study on notebook 06's held-out SonoSynth tasks with the profile's sizes (``--sizes``
    overrides the support sizes); prints the summary and the table (the numbers of ``data_cards/tyche-tiny.md``)."""
    import argparse
    import time

    from course_lib import runtime
    from course_lib.data import seg_tasks
    from course_lib.methods.segfm.checkpoint import load_pretrained
    from course_lib.methods.segfm.tyche import DEFAULT_TRAIN, load_tyche, train_checkpoint

    ap = argparse.ArgumentParser(description="Tyche vs UniverSeg vs TTA on held-out SonoSynth tasks with simulated annotators; "
                                             "--train rebuilds the tyche-tiny checkpoint.")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--train", action="store_true", help="rebuild the tyche-tiny checkpoint instead")
    ap.add_argument("--steps", type=int, default=DEFAULT_TRAIN["steps"])
    ap.add_argument("--out", default=None, help="checkpoint path (default course_lib/assets/tyche-tiny.safetensors)")
    args = ap.parse_args(argv)
    if args.train:
        train_checkpoint(args.out, steps=args.steps)
        return
    P = runtime.get_profile(args.profile)
    U, TY = P.section("universeg"), P.section("tyche")
    held = seg_tasks.held_out_tasks(n_per_group=U.real_pool + U.eval_queries, image_size=U.image_size)
    held = held[:: max(1, len(held) // U.eval_tasks)][: U.eval_tasks][: TY.eval_tasks]  # notebook 06's tasks
    t0 = time.perf_counter()
    rows = run_tyche_study(load_tyche(device="cpu"), load_pretrained(device="cpu"), held,
                           support_sizes=tuple(args.sizes or TY.support_sizes), seeds=TY.seeds, k=TY.candidates,
                           n_annotators=TY.annotators, n_queries=TY.eval_queries, shift=TY.tta_shift)
    print(f"{time.perf_counter() - t0:.0f} s on {[t.name for t in held]}")
    summ = summary(rows)
    print(summ.round(3).to_string())
    print(table(summ).to_string())


if __name__ == "__main__":
    main()

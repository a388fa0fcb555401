"""The partial-label study: train every loss variant on a partially labelled assembly for several seeds,
score it per structure on fully labelled test images, summarise (mean ± sd) and draw overlays (notebook 08).

:func:`compare_losses` is the loop over (variant, seed) that notebook 08 runs on SonoSynth and on CT;
:func:`summarize_dice` turns its rows into the mean ± sd table the text quotes; :func:`learning_curves` smooths
their training losses (mean ± sd over seeds);
:func:`mean_probability_inside` measures what each model predicts inside every true structure;
:func:`plot_overlays` draws truth vs predictions.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from course_lib import metrics
from course_lib.methods.segfm import partial_labels as pl
from course_lib.methods.segfm import universal_model as um

VARIANT_NAMES = {"naive": "(a) naive softmax", "masked": "(b) masked sigmoid"}


def compare_losses(data: pl.PartialAssembly, test_images: np.ndarray, test_targets: np.ndarray, *,
                   modes: Sequence[str] = pl.MODES, seeds: Sequence[int] = (0,), steps: int = 250,
                   batch_size: int = 8, lr: float = 5e-3, features=(8, 16, 32, 32), progress: bool = True):
    """Train :func:`partial_labels.train_partial` for every ``mode`` and ``seed`` and score it with
    :func:`partial_labels.per_structure_dice` on ``test_images`` / ``test_targets`` (fully labelled).

    Returns ``(rows, nets, preds)``: ``rows`` a list of dicts ``{variant, mode, seed, <structure>: dice, loss_curve}``
    (``loss_curve``: the training loss of every step, for :func:`learning_curves`);
    ``nets[mode]`` and ``preds[mode]`` are the model and binary predictions of the *first* seed.
    """
    if not len(seeds):
        raise ValueError("compare_losses needs at least one seed, e.g. seeds=(0, 1, 2)")
    rows, nets, preds = [], {}, {}
    for mode in modes:
        for seed in seeds:
            net, losses = pl.train_partial(data, mode, steps=steps, batch_size=batch_size, lr=lr, features=features,
                                           seed=int(seed), progress=progress)
            pred = pl.predict_partial(net, test_images, mode)
            rows.append({"variant": VARIANT_NAMES.get(mode, mode), "mode": mode, "seed": int(seed),
                         **pl.per_structure_dice(pred, test_targets, data.structures), "loss_curve": list(map(float, losses))})
            if mode not in nets:
                nets[mode], preds[mode] = net, pred
    return rows, nets, preds


def compare_universal(data: pl.PartialAssembly, test_images: np.ndarray, test_targets: np.ndarray, embeddings: dict, *,
                      seeds: Sequence[int] = (0,), steps: int = 250, batch_size: int = 8, lr: float = 5e-3,
                      features=(8, 16, 32, 32), progress: bool = True):
    """The CLIP-driven universal model (:class:`universal_model.UniversalModel`, masked loss) once per
    embedding kind (``{"text": (K, D), "random": ..., ...}``) and seed, scored like :func:`compare_losses`.
    Returns ``(rows, nets, preds)`` with ``variant = "(c) universal: <kind>"`` (first seed kept)."""
    if not len(seeds):
        raise ValueError("compare_universal needs at least one seed, e.g. seeds=(0, 1, 2)")
    rows, nets, preds = [], {}, {}
    for kind, emb in embeddings.items():
        name = f"(c) universal: {kind}"
        for seed in seeds:
            net, losses = pl.train_partial(data, "masked", steps=steps, batch_size=batch_size, lr=lr, seed=int(seed),
                                           progress=progress, model_fn=lambda e=emb: um.UniversalModel(e, features=features))
            pred = pl.predict_partial(net, test_images, "masked")
            rows.append({"variant": name, "mode": f"universal-{kind}", "seed": int(seed),
                         **pl.per_structure_dice(pred, test_targets, data.structures), "loss_curve": list(map(float, losses))})
            if name not in nets:
                nets[name], preds[name] = net, pred
    return rows, nets, preds


def learning_curves(rows, window: int = 10, tail: float = 0.25):
    """Training loss per variant: the moving average (``window`` steps) of every run's ``loss_curve``, then
    mean and sd over seeds. Returns ``(curves, flat)``: ``curves[variant] = (mean, sd)`` arrays over the
    steps; ``flat[variant]``: relative change of the mean smoothed loss over the last ``tail`` of the steps,
    ``(L_end - L_start) / L_start`` (close to 0: the curve has flattened)."""
    by = {}
    for r in rows:
        if "loss_curve" in r:
            by.setdefault(r["variant"], []).append(np.asarray(r["loss_curve"], dtype=float))
    curves, flat = {}, {}
    for v, runs in by.items():
        n = min(len(c) for c in runs)
        w = max(1, min(window, n))
        sm = np.stack([np.convolve(c[:n], np.ones(w) / w, mode="valid") for c in runs])
        m, s = sm.mean(0), sm.std(0, ddof=1) if len(sm) > 1 else np.zeros(sm.shape[1])
        curves[v] = (m, s)
        i0 = min(len(m) - 1, int(round(len(m) * (1 - tail))))
        flat[v] = float((m[-1] - m[i0]) / m[i0]) if m[i0] != 0 else float("nan")
    return curves, flat


def wins(mean_table, sd_table, a: str, b: str, structures: Sequence[str], min_diff: float = 0.02) -> dict:
    """How ``a`` compares with ``b`` per structure: ``better``/``worse`` when the means differ by more than
    the larger seed sd and by more than ``min_diff`` Dice, else ``tie``;
    returns ``{"better": [...], "worse": [...], "tie": [...]}``."""
    out = {"better": [], "worse": [], "tie": []}
    for s in structures:
        d = mean_table.loc[a, s] - mean_table.loc[b, s]
        margin = max(sd_table.loc[a, s], sd_table.loc[b, s], min_diff)
        out["better" if d > margin else "worse" if d < -margin else "tie"].append(s)
    return out


def summarize_dice(rows, structures: Sequence[str], by: str = "variant"):
    """``(mean_table, sd_table, text_table)``: per ``by`` and structure (plus ``mean`` over structures)
    the mean and sample sd over seeds (:func:`course_lib.metrics.summarize`), and a ``"0.62 ± 0.03"`` table."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df["mean"] = df[list(structures)].mean(axis=1)
    cols = list(structures) + ["mean"]
    means, sds = {}, {}
    for key, g in df.groupby(by, sort=False):
        stats = {c: metrics.summarize(g[c].to_numpy()) for c in cols}
        means[key] = {c: s[0] for c, s in stats.items()}
        sds[key] = {c: s[1] for c, s in stats.items()}
    mean_t = pd.DataFrame(means).T[cols]
    sd_t = pd.DataFrame(sds).T[cols]
    text = mean_t.round(3).astype(str) + " ± " + sd_t.round(3).astype(str)
    return mean_t, sd_t, text


def mean_probability_inside(nets: dict, images: np.ndarray, targets: np.ndarray, structures: Sequence[str],
                            subsets: dict | None = None, erode: int = 0):
    """Per structure, the mean probability each model gives the correct structure over the pixels where
    it really is: softmax probability of class k + 1 for ``"naive"``, sigmoid of channel k for ``"masked"``.
    With ``subsets`` (the assembly's sub-datasets) also the share of studies that label the structure, and
    always the structure's mean area (share of image pixels). ``erode``: only pixels at least ``erode``
    pixels inside the structure (its core; the boundary band is where localisation is uncertain)."""
    import pandas as pd
    import torch

    from course_lib.train import predict

    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None]
    probs = {}
    for mode, net in nets.items():
        if mode == "naive":
            probs[mode] = predict(net, x, fn=lambda m, xb: m(xb).float().softmax(1)[:, 1:]).numpy()
        else:
            probs[mode] = predict(net, x, fn=lambda m, xb: torch.sigmoid(m(xb).float())).numpy()
    rows = []
    for k, name in enumerate(structures):
        inside = targets[:, k] > 0.5
        if erode > 0:
            t = torch.as_tensor(inside, dtype=torch.float32)[:, None]
            inside = (-torch.nn.functional.max_pool2d(-t, 2 * erode + 1, 1, erode))[:, 0].numpy() > 0.5
        row = {"structure": name, "area": float((targets[:, k] > 0.5).mean())}
        if subsets is not None:
            row["share of studies labelling it"] = float(np.mean([name in v for v in subsets.values()]))
        for mode, p in probs.items():
            kind = "softmax" if mode == "naive" else "sigmoid"
            row[f"{VARIANT_NAMES.get(mode, mode).split(' ')[0]} mean {kind} p inside"] = float(p[:, k][inside].mean()) if inside.any() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows).set_index("structure")


def plot_overlays(images, targets, preds: dict, structures: Sequence[str], idx, title: str = ""):
    """One row per image index: the true contours, then each model's predicted contours (one colour per
    structure). ``preds``: ``{mode: (N, K, H, W) bool}``."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    panels = [("truth", targets > 0.5)] + [(VARIANT_NAMES.get(m, m), p) for m, p in preds.items()]
    fig, ax = plt.subplots(len(idx), len(panels), figsize=(2.35 * len(panels), 2.4 * len(idx)), squeeze=False)
    for r, i in enumerate(idx):
        for c, (name, M) in enumerate(panels):
            ax[r, c].imshow(images[i], cmap="gray")
            for k in range(len(structures)):
                if M[i][k].any():
                    ax[r, c].contour(M[i][k].astype(float), [0.5], colors=[cmap(k)], linewidths=1.2)
            ax[r, c].set_xticks([]); ax[r, c].set_yticks([])
            if r == 0:
                ax[r, c].set_title(name, fontsize=9)
    fig.legend(handles=[plt.Line2D([], [], color=cmap(k), label=n) for k, n in enumerate(structures)],
               loc="lower center", ncol=len(structures))
    fig.suptitle(title, fontsize=10)
    plt.tight_layout(rect=(0, 0.05, 1, 1))
    plt.show()
    return fig


def busiest(targets: np.ndarray, n: int = 3) -> np.ndarray:
    """Indices of the ``n`` test images that show the most structures (stable order)."""
    K = targets.shape[1]
    return np.argsort(-(targets.reshape(len(targets), K, -1).sum(2) > 0).sum(1), kind="stable")[:n]

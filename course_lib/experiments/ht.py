"""Experiment runners of the HT notebook: BUSI task tensors, seeded "build, train, predict" runs, HT's two stages
chained, the multi-seed Tables V/VI, VII and IV analogues with mean ± sd. Used by notebook 09 (§4–§8).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import metrics, runtime, train
from ..metrics import auc_interval  # noqa: F401  (re-exported: notebook 09 calls xht.auc_interval)
from ..data import busi, common
from ..methods.ht import recipe

__all__ = ["BusiTasks", "busi_tasks", "run", "STAGE1_KINDS", "TABLE_METHODS", "ABLATION", "stage1", "seg_scores",
           "auc_interval", "compare", "ablation", "seg_predictor", "data_ratio", "mean_sd", "pm", "differs"]

#: stage-1 variants: name -> (stage1_image_text kind, text_lora)
STAGE1_KINDS = {"ht": ("ht", False), "lora_vt": ("lora", True)}

#: rows of the Tables V/VI analogue: label -> (build_model method, stage-1 variant or None = single-stage)
TABLE_METHODS = {
    "frozen + heads": ("frozen", None),
    "LoRA (V)": ("lora", None),
    "LoRA (V+T), two-stage": ("lora", "lora_vt"),
    "Mona": ("mona", None),
    "HT, single-stage": ("ht", None),
    "HT, two-stage": ("ht", "ht"),
}

#: rows of the Table VII analogue: build_model method -> label (the paper's four + our frequency-dependent filter)
ABLATION = {"mona": "Mona", "ht_ne": "HT (NE only)", "ht_ff": "HT (FF only)", "ht": "HT (full, paper)",
            "ht_global": "HT (full, frequency-dependent filter)"}


@dataclass
class BusiTasks:
    """Preprocessed BUSI tensors for the two tasks of Tables V/VI (segmentation on ``busi_gt``, benign vs
    malignant classification on ``busi_256``) and the sample indices of each split."""

    seg_train_x: torch.Tensor  # (N, 3, S, S) preprocessed
    seg_train_y: torch.Tensor  # (N, S, S) long masks
    seg_test_x: torch.Tensor
    seg_test_y: np.ndarray  # (M, S, S) masks
    seg_test_images: np.ndarray  # (M, S, S) raw images in [0, 1] (for overlays)
    cls_train_x: torch.Tensor
    cls_train_y: torch.Tensor  # (N,) labels
    cls_test_x: torch.Tensor
    cls_test_y: np.ndarray  # (M,) labels
    cls_test_images: np.ndarray  # (M, S, S) raw images (zero-shot evaluation)
    seg_split: tuple[np.ndarray, np.ndarray]
    cls_split: tuple[np.ndarray, np.ndarray]


def _split(samples: list[dict], fractions, seed: int):
    lab = [s["label"] for s in samples]
    return common.split_indices(len(samples), fractions, seed=seed, stratify=lab)


def _tensors(bb, samples: list[dict], idx):
    imgs = common.stack([samples[i] for i in idx], "image")
    return bb.preprocess(imgs), imgs


def busi_tasks(bb, S, seed: int = 0, path=None) -> BusiTasks:
    """Load the BUSI subset the profile section ``S`` allows (``S.real_limit`` images per class, 0 = all) at the
    backbone's image size, benign + malignant, and split it stratified with ``S.real_split`` (seeded)."""
    size = bb.image_size
    limit = S.real_limit or None
    seg_s = busi.load("gt", path=path, image_size=size, classes=("benign", "malignant"), limit=limit)
    cls_s = busi.load("256", path=path, image_size=size, classes=("benign", "malignant"), limit=limit)
    (seg_tr, seg_te), (cls_tr, cls_te) = _split(seg_s, S.real_split, seed), _split(cls_s, S.real_split, seed)
    xs_tr, _ = _tensors(bb, seg_s, seg_tr)
    xs_te, seg_imgs_te = _tensors(bb, seg_s, seg_te)
    xc_tr, _ = _tensors(bb, cls_s, cls_tr)
    xc_te, cls_imgs_te = _tensors(bb, cls_s, cls_te)
    return BusiTasks(
        seg_train_x=xs_tr,
        seg_train_y=torch.as_tensor(common.stack([seg_s[i] for i in seg_tr], "mask")).long(),
        seg_test_x=xs_te,
        seg_test_y=common.stack([seg_s[i] for i in seg_te], "mask"),
        seg_test_images=seg_imgs_te,
        cls_train_x=xc_tr,
        cls_train_y=torch.tensor([cls_s[i]["label"] for i in cls_tr]),
        cls_test_x=xc_te,
        cls_test_y=np.array([cls_s[i]["label"] for i in cls_te]),
        cls_test_images=cls_imgs_te,
        seg_split=(seg_tr, seg_te),
        cls_split=(cls_tr, cls_te),
    )


def run(bb, S, method: str, task: str, X, Y, X_test, seed: int = 0, epochs: int | None = None, init=None, **extra):
    """Seed everything, build ``method`` (:func:`recipe.build_model`, sizes from ``S``; ``init`` = stage-1 adapters
    for a two-stage run), train it with the HT recipe (:func:`recipe.fit_task`) and predict class-1 probabilities
    on ``X_test``.

    Returns ``(model, history, probabilities)``. ``extra`` goes to ``fit_task`` (``steps=``, ``progress=``,
    ``batch_size=`` instead of ``S.batch_size`` ...).
    """
    runtime.seed_everything(seed)
    model = recipe.build_model(bb, method, task, bottleneck=S.bottleneck, d_red=S.d_red, cls_hidden=S.cls_hidden,
                               lora_rank=S.lora_rank, init=init)
    extra.setdefault("desc", f"{method}/{task}")
    batch_size = extra.pop("batch_size", None) or S.batch_size
    hist = recipe.fit_task(model, X, Y, epochs=epochs or S.epochs, batch_size=batch_size, lr=S.lr,
                           weight_decay=S.weight_decay, betas=S.betas, seed=seed, **extra)
    return model, hist, recipe.predict_proba(model, X_test)


def stage1(bb, S, variant: str, images, tokens, seed: int = 0):
    """HT's first stage on a deep copy of ``bb.model`` (``bb`` is left unchanged): ``variant`` in :data:`STAGE1_KINDS`
    (``"ht"``: HT adapters in the vision tower; ``"lora_vt"``: LoRA in the vision and text towers), trained with
    InfoNCE on preprocessed ``images`` and tokenised reports for ``S.stage1_steps`` steps, seeded.

    Returns ``(state, history, clip)``: the vision tower's adaptation tensors (``build_model(init=state)`` starts
    stage 2 from them), the training history and the adapted CLIP copy (for zero-shot evaluation).
    """
    if variant not in STAGE1_KINDS:
        raise ValueError(f"unknown stage-1 variant {variant!r}; choose one of {sorted(STAGE1_KINDS)}")
    kind, text_lora = STAGE1_KINDS[variant]
    runtime.seed_everything(seed)  # adapter initialisation draws from the global RNG
    clip = copy.deepcopy(bb.model)
    hist = recipe.stage1_image_text(clip, images, tokens, steps=S.stage1_steps, batch_size=min(32, len(images)),
                                    lr=S.lr, weight_decay=S.weight_decay, betas=S.betas, kind=kind,
                                    bottleneck=S.bottleneck, lora_rank=S.lora_rank, text_lora=text_lora, seed=seed,
                                    progress=False)
    return recipe.adapter_state(clip.visual), hist, clip


def seg_scores(pred, target) -> dict[str, float]:
    """Segmentation metrics with the empty predictions made visible (an empty prediction costs the image diagonal
    in HD95/ASD and dominates their mean): ``dice``, ``iou``, ``hd95``/``asd`` (one mask empty -> image diagonal,
    as :func:`course_lib.metrics.segmentation`), ``empty`` (number of images with an empty prediction while the
    lesion is not empty) and ``hd95_nonempty``/``asd_nonempty`` (means over the images where both masks are
    non-empty; NaN when there is none). Surface distances are computed once (MONAI) and reused for both."""
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    diag = math.hypot(*pred.shape[-2:])
    one_empty = pred.any((1, 2)) ^ target.any((1, 2))
    out = {"dice": float(metrics.dice(pred, target).mean()), "iou": float(metrics.iou(pred, target).mean())}
    for k, fn in (("hd95", metrics.hd95), ("asd", metrics.asd)):
        v = fn(pred, target, one_empty="nan")
        out[k] = float(np.where(one_empty, diag, v).mean())
        out[f"{k}_nonempty"] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
    out["empty"] = int((~pred.any((1, 2)) & target.any((1, 2))).sum())
    return out


def compare(bb, S, tasks: BusiTasks, pair_images, pair_tokens, seeds=None, methods=None, progress: bool = True,
            keep_models=()):
    """Tables V/VI analogue: every method of ``methods`` (default :data:`TABLE_METHODS`) on BUSI segmentation and
    classification, for every seed of ``seeds`` (default ``S.seeds``). Two-stage rows run stage 1
    (:func:`stage1`) on the image–report pairs and start stage 2 from its adapters; stage 1 uses the same seed when
    it is in ``S.stage1_seeds`` (one stage 1 per seed), else the first of them (one stage 1 shared by all seeds).

    Returns ``(runs, extras)``: a long ``pandas.DataFrame`` (one row per method, task and seed: trainable parameters,
    seconds per step and the metrics of :func:`seg_scores` / ``metrics.classification``) and a dict with the
    first seed's segmentation masks (``seg_pred``) and class probabilities (``cls_prob``), the stage-1 histories
    (``stage1``, keyed by ``(variant, stage-1 seed)``), the first stage-1 CLIP copy of each variant (``stage1_clip``)
    and the trained segmentation models of the methods named in ``keep_models`` (``seg_models``, keyed by
    ``(method, seed)``: external validation scores them without retraining).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    seeds = tuple(S.seeds if seeds is None else seeds)
    stage1_seeds = tuple(getattr(S, "stage1_seeds", seeds))
    methods = dict(TABLE_METHODS if methods is None else methods)
    rows, extras = [], {"seg_pred": {}, "cls_prob": {}, "stage1": {}, "stage1_clip": {}, "seg_models": {}}
    unknown = [m for m in keep_models if m not in methods]
    if unknown:
        raise ValueError(f"keep_models {unknown} are not compared methods; choose from {list(methods)}")
    jobs = [(s, label) for s in seeds for label in methods]
    states: dict = {}
    for seed, label in tqdm(jobs, desc="Tables V/VI (methods x seeds)", disable=not progress):
        method, variant = methods[label]
        init = None
        if variant is not None:
            s1 = seed if seed in stage1_seeds else stage1_seeds[0]  # shared stage 1 when the profile says so
            if (variant, s1) not in states:
                st, hist, clip = stage1(bb, S, variant, pair_images, pair_tokens, seed=s1)
                states[(variant, s1)] = st
                extras["stage1"][(variant, s1)] = hist
                if variant not in extras["stage1_clip"]:
                    extras["stage1_clip"][variant] = clip  # the first stage-1 CLIP of each variant (zero-shot in §7)
            init = states[(variant, s1)]
        for task, X, Y, X_te, Y_te in (("seg", tasks.seg_train_x, tasks.seg_train_y, tasks.seg_test_x, tasks.seg_test_y),
                                       ("cls", tasks.cls_train_x, tasks.cls_train_y, tasks.cls_test_x, tasks.cls_test_y)):
            model, hist, prob = run(bb, S, method, task, X, Y, X_te, seed=seed, init=init, progress=False)
            row = {"method": label, "task": task, "seed": seed,
                   "trainable params": train.count_parameters(model, trainable=True),
                   "s/step": hist["seconds_per_step"]}
            if task == "seg":
                row.update(seg_scores(prob > 0.5, Y_te))
            else:
                row.update(metrics.classification(Y_te, prob))
            if seed == seeds[0]:
                extras["seg_pred" if task == "seg" else "cls_prob"][label] = (prob > 0.5) if task == "seg" else prob
            if task == "seg" and label in keep_models:
                extras["seg_models"][(label, seed)] = model
            rows.append(row)
    return pd.DataFrame(rows), extras


def ablation(bb, S, X, Y, X_test, Y_test, variants=None, seeds=None, epochs=None, progress: bool = True):
    """Table VII analogue: every variant of ``variants`` (default: the methods of ``S.ablation_variants`` labelled by
    :data:`ABLATION`, or all of :data:`ABLATION`) trained on ``X, Y`` for ``epochs`` (default ``S.ablation_epochs``)
    at batch ``S.ablation_batch_size`` (default ``S.batch_size``) with every seed of ``seeds`` (default ``S.seeds``),
    scored on ``X_test, Y_test`` with :func:`seg_scores` (empty predictions counted, boundary metrics also over the
    non-empty ones). For variants with the noise estimator, ``alpha_k3/k5/k7`` is the mean branch weight α (eq. 3)
    over the adapters and the images of the last forward pass (the last predicted test batch).

    Returns ``(runs, models)``: a long ``pandas.DataFrame`` (variant, method, seed, trainable params, metrics) and
    the trained models keyed by ``(method, seed)`` (external validation reuses them without retraining).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if variants is None:
        chosen = getattr(S, "ablation_variants", None) or tuple(ABLATION)
        unknown = [m for m in chosen if m not in ABLATION]
        if unknown:
            raise ValueError(f"ablation_variants {unknown} unknown; choose from {list(ABLATION)}")
        variants = {m: ABLATION[m] for m in chosen}
    variants = dict(variants)
    seeds = tuple(S.seeds if seeds is None else seeds)
    batch = getattr(S, "ablation_batch_size", None) or S.batch_size
    rows, models = [], {}
    for seed, m in tqdm([(s, m) for s in seeds for m in variants], desc="Table VII (variants x seeds)", disable=not progress):
        model, _, prob = run(bb, S, m, "seg", X, Y, X_test, seed=seed, epochs=epochs or S.ablation_epochs,
                             batch_size=batch, progress=False)
        row = {"variant": variants[m], "method": m, "seed": seed,
               "trainable params": train.count_parameters(model, trainable=True), **seg_scores(prob > 0.5, Y_test)}
        alphas = [a.last_alpha for a in recipe.adapters_of(model.visual) if getattr(a, "ne", None) is not None]
        if alphas:
            mean_alpha = torch.cat(alphas).mean(0).tolist()
            row.update({f"alpha_k{k}": v for k, v in zip(recipe.adapters_of(model.visual)[0].kernels, mean_alpha)})
        rows.append(row)
        models[(m, seed)] = model
    return pd.DataFrame(rows), models


def seg_predictor(bb, model, threshold: float = 0.5):
    """``images (N, H, W) in [0, 1] -> binary masks (N, H, W)`` for a trained segmentation model: the backbone's
    preprocessing, :func:`recipe.predict_proba`, ``> threshold`` (what :mod:`course_lib.experiments.external`
    calls ``predict``)."""
    def predict(images):
        return recipe.predict_proba(model, bb.preprocess(np.asarray(images, np.float32))) > threshold
    return predict


def _subset(n: int, ratio: float, seed: int, labels=None) -> torch.Tensor:
    """Seeded random ``ratio`` of ``range(n)`` (at least 2); with ``labels`` the same fraction of every class
    (at least one each), so a small classification subset keeps both classes."""
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        return torch.randperm(n, generator=g)[:max(2, int(round(ratio * n)))]
    labels = torch.as_tensor(labels)
    parts = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        parts.append(idx[torch.randperm(len(idx), generator=g)[:max(1, int(round(ratio * len(idx))))]])
    return torch.sort(torch.cat(parts)).values


def data_ratio(bb, S, tasks: BusiTasks, methods=("frozen", "ht"), ratios=None, seeds=None, task_names=("seg", "cls"),
               progress: bool = True):
    """Table IV analogue on BUSI segmentation and classification: train on a seeded random fraction ``r`` of the
    training split (stratified by class for classification) for every ratio below 1 (ratio 1 is the full-data run
    of :func:`compare`), with the **same number of updates** as a full-data run (``S.epochs`` epochs of the full
    split), so only the amount of labelled data changes and small subsets are trained to convergence.
    Returns a long ``pandas.DataFrame`` (task, method, ratio, n_train, seed, steps and :func:`seg_scores` for
    segmentation / ``metrics.classification`` for classification)."""
    import pandas as pd
    from tqdm.auto import tqdm

    ratios = tuple(S.ratios if ratios is None else ratios)
    seeds = tuple(S.seeds if seeds is None else seeds)
    data = {"seg": (tasks.seg_train_x, tasks.seg_train_y, tasks.seg_test_x, tasks.seg_test_y),
            "cls": (tasks.cls_train_x, tasks.cls_train_y, tasks.cls_test_x, tasks.cls_test_y)}
    unknown = [t for t in task_names if t not in data]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; use 'seg' and/or 'cls'")
    rows = []
    jobs = [(t, r, m, s) for t in task_names for r in ratios if r < 1 for m in methods for s in seeds]
    for t, r, m, s in tqdm(jobs, desc="Table IV (task x ratio x method x seed)", disable=not progress):
        X, Y, X_te, Y_te = data[t]
        steps = S.epochs * math.ceil(len(X) / min(S.batch_size, len(X)))
        idx = _subset(len(X), r, s, labels=Y if t == "cls" else None)
        _, _, prob = run(bb, S, m, t, X[idx], Y[idx], X_te, seed=s, steps=steps, progress=False)
        scores = seg_scores(prob > 0.5, Y_te) if t == "seg" else metrics.classification(Y_te, prob)
        rows.append({"task": t, "method": m, "ratio": r, "n_train": len(idx), "seed": s, "steps": steps, **scores})
    if not rows:
        return pd.DataFrame(columns=["task", "method", "ratio", "n_train", "seed", "steps"])
    return pd.DataFrame(rows)


def mean_sd(df, by, cols, fmt: str = "{:.3f} ± {:.3f}"):
    """``(text, mean, sd)``: per-group mean and sample sd (ddof=1, over seeds) of ``cols``; ``text`` holds
    ``"mean ± sd"`` strings for display, ``mean``/``sd`` the numbers (for prose generated from them)."""
    g = df.groupby(by, sort=False)[list(cols)]
    mean, sd = g.mean(), g.std(ddof=1)
    text = mean.copy().astype(object)
    for c in cols:
        text[c] = [fmt.format(m, d) for m, d in zip(mean[c], sd[c])]
    return text, mean, sd


def pm(mean, sd, row, col, fmt: str = "{:.3f}") -> str:
    """``"mean ± sd"`` of one cell of :func:`mean_sd`'s frames (for generated prose)."""
    return f"{fmt.format(mean.loc[row, col])} ± {fmt.format(sd.loc[row, col])}"


def differs(mean, sd, a, b, col) -> bool:
    """The notebook's rule for calling a difference between rows ``a`` and ``b`` real at this scale: the gap of the
    seed means exceeds the two seed sds together, ``|mean_a − mean_b| > sd_a + sd_b``; otherwise it is a tie."""
    return bool(abs(mean.loc[a, col] - mean.loc[b, col]) > sd.loc[a, col] + sd.loc[b, col])

"""Few-shot CLIP adaptation on cached features: shared checks, a small trainer, and the
benchmark runner used by notebooks 03 (prompt learning) and 04 (probes, adapters, transduction).

Every method of module M3 except CoOp/CoCoOp only needs *image features* of a frozen encoder and
the zero-shot *text weights* (one L2-normalised text embedding per class). Both are computed
once (``course_lib.models`` feature cache) and the methods then train in milliseconds: that is
the point of the "cached vs re-encoding" benchmark in ``benchmarks/bench_feature_cache.py``.

Protocol (as in CoOp / Tip-Adapter / LP++): for each number of shots ``k`` and each seed, draw
exactly ``k`` labelled images per class from the training pool with
:func:`course_lib.data.common.few_shot_indices`, fit the method on them, evaluate on the fixed
test split; report mean +- std over seeds.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib import runtime
from course_lib.train import optimizer_step

runtime.register_section(
    "few_shot",
    quick=dict(
        epochs=80, lr=5e-3, batch_size=32, lpp_steps=100, clap_steps=60, transclip_iters=10,
        tip_alphas=(0.1, 0.5, 1.0, 2.0, 4.0), tip_betas=(1.0, 3.0, 5.5, 8.0),
        bench_epochs=5, bench_n=64,
    ),
    full=dict(
        epochs=300, lr=5e-3, batch_size=32, lpp_steps=300, clap_steps=300, transclip_iters=10,
        tip_alphas=(0.1, 0.5, 1.0, 2.0, 4.0, 8.0), tip_betas=(1.0, 3.0, 5.5, 8.0, 12.0),
        bench_epochs=20, bench_n=512,
    ),
)

__all__ = [
    "check_features",
    "check_support",
    "train_on_features",
    "count_trainable",
    "zero_shot_logits",
    "run_benchmark",
    "summarise",
    "single_thread",
]


@contextmanager
def single_thread():
    """Run a block with one torch thread and one BLAS/OpenMP thread, then restore.

    The few-shot problems here are tiny (tens of samples x a few hundred features); on a busy
    2-core machine multi-threaded BLAS/torch spends far more time synchronising than computing
    (we measured 10-60x slow-downs), so every few-shot fit runs single-threaded.
    """
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(n)


def count_trainable(module: nn.Module) -> int:
    """Number of scalar parameters with ``requires_grad``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check_features(x, name: str = "features", dim: int | None = None) -> torch.Tensor:
    """A float 2-D tensor ``(N, D)``; raises a clear error otherwise."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(
            f"{name} must be a 2-D array (num_samples, feature_dim), got {shape}; "
            f"encode images with bb.encode_image(...) or load them from the feature cache"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows); pass at least one sample")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(
            f"{name} have width {x.shape[1]} but the text weights have width {dim}; "
            f"use image and text features from the same backbone"
        )
    return x.float()


def check_support(x, y, n_classes: int | None = None, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a labelled support set: features ``(N, D)``, integer labels ``(N,)``."""
    if isinstance(x, (list, tuple)) and len(x) == 0:
        raise ValueError("the support set is empty; sample k shots per class with few_shot_indices(labels, k)")
    x = check_features(x, "support features", dim)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long).to(x.device)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"support labels must be a 1-D array with one label per support feature; got shape "
            f"{tuple(y.shape)} for {len(x)} features"
        )
    if y.min() < 0 or (n_classes is not None and y.max() >= n_classes):
        raise ValueError(
            f"support labels must be integers in 0..{(n_classes or 0) - 1}, got {sorted(set(y.tolist()))}; "
            f"map class names to indices of the text weights"
        )
    if n_classes is not None and len(torch.unique(y)) < n_classes:
        missing = sorted(set(range(n_classes)) - set(y.tolist()))
        raise ValueError(
            f"the support set has no sample of class(es) {missing}; every class needs at least one shot "
            f"(use few_shot_indices(labels, k), which draws exactly k per class)"
        )
    return x, y


def check_text_weights(t) -> torch.Tensor:
    t = check_features(t, "text weights")
    if t.shape[0] < 2:
        raise ValueError(
            f"text weights must have one row per class (>= 2 classes), got {t.shape[0]}; "
            f"build them with zero-shot class prompts"
        )
    return F.normalize(t, dim=-1)


def zero_shot_logits(features: torch.Tensor, text_weights: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """CLIP zero-shot logits ``logit_scale * cos(f, t_k)`` (CLIP, Radford et al. 2021, Sec. 3.1.2)."""
    t = check_text_weights(text_weights)
    f = F.normalize(check_features(features, "features", t.shape[1]), dim=-1)
    return logit_scale * f @ t.to(f.device).t()


def train_on_features(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    desc: str = "train",
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """Cross-entropy training of ``model(features) -> logits`` with AdamW + cosine schedule.

    ``encode`` (optional) maps each mini-batch of ``x`` to features first: passing the frozen
    image encoder and raw images here is the "re-encode every epoch" baseline of the speed
    benchmark; the default trains directly on cached features.
    Returns the mean loss per epoch.
    """
    from tqdm.auto import tqdm

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameter; nothing to train")
    device = params[0].device
    x, y = x.to(device), torch.as_tensor(y, dtype=torch.long, device=device)
    n = len(y)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    scaler = runtime.grad_scaler(device)
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        perm = torch.randperm(n, generator=g).to(device)
        tot = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            xb = x[idx]
            with runtime.autocast(device):
                if encode is not None:
                    with torch.no_grad():
                        xb = encode(xb)
                loss = F.cross_entropy(model(xb.float()), y[idx])
            optimizer_step(loss, opt, scaler, sched)
            tot += float(loss.detach()) * len(idx)
        losses.append(tot / n)
    model.eval()
    return losses


# --------------------------------------------------------------------------- benchmark runner
def _metrics(y_true: np.ndarray, prob: np.ndarray) -> dict:
    """Accuracy and AUC (binary: score of class 1; multi-class: one-vs-rest macro)."""
    from sklearn.metrics import roc_auc_score

    pred = prob.argmax(1)
    out = {"accuracy": float((pred == y_true).mean())}
    try:
        if prob.shape[1] == 2:
            out["auc"] = float(roc_auc_score(y_true, prob[:, 1]))
        else:
            out["auc"] = float(roc_auc_score(y_true, prob, multi_class="ovr"))
    except ValueError:
        out["auc"] = float("nan")
    out["balanced_accuracy"] = float(np.mean([(pred[y_true == c] == c).mean() for c in np.unique(y_true)]))
    return out


def default_methods(P=None, logit_scale: float = 100.0) -> dict[str, Callable]:
    """The feature-space methods of notebook 04, each ``fn(xs, ys, xq, T, seed) -> (probs, n_params)``.

    ``xs, ys``: support features/labels; ``xq``: query (test) features; ``T``: text weights.
    """
    from course_lib.methods import clip_adapter, linear_probe, tip_adapter, transclip

    P = P or runtime.get_profile()
    S = P.section("few_shot")
    A = P.section("clip_adapter")

    def zs(xs, ys, xq, T, seed):
        return zero_shot_logits(xq, T, logit_scale).softmax(-1), 0

    def lp(xs, ys, xq, T, seed):
        m = linear_probe.LinearProbe(seed=seed).fit(xs, ys)
        return torch.from_numpy(m.predict_proba(xq)), m.n_trainable

    def lpp(xs, ys, xq, T, seed):
        m = linear_probe.TextInitProbe(T)
        m.fit(xs, ys, steps=S.lpp_steps)
        return m(xq).softmax(-1).detach(), count_trainable(m)

    def clap(xs, ys, xq, T, seed):
        m = linear_probe.ClapProbe(T, logit_scale=logit_scale)
        m.fit(xs, ys, steps=S.clap_steps)
        return m(xq).softmax(-1).detach(), count_trainable(m)

    def adapter(xs, ys, xq, T, seed):
        torch.manual_seed(seed)
        m = clip_adapter.CLIPAdapter(T, reduction=A.reduction, ratio=A.ratio, logit_scale=logit_scale)
        train_on_features(m, xs, ys, epochs=S.epochs, lr=S.lr, batch_size=S.batch_size, seed=seed)
        with torch.no_grad():
            return m(xq).softmax(-1), count_trainable(m)

    def tip(xs, ys, xq, T, seed):
        m = tip_adapter.TipAdapter(T, xs, ys, logit_scale=logit_scale)
        m.search_hparams(xs, ys, S.tip_alphas, S.tip_betas, leave_one_out=True)
        with torch.no_grad():
            return m(xq).softmax(-1), 0

    def tipf(xs, ys, xq, T, seed):
        m = tip_adapter.TipAdapter(T, xs, ys, logit_scale=logit_scale, finetune=True)
        m.search_hparams(xs, ys, S.tip_alphas, S.tip_betas, leave_one_out=True)
        train_on_features(m, xs, ys, epochs=max(S.epochs // 3, 1), lr=S.lr, batch_size=S.batch_size, seed=seed)
        with torch.no_grad():
            return m(xq).softmax(-1), count_trainable(m)

    def trans(xs, ys, xq, T, seed):
        z = transclip.transclip(xq, T, support=xs, support_labels=ys, logit_scale=logit_scale, iters=S.transclip_iters)
        return z, 0

    return {
        "zero-shot": zs,
        "linear probe": lp,
        "LP++-style": lpp,
        "CLAP-style LP": clap,
        "CLIP-Adapter": adapter,
        "Tip-Adapter": tip,
        "Tip-Adapter-F": tipf,
        "TransCLIP-style": trans,
    }


def run_benchmark(
    pool_x: torch.Tensor,
    pool_y: Sequence[int],
    test_x: torch.Tensor,
    test_y: Sequence[int],
    text_weights: torch.Tensor,
    *,
    shots: Sequence[int],
    seeds: Sequence[int],
    methods: dict[str, Callable] | None = None,
    dataset: str = "",
    progress: bool = True,
):
    """Run every method for every (shots, seed); returns a long ``pandas.DataFrame`` with
    columns dataset, method, shots, seed, accuracy, balanced_accuracy, auc, params, seconds."""
    import pandas as pd
    from tqdm.auto import tqdm

    from course_lib.data.common import few_shot_indices

    T = check_text_weights(text_weights)
    pool_x = check_features(pool_x, "pool features", T.shape[1])
    test_x = check_features(test_x, "test features", T.shape[1])
    pool_y, test_y = np.asarray(pool_y), np.asarray(test_y)
    methods = methods or default_methods()
    rows = []
    jobs = [(k, s) for k in shots for s in seeds]
    for k, s in tqdm(jobs, desc=f"few-shot {dataset}".strip(), disable=not progress):
        idx = few_shot_indices(pool_y, k, seed=s)
        xs, ys = pool_x[idx], torch.as_tensor(pool_y[idx])
        for name, fn in methods.items():
            runtime.seed_everything(s)
            with single_thread():
                t0 = time.perf_counter()
                probs, n_params = fn(xs, ys, test_x, T, s)
                dt = time.perf_counter() - t0
            m = _metrics(test_y, np.asarray(probs, dtype=np.float64))
            rows.append(dict(dataset=dataset, method=name, shots=k, seed=s, **m, params=int(n_params), seconds=dt))
    return pd.DataFrame(rows)


def summarise(df, metric: str = "accuracy"):
    """Mean +- std over seeds: a ``method x shots`` table of strings like ``"71.3 ± 2.1"`` (percent)."""
    g = df.groupby(["method", "shots"], sort=False)[metric]
    mean, std = g.mean().unstack(), g.std(ddof=0).unstack()
    order = list(dict.fromkeys(df["method"]))
    table = (100 * mean).round(1).astype(str) + " ± " + (100 * std).round(1).astype(str)
    return table.where(mean.notna(), "–").loc[order]


# --------------------------------------------------------------------------- tasks
#: class names as the text encoder sees them: with CoOp's ``ctx_init = "an ultrasound image of a"``
#: the prompt "an ultrasound image of a benign lesion." is exactly ``zero_shot.SINGLE_TEMPLATE``.
PROMPT_CLASSNAMES = ("benign lesion", "malignant lesion")
COOP_CTX_INIT = "an ultrasound image of a"


def text_weights(bb, kind: str = "ensemble") -> torch.Tensor:
    """Zero-shot class weights ``(2, D)`` for benign/malignant: the (normalised) mean of the
    prompt embeddings of each class from :func:`course_lib.models.zero_shot.build_prompts`."""
    from course_lib.models import zero_shot

    feats = zero_shot.text_features(bb, zero_shot.build_prompts(kind))
    return F.normalize(torch.stack([F.normalize(t.mean(0), dim=-1) for t in feats]), dim=-1)


def load_task(source: str, bb, P=None, *, centers=None, test_centers=None, seed: int = 0, progress: bool = False) -> dict:
    """Benign-vs-malignant few-shot task with cached features.

    ``source="sonosynth"``: a training pool of ``P.n_train`` and a test split of ``P.n_test``
    SonoSynth lesions (optionally restricted to ``centers`` / ``test_centers`` for domain shift).
    ``source="busi"``: real BUSI (``busi_256``), benign vs malignant, at most ``P.max_real``
    images per class, split 50/50 (stratified, seeded) into pool and test.

    Returns ``dict(pool_x, pool_y, test_x, test_y, pool_images, test_images, info)`` with
    L2-normalised features from :func:`course_lib.models.feature_cache.cached_image_features`.
    """
    from course_lib.data.common import split_indices
    from course_lib.models.feature_cache import cached_image_features

    P = P or runtime.get_profile()
    if source == "sonosynth":
        from course_lib.data import sonosynth as ss

        kw = dict(seed=seed, image_size=P.clip_image_size, anatomies=("breast", "thyroid"))
        tr = ss.generate_batch(P.n_train, centers=centers, **kw)
        te = ss.generate_batch(P.n_test, start=ss.SPLIT_OFFSETS["test"], centers=test_centers or centers, **kw)
        tag = f"sonosynth-{''.join(centers or 'ABCD')}"
        pool_img, pool_y = tr["image"], np.asarray(tr["label"])
        test_img, test_y = te["image"], np.asarray(te["label"])
        test_tag = f"sonosynth-{''.join(test_centers or centers or 'ABCD')}"
        info = f"SonoSynth breast+thyroid, pool {len(pool_y)} (centers {centers or 'all'}), test {len(test_y)} (centers {test_centers or centers or 'all'})"
    elif source == "busi":
        from course_lib.data import busi

        limit = P.max_real or None
        samples = busi.load("256", image_size=P.clip_image_size, classes=("benign", "malignant"), limit=limit, seed=seed)
        y = np.array([s["label"] for s in samples])
        imgs = np.stack([s["image"] for s in samples])
        pool_i, test_i = split_indices(len(y), (0.5, 0.5), seed=seed, stratify=y)
        pool_img, pool_y, test_img, test_y = imgs[pool_i], y[pool_i], imgs[test_i], y[test_i]
        tag = test_tag = "busi_256"
        info = f"BUSI busi_256 benign/malignant, pool {len(pool_y)} {np.bincount(pool_y).tolist()}, test {len(test_y)} {np.bincount(test_y).tolist()}"
    else:
        raise ValueError(f"unknown few-shot source {source!r}; choose 'sonosynth' or 'busi'")
    px = cached_image_features(bb, pool_img, dataset=tag, split="pool", seed=seed, progress=progress)
    tx = cached_image_features(bb, test_img, dataset=test_tag, split="test", seed=seed, progress=progress)
    return dict(pool_x=px, pool_y=pool_y, test_x=tx, test_y=test_y, pool_images=pool_img, test_images=test_img, info=info)


def coop_method(bb, *, steps: int, lr: float = 2e-3, batch_size: int = 32, ctx_init: str | None = COOP_CTX_INIT,
                n_ctx: int = 4, cocoop: bool = False, classnames=PROMPT_CLASSNAMES, keep: list | None = None):
    """A runner method (see :func:`default_methods`) that trains CoOp (or CoCoOp) on the support
    features with ``bb``'s frozen text tower. ``keep``: a list that receives each trained model."""
    from course_lib.methods import coop

    def fn(xs, ys, xq, T, seed):
        torch.manual_seed(seed)
        cls = coop.CoCoOp if cocoop else coop.CoOp
        m = cls(bb.model, bb.tokenize, classnames, ctx_init=ctx_init, n_ctx=n_ctx, seed=seed)
        coop.train_prompt_learner(m, xs.to(bb.device), ys, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
        if keep is not None:
            keep.append(m)
        with torch.no_grad():
            probs = torch.cat([m(xq[i : i + 256].to(bb.device)).float().softmax(-1).cpu() for i in range(0, len(xq), 256)])
        return probs, count_trainable(m)

    return fn

"""The few-shot benchmark runner: every feature-space CLIP adaptation method for every (shots, seed),
on cached features, with the tasks it runs on; used by notebooks 03 (prompt learning) and 04.

Every method of module M3 except CoOp/CoCoOp only needs *image features* of a frozen encoder and
the zero-shot *text weights* (one L2-normalised text embedding per class). Both are computed
once (``course_lib.models`` feature cache) and the methods then train in milliseconds: that is
the point of the "cached vs re-encoding" measurement (:func:`course_lib.models.feature_cache.measure_speedup`).

Protocol (as in CoOp / Tip-Adapter / LP++): for each number of shots ``k`` and each seed, draw
exactly ``k`` labelled images per class from the training pool with
:func:`course_lib.data.common.few_shot_indices`, fit the method on them, evaluate on the fixed
test split; report mean +- std over seeds.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from course_lib import metrics, runtime
from course_lib.methods.clip_fewshot import clip_adapter, coop, linear_probe, tip_adapter, transclip
from course_lib.methods.clip_fewshot.checks import check_features, check_text_weights, single_thread
from course_lib.methods.clip_fewshot.trainer import train_on_features
from course_lib.methods.clip_fewshot.zero_shot_head import (  # noqa: F401  (re-exported for notebooks)
    COOP_CTX_INIT,
    PROMPT_CLASSNAMES,
    text_weights,
    zero_shot_logits,
)
from course_lib.train import count_parameters

runtime.register_section(
    "few_shot",
    quick=dict(
        epochs=80, lr=5e-3, batch_size=32, lpp_steps=100, clap_steps=60, transclip_iters=10,
        tip_alphas=(0.0, 0.1, 0.5, 1.0, 2.0, 4.0), tip_betas=(1.0, 3.0, 5.5, 8.0),
        bench_epochs=5, bench_n=64, tip_views=4,
    ),
    full=dict(
        epochs=300, lr=5e-3, batch_size=32, lpp_steps=300, clap_steps=300, transclip_iters=10,
        tip_alphas=(0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0), tip_betas=(1.0, 3.0, 5.5, 8.0, 12.0),
        bench_epochs=20, bench_n=512, tip_views=10,
    ),
)

__all__ = [
    "default_methods",
    "run_benchmark",
    "summarise",
    "load_task",
    "coop_method",
    "score_predictions",
    "headline_table",
    "description_zero_shot",
    "fixed_zero_shot",
    "wilson_interval",
]


# --------------------------------------------------------------------------- benchmark runner
def score_predictions(y_true: np.ndarray, prob: np.ndarray, intervals: bool = True) -> dict:
    """Accuracy, balanced accuracy (mean per-class recall) and AUC (binary: score of class 1;
    multi-class: one-vs-rest macro), the majority-class rate of ``y_true`` (what always predicting the
    most frequent class scores), and with ``intervals`` 95 % intervals: Wilson for the accuracy
    (``accuracy_lo/hi``), percentile bootstrap for a binary AUC (``auc_lo/hi``)."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    pred = prob.argmax(1)
    n_ok = int((pred == y_true).sum())
    out = {"accuracy": n_ok / len(y_true)}
    try:
        if prob.shape[1] == 2:
            out["auc"] = float(roc_auc_score(y_true, prob[:, 1]))
        else:
            out["auc"] = float(roc_auc_score(y_true, prob, multi_class="ovr"))
    except ValueError:
        out["auc"] = float("nan")
    out["balanced_accuracy"] = float(np.mean([(pred[y_true == c] == c).mean() for c in np.unique(y_true)]))
    out["majority_rate"] = float(np.bincount(y_true).max() / len(y_true))
    if intervals:
        out["accuracy_lo"], out["accuracy_hi"] = wilson_interval(n_ok, len(y_true))
        if prob.shape[1] == 2 and len(np.unique(y_true)) == 2:
            out["auc_lo"], out["auc_hi"] = metrics.auc_interval(y_true, prob[:, 1], n_boot=200)
        else:
            out["auc_lo"] = out["auc_hi"] = float("nan")
    return out


def default_methods(P=None, logit_scale: float = 100.0, pool_views: torch.Tensor | None = None) -> dict[str, Callable]:
    """The feature-space methods of notebook 04, each ``fn(xs, ys, xq, T, seed) -> (probs, n_params)``.

    ``xs, ys``: support features/labels; ``xq``: query (test) features; ``T``: text weights.
    ``pool_views`` (``(V, N_pool, D)``, from :func:`augmented_views`): features of ``V`` augmented views of
    every pool image; when given, Tip-Adapter-F follows the paper's recipe (see :func:`fit_tip_adapter_f`)
    and receives the support indices (``fn.wants_index = True``).
    """
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
        return m(xq).softmax(-1).detach(), count_parameters(m, trainable=True)

    def clap(xs, ys, xq, T, seed):
        m = linear_probe.ClapProbe(T, logit_scale=logit_scale)
        m.fit(xs, ys, steps=S.clap_steps)
        return m(xq).softmax(-1).detach(), count_parameters(m, trainable=True)

    def adapter(xs, ys, xq, T, seed):
        torch.manual_seed(seed)
        m = clip_adapter.CLIPAdapter(T, reduction=A.reduction, ratio=A.ratio, logit_scale=logit_scale)
        train_on_features(m, xs, ys, epochs=S.epochs, lr=S.lr, batch_size=S.batch_size, seed=seed)
        with torch.no_grad():
            return m(xq).softmax(-1), count_parameters(m, trainable=True)

    def tip(xs, ys, xq, T, seed):
        m = tip_adapter.TipAdapter(T, xs, ys, logit_scale=logit_scale)
        m.search_hparams(xs, ys, S.tip_alphas, S.tip_betas, leave_one_out=True)
        with torch.no_grad():
            return m(xq).softmax(-1), 0

    def tipf(xs, ys, xq, T, seed, index=None):
        views = pool_views[:, index] if (pool_views is not None and index is not None) else None
        m = fit_tip_adapter_f(T, xs, ys, views=views, logit_scale=logit_scale, seed=seed, P=P)
        with torch.no_grad():
            return m(xq).softmax(-1), count_parameters(m, trainable=True)

    tipf.wants_index = pool_views is not None

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
                extra = {"index": torch.as_tensor(idx)} if getattr(fn, "wants_index", False) else {}
                probs, n_params = fn(xs, ys, test_x, T, s, **extra)
                dt = time.perf_counter() - t0
            m = score_predictions(test_y, np.asarray(probs, dtype=np.float64))
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
def load_task(source: str, bb, P=None, *, centers=None, test_centers=None, seed: int = 0, progress: bool = False,
              aug_views: int = 0) -> dict:
    """Benign-vs-malignant few-shot task with cached features.

    ``source="sonosynth"``: a training pool of ``P.n_train`` and a test split of ``P.n_test``
    SonoSynth lesions (optionally restricted to ``centers`` / ``test_centers`` for domain shift).
    ``source="busi"``: real BUSI (``busi_256``), benign vs malignant, at most ``P.max_real``
    images per class, split 50/50 (stratified, seeded) into pool and test.

    Returns ``dict(pool_x, pool_y, test_x, test_y, pool_images, test_images, info, test_anatomy)`` with
    L2-normalised features from :func:`course_lib.models.feature_cache.cached_image_features`; with
    ``aug_views > 0`` also ``pool_views`` ``(aug_views, N_pool, D)``, features of augmented views (Tip-Adapter-F).
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
        test_anatomy = list(te["anatomy"])
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
        test_anatomy = ["breast"] * len(test_y)
        info = f"BUSI busi_256 benign/malignant, pool {len(pool_y)} {np.bincount(pool_y).tolist()}, test {len(test_y)} {np.bincount(test_y).tolist()}"
    else:
        raise ValueError(f"unknown few-shot source {source!r}; choose 'sonosynth' or 'busi'")
    px = cached_image_features(bb, pool_img, dataset=tag, split="pool", seed=seed, progress=progress)
    tx = cached_image_features(bb, test_img, dataset=test_tag, split="test", seed=seed, progress=progress)
    out = dict(pool_x=px, pool_y=pool_y, test_x=tx, test_y=test_y, pool_images=pool_img, test_images=test_img, info=info,
               test_anatomy=test_anatomy)
    if aug_views:
        out["pool_views"] = augmented_views(bb, pool_img, n_views=aug_views, seed=seed, dataset=tag, split="pool",
                                            progress=progress)
    return out


def coop_method(bb, *, steps: int, lr: float = 2e-3, batch_size: int = 32, ctx_init: str | None = COOP_CTX_INIT,
                n_ctx: int | None = None, cocoop: bool = False, classnames=PROMPT_CLASSNAMES, keep: list | None = None):
    """A runner method (see :func:`default_methods`) that trains CoOp (or CoCoOp) on the support
    features with ``bb``'s frozen text tower. ``keep``: a list that receives each trained model.

    ``n_ctx`` (number of context vectors M) is only used when ``ctx_init`` is None (random init); by
    default it is the token count of :data:`COOP_CTX_INIT`, so a random-init CoOp and a template-init
    CoOp differ in the initialisation only, not in M (issue 12: M = 4 vs 5 confounded the comparison)."""
    if ctx_init is None and n_ctx is None:
        n_ctx = coop.CoOp(bb.model, bb.tokenize, classnames, ctx_init=COOP_CTX_INIT).prompt.n_ctx
    n_ctx = 4 if n_ctx is None else n_ctx  # ignored by the prompt learner when ctx_init is given

    def fn(xs, ys, xq, T, seed):
        torch.manual_seed(seed)
        cls = coop.CoCoOp if cocoop else coop.CoOp
        m = cls(bb.model, bb.tokenize, classnames, ctx_init=ctx_init, n_ctx=n_ctx, seed=seed)
        coop.train_prompt_learner(m, xs.to(bb.device), ys, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
        if keep is not None:
            keep.append(m)
        with torch.no_grad():
            probs = torch.cat([m(xq[i : i + 256].to(bb.device)).float().softmax(-1).cpu() for i in range(0, len(xq), 256)])
        return probs, count_parameters(m, trainable=True)

    return fn


# --------------------------------------------------------------------------- cached vs re-encoded speed
def measure_feature_cache_speedup(backbone: str | None = None, pretrained="default", *, n: int | None = None,
                                  epochs: int | None = None, batch_size: int = 32, repeats: int = 5, P=None) -> dict:
    """Train the same CLIP-Adapter on ``n`` SonoSynth images twice: on features encoded once (cached),
    and re-encoding every mini-batch in every epoch with the frozen image encoder; time both.

    The cached run is short, so it is timed ``repeats`` times (fresh adapter each time) and the median
    kept. On CPU both run single-threaded (:func:`single_thread`). Returns the backbone, device, sizes,
    ``encode_once_s``, ``train_cached_s``, ``train_reencode_s``, ``per_epoch_ratio``,
    ``end_to_end_ratio`` and ``same_result`` (the two adapters end with the same weights, atol 1e-4).
    Sizes default to the profile (``P.section("few_shot").bench_n`` / ``bench_epochs``).
    ``benchmarks/bench_feature_cache.py`` is the command-line front of this function.
    """
    import contextlib
    import warnings

    from course_lib.data import sonosynth as ss
    from course_lib.models import load_backbone
    from course_lib.models.zero_shot import encode_images

    P = P or runtime.get_profile()
    S = P.section("few_shot")
    n, epochs = n or S.bench_n, epochs or S.bench_epochs
    runtime.seed_everything(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sonoclip-tiny without checkpoint warns once
        bb = load_backbone(backbone or P.backbone, pretrained=pretrained, verbose=False)
    b = ss.generate_batch(n, seed=0, image_size=bb.image_size)
    images = torch.from_numpy(b["image"])
    labels = torch.as_tensor(np.asarray(b["label"]) % 2)
    T = text_weights(bb, "single")
    scale = float(bb.model.logit_scale.detach().exp())
    device = runtime.get_device()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    threads = single_thread() if device.type == "cpu" else contextlib.nullcontext()
    with threads:
        with torch.no_grad():  # warm-up (first calls allocate / compile kernels)
            bb.encode_image(images[:4])
        sync()
        t0 = time.perf_counter()
        feats = encode_images(bb, images, batch_size=256).to(device)
        sync()
        t_encode = time.perf_counter() - t0
        runs = []
        for _ in range(repeats):
            torch.manual_seed(0)
            m = clip_adapter.CLIPAdapter(T, logit_scale=scale).to(device)
            sync()
            t0 = time.perf_counter()
            train_on_features(m, feats, labels, epochs=epochs, lr=1e-3, batch_size=batch_size)
            sync()
            runs.append(time.perf_counter() - t0)
        t_cached = float(np.median(runs))
        torch.manual_seed(0)
        m2 = clip_adapter.CLIPAdapter(T, logit_scale=scale).to(device)
        bb.model.eval()
        sync()
        t0 = time.perf_counter()
        grey = images[:, None] if images.ndim == 3 else images  # (N, 1, H, W): chunks of 3 stay unambiguous
        train_on_features(m2, grey.to(device), labels, epochs=epochs, lr=1e-3, batch_size=batch_size,
                          encode=lambda xb: bb.encode_image(xb).float())
        sync()
        t_reenc = time.perf_counter() - t0
    same = torch.allclose(torch.cat([p.flatten() for p in m.parameters()]),
                          torch.cat([p.flatten() for p in m2.parameters()]), atol=1e-4)
    return dict(backbone=bb.name, image_size=bb.image_size, device=device.type, n=n, epochs=epochs,
                encode_once_s=t_encode, train_cached_s=t_cached, train_reencode_s=t_reenc,
                per_epoch_ratio=t_reenc / t_cached, end_to_end_ratio=t_reenc / (t_cached + t_encode),
                same_result=bool(same))


def format_speedup(res: dict) -> str:
    """The report of :func:`measure_feature_cache_speedup` as text lines."""
    e = res["epochs"]
    return "\n".join([
        f"backbone {res['backbone']} on {res['device']}{' (1 thread)' if res['device'] == 'cpu' else ''}: "
        f"{res['n']} images at {res['image_size']} px, {e} epochs, CLIP-Adapter",
        f"  encode once                 : {res['encode_once_s']:8.3f} s",
        f"  train on cached features    : {res['train_cached_s']:8.3f} s  ({1e3 * res['train_cached_s'] / e:.1f} ms/epoch, median)",
        f"  train re-encoding each epoch: {res['train_reencode_s']:8.3f} s  ({1e3 * res['train_reencode_s'] / e:.1f} ms/epoch)",
        f"  speed-up per epoch (training): {res['per_epoch_ratio']:.0f}x",
        f"  speed-up incl. one-time encoding: {res['end_to_end_ratio']:.1f}x over {e} epochs",
        f"  identical adapters (cached == re-encoded): {res['same_result']}",
    ])


# --------------------------------------------------------------------------- notebook 03: domain shift
def train_prompt_predictor(bb, xs, ys, *, seed: int, cocoop: bool = False, C=None, batch: int = 64,
                           steps: int | None = None, batch_size: int | None = None) -> Callable:
    """Train CoOp (or CoCoOp) from the template context on support features ``xs, ys`` with the
    profile's ``coop`` sizes ``C`` (or explicit ``steps`` / ``batch_size``, e.g. the same sample budget
    for both) and return ``predict(x) -> probabilities`` (batched, on the CPU)."""
    C = C or runtime.get_profile().section("coop")
    torch.manual_seed(seed)
    cls = coop.CoCoOp if cocoop else coop.CoOp
    m = cls.from_backbone(bb, PROMPT_CLASSNAMES, ctx_init=COOP_CTX_INIT)
    steps0, bs0 = (C.cocoop_steps, C.cocoop_batch_size) if cocoop else (C.steps, C.batch_size)
    steps, bs = steps or steps0, batch_size or bs0
    coop.train_prompt_learner(m, xs, ys, steps=steps, lr=C.lr, batch_size=bs, seed=seed)
    return lambda x: torch.cat([m(x[i:i + batch].to(bb.device)).softmax(-1).cpu() for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------- notebook 04: imbalanced batches
def imbalance_experiment(tasks: dict, text_weights_: torch.Tensor, *, seeds: Sequence[int], logit_scale: float,
                         fractions: Sequence[float] = (0.5, 0.25, 0.1), shots: int = 4, P=None):
    """Inductive vs transductive inference on test batches re-sampled to a malignant fraction.

    For every task, fraction and seed: all benign test images plus a seeded random subset of the
    malignant ones (at least 2) so that the malignant share is ``fraction``; methods: zero-shot,
    TransCLIP-style zero-shot, Tip-Adapter and TransCLIP-style with ``shots`` labelled shots per class.
    Returns a long ``pandas.DataFrame`` (dataset, malignant_fraction, seed, method,
    predicted_malignant and the metrics of :func:`score_predictions`).
    """
    import pandas as pd

    from course_lib.data.common import few_shot_indices

    P = P or runtime.get_profile()
    S = P.section("few_shot")
    T = text_weights_
    rows = []
    for name, t in tasks.items():
        yt = np.asarray(t["test_y"])
        ben, mal = np.flatnonzero(yt == 0), np.flatnonzero(yt == 1)
        for frac in fractions:
            n_m = max(2, min(len(mal), int(round(frac / (1 - frac) * len(ben)))))
            for s in seeds:
                rng = np.random.default_rng(s)
                q = np.concatenate([ben, rng.choice(mal, n_m, replace=False)])
                xq, yq_ = t["test_x"][q], yt[q]
                sup = few_shot_indices(t["pool_y"], shots, seed=s)
                xs, ys = t["pool_x"][sup], t["pool_y"][sup]
                with single_thread():
                    zs_p = zero_shot_logits(xq, T, logit_scale).softmax(-1)
                    tr0 = transclip.transclip(xq, T, logit_scale=logit_scale, iters=S.transclip_iters)
                    tip = tip_adapter.TipAdapter(T, xs, ys, logit_scale=logit_scale)
                    tip.search_hparams(xs, ys, S.tip_alphas, S.tip_betas, leave_one_out=True)
                    tip_p = tip(xq).softmax(-1).detach()
                    tr = transclip.transclip(xq, T, support=xs, support_labels=ys, logit_scale=logit_scale,
                                             iters=S.transclip_iters)
                for method, p in [("zero-shot", zs_p), ("TransCLIP zero-shot", tr0),
                                  (f"Tip-Adapter {shots}-shot", tip_p), (f"TransCLIP {shots}-shot", tr)]:
                    rows.append(dict(dataset=name, malignant_fraction=frac, seed=s, method=method,
                                     predicted_malignant=float((p.argmax(1) == 1).float().mean()),
                                     **score_predictions(yq_, p.numpy())))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- uncertainty and baselines
def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95 % interval of a binomial proportion ``correct / n`` (Wilson, JASA 1927)."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = correct / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(centre - half), float(centre + half)


def description_zero_shot(description_features, logit_scale: float = 100.0) -> Callable:
    """A runner method: zero-shot with clinical descriptions scored by *average similarity*
    (``s_c = mean_m cos(f, t_{c,m})``, notebook 02's strongest zero-shot classifier)."""
    from course_lib.models.zero_shot import ensemble_scores

    def fn(xs, ys, xq, T, seed):
        return (logit_scale * ensemble_scores(xq, description_features, mode="similarity")).softmax(-1), 0

    return fn


def headline_table(df, shots: int, baseline: str, metric: str = "accuracy"):
    """Per dataset and method at ``shots``: mean ± sd over seeds of ``metric`` (%), the mean 95 % interval
    of a single run, the majority-class rate, and the verdict against ``baseline``: "better" / "worse"
    when the method's seed-mean lies outside the baseline's mean 95 % interval, else "tie"; methods
    below the majority-class rate are flagged."""
    import pandas as pd

    lo, hi = f"{metric}_lo", f"{metric}_hi"
    rows = []
    for ds, d in df[df.shots == shots].groupby("dataset", sort=False):
        base = d[d.method == baseline]
        if base.empty:
            raise ValueError(f"baseline {baseline!r} not among the methods of {ds}: {sorted(set(d.method))}")
        b_lo, b_hi = base[lo].mean(), base[hi].mean()
        maj = float(d["majority_rate"].iloc[0])
        for m, g in d.groupby("method", sort=False):
            mean = g[metric].mean()
            verdict = "baseline" if m == baseline else ("better" if mean > b_hi else "worse" if mean < b_lo else "tie")
            rows.append({"dataset": ds, "method": m, f"{metric} %": f"{100 * mean:.1f} ± {100 * g[metric].std(ddof=0):.1f}",
                         "95% CI (one run)": f"{100 * g[lo].mean():.1f}–{100 * g[hi].mean():.1f}",
                         "seeds": len(g), f"vs {baseline}": verdict,
                         "below majority rate": bool(metric == "accuracy" and mean < maj)})
    return pd.DataFrame(rows).set_index(["dataset", "method"])


def fixed_zero_shot(text_weights_: torch.Tensor, logit_scale: float = 100.0) -> Callable:
    """A runner method: zero-shot CLIP with *these* text weights, whatever weights the runner passes
    to the other methods (to show two prompt sets side by side)."""

    def fn(xs, ys, xq, T, seed):
        return zero_shot_logits(xq, text_weights_, logit_scale).softmax(-1), 0

    return fn


def plot_transduction_clusters(features: torch.Tensor, labels, anatomy, text_weights_: torch.Tensor, *,
                               logit_scale: float, lams: Sequence[float] = (0.0, 1.0), title: str = ""):
    """Where do TransCLIP's clusters fall? PCA of the test features coloured by the true class, by the
    anatomy, and by the zero-shot transductive assignment for each text-KL weight in ``lams``.
    Returns ``{lam: {"agree_class", "agree_anatomy"}}`` (agreement up to a label swap)."""
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    labels, anatomy = np.asarray(labels), np.asarray(anatomy)
    xy = PCA(2, random_state=0).fit_transform(torch.nn.functional.normalize(features.float(), dim=-1).numpy())
    names = sorted(set(anatomy.tolist()))
    anat = np.array([names.index(a) for a in anatomy])
    panels = [("true class", labels), ("anatomy", anat)]
    out = {}
    for lam in lams:
        z = transclip.transclip(features, text_weights_, logit_scale=logit_scale, lam=lam).argmax(1).numpy()
        agree = lambda a, b: float(max((a == b).mean(), (a != b).mean()))  # noqa: E731  (up to a swap)
        out[lam] = {"agree_class": agree(z, labels), "agree_anatomy": agree(z, anat)}
        panels.append((f"TransCLIP clusters, λ = {lam:g}", z))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2))
    for ax, (name, c) in zip(axes, panels):
        for v, mk in zip(sorted(set(c.tolist())), ("o", "^", "s", "D")):
            m = c == v
            lab = names[v] if name == "anatomy" else (["benign", "malignant"][v] if name == "true class" else f"cluster {v}")
            ax.scatter(xy[m, 0], xy[m, 1], s=9, marker=mk, label=lab, alpha=0.7)
        ax.set_title(name, fontsize=9); ax.set_xticks([]); ax.set_yticks([]); ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    plt.tight_layout()
    plt.show()
    return out


# --------------------------------------------------------------------------- Tip-Adapter-F, the paper's recipe
def augmented_views(bb, images, *, n_views: int = 10, seed: int = 0, dataset: str, split: str,
                    scale: tuple[float, float] = (0.5, 1.0), progress: bool = False) -> torch.Tensor:
    """Features ``(n_views, N, D)`` of ``n_views`` random augmentations of every image (random resized crop
    with area fraction in ``scale`` + horizontal flip, as Tip-Adapter builds and trains its cache),
    through the feature cache (one entry per view). Seeded: the same views every call."""
    from course_lib.models.feature_cache import cached_image_features

    imgs = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if imgs.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got {tuple(imgs.shape)}")
    N, H, W = imgs.shape
    g = torch.Generator().manual_seed(seed)
    out = []
    for v in range(n_views):
        frac = torch.empty(N).uniform_(*scale, generator=g).sqrt()
        hs, ws = (frac * H).long().clamp(min=8), (frac * W).long().clamp(min=8)
        views = []
        for i in range(N):
            top = int(torch.randint(0, H - int(hs[i]) + 1, (1,), generator=g))
            left = int(torch.randint(0, W - int(ws[i]) + 1, (1,), generator=g))
            crop = imgs[i, top:top + int(hs[i]), left:left + int(ws[i])]
            crop = torch.nn.functional.interpolate(crop[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
            if bool(torch.rand(1, generator=g) < 0.5):
                crop = crop.flip(-1)
            views.append(crop)
        out.append(cached_image_features(bb, torch.stack(views).numpy(), dataset=f"{dataset}-aug{seed}-{v}",
                                         split=split, seed=seed, progress=progress))
    return torch.stack(out)


def fit_tip_adapter_f(T: torch.Tensor, xs: torch.Tensor, ys, *, views: torch.Tensor | None = None,
                      logit_scale: float = 100.0, seed: int = 0, P=None):
    """Tip-Adapter-F (Zhang et al., ECCV 2022, Sec. 3.3): cache keys fine-tuned with cross-entropy, values and
    text frozen, then ``alpha, beta`` searched again *after* fine-tuning (the support features scored against
    the keys without their own, or the paper's defaults at one shot).

    With ``views`` (``(V, n, D)`` features of ``V`` augmented views of the ``n`` support images) the keys start
    at the mean of the views and every training step sees a random view of each sample, as in the paper;
    without them the keys are the support features themselves (each sample then matches its own key with
    affinity 1 during training). The model records ``hparam_history`` (before / after fine-tuning).
    """
    P = P or runtime.get_profile()
    S = P.section("few_shot")
    keys = torch.nn.functional.normalize(views.mean(0), dim=-1) if views is not None else xs
    m = tip_adapter.TipAdapter(T, keys, ys, logit_scale=logit_scale, finetune=True)
    history = [m.search_hparams(xs, ys, S.tip_alphas, S.tip_betas, leave_one_out=True)]
    epochs = max(S.epochs // 3, 1)
    if views is None:
        train_on_features(m, xs, ys, epochs=epochs, lr=S.lr, batch_size=S.batch_size, seed=seed)
    else:
        g = torch.Generator().manual_seed(seed)
        V, n = views.shape[0], views.shape[1]

        def pick_view(ib):  # a random augmented view of each sample in the mini-batch
            i = ib.long()
            return views[torch.randint(0, V, (len(i),), generator=g), i]

        train_on_features(m, torch.arange(n, dtype=torch.float32)[:, None], ys, epochs=epochs, lr=S.lr,
                          batch_size=S.batch_size, seed=seed, encode=lambda ib: pick_view(ib[:, 0]))
    history.append(m.search_hparams(xs, ys, S.tip_alphas, S.tip_betas, leave_one_out=True))
    m.hparam_history = history
    return m

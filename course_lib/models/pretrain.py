"""Contrastive image-text pretraining of the course's tiny CLIP on SonoSynth image-report pairs.
Used by notebook 01 (and to rebuild the committed sonoclip-tiny checkpoint).

Objective (CLIP, Radford et al., 2021, ICML, Fig. 3; the InfoNCE loss of van den Oord et al., 2018,
"Representation Learning with Contrastive Predictive Coding", Eq. 4): for a batch of ``N`` pairs with
L2-normalised image embeddings ``u_i`` and text embeddings ``v_j`` and a learnable temperature
``tau`` (stored as ``logit_scale = log(1/tau)``, initialised at ``1/0.07`` and clipped at 100),

    logits_ij = u_i . v_j / tau
    L = 1/2 [ 1/N sum_i -log softmax_j(logits)_ii  +  1/N sum_j -log softmax_i(logits)_jj ]

i.e. cross-entropy with the matching pair as the "class", in both directions (image->text and
text->image). :func:`course_lib.losses.info_nce` is exactly this (the one implementation of the
course); :func:`recall_at_k` is the retrieval metric.

Rebuild the committed checkpoint (seeded; numbers land in ``data_cards/sonoclip-tiny.md``)::

    python -m course_lib.models.pretrain --out course_lib/assets/sonoclip-tiny.safetensors

Every argument defaults to :data:`RECIPE`; ``--help`` lists them.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from course_lib import runtime, train
from course_lib.losses import info_nce
from course_lib.models import backbones
from course_lib.models import zero_shot as zs

#: the data + optimisation recipe of the committed checkpoint (``python -m course_lib.models.pretrain``)
RECIPE = dict(
    seed=0,  # initialisation and batch order
    data_seed=7,  # SonoSynth stream of the pretraining corpus (the course's tasks use seed 0)
    n_train=20000,  # SonoSynth image-report pairs: indices 0..n_train-1 of data_seed
    n_eval=512,  # held-out pairs: SonoSynth seed 0, "test" split (indices from 2e8), never trained on
    steps=1100,
    batch_size=64,
    lr=2e-3,
    weight_decay=0.1,
    warmup=60,
    image_size=64,
    p_lesion=0.85,
    label_noise=0.0,
)
EVAL_SEED, EVAL_START = 0, 200_000_000  # SonoSynth seed 0, test split (= sonosynth.SPLIT_OFFSETS["test"])

runtime.register_section(
    "pretrain",
    # the short from-scratch run inside notebook 01 (the full recipe is RECIPE, same in both profiles)
    quick=dict(n_train=1024, n_eval=128, steps=60, batch_size=64, lr=2e-3, eval_every=15),
    full=dict(n_train=20000, n_eval=1000, steps=2000, batch_size=256, lr=5e-4, eval_every=100),
)


# --------------------------------------------------------------------------- maths
# region: pretrain-recall-at-k
def recall_at_k(similarity: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose matching column (the diagonal) is among the top ``k`` scores.

    ``similarity[i, j]`` = score of query ``i`` against candidate ``j``; pass ``S`` for image->text and
    ``S.T`` for text->image. Ties count against the query (the true pair must be strictly inside the top k).
    """
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (N, N) matrix of paired scores, got {tuple(similarity.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    diag = similarity.diagonal().unsqueeze(1)
    rank = (similarity > diag).sum(1) + ((similarity == diag).sum(1) - 1)  # ties pessimistic
    return float((rank < k).float().mean())
# endregion


# --------------------------------------------------------------------------- data
def make_corpus(n: int, seed: int = 0, start: int = 0, image_size: int = 64, **kwargs) -> dict:
    """``n`` SonoSynth samples as arrays: ``images (n,H,W) float32``, ``texts``, ``labels``, ``anatomy``,
    ``attributes``, ``center``, ``class_names``. ``kwargs`` go to ``sonosynth.generate_batch`` (anatomies,
    centers, label_noise, p_lesion, concept_freq)."""
    from course_lib.data import sonosynth as ss

    gen = getattr(ss, "generate_batch", None) or ss.generate
    samples = gen(n, seed=seed, start=start, image_size=image_size, **kwargs)
    if isinstance(samples, dict):  # a vectorised batch of columns
        return _columns_to_corpus(samples)
    return corpus_from_samples(samples)


def corpus_from_samples(samples: Sequence[dict]) -> dict:
    if len(samples) == 0:
        raise ValueError("no samples: pass at least one sample")
    return dict(
        images=np.stack([np.asarray(s["image"], dtype=np.float32) for s in samples]),
        texts=[s.get("report") or "" for s in samples],
        labels=np.array([int(s["label"]) for s in samples]),
        anatomy=[s.get("anatomy", "") for s in samples],
        center=[s.get("center", "") for s in samples],
        attributes=[s.get("attributes", {}) or {} for s in samples],
        class_names=tuple(samples[0].get("class_names", ())),
    )


def _columns_to_corpus(cols: dict) -> dict:
    images = np.asarray(cols["image"], dtype=np.float32)
    n = len(images)
    return dict(
        images=images,
        texts=list(cols.get("report", [""] * n)),
        labels=np.asarray(cols["label"]).astype(int),
        anatomy=list(cols.get("anatomy", [""] * n)),
        center=list(cols.get("center", [""] * n)),
        attributes=list(cols.get("attributes", [{}] * n)),
        class_names=tuple(cols.get("class_names", ()) if not isinstance(cols.get("class_names"), list)
                          or not cols.get("class_names") or isinstance(cols["class_names"][0], str)
                          else cols["class_names"][0]),
    )


def lesion_subset(corpus: dict, class_names: Sequence[str] = zs.CLASS_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """Indices of samples whose class is one of ``class_names`` and their labels re-indexed to it."""
    names = corpus["class_names"] or zs.CLASS_NAMES
    keep, labels = [], []
    for i, lab in enumerate(corpus["labels"]):
        name = names[lab] if lab < len(names) else str(lab)
        if name in class_names:
            keep.append(i)
            labels.append(list(class_names).index(name))
    return np.array(keep, dtype=np.int64), np.array(labels, dtype=np.int64)


# --------------------------------------------------------------------------- text
_SENT_RE = re.compile(r"(?<=[.;])\s+")


def fit_text(text: str, tokenizer, context_length: int | None = None) -> str:
    """Shorten a report to fit the context by dropping whole sentences instead of cutting its end.

    The first sentence (exam/anatomy) and the last (usually the impression) are kept; sentences that
    mention no clinical concept (background, e.g. "The trachea is midline.") go first, then the
    longest remaining middle sentences. Deterministic. Texts that already fit are returned unchanged.
    """
    from course_lib.data.sonosynth.report import report_concepts

    ctx = context_length or tokenizer.context_length
    n_tok = lambda t: len(tokenizer.encode(t)) + 2  # noqa: E731  (+ start/end tokens)
    if n_tok(text) <= ctx:
        return text
    sents = [s for s in _SENT_RE.split(text.strip()) if s]
    if len(sents) <= 2:
        return text
    head, middle, tail = sents[0], sents[1:-1], sents[-1]
    order = sorted(range(len(middle)), key=lambda i: (bool(report_concepts(middle[i])), -len(middle[i])))
    dropped: set[int] = set()
    for i in order:
        dropped.add(i)
        cand = " ".join([head, *[m for j, m in enumerate(middle) if j not in dropped], tail])
        if n_tok(cand) <= ctx:
            return cand
    return " ".join([head, tail])


def tokenize_reports(bb, texts: Sequence[str], chunk: int = 1024) -> torch.Tensor:
    """``bb.tokenize`` after :func:`fit_text` (so long reports lose sentences, not their impression)."""
    tok = bb._tokenizer
    fitted = [fit_text(t, tok, bb.context_length) if hasattr(tok, "encode") else t for t in texts]
    return torch.cat([bb.tokenize(fitted[i:i + chunk]) for i in range(0, len(fitted), chunk)])


# --------------------------------------------------------------------------- training
def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in n or "logit_scale" in n or n.endswith("class_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(bb, corpus: dict, prompts: str | dict = "descriptions", batch_size: int = 256) -> dict:
    """Held-out retrieval (image->text and text->image R@1/R@5 over all pairs of ``corpus``) and zero-shot
    benign/malignant accuracy/AUC on its lesion images with the given prompts."""
    was = bb.model.training
    bb.model.eval()
    img = zs.encode_images(bb, corpus["images"], batch_size=batch_size)
    toks = tokenize_reports(bb, corpus["texts"])
    txt = torch.cat([bb.encode_text(toks[i:i + batch_size]).float().cpu() for i in range(0, len(toks), batch_size)])
    sim = img @ txt.T
    out = {
        "i2t_r1": recall_at_k(sim, 1), "i2t_r5": recall_at_k(sim, 5),
        "t2i_r1": recall_at_k(sim.T, 1), "t2i_r5": recall_at_k(sim.T, 5),
        "n_pairs": len(img),
    }
    idx, labels = lesion_subset(corpus)
    if len(idx) and len(set(labels.tolist())) == 2:
        scores = zs.zero_shot_scores(bb, prompts=prompts, image_features=img[idx])
        ev = zs.evaluate_scores(scores, labels)
        out.update(zs_acc=ev["acc"], zs_auc=ev["auc"], n_lesions=len(idx))
    bb.model.train(was)
    return out


# region: pretrain-train-clip
def train_clip(bb, corpus: dict, *, steps: int, batch_size: int, lr: float = 1e-3, weight_decay: float = 0.1,
               warmup: int | None = None, seed: int = 0, temperature: float | None = None,
               eval_corpus: dict | None = None, eval_every: int = 0, progress: bool = True,
               desc: str = "pretrain", callback: Callable | None = None) -> dict:
    """Train ``bb.model`` (all parameters) with :func:`course_lib.losses.info_nce` on ``corpus`` pairs,
    through :func:`course_lib.train.fit` (step mode).

    AdamW (betas 0.9/0.98, eps 1e-6, no decay on gains/biases/embeddings/``logit_scale``), a linear
    warm-up multiplied by a cosine decay, gradient-norm clipping at 1, and ``logit_scale`` clamped to
    ``[0, log 100]`` after every step (CLIP Sec. 2.5). Batches walk a seeded permutation of the corpus
    (a new one when it runs out). ``temperature=None`` learns ``tau`` (CLIP); a float freezes it at
    that value (notebook 01's ablation). Returns a history dict of lists: ``step, loss, tau`` and,
    every ``eval_every`` steps, ``eval_step, i2t_r1, t2i_r1`` on ``eval_corpus``.
    """
    model = bb.model
    device = bb.device
    n = len(corpus["images"])
    if n < batch_size:
        raise ValueError(f"corpus has {n} pairs but batch_size={batch_size}; generate more pairs or lower batch_size")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images = torch.as_tensor(corpus["images"])
    tokens = tokenize_reports(bb, corpus["texts"])
    if temperature is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(1.0 / temperature))
        model.logit_scale.requires_grad_(False)
    else:
        model.logit_scale.requires_grad_(True)
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, int(0.07 * steps)) if warmup is None else max(1, warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    hist = {"step": [], "loss": [], "tau": [], "eval_step": [], "i2t_r1": [], "t2i_r1": []}

    def do_eval(step):
        if eval_corpus is None or not eval_every:
            return
        m = evaluate(bb, eval_corpus, prompts="descriptions")
        hist["eval_step"].append(step)
        hist["i2t_r1"].append(m["i2t_r1"])
        hist["t2i_r1"].append(m["t2i_r1"])
        for k in ("zs_auc",):
            if k in m:
                hist.setdefault(k, []).append(m[k])

    state = {"perm": torch.randperm(n, generator=gen), "ptr": 0}

    def batch(step):  # walk a seeded permutation; draw a new one when fewer than batch_size are left
        if state["ptr"] + batch_size > n:
            state["perm"], state["ptr"] = torch.randperm(n, generator=gen), 0
        idx = state["perm"][state["ptr"]:state["ptr"] + batch_size]
        state["ptr"] += batch_size
        return bb.preprocess(images[idx]), tokens[idx]

    last = {}

    def forward(m, xt):
        u = m.encode_image(xt[0], normalize=True)
        v = m.encode_text(xt[1], normalize=True)
        last["loss"] = info_nce(u.float(), v.float(), m.logit_scale.exp())
        return last["loss"]

    def after_step(step, m, _opt):
        with torch.no_grad():
            m.logit_scale.clamp_(0, math.log(100))
        hist["step"].append(step + 1)
        hist["loss"].append(float(last["loss"].detach()))
        hist["tau"].append(1.0 / m.logit_scale.exp().item())
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            do_eval(step + 1)
        if callback is not None:
            callback(step + 1, hist)

    model.train()
    do_eval(0)
    train.fit(model, batch, steps=steps, optimizer=opt, scheduler=sched, forward=forward, after_step=after_step,
                  grad_clip=1.0, clip_params=list(model.parameters()), progress=progress, desc=desc)
    model.eval()
    return hist
# endregion


# --------------------------------------------------------------------------- BUSI
def busi_zero_shot(bb, prompts: str | dict = "descriptions", limit: int | None = None, seed: int = 0) -> dict:
    """Zero-shot benign/malignant on real BUSI (``busi_256``); raises DatasetNotFoundError if absent."""
    from course_lib.data import busi

    samples = busi.load("256", image_size=bb.image_size, classes=("benign", "malignant"), limit=limit, seed=seed)
    corpus = corpus_from_samples(samples)
    scores = zs.zero_shot_scores(bb, corpus["images"], prompts=prompts)
    ev = zs.evaluate_scores(scores, corpus["labels"])
    return {"acc": ev["acc"], "auc": ev["auc"], "n": len(samples)}


# --------------------------------------------------------------------------- CLI
def pretrain(out: str | Path | None = None, progress: bool = True, **overrides) -> dict:
    """Build sonoclip-tiny from scratch with :data:`RECIPE` (+ overrides); save to ``out`` if given.
    Returns ``{"metrics", "history", "seconds", "sha256", "size_bytes", "recipe"}``."""
    r = {**RECIPE, **overrides}
    unknown = set(overrides) - set(RECIPE)
    if unknown:
        raise ValueError(f"unknown recipe keys {sorted(unknown)}; valid: {sorted(RECIPE)}")
    runtime.seed_everything(r["seed"])
    t0 = time.perf_counter()
    kw = dict(p_lesion=r["p_lesion"], label_noise=r["label_noise"])
    train = make_corpus(r["n_train"], seed=r["data_seed"], start=0, image_size=r["image_size"], **kw)
    held = make_corpus(r["n_eval"], seed=EVAL_SEED, start=EVAL_START, image_size=r["image_size"], **kw)
    t_data = time.perf_counter() - t0
    model = backbones.build_sonoclip_tiny(seed=r["seed"])
    bb = backbones.Backbone(model, backbones.SONOCLIP_TINY_NAME, backbones.tiny_tokenizer(), pretrained=None)
    bb.to(runtime.get_device())
    hist = train_clip(bb, train, steps=r["steps"], batch_size=r["batch_size"], lr=r["lr"],
                      weight_decay=r["weight_decay"], warmup=r["warmup"], seed=r["seed"], eval_corpus=held,
                      eval_every=max(1, r["steps"] // 6), progress=progress)
    seconds = time.perf_counter() - t0
    metrics = {}
    for kind in zs.PROMPT_KINDS:
        m = evaluate(bb, held, prompts=kind)
        metrics.update({k: m[k] for k in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "n_pairs", "n_lesions")})
        metrics[f"zs_auc_{kind}"] = m.get("zs_auc")
        metrics[f"zs_acc_{kind}"] = m.get("zs_acc")
    try:
        for kind in zs.PROMPT_KINDS:
            b = busi_zero_shot(bb, prompts=kind)
            metrics[f"busi_auc_{kind}"] = b["auc"]
            metrics[f"busi_acc_{kind}"] = b["acc"]
            metrics["busi_n"] = b["n"]
    except FileNotFoundError as e:
        metrics["busi"] = f"not evaluated: {e}"
    result = {"metrics": metrics, "history": hist, "seconds": seconds, "data_seconds": t_data, "recipe": r,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if out is not None:
        meta = {"recipe": r, "metrics": metrics, "train_seconds": round(seconds, 1)}
        result["sha256"] = backbones.save_checkpoint(bb.model, out, meta=meta)
        result["size_bytes"] = Path(out).stat().st_size
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m course_lib.models.pretrain", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default=str(backbones.SONOCLIP_TINY_FILE), help="checkpoint path (.safetensors)")
    for k, v in RECIPE.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    ap.add_argument("--report", default=None, help="also write the result (metrics, history) as JSON here")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0 = torch's default; 1 is fastest on a busy shared CPU)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    overrides = {k: getattr(a, k) for k in RECIPE}
    res = pretrain(out=a.out, progress=not a.no_progress, **overrides)
    print(json.dumps({k: res[k] for k in ("metrics", "seconds", "data_seconds", "sha256", "size_bytes", "recipe")},
                     indent=1, default=float))
    if a.report:
        Path(a.report).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

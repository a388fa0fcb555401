"""The concept-frequency experiment: "No zero-shot without exponential data", in miniature.
An experiment runner (a sweep over caption frequencies) used by notebook 02.

Udandarao et al., 2024 (NeurIPS), "No 'Zero-Shot' Without Exponential Data: Pretraining Concept
Frequency Determines Multimodal Model Performance" (arXiv:2404.04125) find that a CLIP's zero-shot
performance on a concept grows roughly *linearly in the log* of how often the concept appears in the
pretraining data (their Fig. 2, the log-linear trend ``acc ~ a + b log f``; Sec. 4.2 repeats it on
synthetic data with controlled frequencies).

Here we control the frequency directly: SonoSynth writes a report for every image, and its
``concept_freq`` argument sets the probability that a concept is *mentioned*. The images are the same
for every frequency (same seed and indices); only the captions change. For each frequency ``f`` we
pretrain a fresh text tower (same seed, steps, data) and measure zero-shot recognition of the
concept -- here **posterior acoustic shadowing** vs **no posterior features** on lesion images --
with prompts that mention it. At ``f = 0`` the words were never seen with an image: the model is at
chance no matter how good it is elsewhere.

Two modes, set by the profile:

``"lit"`` (quick profile, CPU)
    Locked-image text tuning (LiT; Zhai et al., 2022, CVPR, "LiT: Zero-Shot Transfer with Locked-image
    text Tuning"): the image tower is sonoclip-tiny's, frozen (its features are computed once and
    cached); only a new 1-block text tower learns, with the same InfoNCE loss. Seconds per point.
    The frozen image features already separate shadowing (sonoclip-tiny saw it in 75% of reports), so
    this isolates the *language* side: can the model name a visual concept it was rarely told about?
``"clip"`` (full profile, GPU)
    Both towers of a micro CLIP (:data:`MICRO_CFG`) trained from scratch, as in the paper's
    synthetic-data experiment.

Results are cached as JSON under ``runtime.cache_dir("concept_frequency")``; a committed copy for
the quick profile lives in ``course_lib/assets/concept_frequency_quick.json`` (produced by
``python -m course_lib.experiments.concept_frequency --profile quick``). :func:`frequency_curve` returns the
cached result when its settings match, otherwise reruns the sweep (and caches it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from course_lib import runtime, train
from course_lib.losses import info_nce
from course_lib.models import backbones
from course_lib.models import pretrain as pt
from course_lib.models import zero_shot as zs

CONCEPT = "posterior"  # the SonoSynth report concept whose mention frequency is varied
POSITIVE, NEGATIVE = "shadowing", "none"  # attribute values told apart at evaluation
PROMPTS = {
    NEGATIVE: ["no posterior acoustic features.", "posterior features are absent."],
    POSITIVE: ["posterior acoustic shadowing is present.", "the lesion casts a posterior shadow."],
}

#: a smaller CLIP than sonoclip-tiny (same open_clip classes and module names): 16 px patches, 2+2
#: blocks of width 64, so one pretraining run takes seconds
MICRO_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
#: the text tower trained in "lit" mode (its embedding matches sonoclip-tiny's 96-d image features)
LIT_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}

runtime.register_section(
    "concept_frequency",
    quick=dict(mode="lit", freqs=(0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 1.0), n_train=2048, n_eval=512, steps=50,
               batch_size=96, lr=3e-3, seeds=(0,), live_freq=0.01),
    full=dict(mode="clip", freqs=(0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 1.0), n_train=8192, n_eval=1024, steps=600,
              batch_size=128, lr=2e-3, seeds=(0, 1, 2), live_freq=0.01),
)
ASSET = backbones.ASSETS_DIR / "concept_frequency_quick.json"
DATA_SEED, EVAL_SEED = 11, 12


def settings(profile=None) -> dict:
    P = profile or runtime.get_profile()
    s = vars(P.section("concept_frequency")).copy()
    s.pop("live_freq", None)
    s = {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}
    s.update(concept=CONCEPT, positive=POSITIVE, negative=NEGATIVE, data_seed=DATA_SEED, eval_seed=EVAL_SEED,
             prompts=PROMPTS)
    if s["mode"] == "lit":
        # the frozen image tower is identified by its weights (not by the file's bytes, which change when
        # the same weights are re-saved with a different header)
        s.update(text_model=LIT_TEXT_CFG, image_model=f"sonoclip-tiny weights sha256={backbones.SONOCLIP_TINY_WEIGHTS_SHA256}")
    else:
        s.update(model=MICRO_CFG)
    return s


def settings_hash(s: dict) -> str:
    return hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:16]


def micro_backbone(seed: int = 0) -> backbones.Backbone:
    model = backbones.build_sonoclip_tiny(cfg=MICRO_CFG, seed=seed)
    return backbones.Backbone(model, "sonoclip-micro", backbones.tiny_tokenizer(), pretrained=None)


def eval_set(n: int, image_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Lesion images whose posterior feature is ``POSITIVE`` (label 1) or ``NEGATIVE`` (label 0)."""
    c = pt.make_corpus(n, seed=EVAL_SEED, start=0, image_size=image_size, p_lesion=1.0)
    keep = [i for i, a in enumerate(c["attributes"]) if a.get(CONCEPT) in (POSITIVE, NEGATIVE)]
    labels = np.array([int(c["attributes"][i][CONCEPT] == POSITIVE) for i in keep])
    return c["images"][keep], labels


def concept_mentions(texts: Sequence[str], tokenizer=None) -> int:
    """How many captions mention the concept *after* fitting them to the context (what the model saw)."""
    from course_lib.data.sonosynth.report import report_concepts

    tok = tokenizer or backbones.tiny_tokenizer()
    return sum(CONCEPT in report_concepts(pt.fit_text(t, tok)) for t in texts)


def _corpus(freq: float, s: dict, image_size: int = 64) -> dict:
    return pt.make_corpus(s["n_train"], seed=s["data_seed"], start=0, image_size=image_size, p_lesion=1.0,
                          concept_freq={CONCEPT: float(freq)})


def lit_text_model(seed: int = 0, embed_dim: int = 96, vocab_size: int = 49408):
    """A fresh open_clip CLIP whose text tower (:data:`LIT_TEXT_CFG`) is the only part used in "lit" mode."""
    cfg = {"embed_dim": embed_dim, "vision_cfg": dict(MICRO_CFG["vision_cfg"], layers=1),
           "text_cfg": dict(LIT_TEXT_CFG, vocab_size=vocab_size)}
    return backbones.build_sonoclip_tiny(cfg=cfg, seed=seed)


class RemappedTokenizer:
    """The open_clip tokenizer followed by a *monotone* map of the BPE ids that occur in a corpus (and the
    prompts) onto ``0..V-1`` (others -> the id of the start token's neighbour, an "unknown" slot). Monotone,
    so the end-of-text token keeps the largest id and open_clip's ``argmax`` pooling is unchanged. It makes
    the LiT text tower's embedding table ``V x width`` instead of ``49408 x width`` (V ~ a few hundred)."""

    def __init__(self, base, token_ids: torch.Tensor):
        self.base = base
        self.context_length = base.context_length
        used = torch.unique(torch.cat([token_ids.flatten(), torch.tensor([0, 49406, 49407])]))
        self.lut = torch.zeros(49408, dtype=torch.long)  # unknown ids -> 0 (the padding slot)
        self.lut[used] = torch.arange(len(used))
        self.vocab_size = len(used)

    def encode(self, text):
        return self.base.encode(text)

    def __call__(self, texts, context_length=None):
        return self.lut[self.base(texts, context_length=context_length) if context_length else self.base(texts)]


# region: concept-frequency-lit
def train_lit(model, image_features: torch.Tensor, tokens: torch.Tensor, *, steps: int, batch_size: int, lr: float,
              seed: int = 0, progress: bool = False, desc: str = "LiT") -> list[float]:
    """InfoNCE (:func:`course_lib.losses.info_nce`) between *fixed* image features and a trainable text
    tower (LiT), through :func:`course_lib.train.fit`: AdamW (no weight decay), one-cycle lr schedule
    (10% warm-up), seeded random batches. Returns the per-step losses."""
    params = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith("visual."))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    n = len(tokens)

    def batch(step):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        return image_features[idx], tokens[idx]

    def forward(m, ft):
        v = m.encode_text(ft[1], normalize=True)
        return info_nce(ft[0], v, m.logit_scale.exp().clamp(max=100))

    hist = train.fit(model, batch, steps=steps, optimizer=opt, scheduler=sched, forward=forward,
                     progress=progress, desc=desc)
    model.eval()
    return hist["step_loss"]
# endregion


def _features(split: str, seed: int, n: int, images_fn) -> torch.Tensor:
    """sonoclip-tiny image features of SonoSynth images, through the on-disk feature cache (the images
    do not depend on the report concept frequencies, so one set serves every point of the sweep)."""
    from course_lib.models.feature_cache import FeatureCache, FeatureKey, backbone_fingerprint

    bb = backbones.load_backbone("sonoclip-tiny", device="cpu", verbose=False)
    # the evaluation images are chosen by the concept's values, so the concept is part of the key: changing
    # CONCEPT/POSITIVE/NEGATIVE must never reuse another concept's cached features
    name = "sonosynth-concept-frequency" if split == "train" else f"sonosynth-concept-frequency-{CONCEPT}-{POSITIVE}-{NEGATIVE}"
    key = FeatureKey(backbone_fingerprint(bb), name, split, n, seed)
    return FeatureCache().get_or_compute(key, lambda: zs.encode_images(bb, images_fn()))


def run_point(freq: float, s: dict, seed: int = 0, eval_data=None, progress: bool = False) -> dict:
    """Pretrain on a corpus where the concept is mentioned with probability ``freq`` and evaluate
    zero-shot recognition of the concept. Returns accuracy, AUC, mention count, seconds."""
    from course_lib.data.sonosynth.report import report_concepts

    t0 = time.perf_counter()
    images, labels = eval_data if eval_data is not None else eval_set(s["n_eval"])
    runtime.seed_everything(seed)
    prompts = {k: PROMPTS[k] for k in (NEGATIVE, POSITIVE)}
    base_tok = backbones.tiny_tokenizer()
    if s["mode"] == "lit":
        # reports do not depend on the image size: draw them at 32 px (cheap); features of the 64 px images are cached
        texts = _corpus(freq, s, image_size=32)["texts"]
        fitted = [pt.fit_text(t, base_tok) for t in texts]
        raw = base_tok(fitted + [p for ps in prompts.values() for p in ps])
        tok = RemappedTokenizer(base_tok, raw)
        feats = _features("train", s["data_seed"], s["n_train"], lambda: _corpus(freq, s)["images"])
        model = lit_text_model(seed, embed_dim=feats.shape[1], vocab_size=tok.vocab_size)
        bb = backbones.Backbone(model, "lit-text", tok, pretrained=None)
        train_lit(model, feats, tok.lut[raw[:len(fitted)]], steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"],
                  seed=seed, progress=progress, desc=f"f={freq:g}")
        eval_feats = _features("eval", s["eval_seed"], s["n_eval"], lambda: images)
        eval_feats = eval_feats if len(eval_feats) == len(labels) else zs.encode_images(
            backbones.load_backbone("sonoclip-tiny", device="cpu", verbose=False), images)
    else:
        corpus = _corpus(freq, s)
        fitted = [pt.fit_text(t, base_tok) for t in corpus["texts"]]
        bb = micro_backbone(seed)
        pt.train_clip(bb, corpus, steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                      progress=progress, desc=f"f={freq:g}")
        eval_feats = zs.encode_images(bb, images)
    scores = zs.zero_shot_scores(bb, prompts=prompts, image_features=eval_feats)
    ev = zs.evaluate_scores(scores, labels)
    bal = float(np.mean([(ev["preds"][labels == c] == c).mean() for c in (0, 1)]))
    mentions = sum(CONCEPT in report_concepts(t) for t in fitted)
    return {"freq": float(freq), "seed": seed, "mentions": int(mentions), "n_train": s["n_train"], "acc": ev["acc"],
            "balanced_acc": bal, "auc": ev["auc"], "n_eval": int(len(labels)), "seconds": time.perf_counter() - t0}


def run_sweep(profile=None, progress: bool = True) -> dict:
    s = settings(profile)
    from tqdm.auto import tqdm

    data = eval_set(s["n_eval"])
    points = []
    for f in tqdm([(f, sd) for f in s["freqs"] for sd in s["seeds"]], desc="concept-frequency sweep", disable=not progress):
        points.append(run_point(f[0], s, seed=f[1], eval_data=data))
    return {"settings": s, "hash": settings_hash(s), "points": points, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "command": "python -m course_lib.experiments.concept_frequency --profile " + (profile or runtime.get_profile()).name}


def frequency_curve(profile=None, rebuild: bool = False, progress: bool = True) -> dict:
    """The sweep's result for ``profile``: from the cache, else the committed asset (quick), else rerun."""
    s = settings(profile)
    h = settings_hash(s)
    path = runtime.cache_dir("concept_frequency") / f"curve_{h}.json"
    if not rebuild:
        for cand in (path, ASSET):
            if cand.exists():
                res = json.loads(cand.read_text())
                if res.get("hash") == h:
                    if cand != path:
                        path.write_text(json.dumps(res, indent=1))
                    res["loaded_from"] = str(cand)
                    return res
    res = run_sweep(profile, progress=progress)
    path.write_text(json.dumps(res, indent=1))
    res["loaded_from"] = "computed now"
    return res


def summarize(res: dict, metric: str = "balanced_acc") -> list[dict]:
    """Mean (and std over seeds) of ``metric`` per frequency."""
    rows = []
    for f in sorted({p["freq"] for p in res["points"]}):
        vals = [p[metric] for p in res["points"] if p["freq"] == f]
        ment = [p["mentions"] for p in res["points"] if p["freq"] == f]
        rows.append({"freq": f, "mentions": float(np.mean(ment)), metric: float(np.mean(vals)),
                     "std": float(np.std(vals)), "n_seeds": len(vals)})
    return rows


def log_linear_fit(rows: list[dict], metric: str = "balanced_acc") -> tuple[float, float]:
    """Least-squares ``metric ~ a + b * log10(freq)`` over the non-zero frequencies -> (a, b)."""
    xs = [math.log10(r["freq"]) for r in rows if r["freq"] > 0]
    ys = [r[metric] for r in rows if r["freq"] > 0]
    if len(xs) < 2:
        raise ValueError("need at least two non-zero frequencies to fit a log-linear trend")
    b, a = np.polyfit(xs, ys, 1)
    return float(a), float(b)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m course_lib.experiments.concept_frequency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=None, choices=runtime.PROFILE_NAMES)
    ap.add_argument("--out", default=None, help="also write the result here (e.g. course_lib/assets/concept_frequency_quick.json)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    a = ap.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    P = runtime.get_profile(a.profile)
    res = frequency_curve(P, rebuild=True)
    res.pop("loaded_from", None)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    for r in summarize(res):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

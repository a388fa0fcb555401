"""Zero-shot classification with CLIP: one template, template ensembles, clinical descriptions.
Used by notebooks 01-04 (zero-shot baselines) and by the pretraining / concept-frequency code.

* Zero-shot CLIP (Radford et al., 2021, ICML, Sec. 3.1.2): class ``c`` is represented by the text
  embedding ``t_c`` of a prompt; an image with embedding ``v`` gets logits ``tau^-1 * cos(v, t_c)`` and
  the softmax over classes is the prediction.
* Prompt ensembling (Radford et al., 2021, Sec. 3.1.4): embed ``M`` templates per class, average the
  L2-normalised embeddings and re-normalise, ``t_c = normalize(mean_m t_{c,m})`` ("embedding" mode).
* Clinically detailed descriptions (Qu et al., 2025, "Adapting Vision-Language Foundation Model for
  Next Generation Medical Ultrasound Image Analysis", arXiv:2506.08849 -- the HT paper -- zero-shot
  rows of its Table III; the same idea as CuPL / "visual descriptors", Menon & Vondrick, ICLR 2023,
  Eq. 1): each class is described by ``M = 10`` sentences about shape, margin, echogenicity,
  posterior features, calcifications and orientation, and the class score is the *average
  similarity* ``s_c(v) = 1/M sum_m cos(v, t_{c,m})`` ("similarity" mode). Because each ``t_{c,m}`` is
  unit-norm, ``s_c(v) = cos(v, mean_m t_{c,m}) * ||mean_m t_{c,m}||``: the two modes rank images of
  one class identically but weigh classes differently (tested in ``tests/models/test_zero_shot.py``).

The vocabulary follows the ACR BI-RADS ultrasound lexicon (shape, margin, echo pattern, posterior
features, calcifications, orientation) which also drives SonoSynth's benign/malignant rules.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

#: the class names of the benign/malignant task (index = label)
CLASS_NAMES = ("benign", "malignant")

#: (a) the single CLIP-style template
SINGLE_TEMPLATE = "an ultrasound image of a {} lesion."

#: (b) a small template ensemble (radiology phrasings + CLIP-style ones)
TEMPLATES = (
    "an ultrasound image of a {} lesion.",
    "a {} lesion.",
    "a {} mass.",
    "a {} nodule.",
    "findings favour a {} lesion.",
    "impression: {}.",
    "sonography shows a {} lesion.",
    "a B-mode image of a {} tumour.",
)

#: impression phrases added to the ensemble (a radiologist rarely writes "malignant lesion")
CLASS_PHRASES = {
    "benign": ("likely benign.", "probably benign.", "findings favour a benign lesion."),
    "malignant": ("suspicious for malignancy.", "concerning for malignancy.", "highly suggestive of malignancy."),
}

#: (c) ten clinically detailed descriptions per class (BI-RADS lexicon)
CLINICAL_DESCRIPTIONS = {
    "benign": (
        "an oval mass with circumscribed margins.",
        "a round anechoic cyst with posterior acoustic enhancement.",
        "a lesion parallel to the skin, wider than tall.",
        "a hypoechoic oval nodule with well-defined smooth borders.",
        "an isoechoic lesion with circumscribed margins.",
        "a lesion with no calcifications and no posterior shadowing.",
        "an ovoid mass with sharply marginated borders.",
        "a well-defined lesion with increased through-transmission.",
        "an oval, circumscribed, parallel mass; likely benign.",
        "an anechoic, echo-free lesion consistent with fluid; probably benign.",
    ),
    "malignant": (
        "an irregular mass with spiculated margins.",
        "a hypoechoic lesion with angular margins.",
        "a lesion taller than wide, not parallel to the skin.",
        "a mass casting posterior acoustic shadowing.",
        "a lesion containing microcalcifications, punctate echogenic foci.",
        "a lesion with indistinct, ill-defined margins.",
        "a mass with microlobulated margins.",
        "a heterogeneous lesion with mixed echogenicity and irregular shape.",
        "an irregularly shaped hypoechoic mass with shadowing; suspicious for malignancy.",
        "a spiculated, taller-than-wide mass; highly suggestive of malignancy.",
    ),
}

PROMPT_KINDS = ("single", "ensemble", "descriptions")


def build_prompts(kind: str = "single", class_names: Sequence[str] = CLASS_NAMES) -> dict[str, list[str]]:
    """Prompts per class for one of :data:`PROMPT_KINDS`:

    ``single``       one template with the bare class name (``SINGLE_TEMPLATE``)
    ``ensemble``     every template in ``TEMPLATES`` with the class name, plus the ``CLASS_PHRASES``
    ``descriptions`` the ten ``CLINICAL_DESCRIPTIONS`` per class
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; choose one of {PROMPT_KINDS}")
    out = {}
    for c in class_names:
        if kind == "single":
            out[c] = [SINGLE_TEMPLATE.format(c)]
        elif kind == "ensemble":
            out[c] = [t.format(c) for t in TEMPLATES] + list(CLASS_PHRASES.get(c, ()))
        else:
            if c not in CLINICAL_DESCRIPTIONS:
                raise ValueError(
                    f"no clinical descriptions for class {c!r} (have {sorted(CLINICAL_DESCRIPTIONS)}); pass your own "
                    f"dict {{class: [descriptions]}} to zero_shot_scores"
                )
            out[c] = list(CLINICAL_DESCRIPTIONS[c])
    return out


def _check_prompts(prompts: Mapping[str, Sequence[str]]) -> None:
    if not isinstance(prompts, Mapping) or len(prompts) < 2:
        raise ValueError(
            "prompts must be a dict {class_name: [prompt, ...]} with at least two classes, e.g. build_prompts('single')"
        )
    for c, ps in prompts.items():
        if isinstance(ps, str) or len(ps) == 0:
            raise ValueError(f"class {c!r} needs a non-empty list of prompt strings, got {ps!r}")


@torch.no_grad()
def text_features(bb, prompts: Mapping[str, Sequence[str]]) -> list[torch.Tensor]:
    """L2-normalised text embeddings, one ``(M_c, D)`` tensor per class (in dict order)."""
    _check_prompts(prompts)
    return [bb.encode_text(bb.tokenize(list(ps)), normalize=True).float() for ps in prompts.values()]


# region: zeroshot-ensemble-scores
def ensemble_scores(image_features: torch.Tensor, class_text_features: Sequence[torch.Tensor],
                    mode: str = "embedding") -> torch.Tensor:
    """Cosine scores ``(B, C)`` of L2-normalised image features against per-class prompt sets.

    ``mode="embedding"``: ``cos(v, normalize(mean_m t_{c,m}))`` (Radford et al. 2021, Sec. 3.1.4).
    ``mode="similarity"``: ``mean_m cos(v, t_{c,m})`` (average similarity, HT paper / Menon & Vondrick Eq. 1).
    """
    if mode not in ("embedding", "similarity"):
        raise ValueError(f"mode must be 'embedding' or 'similarity', got {mode!r}")
    if image_features.ndim != 2:
        raise ValueError(f"image_features must be (B, D), got shape {tuple(image_features.shape)}")
    v = torch.nn.functional.normalize(image_features.float(), dim=-1)
    cols = []
    for t in class_text_features:
        if t.ndim != 2 or t.shape[1] != v.shape[1]:
            raise ValueError(f"text features must be (M, {v.shape[1]}), got {tuple(t.shape)}")
        t = torch.nn.functional.normalize(t.float(), dim=-1)
        if mode == "embedding":
            cols.append(v @ torch.nn.functional.normalize(t.mean(0), dim=-1))
        else:
            cols.append((v @ t.T).mean(1))
    return torch.stack(cols, dim=1)
# endregion


@torch.no_grad()
def zero_shot_scores(bb, images=None, prompts: Mapping[str, Sequence[str]] | str = "single", mode: str | None = None,
                     image_features: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
    """``(B, C)`` cosine scores. ``prompts``: a dict or a kind (``"single"|"ensemble"|"descriptions"``).
    Default mode: ``"similarity"`` for descriptions (as in the HT paper), ``"embedding"`` otherwise."""
    kind = prompts if isinstance(prompts, str) else None
    if isinstance(prompts, str):
        prompts = build_prompts(prompts)
    if mode is None:
        mode = "similarity" if kind == "descriptions" else "embedding"
    if image_features is None:
        if images is None:
            raise ValueError("pass images or precomputed image_features")
        image_features = encode_images(bb, images, batch_size=batch_size)
    return ensemble_scores(image_features, text_features(bb, prompts), mode=mode)


@torch.no_grad()
def encode_images(bb, images, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Normalised image embeddings of an ``(N,H,W)`` array/tensor (or list), in batches, on CPU."""
    n = len(images)
    if n == 0:
        raise ValueError("encode_images got no images")
    if not isinstance(images, (list, tuple)) and getattr(images, "ndim", 0) == 3:
        # a whole (N, H, W) batch is grey images: give each chunk a channel axis, so a last chunk of exactly
        # 3 images is not mistaken for one RGB image (backbones refuse that ambiguous shape)
        images = images[:, None]
    it = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"encode images ({bb.name})", leave=False)
    out = []
    was_training = bb.model.training
    bb.model.eval()
    for i in it:
        out.append(bb.encode_image(images[i: i + batch_size]).float().cpu())
    bb.model.train(was_training)
    return torch.cat(out)


def evaluate_scores(scores: torch.Tensor, labels: Sequence[int], logit_scale: float = 100.0) -> dict:
    """Accuracy, ROC-AUC (binary: positive = class 1; multi-class: one-vs-rest macro) and confusion matrix."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    labels = np.asarray(labels)
    probs = torch.softmax(logit_scale * scores.float(), dim=1).numpy()
    preds = probs.argmax(1)
    C = probs.shape[1]
    out = {"acc": float((preds == labels).mean()), "preds": preds, "probs": probs,
           "cm": confusion_matrix(labels, preds, labels=list(range(C)))}
    if len(set(labels.tolist())) < 2:
        out["auc"] = float("nan")
    elif C == 2:
        out["auc"] = float(roc_auc_score(labels, scores[:, 1].numpy() - scores[:, 0].numpy()))
    else:
        out["auc"] = float(roc_auc_score(labels, probs, multi_class="ovr"))
    return out


def plot_text_retrieval(bb, gallery, gallery_features: torch.Tensor, names: Sequence[str], text: str, ncols: int = 6):
    """Rank a small image gallery by cosine similarity to one free-text description and draw it
    (most similar first, each panel titled with its name and cosine). Notebook 02's text playground."""
    import matplotlib.pyplot as plt

    if len(gallery) != len(gallery_features) or len(gallery) != len(names):
        raise ValueError(f"gallery ({len(gallery)}), gallery_features ({len(gallery_features)}) and names "
                         f"({len(names)}) must have one entry per image")
    with torch.no_grad():
        t = bb.encode_text(bb.tokenize([text])).float()
    sims = (gallery_features.float() @ t.T).squeeze(1).numpy()
    order = np.argsort(-sims)
    nrows = int(np.ceil(len(order) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 2.4 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order):
        ax.imshow(gallery[i], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{names[i]}\ncos {sims[i]:.2f}", fontsize=8)
    fig.suptitle(repr(text), fontsize=9)
    plt.tight_layout()
    plt.show()
    return sims

"""The zero-shot CLIP classifier that every few-shot method starts from (text weights and logits),
and the prompt wording shared with CoOp; used by notebooks 03 and 04 and by ``experiments.fewshot``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.methods.clip_fewshot.checks import check_features, check_text_weights

__all__ = ["zero_shot_logits", "text_weights", "PROMPT_CLASSNAMES", "COOP_CTX_INIT"]

#: class names as the text encoder sees them: with CoOp's ``ctx_init = "an ultrasound image of a"``
#: the prompt "an ultrasound image of a benign lesion." is exactly ``zero_shot.SINGLE_TEMPLATE``.
PROMPT_CLASSNAMES = ("benign lesion", "malignant lesion")
COOP_CTX_INIT = "an ultrasound image of a"


def zero_shot_logits(features: torch.Tensor, text_weights: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """CLIP zero-shot logits ``logit_scale * cos(f, t_k)`` (CLIP, Radford et al. 2021, Sec. 3.1.2)."""
    t = check_text_weights(text_weights)
    f = F.normalize(check_features(features, "features", t.shape[1]), dim=-1)
    return logit_scale * f @ t.to(f.device).t()


def text_weights(bb, kind: str = "ensemble") -> torch.Tensor:
    """Zero-shot class weights ``(2, D)`` for benign/malignant: the (normalised) mean of the
    prompt embeddings of each class from :func:`course_lib.models.zero_shot.build_prompts`
    (``kind`` = ``"single"``, ``"ensemble"`` or ``"descriptions"``)."""
    from course_lib.models import zero_shot

    feats = zero_shot.text_features(bb, zero_shot.build_prompts(kind))
    return F.normalize(torch.stack([F.normalize(t.mean(0), dim=-1) for t in feats]), dim=-1)

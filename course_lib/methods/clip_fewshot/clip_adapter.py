"""CLIP-Adapter: a bottleneck MLP on the frozen image feature, mixed back with a residual ratio.

Paper: P. Gao, S. Geng, R. Zhang, T. Ma, R. Fang, Y. Zhang, H. Li, Y. Qiao, "CLIP-Adapter:
Better Vision-Language Models with Feature Adapters", IJCV 2023 (arXiv:2110.04544), Sec. 3.2:

.. math::
    A_v(f) = \\mathrm{ReLU}(f^\\top W_1)\\, W_2 \\quad (\\text{with a ReLU after } W_2 \\text{ too}),
    \\qquad f^\\star = \\alpha\\, A_v(f) + (1-\\alpha)\\, f,

then the usual CLIP classifier ``logits = logit_scale * cos(f*, t_k)`` with the frozen text
weights. ``W_1: D -> D/r``, ``W_2: D/r -> D`` (the paper uses the reduction ``r = 4`` and a
residual ratio ``alpha = 0.2`` for natural images; larger ``alpha`` for datasets far from
CLIP's pre-training distribution). Only ``W_1`` and ``W_2`` train (no biases, as in the paper):
``2 * D * D / r`` parameters. ``ratio = 0`` is exactly zero-shot CLIP.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib import runtime
from course_lib.methods.clip_fewshot.checks import check_features, check_text_weights

runtime.register_section(
    "clip_adapter",
    quick=dict(reduction=4, ratio=0.2),
    full=dict(reduction=4, ratio=0.2),
)

__all__ = ["CLIPAdapter"]


class CLIPAdapter(nn.Module):
    """Visual CLIP-Adapter on cached image features.

    Args:
        text_weights: zero-shot class embeddings ``(K, D)`` (frozen).
        reduction: bottleneck reduction ``r`` (hidden width ``D // r``).
        ratio: residual ratio ``alpha`` in ``[0, 1]``.
        logit_scale: CLIP's temperature (100 for OpenAI CLIP; ``bb.model.logit_scale.exp()``).
    """

    def __init__(self, text_weights, reduction: int = 4, ratio: float = 0.2, logit_scale: float = 100.0):
        super().__init__()
        T = check_text_weights(text_weights)
        D = T.shape[1]
        if not isinstance(reduction, int) or reduction < 1 or D // reduction < 1:
            raise ValueError(f"reduction must be an integer in 1..{D} (hidden width D // reduction), got {reduction!r}")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio (residual mixing alpha) must lie in [0, 1], got {ratio}; the paper uses 0.2")
        self.register_buffer("text", T.clone())
        self.ratio = float(ratio)
        self.logit_scale = float(logit_scale)
        hidden = D // reduction
        self.adapter = nn.Sequential(
            nn.Linear(D, hidden, bias=False), nn.ReLU(inplace=True), nn.Linear(hidden, D, bias=False), nn.ReLU(inplace=True)
        )

    # region: clip-adapter-forward
    def adapted(self, x) -> torch.Tensor:
        f = F.normalize(check_features(x, "features", self.text.shape[1]), dim=-1).to(self.text.device)
        return self.ratio * self.adapter(f) + (1.0 - self.ratio) * f

    def forward(self, x) -> torch.Tensor:
        f = F.normalize(self.adapted(x), dim=-1)
        return self.logit_scale * f @ self.text.t()
    # endregion

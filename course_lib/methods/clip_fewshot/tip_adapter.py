"""Tip-Adapter (training-free cache model) and Tip-Adapter-F (cache keys fine-tuned).

Paper: R. Zhang, W. Zhang, R. Fang, P. Gao, K. Li, J. Dai, Y. Qiao, H. Li, "Tip-Adapter:
Training-free Adaption of CLIP for Few-shot Classification", ECCV 2022 (arXiv:2207.09519),
Sec. 3.2 (cache model) and Sec. 3.3 (Tip-Adapter-F):

* cache keys ``F_train`` (NK x D): L2-normalised features of the ``N`` shots of each of the
  ``K`` classes; cache values ``L_train`` (NK x K): their one-hot labels;
* affinity of a test feature ``f`` to the keys: ``A = exp(-beta * (1 - f F_train^T))``;
* logits: ``logits = alpha * A L_train + logit_scale * f W_c^T`` with ``W_c`` the zero-shot
  text weights (``logit_scale = 100`` for CLIP). ``alpha`` weighs cache vs. zero-shot
  knowledge, ``beta`` sharpens the affinity; both are searched on validation data.
* Tip-Adapter-F: the keys become a learnable linear layer initialised at ``F_train`` and
  are fine-tuned with cross-entropy (values and text weights stay frozen): ``NK * D`` params.

Identities (tested): ``alpha = 0`` is exactly zero-shot; ``beta -> 0`` gives ``A = 1`` so the
cache adds the same constant ``N`` to every class logit and the probabilities equal
zero-shot; with a large ``beta`` and ``alpha`` the cache recovers the support labels.

Hyper-parameter search (:meth:`TipAdapter.search_hparams`). The paper searches ``alpha, beta`` on the
datasets' validation sets. Without one we use leave-one-out on the support set (each support sample
scored by the cache *without its own key*) -- but only when every class has >= 2 shots: with one shot
per class, removing a sample's key removes the only key of its class, so the cache can only vote for
a *wrong* class and the smallest ``alpha`` always wins (Tip-Adapter would equal zero-shot by
construction). At one shot per class the paper's defaults ``alpha = 1, beta = 5.5`` are used instead
(:attr:`TipAdapter.hparam_source` says which). A held-out validation set of the same size can be
passed instead (``leave_one_out=False``). The grids should contain ``alpha = 0`` (zero-shot), so the
search can decline the cache.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.methods.clip_fewshot.checks import check_features, check_support, check_text_weights

__all__ = ["TipAdapter", "PAPER_ALPHA", "PAPER_BETA"]

#: the paper's defaults (Sec. 4.1, ImageNet), used when the support set cannot validate itself
PAPER_ALPHA, PAPER_BETA = 1.0, 5.5


class TipAdapter(nn.Module):
    """Tip-Adapter cache model (``finetune=True``: Tip-Adapter-F, trainable keys).

    Args:
        text_weights: zero-shot class embeddings ``(K, D)`` (frozen).
        support_features, support_labels: the few-shot cache (every class needs >= 1 shot).
        alpha, beta: the paper's defaults for ImageNet are ``alpha=1, beta=5.5``.
        logit_scale: CLIP's temperature for the zero-shot term.
    """

    def __init__(
        self,
        text_weights,
        support_features,
        support_labels,
        alpha: float = 1.0,
        beta: float = 5.5,
        logit_scale: float = 100.0,
        finetune: bool = False,
    ):
        super().__init__()
        T = check_text_weights(text_weights)
        K, D = T.shape
        x, y = check_support(support_features, support_labels, K, D)
        self.register_buffer("text", T.clone())
        self.keys = nn.Parameter(F.normalize(x, dim=-1).clone(), requires_grad=bool(finetune))
        self.register_buffer("values", F.one_hot(y, K).float())
        self.register_buffer("support_labels", y.clone())
        self.alpha, self.beta = float(alpha), float(beta)
        self.logit_scale = float(logit_scale)
        self.finetune = bool(finetune)
        self.hparam_source = "given"
        self._check_ab(self.alpha, self.beta)

    @staticmethod
    def _check_ab(alpha, beta):
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0 (got alpha={alpha}, beta={beta}); the paper uses alpha=1, beta=5.5")

    def _f(self, x) -> torch.Tensor:
        return F.normalize(check_features(x, "features", self.text.shape[1]), dim=-1).to(self.text.device)

    def zero_shot(self, x) -> torch.Tensor:
        return self.logit_scale * self._f(x) @ self.text.t()

    # region: tip-adapter-logits
    def affinity(self, x, beta: float | None = None) -> torch.Tensor:
        """``A = exp(-beta (1 - f F_train^T))``, shape ``(B, NK)``."""
        beta = self.beta if beta is None else beta
        return torch.exp(-beta * (1.0 - self._f(x) @ self.keys.t()))

    def cache_logits(self, x, beta: float | None = None) -> torch.Tensor:
        """``A L_train``: the cache model's class scores ``(B, K)``."""
        return self.affinity(x, beta) @ self.values

    def forward(self, x, alpha: float | None = None, beta: float | None = None) -> torch.Tensor:
        alpha = self.alpha if alpha is None else alpha
        self._check_ab(alpha, self.beta if beta is None else beta)
        return self.zero_shot(x) + alpha * self.cache_logits(x, beta)
    # endregion

    @torch.no_grad()
    def search_hparams(self, x, y, alphas, betas, leave_one_out: bool = False) -> tuple[float, float]:
        """Grid search of ``(alpha, beta)`` by accuracy on ``(x, y)`` (ties: the smaller cache
        weight, then the smaller beta); sets and returns them. ``leave_one_out=True`` when ``x`` *is*
        the support set: valid only with >= 2 shots per class; at 1 shot the paper's defaults are
        used (module docstring). :attr:`hparam_source` records what decided."""
        x, y = check_support(x, y)
        y = y.to(self.text.device)
        if leave_one_out:
            if len(x) != len(self.keys):
                raise ValueError("leave_one_out=True needs x to be the support set itself (same rows as the cache keys)")
            if int(torch.bincount(self.support_labels).min()) < 2:
                self.alpha, self.beta, self.hparam_source = PAPER_ALPHA, PAPER_BETA, "paper defaults (1 shot)"
                return self.alpha, self.beta
        zs = self.zero_shot(x)
        sims = self._f(x) @ self.keys.t()
        best = None
        for a, b in sorted(itertools.product(alphas, betas)):
            self._check_ab(a, b)
            A = torch.exp(-b * (1.0 - sims))
            if leave_one_out:
                A = A - torch.diag(torch.diagonal(A))
            acc = float(((zs + a * A @ self.values).argmax(1) == y).float().mean())
            if best is None or acc > best[0] + 1e-9:
                best = (acc, a, b)
        _, self.alpha, self.beta = best
        self.hparam_source = "leave-one-out on the support set" if leave_one_out else "validation set"
        return self.alpha, self.beta

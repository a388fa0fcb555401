"""Linear probes on frozen CLIP features: the classic one, a text-initialised one in the spirit
of LP++, and a CLAP-style probe constrained toward the zero-shot prototypes.

Papers
------
* **Linear probe (LP)** — A. Radford et al., "Learning Transferable Visual Models From Natural
  Language Supervision" (CLIP), ICML 2021, Sec. 3.2 / App. A.3: L2-regularised logistic
  regression (scikit-learn L-BFGS) on the frozen image features, the inverse regularisation
  strength ``C`` swept and chosen on a validation split. With a few shots there is no separate
  validation set, so :class:`LinearProbe` chooses ``C`` by stratified cross-validation on the
  support set (or on ``val`` when you pass one).
* **LP++** — Y. Huang, F. Shakeri, J. Dolz, M. Boudiaf, H. Bahig, I. Ben Ayed, "LP++: A
  Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024 (arXiv:2404.02285), Sec. 3:
  class weights are a learnable blend of a *visual prototype* and the class *text embedding*,

  .. math:: l_{ik} = f_i^\\top (w_k + \\alpha_k\\, t_k),

  minimised (cross-entropy) over the two blocks ``W`` and ``alpha`` by block-coordinate
  majorize-minimize: each block takes a gradient step of size ``1/L`` where ``L`` is a
  Lipschitz constant of that block's gradient computed from the data (so no learning rate to
  search), with ``W`` initialised at the class means of the support features.
  :class:`TextInitProbe` implements this objective and optimiser; our Lipschitz bounds use
  ``lambda_max(Hessian of softmax-CE) <= 1/2`` (derived here, not copied), and the initial scale
  of ``(W, alpha)`` is picked by a small grid search on the support loss instead of the
  paper's closed-form approximations.
* **CLAP** — J. Silva-Rodriguez, S. Hajimiri, I. Ben Ayed, J. Dolz, "A Closer Look at the
  Few-Shot Adaptation of Large Vision-Language Models", CVPR 2024 (arXiv:2312.12730), Sec. 3-4:
  a zero-shot-initialised linear probe (ZS-LP, weights = text prototypes, CLIP temperature)
  trained with a class-wise penalty ``sum_k lambda_k ||w_k - t_k||^2`` that keeps each
  prototype close to its zero-shot text embedding; the multipliers ``lambda_k`` are set from the
  zero-shot model's confidence on the support samples of class ``k``. :class:`ClapProbe`
  implements that penalty with the multipliers fixed at that initialisation (the paper refines
  them with an augmented Lagrangian).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.methods.clip_fewshot.checks import check_features, check_support, check_text_weights, single_thread

__all__ = ["LinearProbe", "TextInitProbe", "ClapProbe"]

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0, 100.0)


class LinearProbe:
    """Logistic regression on L2-normalised features, ``C`` chosen on validation data.

    ``fit(x, y, val=(x_val, y_val))`` picks ``C`` by validation accuracy; without ``val`` it
    uses stratified k-fold cross-validation on the support set (k = min(3, shots)); with one shot
    per class it falls back to ``default_C``. ``n_trainable`` counts the fitted weights and biases.
    """

    def __init__(self, Cs=DEFAULT_CS, default_C: float = 1.0, max_iter: int = 1000, seed: int = 0):
        if len(Cs) == 0 or any(c <= 0 for c in Cs):
            raise ValueError(f"Cs must be a non-empty list of positive regularisation strengths, got {Cs!r}")
        self.Cs, self.default_C, self.max_iter, self.seed = tuple(Cs), float(default_C), max_iter, seed
        self.clf = None
        self.C_ = None

    def _new(self, C):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=self.max_iter, random_state=self.seed)

    @staticmethod
    def _prep(x) -> np.ndarray:
        return F.normalize(check_features(x).detach().cpu(), dim=-1).numpy().astype(np.float64)

    def fit(self, x, y, val: tuple | None = None) -> "LinearProbe":
        with single_thread():
            return self._fit(x, y, val)

    def _fit(self, x, y, val):
        x_t, y_t = check_support(x, y)
        if len(torch.unique(y_t)) < 2:
            raise ValueError("the support set holds a single class; a linear probe needs >= 2 classes")
        X, Y = self._prep(x_t), y_t.cpu().numpy()
        if val is not None:
            Xv, Yv = self._prep(val[0]), np.asarray(val[1])
            scores = [self._new(C).fit(X, Y).score(Xv, Yv) for C in self.Cs]
            self.C_ = self.Cs[int(np.argmax(scores))]
        else:
            folds = min(3, int(np.bincount(Y).min()))
            if folds >= 2:
                from sklearn.model_selection import StratifiedKFold, cross_val_score

                cv = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
                scores = [cross_val_score(self._new(C), X, Y, cv=cv).mean() for C in self.Cs]
                self.C_ = self.Cs[int(np.argmax(scores))]
            else:
                self.C_ = self.default_C
        self.clf = self._new(self.C_).fit(X, Y)
        return self

    def _check_fitted(self):
        if self.clf is None:
            raise RuntimeError("LinearProbe is not fitted yet; call .fit(support_features, support_labels) first")

    def predict_proba(self, x) -> np.ndarray:
        """``(N, C)`` probabilities; column ``j`` is the class label ``self.classes_[j]``."""
        self._check_fitted()
        with single_thread():
            return self.clf.predict_proba(self._prep(x))

    @property
    def classes_(self) -> np.ndarray:
        """The labels the probe was fitted on, in the order of :meth:`predict_proba`'s columns."""
        self._check_fitted()
        return self.clf.classes_

    def predict(self, x) -> np.ndarray:
        """Predicted *labels* (the values given to :meth:`fit`, e.g. 0/2), not column positions."""
        return self.classes_[self.predict_proba(x).argmax(1)]

    @property
    def n_trainable(self) -> int:
        """Fitted scalars: ``coef_`` + ``intercept_`` (binary problems keep a single weight row)."""
        self._check_fitted()
        return int(self.clf.coef_.size + self.clf.intercept_.size)


class TextInitProbe(nn.Module):
    """LP++-style probe: ``logits = f @ (W + alpha[:, None] * T).T`` (trainable ``W``: K x D, ``alpha``: K).

    Args:
        text_weights: zero-shot class embeddings ``(K, D)`` (L2-normalised here, kept frozen).
    """

    def __init__(self, text_weights):
        super().__init__()
        T = check_text_weights(text_weights)
        K, D = T.shape
        self.register_buffer("text", T.clone())
        self.W = nn.Parameter(torch.zeros(K, D))
        self.alpha = nn.Parameter(torch.ones(K))

    # region: lpp-logits
    def forward(self, x) -> torch.Tensor:
        f = F.normalize(check_features(x, "features", self.text.shape[1]), dim=-1).to(self.W.device)
        return f @ (self.W + self.alpha[:, None] * self.text).t()
    # endregion

    @torch.no_grad()
    def init_from_support(self, x, y) -> None:
        """``W`` = class means of the support features; a global scale of ``(W, alpha)`` chosen
        on the support cross-entropy from a small grid."""
        x, y = check_support(x, y, self.text.shape[0], self.text.shape[1])
        f = F.normalize(x, dim=-1).to(self.W.device)
        y = y.to(self.W.device)
        means = torch.stack([f[y == k].mean(0) for k in range(self.text.shape[0])])
        best = None
        for s in (1.0, 3.0, 10.0, 30.0):
            for a in (0.0, 1.0, 3.0, 10.0, 30.0):
                loss = F.cross_entropy(f @ (s * means + a * self.text).t(), y)
                if best is None or loss < best[0]:
                    best = (float(loss), s, a)
        _, s, a = best
        self.W.copy_(s * means)
        self.alpha.fill_(a)

    def lipschitz(self, x) -> tuple[float, float]:
        """Lipschitz constants of the mean-CE gradient w.r.t. ``W`` and ``alpha``.

        The softmax-CE Hessian w.r.t. the logits is ``diag(p) - p p^T`` whose largest
        eigenvalue is <= 1/2. Hence ``L_W <= 1/2 lambda_max(F^T F / N)`` and, since the
        ``alpha`` block enters as ``alpha_k g_ik`` with ``g = F T^T``,
        ``L_alpha <= 1/2 max_k mean_i g_ik^2``.
        """
        f = F.normalize(check_features(x), dim=-1).to(self.W.device)
        lw = 0.5 * float(torch.linalg.eigvalsh(f.t() @ f / len(f)).max())
        g = f @ self.text.t()
        la = 0.5 * float((g**2).mean(0).max())
        return max(lw, 1e-8), max(la, 1e-8)

    def fit(self, x, y, steps: int = 300, init: bool = True) -> list[float]:
        """Block-coordinate MM: alternate a ``1/L_W`` step on ``W`` and a ``1/L_alpha`` step on
        ``alpha`` (full batch). Returns the loss after each cycle."""
        x, y = check_support(x, y, self.text.shape[0], self.text.shape[1])
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if init:
            self.init_from_support(x, y)
        lw, la = self.lipschitz(x)
        y = y.to(self.W.device)
        hist = []
        for _ in range(steps):
            for p, L in ((self.W, lw), (self.alpha, la)):
                loss = F.cross_entropy(self(x), y)
                (grad,) = torch.autograd.grad(loss, p)
                with torch.no_grad():
                    p.sub_(grad / L)
            hist.append(float(loss.detach()))
        return hist


class ClapProbe(nn.Module):
    """CLAP-style zero-shot-initialised probe with a class-wise pull toward the text prototypes.

    ``logits = logit_scale * cos(f, w_k)``, ``W`` (K x D) initialised to the text weights,
    loss = CE + ``sum_k lambda_k ||w_k - t_k||^2`` with ``lambda_k`` = mean zero-shot probability
    of class ``k`` on its own support samples (``constraint=False`` drops the penalty: ZS-LP).
    """

    def __init__(self, text_weights, logit_scale: float = 100.0, constraint: bool = True):
        super().__init__()
        T = check_text_weights(text_weights)
        self.register_buffer("text", T.clone())
        self.W = nn.Parameter(T.clone())
        self.logit_scale = float(logit_scale)
        self.constraint = constraint
        self.register_buffer("lambdas", torch.zeros(T.shape[0]))

    def forward(self, x) -> torch.Tensor:
        f = F.normalize(check_features(x, "features", self.text.shape[1]), dim=-1).to(self.W.device)
        return self.logit_scale * f @ F.normalize(self.W, dim=-1).t()

    def penalty(self) -> torch.Tensor:
        return (self.lambdas * ((self.W - self.text) ** 2).sum(1)).sum()

    def fit(self, x, y, steps: int = 100, lr: float = 1e-3) -> list[float]:
        x, y = check_support(x, y, self.text.shape[0], self.text.shape[1])
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        y = y.to(self.W.device)
        with torch.no_grad():
            p0 = self(x).softmax(-1)
            if self.constraint:
                self.lambdas.copy_(torch.stack([p0[y == k, k].mean() for k in range(len(self.lambdas))]))
        opt = torch.optim.Adam([self.W], lr=lr)
        hist = []
        for _ in range(steps):
            loss = F.cross_entropy(self(x), y) + (self.penalty() if self.constraint else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hist.append(float(loss.detach()))
        return hist

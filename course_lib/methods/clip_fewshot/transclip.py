"""Transductive inference for CLIP after TransCLIP: classify the whole unlabelled test batch jointly,
guided by the zero-shot text predictions and the few-shot labels. Used by notebook 04.

Paper: M. Zanella, B. Gerin, I. Ben Ayed, "Boosting Vision-Language Models with Transduction",
NeurIPS 2024 (arXiv:2406.01837), Sec. 3. Soft assignments ``z_i`` (a distribution over the ``K``
classes for each query ``i`` in ``Q``), class means ``mu_k`` and a shared diagonal covariance
``Sigma`` minimise

.. math::
    \\mathcal{L}(z, \\mu, \\Sigma) = -\\frac{1}{|Q|}\\sum_{i\\in Q} z_i^\\top \\log p_i
        - \\frac{1}{|S|}\\sum_{i\\in S} y_i^\\top \\log p_i
        - \\sum_{i, j \\in Q} w_{ij}\\, z_i^\\top z_j
        + \\sum_{i\\in Q} \\big( z_i^\\top \\log z_i - \\lambda\\, z_i^\\top \\log \\hat y_i \\big)

* ``p_ik = N(f_i; mu_k, Sigma)``: the Gaussian-mixture (clustering) term; support samples ``S`` enter
  with their labels ``y_i`` fixed (one-hot), and each set's term is normalised by its size, so the
  few labelled shots weigh as much as the whole query batch in the class means (they do not drown);
* ``w_ij``: a kNN affinity between query features (the Laplacian term: neighbours share labels);
* ``hat y_i``: the zero-shot CLIP prediction; the text-KL term with weight ``lambda`` keeps the
  clusters anchored to the classes the text names (``lambda = 0``: pure clustering).

Block majorize-minimize (BMM), as in the paper: given ``z``, closed-form ``mu`` (weighted means,
renormalised to the unit sphere where the features live) and ``Sigma`` (weighted residual variance
per dimension); given ``mu, Sigma``, each ``z_i`` by the decoupled fixed point

.. math:: z_i \\propto \\hat y_i^{\\lambda} \\odot \\exp\\big(\\tfrac{1}{T}\\log p_i + \\textstyle\\sum_j w_{ij} z_j\\big),

where ``1/T`` is the likelihood temperature. Without it the log-likelihood of a ``D``-dimensional
feature (a sum of ``D`` squared, variance-scaled residuals) is orders of magnitude larger than
``log hat y``, and the text term (and ``lambda``) has no effect at all: the clusters are whatever
structure dominates the features (on SonoSynth: breast vs thyroid, not benign vs malignant).
Our default ``T = D`` (the mean per-dimension log-likelihood) is our choice, not a value taken from
the paper; the defaults ``lambda = 1`` (zero-shot) and ``lambda = 0.5`` (with shots) are ours too.

This module re-derives and implements the updates above (the reference code is AGPL and was not
used; the paper's text is not in ``shared/papers``, so the objective follows its description in
issue 12 and in the paper's Sec. 3 as summarised here; equation numbers are not cited for that reason).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.methods.clip_fewshot.checks import check_features, check_support, check_text_weights

__all__ = ["transclip", "knn_affinity"]


def knn_affinity(f: torch.Tensor, n_neighbors: int = 3) -> torch.Tensor:
    """Sparse symmetric affinity ``w_ij = max(0, cos(f_i, f_j))`` for the ``n_neighbors``
    nearest neighbours of each row (self excluded), as a dense ``(N, N)`` tensor."""
    n = f.shape[0]
    k = min(n_neighbors, n - 1)
    if k < 1:
        return torch.zeros(n, n, dtype=f.dtype, device=f.device)
    s = f @ f.t()
    s.fill_diagonal_(-float("inf"))
    vals, idx = s.topk(k, dim=1)
    W = torch.zeros_like(s).scatter_(1, idx, vals.clamp_min(0))
    return 0.5 * (W + W.t())


@torch.no_grad()
def transclip(
    query_features,
    text_weights,
    *,
    support=None,
    support_labels=None,
    logit_scale: float = 100.0,
    lam: float | None = None,
    n_neighbors: int = 3,
    iters: int = 10,
    z_iters: int = 5,
    temperature: float | None = None,
    return_init: bool = False,
    return_state: bool = False,
):
    """Joint soft labels ``(N, K)`` for the query batch (each row sums to 1).

    Args:
        query_features: the unlabelled test batch ``(N, D)``.
        text_weights: zero-shot class embeddings ``(K, D)``.
        support, support_labels: optional few-shot features/labels (assignments fixed to the labels,
            the set weighted as a whole, see the module docstring); without them: zero-shot transduction.
        lam: weight of the text-KL term (``None``: 1 zero-shot, 0.5 with shots; 0 = pure clustering).
        temperature: likelihood temperature ``T`` (``None``: the feature dimension ``D``).
        iters / z_iters: outer BMM iterations / inner fixed-point steps of the ``z`` update.
        return_init: also return the zero-shot prediction ``y_hat``.
        return_state: return ``dict(z, y_hat, mu, var)`` instead.
    """
    T = check_text_weights(text_weights)
    K, D = T.shape
    fq = F.normalize(check_features(query_features, "query features", D), dim=-1)
    T = T.to(fq.device)
    if lam is not None and lam < 0:
        raise ValueError(f"lam (weight of the text KL term) must be >= 0, got {lam}")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if iters < 1 or z_iters < 1:
        raise ValueError(f"iters and z_iters must be >= 1, got {iters}, {z_iters}")
    if (support is None) != (support_labels is None):
        raise ValueError("pass both support and support_labels (or neither for zero-shot transduction)")
    y_hat = (logit_scale * fq @ T.t()).softmax(-1)
    log_yhat = torch.log(y_hat.clamp_min(1e-12))
    if support is not None:
        fs, ys = check_support(support, support_labels, K, D)
        fs, zs = F.normalize(fs, dim=-1).to(fq.device), F.one_hot(ys.to(fq.device), K).float()
    else:
        fs, zs = fq[:0], y_hat[:0]
    lam = (0.5 if len(fs) else 1.0) if lam is None else float(lam)
    temp = float(D) if temperature is None else float(temperature)
    Wq = knn_affinity(fq, n_neighbors)
    f_all = torch.cat([fs, fq])

    # region: transclip-updates
    def m_step(z):
        """mu, Sigma given z: each set's samples weighted by 1/|set| (support labels fixed)."""
        w = torch.cat([zs / max(len(fs), 1), z / len(fq)])
        mass = w.sum(0).clamp_min(1e-12)
        mu = F.normalize((w.t() @ f_all) / mass[:, None], dim=-1)  # back onto the unit sphere
        var = (w[:, :, None] * (f_all[:, None, :] - mu[None]) ** 2).sum((0, 1)) / w.sum()
        return mu, var.clamp_min(1e-8)

    z = y_hat.clone()
    mu, var = m_step(z)
    for _ in range(iters):
        log_p = -0.5 * (((fq[:, None, :] - mu[None]) ** 2) / var).sum(-1)  # Gaussian, shared diagonal Sigma
        for _ in range(z_iters):  # decoupled fixed point: z ∝ ŷ^λ · exp(log p / T + Σ_j w_ij z_j)
            z = (lam * log_yhat + log_p / temp + Wq @ z).softmax(-1)
        mu, var = m_step(z)
    # endregion
    if return_state:
        return dict(z=z, y_hat=y_hat, mu=mu, var=var)
    return (z, y_hat) if return_init else z

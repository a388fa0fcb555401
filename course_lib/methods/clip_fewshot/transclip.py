"""Transductive inference for CLIP in the spirit of TransCLIP: classify the whole unlabelled
test batch jointly, guided by the zero-shot text predictions and the few-shot labels.

Paper: M. Zanella, B. Gerin, I. Ben Ayed, "Boosting Vision-Language Models with Transduction",
NeurIPS 2024 (arXiv:2406.01837), Sec. 3. The objective over soft assignments ``z_i`` (a
distribution over the ``K`` classes for each test sample ``i``), class means ``mu_k`` and a
shared diagonal covariance ``Sigma`` is

.. math::
    \\mathcal{L}(z, \\mu, \\Sigma) = -\\frac1{|Q|}\\sum_{i\\in Q} z_i^\\top \\log p_i
        \\;-\\; \\sum_{i, j \\in Q} w_{ij}\\, z_i^\\top z_j
        \\;+\\; \\lambda \\sum_{i\\in Q} \\mathrm{KL}(z_i \\,\\|\\, \\hat y_i)

with ``p_ik = N(f_i; mu_k, Sigma)`` (a Gaussian-mixture clustering term), ``w_ij`` a kNN
affinity between test features (Laplacian term: neighbours get similar labels), and ``y_hat_i``
the zero-shot CLIP prediction (the language constraint that keeps transduction anchored to the
text). Few-shot support samples enter with fixed one-hot ``z``. It is minimised by block
majorize-minimize (BMM): closed-form updates of ``mu`` and ``Sigma`` given ``z``, and a decoupled
fixed-point update of each ``z_i`` given the others

.. math:: z_i \\propto \\hat y_i^{\\lambda} \\odot \\exp\\big(\\log p_i + \\textstyle\\sum_j w_{ij} z_j\\big).

This module re-derives and implements those updates (the reference code is AGPL and was not
used). Simplifications: cosine kNN affinities with a fixed number of neighbours, and an
optional weight ``ll_weight`` on the log-likelihood term (1 = the plain GMM term).

The lesson of notebook 04: the GMM term has no class-prior, so it favours *balanced* clusters;
on a strongly imbalanced test batch transduction can hurt.
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
    lam: float = 1.0,
    n_neighbors: int = 3,
    iters: int = 10,
    z_iters: int = 5,
    ll_weight: float = 1.0,
    return_init: bool = False,
):
    """Joint soft labels ``(N, K)`` for the query batch (each row sums to 1).

    Args:
        query_features: the unlabelled test batch ``(N, D)``.
        text_weights: zero-shot class embeddings ``(K, D)``.
        support, support_labels: optional few-shot features/labels (fixed one-hot assignments);
            without them this is zero-shot transduction.
        lam: weight of the KL pull toward the zero-shot prediction (larger = closer to zero-shot).
        iters / z_iters: outer BMM iterations / inner fixed-point steps of the ``z`` update.
        ll_weight: multiplier of the Gaussian log-likelihood (1 = the plain GMM term).
        return_init: also return the zero-shot prediction ``y_hat``.
    """
    T = check_text_weights(text_weights)
    K, D = T.shape
    fq = F.normalize(check_features(query_features, "query features", D), dim=-1)
    T = T.to(fq.device)
    if lam < 0:
        raise ValueError(f"lam (weight of the text KL term) must be >= 0, got {lam}")
    if iters < 1 or z_iters < 1:
        raise ValueError(f"iters and z_iters must be >= 1, got {iters}, {z_iters}")
    y_hat = (logit_scale * fq @ T.t()).softmax(-1)
    log_yhat = torch.log(y_hat.clamp_min(1e-12))
    if (support is None) != (support_labels is None):
        raise ValueError("pass both support and support_labels (or neither for zero-shot transduction)")
    if support is not None:
        fs, ys = check_support(support, support_labels, K, D)
        fs, zs = F.normalize(fs, dim=-1).to(fq.device), F.one_hot(ys.to(fq.device), K).float()
    else:
        fs, zs = fq[:0], y_hat[:0]
    Wq = knn_affinity(fq, n_neighbors)
    f_all = torch.cat([fs, fq])

    def m_step(z):
        z_all = torch.cat([zs, z])
        mass = z_all.sum(0).clamp_min(1e-8)
        mu = (z_all.t() @ f_all) / mass[:, None]
        var = (z_all.t() @ (f_all**2) - mass[:, None] * mu**2).sum(0) / z_all.sum()
        return mu, var.clamp_min(1e-6)

    z = y_hat.clone()
    if len(fs):  # initialise the means from the labelled shots where we have them
        mu = (zs.t() @ fs) / zs.sum(0)[:, None]
        _, var = m_step(z)
    else:
        mu, var = m_step(z)
    # region: transclip-updates
    for _ in range(iters):
        # Gaussian log-likelihood with shared diagonal covariance, per dimension
        logp = -0.5 * (((fq[:, None, :] - mu[None]) ** 2) / var).sum(-1)
        logp = ll_weight * (logp - logp.max(1, keepdim=True).values)
        for _ in range(z_iters):
            z = (lam * log_yhat + logp + Wq @ z).softmax(-1)
        mu, var = m_step(z)
    # endregion
    return (z, y_hat) if return_init else z

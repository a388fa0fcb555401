"""Every loss of the course, in one module: soft Dice, BCE/CE + Dice, the masked losses for
partially labelled data, and the symmetric InfoNCE of CLIP. Used by every training loop (notebooks 01-11).

Segmentation losses
-------------------
:func:`dice_loss` is the one soft-Dice implementation (MONAI's :class:`monai.losses.DiceLoss`
underneath, Milletari et al., "V-Net", 3DV 2016, eq. 1)::

    Dice loss = 1 - (2 sum_i p_i g_i + s) / (sum_i p_i + sum_i g_i + s)

with ``p = sigmoid(logits)`` (binary / multi-label) or ``softmax(logits)`` (multi-class), per sample
and channel (``batch=False``) or with the sums taken over the whole batch (``batch=True``), and a
smoothing ``s`` (``smooth``). :func:`bce_dice_loss` and :func:`dice_ce_loss` add the pixel-wise
cross-entropy term.

Partially labelled datasets (notebook 08)
-----------------------------------------
Setting: K structures; dataset A annotates the kidneys, dataset B the spleen, dataset C the
liver, ... Each sample n carries a label-availability vector ``w_n in {0, 1}^K`` (``w_nk = 1``
when structure k was annotated in the dataset the sample comes from). A pixel of an
unannotated structure is *unknown*, not background.

(a) :func:`naive_softmax_ce` -- the naive route: one softmax over ``K + 1`` classes, with every
    unannotated structure written as background (:func:`partial_to_softmax_target`). A liver
    pixel from the kidney dataset is then a *negative* example for "liver", so the model learns to
    suppress structures it only sometimes sees labelled.

(b) :func:`masked_bce_dice` -- the masked loss of the course slide (FMLLM M4, "How to pre-train?
    Masked CE", step 3): K independent sigmoid outputs (a pixel may belong to several structures or
    none) and per-structure BCE + soft Dice, each multiplied by ``w_nk`` and normalised **per
    sample** by the number of structures annotated for it::

        L_n = 1 / (sum_k w_nk) * sum_k w_nk [ BCE(p_nk, y_nk) + [y_nk != 0] Dice(p_nk, y_nk) ]
        L   = mean of L_n over the samples with sum_k w_nk > 0

    so channels with ``w_nk = 0`` contribute exactly zero loss *and* zero gradient, every sample
    counts the same however many structures its study labels (``normalize="batch"``, i.e.
    ``sum_{n,k} w_nk l_nk / sum_{n,k} w_nk``, is kept for comparison: there samples from studies
    with more labels weigh more), and with all ``w = 1`` (and every structure present) the loss equals
    the plain mean BCE + Dice. ``[y_nk != 0]``: a structure that is annotated but *absent* from the
    image (empty target) gets no Dice term -- its Dice is 0/0, and the smoothed per-sample Dice
    ``1 - s / (sum p + s)`` is ~1 for any false-positive pixel, a flat, unstable loss -- the BCE term
    alone teaches "nothing here" (``empty_dice="keep"`` restores the old behaviour).

References: J. Liu, Y. Zhang, J.-N. Chen, J. Xiao, Y. Lu, B. A. Landman, Y. Yuan, A. Yuille,
Y. Tang, Z. Zhou, "CLIP-Driven Universal Model for Organ Segmentation and Tumor Detection",
ICCV 2023 (Sec. 3.1-3.3: sigmoid heads and masked BCE + Dice over the annotated classes only).

Contrastive loss (notebooks 01, 09)
-----------------------------------
:func:`info_nce`: the symmetric InfoNCE of CLIP (Radford et al., ICML 2021, Fig. 3; van den Oord
et al., 2018, eq. 4) on L2-normalised paired embeddings.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- soft Dice and friends
# region: dice-loss
def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, multiclass: bool = False, batch: bool = False,
              smooth: float = 1.0, include_background: bool = True, reduction: str = "mean") -> torch.Tensor:
    """Soft Dice loss from ``logits`` (module docstring).

    * binary / multi-label (``multiclass=False``): ``logits`` and ``target`` ``(B, K, H, W)`` or
      ``(B, H, W)``; sigmoid per channel; ``target`` binary.
    * multi-class (``multiclass=True``): ``logits`` ``(B, C, H, W)``, ``target`` integer labels
      ``(B, H, W)``; softmax over channels; ``include_background=False`` drops channel 0.
    * ``batch=True`` sums over the batch before the ratio (one Dice per channel); ``reduction``
      ``"mean"`` or ``"none"`` (then ``(B, K)``, or ``(K,)`` with ``batch=True``).
    """
    from monai.losses import DiceLoss

    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if multiclass:
        if target.ndim != logits.ndim - 1:
            raise ValueError(f"multi-class Dice needs integer labels (B, H, W) for logits (B, C, H, W); got "
                             f"{tuple(target.shape)} for {tuple(logits.shape)}")
        fn = DiceLoss(softmax=True, to_onehot_y=True, include_background=include_background, batch=batch,
                      smooth_nr=smooth, smooth_dr=smooth, reduction="none")
        loss = fn(logits, target[:, None].long())
    else:
        squeeze = logits.ndim == 3
        lg = logits[:, None] if squeeze else logits
        tg = target[:, None] if target.ndim == 3 else target
        if tg.shape != lg.shape:
            raise ValueError(f"target shape {tuple(target.shape)} differs from logits shape {tuple(logits.shape)}; "
                             f"give one binary mask per output channel")
        fn = DiceLoss(sigmoid=True, batch=batch, smooth_nr=smooth, smooth_dr=smooth, reduction="none")
        loss = fn(lg, tg.to(lg.dtype))
    loss = loss.reshape(loss.shape[:2]) if not batch else loss.reshape(-1)
    return loss.mean() if reduction == "mean" else loss
# endregion


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 1.0, bce_weight: float = 1.0,
                  batch: bool = False, smooth: float = 1.0) -> torch.Tensor:
    """``bce_weight * mean BCE + dice_weight * soft Dice`` for binary / multi-label logits."""
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return bce_weight * bce + dice_weight * dice_loss(logits, target, batch=batch, smooth=smooth)


def dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor, *, batch: bool = True, smooth: float = 1.0) -> torch.Tensor:
    """Multi-class cross-entropy + soft Dice over the foreground classes (labels ``(B, H, W)``)."""
    ce = F.cross_entropy(logits, labels)
    return ce + dice_loss(logits, labels, multiclass=True, batch=batch, smooth=smooth, include_background=False)


# --------------------------------------------------------------------------- contrastive
# region: info-nce
def info_nce(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
             return_logits: bool = False):
    """Symmetric InfoNCE of CLIP. Features must be L2-normalised ``(N, D)`` pairs (row i of each is a
    positive pair); ``logit_scale`` is ``1/tau`` (already exponentiated)."""
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(
            f"image and text features must both be (N, D) with matching pairs in the same rows; got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    logits = logit_scale * image_features @ text_features.T
    target = torch.arange(len(logits), device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return (loss, logits) if return_logits else loss
# endregion


# --------------------------------------------------------------------------- partial labels
def check_partial_inputs(logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> None:
    """Shapes: ``logits``/``target`` ``(B, K, H, W)``, ``w`` ``(B, K)`` with values in ``[0, 1]``."""
    for name, t in (("logits", logits), ("target", target), ("w", w)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; use torch.as_tensor(...)")
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, K, H, W), got shape {tuple(logits.shape)}; one channel per structure")
    if target.shape != logits.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} differs from logits shape {tuple(logits.shape)}; "
            f"give one binary mask per structure (one-hot the label map, e.g. F.one_hot(lm, K+1)[..., 1:].permute(0, 3, 1, 2))"
        )
    if w.shape != logits.shape[:2]:
        raise ValueError(
            f"w must be (B, K) = {tuple(logits.shape[:2])} (one availability flag per sample and structure), "
            f"got {tuple(w.shape)}"
        )
    if w.numel() and (float(w.min()) < 0 or float(w.max()) > 1):
        raise ValueError(f"w must lie in [0, 1] (1 = structure annotated), got values in [{float(w.min())}, {float(w.max())}]")
    if target.numel() and (float(target.min()) < 0 or float(target.max()) > 1):
        raise ValueError("target must be binary masks in [0, 1]; threshold or one-hot your labels")


def per_channel_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B, K)``: mean BCE over the pixels of each sample and channel (numerically stable, from logits)."""
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none").flatten(2).mean(2)


def per_channel_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """``(B, K)``: soft Dice loss of each sample and channel (:func:`dice_loss`, ``reduction="none"``)."""
    return dice_loss(logits, target, smooth=smooth, reduction="none")


# region: partial-masked-mean
def masked_mean(per_channel: torch.Tensor, w: torch.Tensor, normalize: str = "sample") -> torch.Tensor:
    """Masked mean of a ``(B, K)`` loss. ``"sample"`` (the slide): ``1/(sum_k w_nk) sum_k w_nk l_nk`` per
    sample, averaged over the samples with at least one annotated structure. ``"batch"``:
    ``sum(w * l) / sum(w)``. 0 (with zero gradient) when nothing is annotated."""
    if normalize not in ("sample", "batch"):
        raise ValueError(f"normalize must be 'sample' (the slide: 1/sum_k w_nk per sample) or 'batch', got {normalize!r}")
    w = w.to(per_channel.dtype)
    tiny = torch.finfo(per_channel.dtype).tiny
    if normalize == "batch":
        return (w * per_channel).sum() / w.sum().clamp_min(tiny)
    w_n = w.sum(1)  # structures annotated per sample
    per_sample = (w * per_channel).sum(1) / w_n.clamp_min(tiny)
    has = (w_n > 0).to(per_channel.dtype)
    return (has * per_sample).sum() / has.sum().clamp_min(1.0)
# endregion


def present(target: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` float: 1 where channel k of sample n has at least one foreground pixel."""
    return (target.flatten(2) > 0.5).any(2).to(torch.float32)


def _dice_term(logits, target, smooth: float, empty_dice: str) -> torch.Tensor:
    if empty_dice not in ("skip", "keep"):
        raise ValueError(f"empty_dice must be 'skip' (no Dice term on annotated-but-absent structures) or 'keep', got {empty_dice!r}")
    d = per_channel_dice(logits, target, smooth)
    return d * present(target).to(d.dtype) if empty_dice == "skip" else d


def masked_bce(logits, target, w, normalize: str = "sample"):
    """Masked BCE (the slide's loss with L_SEG = BCE), per-sample normalised."""
    check_partial_inputs(logits, target, w)
    return masked_mean(per_channel_bce(logits, target), w, normalize)


def masked_dice(logits, target, w, smooth: float = 1e-5, normalize: str = "sample", empty_dice: str = "skip"):
    """Masked soft-Dice loss (the slide's loss with L_SEG = Dice); no Dice on annotated-but-absent structures."""
    check_partial_inputs(logits, target, w)
    return masked_mean(_dice_term(logits, target, smooth, empty_dice), w, normalize)


# region: partial-masked-bce-dice
def masked_bce_dice(logits, target, w, dice_weight: float = 1.0, smooth: float = 1e-5, normalize: str = "sample",
                    empty_dice: str = "skip"):
    """Variant (b): ``L_n = sum_k w_nk [BCE_nk + dice_weight [y_nk != 0] Dice_nk] / sum_k w_nk``, averaged
    over the samples with an annotated structure (module docstring)."""
    check_partial_inputs(logits, target, w)
    per = per_channel_bce(logits, target) + dice_weight * _dice_term(logits, target, smooth, empty_dice)
    return masked_mean(per, w, normalize)
# endregion


def plain_bce_dice(logits, target, dice_weight: float = 1.0, smooth: float = 1e-5):
    """The unmasked loss (mean BCE over all pixels + mean soft Dice over samples and channels)."""
    return bce_dice_loss(logits, target, dice_weight=dice_weight, smooth=smooth)


# region: partial-naive-target
def partial_to_softmax_target(target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Naive class map ``(B, H, W)`` for a ``K + 1``-way softmax: class ``k + 1`` where structure k
    is present *and annotated*, else 0 (background). Unannotated structures become background --
    which is exactly the mistake variant (a) makes. Later channels win on overlaps."""
    if target.ndim != 4 or w.shape != target.shape[:2]:
        raise ValueError(f"target must be (B, K, H, W) and w (B, K); got {tuple(target.shape)} and {tuple(w.shape)}")
    lab = (target > 0.5) & (w[:, :, None, None] > 0.5)
    k = torch.arange(1, target.shape[1] + 1, device=target.device).view(1, -1, 1, 1)
    return (lab.long() * k).amax(1)
# endregion


def naive_softmax_ce(logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Variant (a): ``CrossEntropy(softmax(logits), partial_to_softmax_target(target, w))``.

    ``logits``: ``(B, K + 1, H, W)`` (channel 0 = background); ``target``: ``(B, K, H, W)``.
    """
    if logits.ndim != 4 or logits.shape[1] != target.shape[1] + 1:
        raise ValueError(
            f"naive softmax needs K + 1 = {target.shape[1] + 1} logit channels (background first), got "
            f"logits {tuple(logits.shape)}"
        )
    return F.cross_entropy(logits, partial_to_softmax_target(target, w))


def naive_softmax_ce_dice(logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Variant (a) as usually trained (nnU-Net style): softmax CE + soft Dice over the K foreground
    classes, both against the naive target in which unannotated structures are background."""
    ce = naive_softmax_ce(logits, target, w)
    lab = partial_to_softmax_target(target, w)
    return ce + dice_weight * dice_loss(logits, lab, multiclass=True, include_background=False, smooth=1e-5)

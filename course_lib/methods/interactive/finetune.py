"""MedSAM-style adaptation of a SAM to a new domain with box prompts: what to train (notebook 07).

MedSAM (Ma et al., "Segment anything in medical images", Nature Communications 15:654, 2024) fine-tunes
SAM on medical image–mask pairs with **box prompts** (the box is the cheapest unambiguous prompt for a
lesion), keeping the prompt encoder frozen. Parameter-efficient variants put adapters into the frozen
image encoder instead (SAM-Adapter, Chen et al. 2023; 3DSAM-adapter, Gong et al., MedIA 2024; MA-SAM).
:func:`prepare` builds one of three settings on the same model, so a comparison differs in one thing:

``decoder``  only the mask decoder trains (prompt and image encoders frozen);
``adapter``  LoRA (Hu et al., ICLR 2022, eq. 3, through ``peft``) on the ``qkv`` projection of every
             image-encoder block, plus the mask decoder; the rest frozen;
``full``     image encoder and mask decoder train (MedSAM's setting); the prompt encoder stays frozen.

Training boxes are the ground-truth boxes with SAM's noise; the loss is BCE + soft Dice at the
decoder's resolution; the loop is :func:`course_lib.train.fit`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import losses, train
from course_lib.methods.interactive import prompts as pr
from course_lib.methods.interactive.sam import InteractiveSAM

MODES = ("decoder", "adapter", "full")


# region: interactive-finetune-modes
def prepare(sam: InteractiveSAM, mode: str, rank: int = 4) -> dict[str, int]:
    """Freeze/unfreeze ``sam.model`` for ``mode`` (module docstring), in place; returns the trainable
    parameter count of each part and in total."""
    if mode not in MODES:
        raise ValueError(f"unknown fine-tuning mode {mode!r}: use one of {MODES}")
    model = sam.model
    model.requires_grad_(False)
    model.mask_decoder.requires_grad_(True)
    if mode == "full":
        model.vision_encoder.requires_grad_(True)
    elif mode == "adapter":
        from peft import LoraConfig, inject_adapter_in_model

        if rank <= 0:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["qkv"], lora_dropout=0.0),
                                model.vision_encoder)
        for n, p in model.vision_encoder.named_parameters():
            p.requires_grad = "lora_" in n
    return {"image_encoder": train.count_parameters(model.vision_encoder, trainable=True),
            "prompt_encoder": train.count_parameters(model.prompt_encoder, trainable=True),
            "mask_decoder": train.count_parameters(model.mask_decoder, trainable=True),
            "total": train.count_parameters(model, trainable=True)}
# endregion


def finetune(sam: InteractiveSAM, images, masks, *, steps: int, batch: int, lr: float, seed: int = 0,
             progress: bool = False) -> dict:
    """Train the parameters :func:`prepare` left trainable on ``(images, masks)`` with jittered box prompts."""
    images = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    gt = torch.as_tensor(np.asarray(masks) > 0)
    if images.ndim != 3 or gt.shape != images.shape:
        raise ValueError(f"images and masks must both be (N, H, W) with the same size; got {tuple(images.shape)} and "
                         f"{tuple(gt.shape)} (resize the masks with the images)")
    if not gt.flatten(1).any(1).all():
        raise ValueError("every training image needs a non-empty mask (a box prompt needs an object)")
    S, m = sam.image_size, sam.mask_size
    if images.shape[-1] != S:
        images = F.interpolate(images[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
        gt = F.interpolate(gt[:, None].float(), size=(S, S), mode="nearest")[:, 0] > 0.5
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    def draw(step):
        idx = rng.choice(len(images), size=min(batch, len(images)), replace=False)
        return images[idx], gt[idx]

    frozen_encoder = not any(p.requires_grad for p in sam.model.vision_encoder.parameters())

    def forward(model, b):
        x, y = b
        boxes = torch.tensor([pr.jittered_box(t, rng) for t in y.cpu().numpy()])
        if frozen_encoder:  # nothing to learn there: no graph through the heavy encoder
            with torch.no_grad():
                emb = sam.encode(sam.preprocess(x))
        else:
            emb = sam.encode(sam.preprocess(x))
        logits, _ = sam.decode(emb, boxes=boxes, multimask=False)
        tgt = (F.adaptive_avg_pool2d(y[:, None].float(), m) > 0.5).float()
        return losses.bce_dice_loss(logits, tgt)

    sam.model.train()
    hist = train.fit(sam.model, draw, forward=forward, steps=steps, lr=lr, progress=progress, desc="fine-tune")
    sam.model.eval()
    return hist


def box_dice(sam: InteractiveSAM, images, masks) -> np.ndarray:
    """Per-image Dice with the tight ground-truth box as the prompt (evaluation)."""
    from course_lib.methods.interactive.evaluate import dice_with_box

    return dice_with_box(sam, images, masks)

"""SAM's interactive training recipe, used to pretrain ``sonosam-tiny`` on SonoSynth (notebook 07).

Kirillov et al., "Segment Anything", ICCV 2023, App. A ("Training algorithm"; "Losses and training"):

1. **First prompt** simulated from the ground truth: a point drawn uniformly inside the object or the
   object's box with noise (:mod:`~course_lib.methods.interactive.prompts`), with *three* output masks
   (the ambiguity of a single point).
2. **Loss on the best of the three** ("we backpropagate only the minimum loss over masks"), so each
   output can specialise on a different interpretation. SAM's loss is focal + Dice (20 : 1); ours is
   Dice-dominated (:func:`mask_loss` says why).
3. **IoU head** regresses the IoU each mask actually achieves (mean-squared error).
4. **Correction clicks**: the next points are drawn from the error region of the previous
   prediction (positive on a miss, negative on a false positive), and the previous low-resolution
   mask logits are fed back as a dense prompt; one output mask from then on. SAM simulates 8 such
   clicks (+ 2 mask-only rounds) per image; the quick profile uses :data:`CORRECTIONS`.

Structures are class-agnostic: each training image contributes one randomly chosen *object* of its
SonoSynth label map (lesion, organ, vessel, node ...; the tissue layers that span the whole image —
skin, fat, fibroglandular tissue, muscle, diaphragm — are not used as targets), so the model learns
"the thing at the click".
``python -m course_lib.methods.interactive.recipe --out course_lib/assets/sonosam-tiny.safetensors``
rebuilds the committed checkpoint.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import losses, runtime, train
from course_lib.methods.interactive import prompts as pr
from course_lib.methods.interactive import sam as sm

runtime.register_section(
    "interactive",
    quick=dict(pretrain_steps=1000, pretrain_batch=12, pool=3000, corrections=2, lr=4e-3, n_eval=40,
               clicks=(1, 3, 5, 10), ft_steps=30, ft_batch=8, ft_train=40, ft_lr=1e-3, lora_rank=4),
    full=dict(pretrain_steps=20000, pretrain_batch=32, pool=40000, corrections=8, lr=1e-3, n_eval=400,
              clicks=(1, 3, 5, 10), ft_steps=2000, ft_batch=16, ft_train=400, ft_lr=1e-4, lora_rank=8),
)
CORRECTIONS = 2
MIN_AREA = 24  # pixels (at 128 px) for a structure to be used as a training target
#: tissue layers that span the image: not objects a user would click on, so never targets
LAYERS = ("skin", "fat", "fibroglandular", "muscle", "diaphragm")


def structure_pool(n: int, image_size: int, seed: int = 0, split_start: int = 0):
    """``n`` SonoSynth images with their label maps, ``(images, label_maps)``, all anatomies."""
    from course_lib.data import sonosynth as ss

    b = ss.generate_batch(n, seed=seed, start=split_start, image_size=image_size)
    return torch.as_tensor(b["image"]), torch.as_tensor(b["label_map"].astype(np.int64))


def pick_targets(label_maps: torch.Tensor, rng: np.random.Generator, min_area: int = MIN_AREA) -> torch.Tensor:
    """One binary target per image: an object (not one of :data:`LAYERS`) present with at least ``min_area``
    pixels, drawn uniformly."""
    from course_lib.data import sonosynth as ss

    skip = {0} | {ss.STRUCTURES.index(n) for n in LAYERS}
    out = torch.zeros(label_maps.shape, dtype=torch.bool)
    for i, lm in enumerate(label_maps):
        ids, counts = torch.unique(lm, return_counts=True)
        ok = [int(s) for s, c in zip(ids, counts) if int(s) not in skip and c >= min_area]
        if not ok:
            raise ValueError(f"image {i} has no structure of >= {min_area} pixels; regenerate the pool")
        out[i] = lm == ok[rng.integers(len(ok))]
    return out


def _lowres(target: torch.Tensor, m: int) -> torch.Tensor:
    return (F.adaptive_avg_pool2d(target[:, None].float(), m) > 0.5).float()


def _iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with ``target``, per sample and mask: ``(B, K)``."""
    p = logits > 0
    t = target.bool().expand_as(p)
    inter = (p & t).flatten(2).sum(-1).float()
    union = (p | t).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def _clicks(prev_logits: torch.Tensor, target_lr: torch.Tensor, rng, scale: float, points, labels):
    pred = (prev_logits[:, 0] > 0).cpu().numpy()
    tgt = target_lr[:, 0].bool().cpu().numpy()
    for i in range(len(pred)):
        c = pr.random_correction(pred[i], tgt[i], rng)
        if c is None:  # perfect: repeat a positive click inside the object
            c = (pr.random_point(tgt[i], rng), pr.POSITIVE)
        (x, y), lab = c
        points[i].append((x * scale, y * scale))
        labels[i].append(lab)
    return points, labels


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mask loss, per sample, for one mask channel ``(B, 1, m, m)``: ``(B,)``.

    ``soft Dice + 0.1 * BCE``. SAM uses ``20 * focal + 1 * Dice`` (Kirillov et al. 2023, App. A); with that
    loss (and with plain BCE + Dice) ``sonosam-tiny`` collapsed to empty masks — the pixel term pushes every
    pixel of the small objects to background before the decoder has learned where the click is (measured:
    Dice 0.00 after 1,000 steps, data_cards/sonosam-tiny.md). The Dice term does not depend on how few
    pixels the object has, so we let it dominate."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2, 3))
    return losses.dice_loss(logits, target, reduction="none")[:, 0] + 0.1 * bce


# region: interactive-training-step
def interactive_loss(sam: sm.InteractiveSAM, images, targets, rng: np.random.Generator, corrections: int = CORRECTIONS,
                     first: str = "point"):
    """SAM's simulated interactive session on one batch (module docstring); returns ``(loss, logs)``."""
    m, S = sam.mask_size, sam.image_size
    emb = sam.encode(sam.preprocess(images))                          # the heavy encoder, once
    tgt = _lowres(targets, m)                                          # (B, 1, m, m)
    masks = targets.cpu().numpy()
    if first == "point":
        pts = [[pr.random_point(t, rng)] for t in masks]
        points, labels, boxes = pts, [[pr.POSITIVE] for _ in masks], None
    else:
        points, labels = [[] for _ in masks], [[] for _ in masks]
        boxes = torch.tensor([pr.jittered_box(t, rng) for t in masks])
    logits, iou_pred = sam.decode(emb, torch.tensor(points) if points[0] else None,
                                  torch.tensor(labels) if points[0] else None, boxes, multimask=True)
    per_mask = torch.stack([mask_loss(logits[:, k:k + 1], tgt) for k in range(logits.shape[1])], 1)  # (B, 3)
    best = per_mask.argmin(1)
    loss = per_mask.gather(1, best[:, None]).mean()                   # only the best of the 3 masks learns
    iou_loss = F.mse_loss(iou_pred, _iou(logits, tgt).detach())       # the IoU head predicts the achieved IoU
    prev = logits[torch.arange(len(best)), best][:, None]
    for _ in range(corrections):                                      # clicks on the previous error
        points, labels = _clicks(prev, tgt, rng, S / m, points, labels)
        logits, iou_pred = sam.decode(emb, torch.tensor(points), torch.tensor(labels), boxes,
                                      mask_input=prev.detach(), multimask=False)
        loss = loss + mask_loss(logits, tgt).mean()
        iou_loss = iou_loss + F.mse_loss(iou_pred, _iou(logits, tgt).detach())
        prev = logits
    n = corrections + 1
    total = loss / n + iou_loss / n
    return total, {"mask_loss": float(loss.detach() / n), "iou_loss": float(iou_loss.detach() / n)}
# endregion


def pretrain(out=None, *, steps: int | None = None, batch: int | None = None, pool: int | None = None, seed: int = 0,
             profile: str = "quick", progress: bool = True, device=None):
    """Train ``sonosam-tiny`` from random weights with :func:`interactive_loss` (through ``train.fit``);
    alternate point-first and box-first sessions. Saves to ``out`` when given; returns ``(sam, info)``."""
    P = runtime.get_profile(profile)
    sec = P.section("interactive")
    steps, batch, pool = steps or sec.pretrain_steps, batch or sec.pretrain_batch, pool or sec.pool
    runtime.seed_everything(seed)
    device = device or runtime.get_device()
    sam = sm.InteractiveSAM(sm.build_sonosam_tiny(seed).to(device).train(), sm.NAME)
    images, lmaps = structure_pool(pool, sam.image_size, seed=seed)
    rng = np.random.default_rng(seed)

    def draw(step):
        idx = rng.choice(len(images), size=batch, replace=False)
        return images[idx], pick_targets(lmaps[idx], rng)

    def forward(model, b):
        return interactive_loss(sam, b[0], b[1].to(device), rng, corrections=sec.corrections,
                                first="point" if draw_state["step"] % 2 == 0 else "box")

    draw_state = {"step": 0}

    def after(step, model, opt):
        draw_state["step"] = step + 1

    t0 = time.perf_counter()
    hist = train.fit(sam.model, draw, forward=forward, steps=steps, lr=sec.lr, weight_decay=0.01, warmup=50,
                     grad_clip=1.0, after_step=after, progress=progress, desc=f"{sm.NAME} pretraining")
    sam.model.eval()
    info = {"steps": steps, "batch": batch, "pool": pool, "seed": seed, "corrections": sec.corrections,
            "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
            "final_loss": float(np.mean(hist["step_loss"][-50:]))}
    if out is not None:
        info["sha256"] = sm.save(sam, out, {"training": info})
    return sam, info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Rebuild sonosam-tiny (SAM's interactive recipe on SonoSynth).")
    ap.add_argument("--out", default=str(sm.CHECKPOINT))
    ap.add_argument("--profile", default="quick", choices=runtime.PROFILE_NAMES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="override the profile's pretrain_steps")
    args = ap.parse_args(argv)
    runtime.set_threads(args.threads)
    _, info = pretrain(args.out, profile=args.profile, seed=args.seed, steps=args.steps)
    print(info)


if __name__ == "__main__":
    main()

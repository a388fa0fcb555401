"""Interactive evaluation: Dice after 1, 3, 5, 10 simulated clicks, or after one box (notebook 07).

Protocol (RITM, Sofiiuk et al., ICIP 2022; as in SAM's interactive evaluation, Kirillov et al. 2023,
Sec. 7.1): the first click goes to the object's interior point farthest from its boundary; each
next click to the centre of the largest error region of the current prediction (positive on a miss,
negative on a false positive, :func:`~course_lib.methods.interactive.prompts.center_click`); the
previous low-resolution logits are fed back as a mask prompt. After the first (ambiguous) click SAM
returns three masks and we keep the one with the highest *predicted* IoU (what a user would see);
later clicks ask for one mask. Dice is computed at the model's input resolution by
:func:`course_lib.metrics.dice`. The annotation cost is the number of clicks per test image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from course_lib import metrics
from course_lib.methods.interactive import prompts as pr
from course_lib.methods.interactive.sam import InteractiveSAM


def _resize_masks(masks, size: int) -> np.ndarray:
    m = torch.as_tensor(np.asarray(masks), dtype=torch.float32)
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W) binary, got shape {tuple(m.shape)}")
    if m.shape[-1] != size or m.shape[-2] != size:
        m = torch.nn.functional.interpolate(m[:, None], size=(size, size), mode="nearest")[:, 0]
    return (m > 0.5).numpy()


# region: interactive-dice-vs-clicks
def dice_vs_clicks(sam: InteractiveSAM, images, masks, clicks: Sequence[int] = (1, 3, 5, 10)) -> dict[int, np.ndarray]:
    """Per-image Dice after each number of clicks in ``clicks``: ``{n_clicks: (N,) array}``."""
    clicks = sorted(set(int(c) for c in clicks))
    if not clicks or clicks[0] < 1:
        raise ValueError(f"clicks must be positive click counts, e.g. (1, 3, 5, 10); got {clicks}")
    S, m = sam.image_size, sam.mask_size
    gt = _resize_masks(masks, S)
    keep = gt.reshape(len(gt), -1).any(1)
    if not keep.all():
        raise ValueError(f"{int((~keep).sum())} mask(s) are empty: interactive evaluation needs an object in every "
                         f"image; drop those images first")
    emb = sam.embed(images)
    points = [[] for _ in gt]
    labels = [[] for _ in gt]
    pred = np.zeros_like(gt)
    prev = None
    out: dict[int, np.ndarray] = {}
    for n in range(1, clicks[-1] + 1):
        for i in range(len(gt)):
            c = pr.center_click(pred[i], gt[i])
            (x, y), lab = c if c is not None else ((points[i][-1] if points[i] else (S / 2, S / 2)), pr.POSITIVE)
            points[i].append((x, y))
            labels[i].append(lab)
        with torch.no_grad():
            logits, iou = sam.decode(emb, torch.tensor(points), torch.tensor(labels), mask_input=prev,
                                     multimask=(n == 1))
        if n == 1:  # keep the candidate the model itself rates best
            logits = logits[torch.arange(len(logits)), iou.argmax(1)][:, None]
        prev = logits
        pred = (sam.upsample(logits)[:, 0] > 0).cpu().numpy()
        if n in clicks:
            out[n] = metrics.dice(pred, gt)
    return out
# endregion


def dice_with_box(sam: InteractiveSAM, images, masks, jitter: float = 0.0, seed: int = 0) -> np.ndarray:
    """Per-image Dice with one box prompt (tight, or jittered like SAM's training boxes)."""
    S = sam.image_size
    gt = _resize_masks(masks, S)
    rng = np.random.default_rng(seed)
    boxes = torch.tensor([pr.jittered_box(g, rng, noise=jitter) if jitter else pr.tight_box(g) for g in gt])
    emb = sam.embed(images)
    with torch.no_grad():
        logits, _ = sam.decode(emb, boxes=boxes, multimask=False)
    return metrics.dice((sam.upsample(logits)[:, 0] > 0).cpu().numpy(), gt)


def ambiguous_masks(sam: InteractiveSAM, image, point) -> tuple[np.ndarray, np.ndarray]:
    """The three candidate masks (and their predicted IoUs) for one positive click on one image."""
    x, y = pr.check_point(point, sam.image_size)
    emb = sam.embed(np.asarray(image)[None])
    with torch.no_grad():
        logits, iou = sam.decode(emb, torch.tensor([[[x, y]]]), torch.tensor([[pr.POSITIVE]]), multimask=True)
    return (sam.upsample(logits)[0] > 0).cpu().numpy(), iou[0].cpu().numpy()


def main(argv=None) -> None:
    """``python -m course_lib.methods.interactive.evaluate``: the held-out numbers of data_cards/sonosam-tiny.md."""
    import argparse

    from course_lib import runtime
    from course_lib.methods.interactive import checkpoint, recipe

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--checkpoint", default="sonosam-tiny")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    runtime.set_threads(args.threads)
    sam = checkpoint.load(args.checkpoint)
    imgs, lmaps = recipe.structure_pool(args.n, sam.image_size, seed=0, split_start=200_000_000)
    masks = recipe.pick_targets(lmaps, np.random.default_rng(7)).numpy()
    d = dice_vs_clicks(sam, imgs, masks)
    d["box"] = dice_with_box(sam, imgs, masks)
    for k, v in d.items():
        print(f"held-out SonoSynth (test split, n={len(v)}), {k} {'click(s)' if k != 'box' else ''}: "
              f"Dice {v.mean():.3f} ± {v.std(ddof=1):.3f}")


if __name__ == "__main__":
    main()

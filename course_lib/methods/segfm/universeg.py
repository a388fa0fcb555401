"""UniverSeg-style in-context segmentation: one network that segments a *new* task from
a handful of (image, label) examples given at inference, with no fine-tuning.

Paper: V. I. Butoi, J. J. G. Ortiz, T. Ma, M. R. Sabuncu, J. Guttag, A. V. Dalca,
"UniverSeg: Universal Medical Image Segmentation", ICCV 2023 (arXiv:2304.06131).

What this module implements (equation numbers refer to the paper):

* :class:`CrossConv2d` -- the *CrossConv* operator (eq. 1): for a query feature map ``u``
  and each support feature map ``v_i`` the *same* convolution is applied to the channel
  concatenation ``u || v_i``, giving one output per support entry.
* :class:`CrossBlock` -- eq. 2::

      z_i  = A(CrossConv(u, v_i; theta_z))          # interaction query <-> support_i
      u'   = 1/n sum_i z_i                          # query update: mean over the support
      v'_i = A(Conv(z_i; theta_v))                  # support update, one per entry

  ``A`` is a LeakyReLU. Because ``u'`` is a mean over ``i`` and the same weights are
  applied to every ``i``, the query output is invariant to the order of the support set
  (tested in ``tests/test_universeg.py``).
* :class:`UniverSeg` -- the multi-scale encoder-decoder of Sec. 3.2: CrossBlocks at each
  level, 2x down-sampling of query and support between levels, a decoder that up-samples,
  concatenates the encoder skip of the same level and applies another CrossBlock, and a
  final 1x1 convolution on the query stream that returns one logit map.
* :func:`meta_train` -- the training algorithm of Sec. 3.3 (the course slide): repeat
  { sample a task t; sample a query (x, y) from t; sample a support set S of size n from the
  rest of t; apply *in-task* augmentation to the query and to each support entry
  independently; apply one *task* augmentation to all of them; predict f(x, S); loss;
  step }. Tasks come from SonoSynth (:mod:`course_lib.seg_tasks`), with some structure
  types held out entirely for evaluation.
* :func:`predict` -- inference with *support-set ensembling* (Sec. 4.3):
  ``y_hat = 1/M sum_m sigmoid(f(x, S_m))`` over ``M`` random support sets drawn from a pool.

Input contract (checked by :func:`check_inputs`, errors name the problem and the fix):
``query`` float ``(B, 1, H, W)`` in ``[0, 1]``; ``support`` float ``(B, S, 2, H, W)`` whose
channel 0 is the image and channel 1 the binary label, both in ``[0, 1]``; ``S >= 1``;
``H`` and ``W`` equal for query and support and divisible by ``2**depth`` where ``depth`` is
the number of down-samplings (``len(channels) - 1``).

Differences from the paper (size only; the maths is the same): 4 levels of 16 channels
instead of 64, 64x64 images instead of 128x128, SonoSynth tasks instead of MegaMedical,
1,000 meta-training steps of 4 tasks on a CPU instead of days on a GPU.

The course checkpoint ``course_lib/assets/universeg-tiny.pt`` is rebuilt with::

    python -m course_lib.methods.universeg --train
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib import runtime
from course_lib.train import optimizer_step

runtime.register_section(
    "universeg",
    quick=dict(
        image_size=64,
        eval_support_sizes=(1, 2, 4, 8, 16, 32),
        eval_ensembles=(1, 2, 4, 8),
        ensemble_support=2,
        eval_queries=4,
        eval_tasks=3,
        real_queries=6,
        real_pool=40,
        unet_support_sizes=(4, 32),
        unet_steps=60,
    ),
    full=dict(
        image_size=64,
        eval_support_sizes=(1, 2, 4, 8, 16, 32, 64),
        eval_ensembles=(1, 2, 4, 8, 16),
        ensemble_support=4,
        eval_queries=32,
        eval_tasks=12,
        real_queries=48,
        real_pool=96,
        unet_support_sizes=(1, 4, 16, 64),
        unet_steps=400,
    ),
)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
CHECKPOINT_NAME = "universeg-tiny.pt"
#: SHA-256 of the committed checkpoint (also in data_cards/universeg-tiny.md)
CHECKPOINT_SHA256 = "7540f15db1a468b36d475aa1f1daa2064b879150a2105892fa6bbffb6500bfc9"

#: meta-training configuration used for the committed checkpoint
DEFAULT_TRAIN = dict(
    channels=(16, 16, 16, 16),
    steps=1000,
    batch_tasks=4,
    max_support=8,
    lr=2e-3,
    seed=0,
    image_size=64,
)


# =========================================================================== input contract
def check_inputs(query, support, depth: int = 0) -> tuple[int, int, int, int]:
    """Validate the UniverSeg input contract; return ``(B, S, H, W)``.

    Raises ``TypeError``/``ValueError`` with a message naming the problem and the fix.
    """
    for name, t in (("query", query), ("support", support)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor, got {type(t).__name__}; "
                f"convert with torch.as_tensor(x, dtype=torch.float32)"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor in [0, 1], got dtype {t.dtype}; use .float() (and /255 for uint8 images)")
    if query.ndim != 4 or query.shape[1] != 1:
        raise ValueError(
            f"query must have shape (B, 1, H, W), got {tuple(query.shape)}; "
            f"for a single (H, W) image use x[None, None]"
        )
    if support.ndim != 5:
        raise ValueError(
            f"support must have shape (B, S, 2, H, W) (image and label stacked on dim 2), got "
            f"{tuple(support.shape)}; build it with torch.stack([images, labels], dim=2)[None] "
            f"from (S, H, W) images and labels"
        )
    B, S, C, H, W = support.shape
    if S == 0:
        raise ValueError(
            "support set is empty (S = 0): UniverSeg needs at least one labelled example of the task; "
            "pass support of shape (B, S>=1, 2, H, W)"
        )
    if C != 2:
        raise ValueError(
            f"support must carry 2 channels (image, label) on dim 2, got {C}; "
            f"use torch.stack([images, labels], dim=2)"
        )
    if query.shape[0] != B:
        raise ValueError(
            f"query batch ({query.shape[0]}) and support batch ({B}) differ; give every query its own "
            f"support set, e.g. support.expand({query.shape[0]}, -1, -1, -1, -1)"
        )
    if query.shape[-2:] != (H, W):
        raise ValueError(
            f"query size {tuple(query.shape[-2:])} differs from support size {(H, W)}; "
            f"resize both to the same size (e.g. course_lib.data.common.resize_image)"
        )
    mult = 2**depth
    if H % mult or W % mult:
        raise ValueError(
            f"image size {(H, W)} is not divisible by 2**depth = {mult} (depth={depth} down-samplings); "
            f"resize to a multiple of {mult}, e.g. {max(mult, (H // mult) * mult)}"
        )
    for name, t in (("query", query), ("support images", support[:, :, 0]), ("support labels", support[:, :, 1])):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contain NaN or inf values; clean the inputs")
        lo, hi = float(t.min()), float(t.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name} must lie in [0, 1], found values in [{lo:.3g}, {hi:.3g}]; "
                f"rescale images with (x - x.min()) / (x.max() - x.min()) and use 0/1 labels"
            )
    return B, S, H, W


# =========================================================================== building blocks
class CrossConv2d(nn.Module):
    """CrossConv (paper eq. 1): one shared convolution applied to ``u || v_i`` for every i.

    ``u``: ``(B, Cu, H, W)``; ``v``: ``(B, S, Cv, H, W)`` -> ``(B, S, Cout, H, W)``.
    """

    def __init__(self, in_query: int, in_support: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_query + in_support, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, S = v.shape[:2]
        uu = u.unsqueeze(1).expand(-1, S, -1, -1, -1)
        x = torch.cat([uu, v], dim=2).flatten(0, 1)  # (B*S, Cu+Cv, H, W)
        y = self.conv(x)
        return y.view(B, S, *y.shape[1:])


class CrossBlock(nn.Module):
    """CrossBlock (paper eq. 2).

    ``z_i = A(CrossConv(u, v_i))``; ``u' = mean_i z_i``; ``v'_i = A(Conv(z_i))``.
    Returns ``(u', v')`` with shapes ``(B, C, H, W)`` and ``(B, S, C, H, W)``.
    """

    def __init__(self, in_query: int, in_support: int, channels: int, negative_slope: float = 0.1):
        super().__init__()
        self.cross = CrossConv2d(in_query, in_support, channels)
        self.conv_v = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, u: torch.Tensor, v: torch.Tensor, need_support: bool = True):
        z = self.act(self.cross(u, v))  # (B, S, C, H, W)
        u_new = z.mean(dim=1)  # average over the support set -> order invariant
        if not need_support:
            return u_new, None
        B, S = z.shape[:2]
        v_new = self.act(self.conv_v(z.flatten(0, 1)))
        return u_new, v_new.view(B, S, *v_new.shape[1:])


def _pool(u, v):
    B, S = v.shape[:2]
    vp = F.avg_pool2d(v.flatten(0, 1), 2)
    return F.avg_pool2d(u, 2), vp.view(B, S, *vp.shape[1:])


def _up(u, v):
    B, S = v.shape[:2]
    vu = F.interpolate(v.flatten(0, 1), scale_factor=2, mode="nearest")
    return F.interpolate(u, scale_factor=2, mode="nearest"), vu.view(B, S, *vu.shape[1:])


class UniverSeg(nn.Module):
    """Multi-scale encoder-decoder of CrossBlocks (Sec. 3.2). ``forward(query, support) -> logits``.

    ``channels`` gives the width of each level; ``len(channels) - 1`` down-samplings (``depth``).
    """

    def __init__(self, channels: Sequence[int] = (16, 16, 16, 16), validate: bool = True):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or any(c <= 0 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}; e.g. (16, 16, 16, 16)")
        self.channels = channels
        self.depth = len(channels) - 1
        self.validate = validate
        enc, cu, cv = [], 1, 2
        for c in channels:
            enc.append(CrossBlock(cu, cv, c))
            cu = cv = c
        self.enc = nn.ModuleList(enc)
        dec = []
        for lvl in range(self.depth - 1, -1, -1):
            c_in = channels[lvl + 1] + channels[lvl]
            dec.append(CrossBlock(c_in, c_in, channels[lvl]))
        self.dec = nn.ModuleList(dec)
        self.out = nn.Conv2d(channels[0], 1, 1)

    def forward(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        if self.validate:
            check_inputs(query, support, self.depth)
        u, v = query, support
        skips = []
        for i, blk in enumerate(self.enc):
            u, v = blk(u, v)
            if i < self.depth:
                skips.append((u, v))
                u, v = _pool(u, v)
        for j, blk in enumerate(self.dec):
            su, sv = skips.pop()
            u, v = _up(u, v)
            u = torch.cat([u, su], 1)
            v = torch.cat([v, sv], 2)
            u, v = blk(u, v, need_support=j < len(self.dec) - 1)
        return self.out(u)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# =========================================================================== augmentation
def _affine_grids(n: int, size: tuple, rng: np.random.Generator, rot: float, scale: float, shift: float, device):
    ang = rng.uniform(-rot, rot, n)
    sc = np.exp(rng.uniform(-scale, scale, n))
    tx, ty = rng.uniform(-shift, shift, (2, n))
    cos, sin = np.cos(ang) / sc, np.sin(ang) / sc
    theta = np.stack([np.stack([cos, -sin, tx], 1), np.stack([sin, cos, ty], 1)], 1)
    theta = torch.as_tensor(theta, dtype=torch.float32, device=device)
    return F.affine_grid(theta, (n, 1, *size), align_corners=False)


def in_task_augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, p: float = 0.7):
    """Independent augmentation of every image/label pair (``x, y``: ``(N, H, W)``).

    Small affine warp, brightness/contrast and Gaussian noise -- variations *within* a task.
    """
    N, H, W = x.shape
    apply = torch.as_tensor(rng.random(N) < p, device=x.device)
    grid = _affine_grids(N, (H, W), rng, rot=0.25, scale=0.15, shift=0.1, device=x.device)
    xw = F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    yw = F.grid_sample(y[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    yw = (yw > 0.5).float()
    x = torch.where(apply[:, None, None], xw, x)
    y = torch.where(apply[:, None, None], yw, y)
    a = torch.as_tensor(rng.uniform(0.8, 1.2, N), dtype=x.dtype, device=x.device)[:, None, None]
    b = torch.as_tensor(rng.uniform(-0.1, 0.1, N), dtype=x.dtype, device=x.device)[:, None, None]
    sigma = torch.as_tensor(rng.uniform(0.0, 0.05, N), dtype=x.dtype, device=x.device)[:, None, None]
    noise = torch.as_tensor(rng.standard_normal(x.shape), dtype=x.dtype, device=x.device)
    x = (a * (x - 0.5) + 0.5 + b + sigma * noise).clamp(0, 1)
    return x, y


def _boundary(y: torch.Tensor) -> torch.Tensor:
    """Thin boundary of a binary mask (mask minus its 3x3 erosion)."""
    er = -F.max_pool2d(-y[:, None], 3, 1, 1)[:, 0]
    return (y - er).clamp(0, 1)


def task_augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
    """One random transformation applied identically to *all* images/labels of a task.

    Creates new tasks from old ones: flips, 90-degree rotations, intensity inversion, gamma,
    blur or sharpening of the images, and (rarely) label -> label boundary.
    """
    if rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if rng.random() < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    k = int(rng.integers(0, 4))
    if k:
        x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
    if rng.random() < 0.25:
        x = 1.0 - x
    if rng.random() < 0.5:
        x = x.clamp(0, 1) ** float(np.exp(rng.uniform(-0.5, 0.5)))
    r = rng.random()
    if r < 0.2:  # blur
        x = F.avg_pool2d(x[:, None], 3, 1, 1, count_include_pad=False)[:, 0]
    elif r < 0.35:  # sharpen
        blur = F.avg_pool2d(x[:, None], 3, 1, 1, count_include_pad=False)[:, 0]
        x = (x + 0.7 * (x - blur)).clamp(0, 1)
    if rng.random() < 0.1:
        y = _boundary(y)
    return x.contiguous(), y.contiguous()


# =========================================================================== training
def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean soft Dice loss over the batch (sigmoid of ``logits`` against binary ``target``)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice (the paper's loss) + 0.5 BCE (stabilises the first steps of a small model)."""
    return soft_dice_loss(logits, target) + 0.5 * F.binary_cross_entropy_with_logits(logits, target)


def sample_episode(tasks, batch_tasks: int, support_size: int, rng: np.random.Generator, device, augment: bool = True):
    """One meta-training batch: for each of ``batch_tasks`` sampled tasks, a query and a
    support set of ``support_size`` drawn from the rest of the task, augmented."""
    qs, qys, sups = [], [], []
    for _ in range(batch_tasks):
        t = tasks[int(rng.integers(len(tasks)))]  # 1. sample a task
        n = len(t)
        idx = rng.choice(n, size=min(n, support_size + 1), replace=False)  # 2./3. query + support from the rest
        if len(idx) < support_size + 1:  # tiny task: fill the support with repeats
            idx = np.concatenate([idx, rng.choice(idx[1:], support_size + 1 - len(idx))])
        x = torch.as_tensor(t.images[idx], device=device)
        y = torch.as_tensor(t.labels[idx], device=device, dtype=torch.float32)
        if augment:
            x, y = in_task_augment(x, y, rng)  # 4. in-task augmentation (each image on its own)
            x, y = task_augment(x, y, rng)  # 5. task augmentation (the same for all)
        qs.append(x[0:1])
        qys.append(y[0:1])
        sups.append(torch.stack([x[1:], y[1:]], 1))
    return torch.stack(qs), torch.stack(qys), torch.stack(sups)


def meta_train(
    tasks,
    *,
    channels: Sequence[int] = DEFAULT_TRAIN["channels"],
    steps: int = DEFAULT_TRAIN["steps"],
    batch_tasks: int = DEFAULT_TRAIN["batch_tasks"],
    max_support: int = DEFAULT_TRAIN["max_support"],
    lr: float = DEFAULT_TRAIN["lr"],
    seed: int = 0,
    device=None,
    model: UniverSeg | None = None,
    progress: bool = True,
    log_every: int = 25,
):
    """Meta-train a UniverSeg model on a list of :class:`course_lib.seg_tasks.Task`.

    The loop is the slide's algorithm (see module docstring); the support size of each step
    is drawn uniformly from ``1..max_support`` so that one model serves every support size.
    Returns ``(model, history)`` with ``history = {"step": [...], "loss": [...]}`` (running mean).
    """
    from tqdm.auto import tqdm

    if len(tasks) == 0:
        raise ValueError("meta_train got no tasks; build them with course_lib.seg_tasks.sonosynth_tasks(...)")
    device = torch.device(device) if device is not None else runtime.get_device()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = (model or UniverSeg(channels)).to(device)
    model.validate = False  # inputs come from our own sampler
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    scaler = runtime.grad_scaler(device)
    hist = {"step": [], "loss": []}
    run = None
    bar = tqdm(range(steps), desc="meta-train", disable=not progress)
    model.train()
    for step in bar:
        s = int(rng.integers(1, max_support + 1))
        q, qy, sup = sample_episode(tasks, batch_tasks, s, rng, device)
        with runtime.autocast(device):
            logits = model(q, sup)
        loss = seg_loss(logits.float(), qy)
        optimizer_step(loss, opt, scaler, sched)
        run = loss.item() if run is None else 0.98 * run + 0.02 * loss.item()
        if step % log_every == 0 or step == steps - 1:
            hist["step"].append(step)
            hist["loss"].append(run)
            bar.set_postfix(loss=f"{run:.3f}")
    model.validate = True
    model.eval()
    return model, hist


# =========================================================================== inference
@torch.no_grad()
def predict(
    model: UniverSeg,
    query,
    support_images,
    support_labels,
    *,
    support_size: int | None = None,
    ensemble: int = 1,
    seed: int = 0,
    batch_size: int = 8,
) -> torch.Tensor:
    """Support-set ensembling: ``1/M sum_m sigmoid(f(x, S_m))``, ``S_m`` random subsets of size
    ``support_size`` drawn from the pool (``support_images``/``support_labels``: ``(N, H, W)``).

    ``query``: ``(Q, H, W)`` or ``(Q, 1, H, W)``; returns probabilities ``(Q, 1, H, W)``.
    With ``support_size=None`` (or >= N) the whole pool is used and ``ensemble`` is set to 1.
    """
    dev = next(model.parameters()).device
    q = torch.as_tensor(query, dtype=torch.float32, device=dev)
    if q.ndim == 3:
        q = q[:, None]
    si = torch.as_tensor(support_images, dtype=torch.float32, device=dev)
    sl = torch.as_tensor(support_labels, dtype=torch.float32, device=dev)
    if si.ndim != 3 or si.shape != sl.shape:
        raise ValueError(
            f"support_images and support_labels must both be (N, H, W) with the same shape, got "
            f"{tuple(si.shape)} and {tuple(sl.shape)}"
        )
    n = si.shape[0]
    if n == 0:
        raise ValueError("the support pool is empty: pass at least one labelled (image, label) pair of the task")
    if support_size is None or support_size >= n:
        support_size, ensemble = n, 1
    support_size = int(support_size)
    if support_size < 1:
        raise ValueError(f"support_size must be >= 1, got {support_size}")
    if int(ensemble) < 1:
        raise ValueError(f"ensemble (M) must be >= 1, got {ensemble}")
    rng = np.random.default_rng(seed)
    pool = torch.stack([si, sl], 1)  # (N, 2, H, W)
    was_training = model.training
    model.eval()
    out = torch.zeros_like(q)
    for m in range(int(ensemble)):
        idx = torch.as_tensor(rng.choice(n, size=support_size, replace=False), device=dev)
        sup = pool[idx][None]  # (1, S, 2, H, W)
        for i in range(0, q.shape[0], batch_size):
            qb = q[i : i + batch_size]
            with runtime.autocast(dev):
                logit = model(qb, sup.expand(qb.shape[0], -1, -1, -1, -1))
            out[i : i + batch_size] += torch.sigmoid(logit.float())
    model.train(was_training)
    return out / int(ensemble)


def dice_np(pred: np.ndarray, target: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-sample hard Dice of binary arrays ``(N, H, W)``; empty-vs-empty counts as 1."""
    pred = pred.reshape(len(pred), -1).astype(bool)
    target = target.reshape(len(target), -1).astype(bool)
    inter = (pred & target).sum(1)
    denom = pred.sum(1) + target.sum(1)
    return np.where(denom == 0, 1.0, 2 * inter / np.maximum(denom, eps))


def evaluate_task(
    model,
    task,
    support_sizes: Sequence[int],
    ensembles: Sequence[int] = (1,),
    n_queries: int = 8,
    seed: int = 0,
    progress: bool = False,
):
    """Dice of UniverSeg on ``task`` for every (support size, M). The first ``n_queries`` images
    (after a seeded shuffle) are queries; the rest form the support pool. Returns a list of dict rows
    ``{task, S, M, dice}`` (mean over queries)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(task))
    qi, pi = order[:n_queries], order[n_queries:]
    if len(pi) == 0:
        raise ValueError(f"task {task.name!r} has {len(task)} images: none left for the support pool after {n_queries} queries")
    rows = []
    for S in support_sizes:
        if S > len(pi):
            continue
        for M in ensembles:
            if S == len(pi) and M > 1:
                continue
            prob = predict(model, task.images[qi], task.images[pi], task.labels[pi], support_size=S, ensemble=M, seed=seed + S)
            d = dice_np(prob[:, 0].cpu().numpy() > 0.5, task.labels[qi] > 0.5)
            rows.append(dict(task=task.name, S=int(S), M=int(M), dice=float(d.mean())))
    return rows


# =========================================================================== per-task UNet baseline
def train_task_unet(images, labels, *, steps: int = 60, seed: int = 0, lr: float = 5e-3, batch_size: int = 8, device=None, features=(8, 16, 32, 32)):
    """The *traditional* route: train a small MONAI ``UNet`` on the support images of one task only
    (with the same in-task augmentation as meta-training), and return it in eval mode."""
    from monai.networks.nets import UNet

    device = torch.device(device) if device is not None else runtime.get_device()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    features = tuple(int(f) for f in features)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=features, strides=(2,) * (len(features) - 1),
               num_res_units=1, norm="batch").to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    X = torch.as_tensor(np.asarray(images), dtype=torch.float32, device=device)
    Y = torch.as_tensor(np.asarray(labels), dtype=torch.float32, device=device)
    n = len(X)
    if n == 0:
        raise ValueError("train_task_unet got no support images; pass at least one (image, label) pair")
    net.train()
    for _ in range(steps):
        idx = rng.choice(n, size=batch_size, replace=n < batch_size)
        x, y = in_task_augment(X[idx], Y[idx], rng)
        loss = seg_loss(net(x[:, None]), y[:, None])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    return net


@torch.no_grad()
def unet_predict(net, images) -> torch.Tensor:
    dev = next(net.parameters()).device
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32, device=dev)[:, None]
    return torch.sigmoid(net(x))


def evaluate_unet(task, support_sizes: Sequence[int], n_queries: int = 8, steps: int = 60, seed: int = 0, progress: bool = False):
    """The per-task baseline on the *same* queries and support images as :func:`evaluate_task`
    with ``M = 1`` (the first random subset of size S that :func:`predict` draws). Rows
    ``{task, S, M: 0, dice}``."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(task))
    qi, pi = order[:n_queries], order[n_queries:]
    rows = []
    for S in tqdm([s for s in support_sizes if s <= len(pi)], desc=f"UNet {task.name}", disable=not progress):
        sub = pi[np.random.default_rng(seed + S).choice(len(pi), size=S, replace=False)] if S < len(pi) else pi
        net = train_task_unet(task.images[sub], task.labels[sub], steps=steps, seed=seed)
        d = dice_np(unet_predict(net, task.images[qi])[:, 0].cpu().numpy() > 0.5, task.labels[qi] > 0.5)
        rows.append(dict(task=task.name, S=int(S), M=0, dice=float(d.mean())))
    return rows


# =========================================================================== checkpoint
def checkpoint_path() -> Path:
    return ASSETS_DIR / CHECKPOINT_NAME


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(model: UniverSeg, path, meta: dict) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().half() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "channels": list(model.channels), "meta": meta}, path)
    return sha256(path)


def load_pretrained(path=None, *, device=None, verify: bool = True, build_if_missing: bool = True) -> UniverSeg:
    """The course's meta-trained UniverSeg (``universeg-tiny``), fp32 on ``device``.

    The committed checkpoint is verified against :data:`CHECKPOINT_SHA256`. If it is missing it is
    rebuilt with :func:`train_checkpoint` (about 10 min on a CPU) when ``build_if_missing``.
    """
    path = Path(path) if path is not None else checkpoint_path()
    if not path.exists():
        if not build_if_missing:
            raise FileNotFoundError(
                f"UniverSeg checkpoint {path} is missing; rebuild it with "
                f"`python -m course_lib.methods.universeg --train` (about 10 min on a CPU)"
            )
        print(f"{path.name} missing: meta-training it now (python -m course_lib.methods.universeg --train)")
        train_checkpoint(path)
    elif verify and path == checkpoint_path() and CHECKPOINT_SHA256 != "TO_BE_FILLED":
        got = sha256(path)
        if got != CHECKPOINT_SHA256:
            raise ValueError(
                f"checksum mismatch for {path}: expected {CHECKPOINT_SHA256}, got {got}. The file is corrupt or was "
                f"retrained; delete it and run `python -m course_lib.methods.universeg --train`, or update "
                f"CHECKPOINT_SHA256 and data_cards/universeg-tiny.md if you retrained on purpose"
            )
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = UniverSeg(ck["channels"])
    model.load_state_dict({k: v.float() for k, v in ck["state_dict"].items()})
    model.meta = ck.get("meta", {})
    device = torch.device(device) if device is not None else runtime.get_device()
    return model.to(device).eval()


def train_checkpoint(path=None, **overrides) -> tuple[UniverSeg, dict]:
    """Build the SonoSynth task pool, meta-train with :data:`DEFAULT_TRAIN` and save the checkpoint."""
    from course_lib import seg_tasks

    cfg = dict(DEFAULT_TRAIN, **overrides)
    path = Path(path) if path is not None else checkpoint_path()
    runtime.seed_everything(cfg["seed"])
    t0 = time.perf_counter()
    train_tasks, _held_tasks = seg_tasks.sonosynth_split(image_size=cfg["image_size"], seed=cfg["seed"])
    t_data = time.perf_counter() - t0
    model, hist = meta_train(
        train_tasks,
        channels=cfg["channels"],
        steps=cfg["steps"],
        batch_tasks=cfg["batch_tasks"],
        max_support=cfg["max_support"],
        lr=cfg["lr"],
        seed=cfg["seed"],
    )
    meta = dict(
        cfg,
        device=str(runtime.get_device()),
        channels=list(cfg["channels"]),
        train_tasks=[t.name for t in train_tasks],
        held_out_structures=list(seg_tasks.HELD_OUT_STRUCTURES),
        history=hist,
        data_seconds=round(t_data, 1),
        train_seconds=round(time.perf_counter() - t0 - t_data, 1),
        torch=torch.__version__,
    )
    digest = save_checkpoint(model, path, meta)
    print(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB) sha256={digest}")
    return model, meta


def main(argv=None):
    ap = argparse.ArgumentParser(description="Meta-train the course's UniverSeg checkpoint on SonoSynth tasks.")
    ap.add_argument("--train", action="store_true", help="meta-train and write the checkpoint")
    ap.add_argument("--steps", type=int, default=DEFAULT_TRAIN["steps"])
    ap.add_argument("--out", default=None, help=f"output path (default course_lib/assets/{CHECKPOINT_NAME})")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    if not args.train:
        ap.print_help()
        return
    if args.device:
        import os

        os.environ["COURSE_DEVICE"] = args.device
    train_checkpoint(args.out, steps=args.steps)


if __name__ == "__main__":
    main()

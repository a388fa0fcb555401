"""UniverSeg meta-training: in-task and task augmentation, episode sampling and the meta-training
loop of Sec. 3.3 of Butoi et al. (ICCV 2023) on :mod:`course_lib.data.seg_tasks` tasks (notebook 06).

:func:`meta_train` is the slide's algorithm: repeat { sample a task t; sample a query (x, y) from t;
sample a support set S of size n from the rest of t; apply *in-task* augmentation to the query and to
each support entry independently; apply one *task* augmentation to all of them; predict f(x, S); loss;
step }. Every step runs through :func:`course_lib.train.fit` (steps mode, ``data(step)`` draws the
episode). The loss is soft Dice (the paper's loss, per sample, smoothing 1) + 0.5 BCE
(:func:`course_lib.losses.bce_dice_loss`; the BCE term stabilises the first steps of a small model).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import losses, runtime
from course_lib.methods.segfm.universeg import UniverSeg
from course_lib.train import fit

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
def episode_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice (per sample, smoothing 1; the paper's loss) + 0.5 BCE, from :mod:`course_lib.losses`."""
    return losses.bce_dice_loss(logits, target, bce_weight=0.5, dice_weight=1.0, smooth=1.0)


# region: universeg-episode
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
# endregion


def running_mean(values: Sequence[float], every: int = 25, momentum: float = 0.98) -> dict:
    """``{"step", "loss"}``: exponential running mean of per-step losses, logged every ``every`` steps
    and at the last step (the curve stored in the checkpoint and plotted in notebook 06)."""
    hist, run = {"step": [], "loss": []}, None
    for step, v in enumerate(values):
        run = v if run is None else momentum * run + (1 - momentum) * v
        if step % every == 0 or step == len(values) - 1:
            hist["step"].append(step)
            hist["loss"].append(run)
    return hist


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
    """Meta-train a UniverSeg model on a list of :class:`course_lib.data.seg_tasks.Task`.

    The loop is the slide's algorithm (module docstring); the support size of each step is drawn
    uniformly from ``1..max_support`` so that one model serves every support size. AdamW (weight decay
    1e-4) with a one-cycle LR (5 % warm-up), through :func:`course_lib.train.fit`.
    Returns ``(model, history)`` with ``history = {"step": [...], "loss": [...]}`` (running mean).
    """
    if len(tasks) == 0:
        raise ValueError("meta_train got no tasks; build them with course_lib.data.seg_tasks.sonosynth_tasks(...)")
    device = torch.device(device) if device is not None else runtime.get_device()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = (model or UniverSeg(channels)).to(device)
    model.validate = False  # inputs come from our own sampler
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)

    def episode(step):
        s = int(rng.integers(1, max_support + 1))
        return sample_episode(tasks, batch_tasks, s, rng, device)

    def forward(net, batch):
        q, qy, sup = batch
        return episode_loss(net(q, sup).float(), qy)

    try:
        fit_hist = fit(model, episode, forward=forward, steps=steps, optimizer=opt, scheduler=sched,
                       device=device, progress=progress, desc="meta-train")
    finally:
        model.validate = True
    model.eval()
    return model, running_mean(fit_hist["step_loss"], log_every)

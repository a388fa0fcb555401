"""UniverSeg inference and evaluation: support-set ensembling, Dice vs support size / ensemble size on
a task, and the per-task UNet baseline trained on the same support images (notebook 06, benchmarks/eval_universeg.py).

* :func:`predict` -- inference with *support-set ensembling* (Butoi et al., ICCV 2023, Sec. 4.3):
  ``y_hat = 1/M sum_m sigmoid(f(x, S_m))`` over ``M`` random support sets drawn from a pool.
* :func:`evaluate_task` -- hard Dice (:func:`course_lib.metrics.dice` at p > 0.5) for every (S, M).
* :func:`train_task_unet` / :func:`evaluate_unet` -- the *traditional* route: a small MONAI ``UNet``
  trained (with :func:`course_lib.train.fit`) on the support images of one task only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from course_lib import metrics, runtime
from course_lib.methods.segfm.meta_training import episode_loss, in_task_augment
from course_lib.train import fit
from course_lib.train import predict as batched_predict

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
        seeds=(0, 1, 2),
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
        seeds=(0, 1, 2, 3, 4),
    ),
)


# =========================================================================== inference
# region: universeg-predict
def predict(
    model,
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

    ``query``: ``(Q, H, W)`` or ``(Q, 1, H, W)``; returns probabilities ``(Q, 1, H, W)`` on the CPU.
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
    out = torch.zeros(q.shape, dtype=torch.float32)
    for m in range(int(ensemble)):
        idx = torch.as_tensor(rng.choice(n, size=support_size, replace=False), device=dev)
        sup = pool[idx][None]  # (1, S, 2, H, W): one support set S_m for every query
        out += batched_predict(model, q, batch_size=batch_size,
                               fn=lambda net, qb: torch.sigmoid(net(qb, sup.expand(qb.shape[0], -1, -1, -1, -1)).float()))
    return out / int(ensemble)
# endregion


def query_split(task, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(query_idx, pool_idx)``: the first ``n_queries`` images of a seeded shuffle are queries, the
    rest the support pool (the split :func:`evaluate_task` and :func:`evaluate_unet` share)."""
    order = np.random.default_rng(seed).permutation(len(task))
    qi, pi = order[:n_queries], order[n_queries:]
    if len(pi) == 0:
        raise ValueError(f"task {task.name!r} has {len(task)} images: none left for the support pool after {n_queries} queries")
    return qi, pi


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
    qi, pi = query_split(task, n_queries, seed)
    rows = []
    for S in support_sizes:
        if S > len(pi):
            continue
        for M in ensembles:
            if S == len(pi) and M > 1:
                continue
            prob = predict(model, task.images[qi], task.images[pi], task.labels[pi], support_size=S, ensemble=M, seed=seed + S)
            d = metrics.dice(prob[:, 0].numpy() > 0.5, task.labels[qi] > 0.5)
            rows.append(dict(task=task.name, S=int(S), M=int(M), dice=float(d.mean())))
    return rows


# =========================================================================== per-task UNet baseline
def train_task_unet(images, labels, *, steps: int = 60, seed: int = 0, lr: float = 5e-3, batch_size: int = 8, device=None,
                    features=(8, 16, 32, 32), progress: bool = False):
    """The *traditional* route: train a small MONAI ``UNet`` on the support images of one task only
    (with the same in-task augmentation and loss as meta-training; AdamW, constant LR, through
    :func:`course_lib.train.fit`), and return it in eval mode."""
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

    def batch(step):
        idx = rng.choice(n, size=batch_size, replace=n < batch_size)
        x, y = in_task_augment(X[idx], Y[idx], rng)
        return x[:, None], y[:, None]

    fit(net, batch, episode_loss, steps=steps, optimizer=opt, scheduler=None, device=device, progress=progress,
        desc="task UNet")
    net.eval()
    return net


def unet_predict(net, images) -> torch.Tensor:
    """Sigmoid probabilities ``(N, 1, H, W)`` (CPU) of a per-task UNet on ``(N, H, W)`` images."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None]
    return batched_predict(net, x, fn=lambda m, xb: torch.sigmoid(m(xb).float()))


def evaluate_unet(task, support_sizes: Sequence[int], n_queries: int = 8, steps: int = 60, seed: int = 0, progress: bool = False):
    """The per-task baseline on the *same* queries and support images as :func:`evaluate_task`
    with ``M = 1`` (the first random subset of size S that :func:`predict` draws). Rows
    ``{task, S, M: 0, dice}``."""
    from tqdm.auto import tqdm

    qi, pi = query_split(task, n_queries, seed)
    rows = []
    for S in tqdm([s for s in support_sizes if s <= len(pi)], desc=f"UNet {task.name}", disable=not progress):
        sub = pi[np.random.default_rng(seed + S).choice(len(pi), size=S, replace=False)] if S < len(pi) else pi
        net = train_task_unet(task.images[sub], task.labels[sub], steps=steps, seed=seed)
        d = metrics.dice(unet_predict(net, task.images[qi])[:, 0].numpy() > 0.5, task.labels[qi] > 0.5)
        rows.append(dict(task=task.name, S=int(S), M=0, dice=float(d.mean())))
    return rows

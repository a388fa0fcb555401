"""TP-Seg: one model, one set of parameters, many lesion segmentation tasks (TCA encoder + PGTD decoder),
its task-balanced sampler, training through ``train.fit`` and per-task evaluation; notebook 11.

Paper: "TP-Seg: a task-prototype framework for unified medical lesion segmentation" (8 tasks, average
Dice 86.63 %). The model is ``PGTD(TCA-encoder(x, t), t)`` (Fig. 2); training (Sec. 3.3) draws one task
per batch with a ``WeightedRandomSampler`` whose per-sample weights are ``1 / N_t`` (so every task is
drawn equally often, P(t) = w_t / sum w), decays the split-gate temperature linearly 1.0 -> 0.3, and
updates the prototypes by EMA. Inference is per task id.

``TPSegConfig`` names every ablation of Tables 3-4: ``adapter`` ("dual" = TCA, "none" = w/o TCA,
"shared" = B3, "task" = B4, "lora" = B1, "adapter" = B2) and ``stages`` (PGTD1, PGTD2, PGTD3 on/off;
all off = w/o PGTD; all off with ``adapter="none"`` = the A1 baseline: shared frozen encoder + U-decoder).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from course_lib import losses, metrics, runtime, train
from .pgtd import ALPHA, LAMBDA_P, MOMENTUM, N_EXPERTS, PGTDModule, PrototypeGuidedDecoder
from .tca import TaskConditionedEncoder, gate_temperature

runtime.register_section(
    "tpseg",
    quick=dict(image_size=64, hidden=4, width=16, heads=2, steps=30, ablation_steps=30, batch_size=4, lr=3e-3,
               seeds=3, ablation_seeds=1, n_train=(96, 64, 48, 32, 24, 16, 20), n_val=10, max_tasks=8,
               encoder="sonoclip-tiny", ablations=("A2", "A3", "B3", "B4", "C4", "T4-1", "T4-3")),
    full=dict(image_size=512, hidden=32, width=128, heads=4, steps=6000, ablation_steps=6000, batch_size=8, lr=3e-5,
              seeds=3, ablation_seeds=3, n_train=(1000, 600, 450, 300, 360, 300, 20), n_val=150, max_tasks=16,
              encoder="facebook/sam2.1-hiera-small",
              ablations=("A2", "A3", "B3", "B4", "C1", "C2", "C3", "C4", "C5", "T4-1", "T4-2", "T4-3")),
    # smoke mode (COURSE_SMOKE=1): SAM 2 Hiera-S at 512 px on a CPU (peak RAM ~7 GiB at four images per batch) trains
    # and evaluates about 20 models in notebook 11: one image per batch, one step per run, a few training images and
    # one validation image per task keep it within minutes
    smoke=dict(batch_size=1, n_val=1, steps=1, ablation_steps=1, n_train=(12, 10, 8, 6, 6, 4, 4)),
)


@dataclass(frozen=True)
class TPSegConfig:
    """Sizes and switches of a TP-Seg model (defaults = the paper's: alpha 0.5, lambda_p 5, M 6, m 0.9)."""

    adapter: str = "dual"
    stages: tuple = (True, True, True)  # PGTD1, PGTD2, PGTD3
    hidden: int = 16  # router bottleneck channels
    width: int = 32  # decoder width (prototype dimension)
    heads: int = 2
    alpha: float = ALPHA
    lambda_p: float = LAMBDA_P
    n_experts: int = N_EXPERTS
    momentum: float = MOMENTUM
    lora_rank: int = 4
    extra: dict = field(default_factory=dict)


# region: tpseg-model
class TPSeg(nn.Module):
    """``forward(x, task, mask=None) -> logits (B, 1, H, W)``: the task-conditioned encoder gives four
    feature levels, the prototype-guided decoder predicts at the first level, bilinear upsampling gives
    the input size. ``mask`` (training only) drives the EMA prototype update (eqs. 12-13)."""

    def __init__(self, encoder: TaskConditionedEncoder, cfg: TPSegConfig, task_names):
        super().__init__()
        self.task_names = tuple(task_names)
        if len(self.task_names) != encoder.n_tasks:
            raise ValueError(f"{len(self.task_names)} task names for an encoder built for {encoder.n_tasks} tasks")
        self.cfg = cfg
        self.encoder = encoder
        self.decoder = PrototypeGuidedDecoder(encoder.tap_dims, cfg.width, encoder.n_tasks, stages=cfg.stages,
                                              heads=cfg.heads, n_experts=cfg.n_experts, alpha=cfg.alpha,
                                              lambda_p=cfg.lambda_p, momentum=cfg.momentum)

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def task_index(self, task) -> int:
        """The task id of ``task`` (an id or a name); a clear error for an unknown one."""
        if isinstance(task, str):
            if task not in self.task_names:
                raise KeyError(f"unknown task {task!r}; this model knows {list(self.task_names)}")
            return self.task_names.index(task)
        if isinstance(task, torch.Tensor):
            task = int(task.reshape(-1)[0])
        if not isinstance(task, (int, np.integer)) or not 0 <= task < self.n_tasks:
            raise KeyError(f"unknown task id {task!r}; valid ids are 0..{self.n_tasks - 1} ({list(self.task_names)})")
        return int(task)

    def forward(self, x: torch.Tensor, task, mask: torch.Tensor | None = None) -> torch.Tensor:
        t = self.task_index(task)
        if mask is not None and (mask.shape[0] != x.shape[0] or mask.shape[-2:] != x.shape[-2:]):
            raise ValueError(f"mask {tuple(mask.shape)} and images {tuple(x.shape)} differ in batch or size; "
                             f"resize the masks with the images (nearest neighbour)")
        feats = self.encoder(x, t)
        logits = self.decoder(feats, t, mask)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
# endregion


def build_tpseg(encoder_name: str, task_names, cfg: TPSegConfig | None = None, *, encoder: nn.Module | None = None,
                device=None) -> TPSeg:
    """TP-Seg on a named encoder: ``"sonoclip-tiny"`` (any course/open_clip backbone name: its ``.visual``
    ViT) or a SAM 2 name containing ``"sam2"`` (``Sam2Model``'s vision encoder, Hiera). ``encoder`` passes a
    ready module instead (e.g. a random-weight ``Sam2VisionModel`` in tests); its kind is detected."""
    cfg = cfg or TPSegConfig()
    if encoder is None:
        if "sam2" in encoder_name.lower():
            from .tca import load_sam2_encoder

            encoder = load_sam2_encoder(encoder_name)
        else:
            from course_lib import models

            bb = models.load_backbone(encoder_name)
            encoder = bb.visual
            mean, std = getattr(bb, "mean", None), getattr(bb, "std", None)
            enc = TaskConditionedEncoder(encoder, "vit", len(task_names), adapter=cfg.adapter, hidden=cfg.hidden,
                                         lora_rank=cfg.lora_rank, mean=mean, std=std)
            return TPSeg(enc, cfg, task_names).to(device or "cpu")
    kind = "hiera" if hasattr(encoder, "backbone") and hasattr(encoder.backbone, "blocks") else "vit"
    enc = TaskConditionedEncoder(encoder, kind, len(task_names), adapter=cfg.adapter, hidden=cfg.hidden,
                                 lora_rank=cfg.lora_rank)
    return TPSeg(enc, cfg, task_names).to(device or "cpu")


# region: tpseg-sampler
class TaskBatchSampler(torch.utils.data.Sampler):
    """One task per batch, tasks balanced by a ``WeightedRandomSampler`` (Sec. 3.3).

    Every sample of task ``t`` gets weight ``w_t = 1 / N_t`` (``balanced=True``; ``False`` = weight 1, i.e.
    tasks drawn in proportion to their size). Each batch: one draw from the weighted sampler picks a
    sample, hence its task; then ``batch_size`` samples of that task are drawn uniformly. Yields lists of
    global indices into the concatenation of the tasks.
    """

    def __init__(self, sizes, batch_size: int, n_batches: int, *, balanced: bool = True, seed: int = 0):
        sizes = [int(n) for n in sizes]
        if not sizes or min(sizes) <= 0:
            raise ValueError(f"every task needs at least one training sample, got sizes {sizes}")
        self.sizes, self.batch_size, self.n_batches, self.balanced = sizes, batch_size, n_batches, balanced
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.task_of = np.repeat(np.arange(len(sizes)), sizes)
        w = np.concatenate([np.full(n, 1.0 / n if balanced else 1.0) for n in sizes])
        self.generator = torch.Generator().manual_seed(seed)
        self.anchor = torch.utils.data.WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), n_batches,
                                                             replacement=True, generator=self.generator)

    def task_probabilities(self) -> np.ndarray:
        """P(t) = w_t N_t / sum_j w_j N_j."""
        mass = np.array([1.0 if self.balanced else float(n) for n in self.sizes])
        return mass / mass.sum()

    def __iter__(self):
        for a in self.anchor:
            t = int(self.task_of[a])
            idx = torch.randint(self.sizes[t], (self.batch_size,), generator=self.generator)
            yield (self.offsets[t] + idx.numpy()).tolist()

    def __len__(self) -> int:
        return self.n_batches
# endregion


def _stack(tasks, key):
    return torch.cat([torch.as_tensor(np.asarray(t[key]), dtype=torch.float32) for t in tasks])


# region: tpseg-train
def train_unified(model: TPSeg, train_sets, *, steps: int, lr: float, batch_size: int = 8, balanced: bool = True,
                  seed: int = 0, task_ids=None, progress: bool = False, desc: str = "TP-Seg",
                  gate_lr_mult: float = 10.0) -> dict:
    """Train ``model`` on several tasks with :func:`course_lib.train.fit` (Adam, as in Sec. 4.1; cosine
    schedule), BCE + Dice loss, one task per batch from :class:`TaskBatchSampler`, the split-gate
    temperature decayed 1.0 -> 0.3 over the steps, prototypes updated by EMA inside the forward pass.

    ``train_sets``: list of dicts with ``image`` (N, H, W) in [0, 1] and ``mask`` (N, H, W) in {0, 1}, one per
    task, in the order of ``task_ids`` (default: 0..T-1). ``gate_lr_mult``: the split-gate vectors train with
    ``lr * gate_lr_mult`` (our choice, not the paper's: the gate is a few scalars per task that must be able to move
    the split by a block within a short schedule; the paper does not state its rate). Returns ``fit``'s history plus
    ``task_counts``.
    """
    task_ids = list(range(len(train_sets))) if task_ids is None else list(task_ids)
    for i, ts in enumerate(train_sets):
        xs, ys = np.shape(ts["image"]), np.shape(ts["mask"])
        if xs != ys or len(xs) != 3:
            raise ValueError(f"task {i}: images {xs} and masks {ys} differ; masks must match images, both (N, H, W)")
        if xs[1:] != np.shape(train_sets[0]["image"])[1:]:
            raise ValueError(f"task {i}: image size {xs[1:]} differs from task 0's; resize all tasks to one size")
    x_all, y_all = _stack(train_sets, "image"), _stack(train_sets, "mask")
    sampler = TaskBatchSampler([len(t["image"]) for t in train_sets], batch_size, steps, balanced=balanced, seed=seed)
    batches = iter(sampler)
    counts = np.zeros(len(train_sets), int)
    device = train.model_device(model)

    def data(step):
        idx = next(batches)
        t = int(sampler.task_of[idx[0]])
        counts[t] += 1
        return dict(x=x_all[idx].unsqueeze(1), y=y_all[idx].unsqueeze(1), task=task_ids[t])

    def forward(m, batch):
        logits = m(batch["x"], batch["task"], mask=batch["y"])
        return losses.bce_dice_loss(logits, batch["y"])

    def after_step(step, m, opt):
        m.encoder.temperature = gate_temperature((step + 1) / max(steps - 1, 1))

    model.encoder.temperature = gate_temperature(0.0)
    torch.manual_seed(seed)
    gate = [p for p in model.encoder.gate.parameters()] if model.encoder.gate is not None else []
    gate_ids = {id(p) for p in gate}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in gate_ids]
    groups = [{"params": rest}] + ([{"params": gate, "lr": lr * gate_lr_mult}] if gate else [])
    hist = train.fit(model, data, forward=forward, steps=steps, lr=lr, optimizer="adam", weight_decay=0.0,
                     params=groups, scheduler="cosine", after_step=after_step, device=device, progress=progress,
                     desc=desc)
    model.encoder.temperature = gate_temperature(1.0)
    hist["task_counts"] = counts.tolist()
    return hist
# endregion


@torch.no_grad()
def evaluate_tasks(model: TPSeg, val_sets, *, task_ids=None, batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Per-task mean Dice and mIoU (%) on held-out images: ``{task name: {"dice", "miou"}}``. mIoU is the mean
    of the foreground and background IoU per image (the usual reading of the paper's mIoU), then averaged."""
    model.eval()
    task_ids = list(range(len(val_sets))) if task_ids is None else list(task_ids)
    out = {}
    for t, vs in zip(task_ids, val_sets):
        x = torch.as_tensor(np.asarray(vs["image"]), dtype=torch.float32).unsqueeze(1)
        y = np.asarray(vs["mask"]).astype(bool)
        logits = train.predict(model, x, batch_size=batch_size, fn=lambda m, xb, t=t: m(xb, t))
        pred = (logits[:, 0] > 0).cpu().numpy()
        d = metrics.dice(pred, y)
        iou_fg, iou_bg = metrics.iou(pred, y), metrics.iou(~pred, ~y)
        out[model.task_names[t]] = dict(dice=100 * float(np.mean(d)), miou=100 * float(np.mean((iou_fg + iou_bg) / 2)))
    return out


# region: tpseg-prototype-analysis
@torch.no_grad()
def prototype_similarity(model: TPSeg) -> dict[str, np.ndarray]:
    """Fig. 7: cosine similarity (T x T) between the foreground prototypes of all tasks, per PGTD module."""
    out = {}
    for name, mod in model.decoder.pgtd_modules().items():
        p = F.normalize(mod.prototypes[:, 0], dim=-1)
        out[name] = (p @ p.T).cpu().numpy()
    return out


@torch.no_grad()
def fg_bg_separation(model: TPSeg) -> dict[str, np.ndarray]:
    """Fig. 8: FG-BG separation ``1 - cos(P_fg, P_bg)`` per task (0 = identical, 2 = opposite), per PGTD module."""
    return {name: (1 - F.cosine_similarity(mod.prototypes[:, 0], mod.prototypes[:, 1], dim=-1)).cpu().numpy()
            for name, mod in model.decoder.pgtd_modules().items()}
# endregion

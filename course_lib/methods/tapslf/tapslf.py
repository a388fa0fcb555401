"""TAP-SLF: task-aware soft prompts + selective top-layer LoRA + four task heads on one frozen encoder;
used by notebook 10 (``notebooks/10_tap_slf.ipynb``) and :mod:`course_lib.experiments.tapslf`.

Paper: "TAP-SLF: Parameter-Efficient Adaptation of Vision Foundation Models for Multi-Task Ultrasound
Image Analysis" (FMC_UIA 2026 challenge, 5th place).

* **Task-aware soft prompts** (eqs. 1-2): per task ``t`` a learnable ``P_t in R^{L x d}`` (``L = 10``),
  concatenated with the position-encoded patch embeddings before the first encoder block:
  ``z0 = [P_t ; E(x) + E_pos]`` (where exactly, for a ViT and for Florence-2's DaViT:
  :mod:`course_lib.methods.tapslf.encoders`). **Detection bypasses the prompts** (Sec. 2.2).
  ``prompt_mode="shared"`` gives the VPT baseline (one ``P`` for every task, detection included).
* **Selective layer-wise LoRA** (eqs. 3-5): ``Delta W = B A`` (eq. 3), ``W' = W0 + (alpha / r) B A`` (eq. 4),
  ``h = W0 x + (alpha / r) B A x`` (eq. 5) on the query, key, value and output projections of the top
  ``1 - frozen_ratio`` of the encoder blocks (paper: top 30 %, rank 8, alpha 16), through ``peft``.
  ``n_frozen = floor(frozen_ratio * depth + 0.5)`` bottom blocks stay frozen without LoRA.
* **Four heads** (Sec. 2.4): classification and regression from global average pooling (GAP) of the
  last block's patch tokens; segmentation and detection each from their own FPN-style decoder over
  multi-scale features (ViT: blocks at relative depths 1/2 and 1, resampled x2/x1 as in ViTDet's
  simple pyramid; DaViT: the outputs of stages 2-4, strides 8/16/32). Detection predicts one box per
  image (one lesion per image in SonoSynth and the challenge's detection sets) by a soft-argmax over
  a centre heat map plus a width/height map.
* **One model, a task id per batch**: ``model(x, task)``; a batch must hold one task. Training
  (:func:`train`) visits the tasks round-robin, one single-task batch per step, so every task gets
  the same number of updates and each step's loss has one scale (no loss weighting to tune).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import losses, metrics, train as T
from course_lib.methods.peft.lora import apply_lora
from course_lib.methods.tapslf.encoders import DaViTEncoder, ViTEncoder, exact_pattern, make_encoder

__all__ = ["TASKS", "TapSlfConfig", "VARIANTS", "TaskPrompts", "lora_blocks", "FPNDecoder", "SegHead", "DetHead",
           "ClsHead", "RegHead", "TapSlfModel", "build_tapslf", "batch_task", "task_loss", "round_robin", "train",
           "cache_features", "warm_start_heads", "evaluate",
           "parameter_breakdown"]

#: the four tasks of the paper: segmentation, classification, detection, regression
TASKS = ("seg", "cls", "det", "reg")


@dataclass(frozen=True)
class TapSlfConfig:
    """One TAP-SLF configuration (defaults = the paper's Sec. 3.2 settings).

    ``prompt_mode``: ``"task"`` (TAP: one ``P_t`` per task), ``"shared"`` (VPT: one ``P`` for all tasks)
    or ``None`` (no prompts). ``det_prompts``: give detection prompts too (the paper bypasses them).
    ``lora``: inject LoRA (SLF) into the top ``1 - frozen_ratio`` blocks (``frozen_ratio=0`` = every block).
    """

    prompt_mode: str | None = "task"
    prompt_length: int = 10
    det_prompts: bool = False
    lora: bool = True
    frozen_ratio: float = 0.7
    rank: int = 8
    alpha: float = 16.0
    n_classes: int = 2
    fpn_dim: int = 32

    def __post_init__(self):
        if self.prompt_mode not in ("task", "shared", None):
            raise ValueError(f"prompt_mode must be 'task' (TAP), 'shared' (VPT) or None, got {self.prompt_mode!r}")
        if not isinstance(self.prompt_length, int) or isinstance(self.prompt_length, bool) or self.prompt_length <= 0:
            raise ValueError(f"prompt_length must be a positive integer (the paper uses L = 10), got "
                             f"{self.prompt_length!r}; to run without prompts use prompt_mode=None")
        if not isinstance(self.frozen_ratio, (int, float)) or not 0.0 <= float(self.frozen_ratio) < 1.0:
            raise ValueError(f"frozen_ratio must be in [0, 1) (fraction of bottom blocks kept frozen; the paper "
                             f"uses 0.7), got {self.frozen_ratio!r}; to train no LoRA at all use lora=False")
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"rank must be a positive integer (paper: 8), got {self.rank!r}")


#: the configurations the notebook compares (Tables 2-4 and the detection-bypass test)
VARIANTS = {
    "heads_only": TapSlfConfig(prompt_mode=None, lora=False),  # baseline / "Backbone" row of Table 3
    "full_lora": TapSlfConfig(prompt_mode=None, lora=True, frozen_ratio=0.0),
    "vpt_shared": TapSlfConfig(prompt_mode="shared", lora=False, det_prompts=True),
    "tap_slf": TapSlfConfig(),
    "wo_tap": TapSlfConfig(prompt_mode=None),  # SLF only
    "wo_slf": TapSlfConfig(lora=False),  # TAP only
    "tap_slf_det_prompts": TapSlfConfig(det_prompts=True),
}


def lora_blocks(depth: int, frozen_ratio: float) -> list[int]:
    """Indices of the blocks that get LoRA: the top ``depth - floor(frozen_ratio * depth + 0.5)``.

    Florence-2-base (12 blocks) at 0.7 -> blocks 8..11; the 4-block ``sonoclip-tiny`` at 0.7 -> [3],
    at 0.5 and 0.6 -> [2, 3]. Raises when no block would be adapted.
    """
    if not isinstance(frozen_ratio, (int, float)) or not 0.0 <= float(frozen_ratio) < 1.0:
        raise ValueError(f"frozen_ratio must be in [0, 1), got {frozen_ratio!r}")
    n_frozen = int(math.floor(frozen_ratio * depth + 0.5))
    if n_frozen >= depth:
        raise ValueError(f"frozen_ratio {frozen_ratio} freezes all {depth} blocks (rounded), so no block gets LoRA; "
                         f"use a ratio below {(depth - 0.5) / depth:.3f} for this depth, or lora=False")
    return list(range(n_frozen, depth))


# region: tapslf-prompts
class TaskPrompts(nn.Module):
    """Learnable prompt sets (eq. 1): ``P_t in R^{L x d}`` per task (``mode="task"``) or one shared ``P``.

    Initialised as in VPT (Jia et al., ECCV 2022): uniform in ``[-v, v]``, ``v = sqrt(6 / (fan + d))``.
    ``get(task, batch)`` returns ``(B, L, d)`` or ``None`` when the task bypasses the prompts.
    """

    def __init__(self, tasks, length: int, width: int, mode: str = "task", bypass=("det",), fan: int = 0):
        super().__init__()
        if not isinstance(length, int) or length <= 0:
            raise ValueError(f"prompt length must be a positive integer (paper: L = 10), got {length!r}")
        self.mode, self.length, self.width = mode, length, width
        self.bypass = tuple(bypass)
        v = math.sqrt(6.0 / ((fan or width) + width))
        keys = ["shared"] if mode == "shared" else [t for t in tasks if t not in self.bypass]
        self.prompts = nn.ParameterDict({k: nn.Parameter(torch.empty(length, width).uniform_(-v, v)) for k in keys})

    def get(self, task: str, batch: int):
        if task in self.bypass:
            return None  # Sec. 2.2: detection bypasses the prompts
        p = self.prompts["shared" if self.mode == "shared" else task]
        return p.unsqueeze(0).expand(batch, -1, -1)
# endregion


class FPNDecoder(nn.Module):
    """FPN-style decoder: 1x1 laterals, optional up-sampling (ViT simple pyramid), top-down sum,
    3x3 smoothing; returns the finest map ``(B, dim, h, w)``."""

    def __init__(self, in_channels, scales, dim: int = 32):
        super().__init__()
        self.scales = list(scales)
        self.laterals = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.smooth = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(4 if dim % 4 == 0 else 1, dim),
                                    nn.GELU())

    def forward(self, maps):
        lat = []
        for m, conv, s in zip(maps, self.laterals, self.scales):
            y = conv(m)
            if s > 1:
                y = F.interpolate(y, scale_factor=s, mode="bilinear", align_corners=False)
            lat.append(y)
        out = lat[-1]
        for y in reversed(lat[:-1]):  # top-down pathway (coarse -> fine)
            out = y + F.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return self.smooth(out)


class SegHead(nn.Module):
    """FPN decoder -> 1x1 conv -> mask logits up-sampled to the input size ``(B, 1, S, S)``."""

    def __init__(self, in_channels, scales, dim, image_size):
        super().__init__()
        self.decoder = FPNDecoder(in_channels, scales, dim)
        self.out = nn.Conv2d(dim, 1, 1)
        self.image_size = image_size

    def forward(self, maps):
        y = self.out(self.decoder(maps))
        return F.interpolate(y, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)


class DetHead(nn.Module):
    """FPN decoder -> centre heat map + width/height map; box by soft-argmax.

    ``p = softmax(heat)`` over the grid; centre ``c = sum p * cell_centre``; size ``wh = sum p * sigmoid(size)``;
    returns normalised ``[x0, y0, x1, y1]`` in ``[0, 1]`` (multiply by the image size for pixels).
    """

    def __init__(self, in_channels, scales, dim):
        super().__init__()
        self.decoder = FPNDecoder(in_channels, scales, dim)
        self.out = nn.Conv2d(dim, 3, 1)

    def forward(self, maps):
        y = self.out(self.decoder(maps))
        B, _, h, w = y.shape
        p = torch.softmax(y[:, 0].flatten(1), dim=1).view(B, h, w)
        ys = (torch.arange(h, device=y.device, dtype=y.dtype) + 0.5) / h
        xs = (torch.arange(w, device=y.device, dtype=y.dtype) + 0.5) / w
        cx = (p.sum(1) * xs).sum(1)
        cy = (p.sum(2) * ys).sum(1)
        wh = (p.unsqueeze(1) * torch.sigmoid(y[:, 1:3])).sum((2, 3))
        box = torch.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], 1)
        return box.clamp(0, 1)


class ClsHead(nn.Module):
    """GAP vector -> LayerNorm -> linear class logits."""

    def __init__(self, width, n_classes):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_classes))

    def forward(self, pooled):
        return self.net(pooled)


class RegHead(nn.Module):
    """GAP vector -> LayerNorm -> linear -> ``mu + sd * z`` (target standardised with the training set's
    mean/sd, stored as buffers by :func:`train`)."""

    def __init__(self, width):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("sd", torch.ones(()))

    def forward(self, pooled):
        return self.mu + self.sd * self.net(pooled)[:, 0]


# region: tapslf-model
class TapSlfModel(nn.Module):
    """One shared encoder, prompts, four heads; ``model(x, task)`` returns that task's prediction:
    seg ``(B, 1, S, S)`` logits, cls ``(B, C)`` logits, det ``(B, 4)`` normalised boxes, reg ``(B,)``."""

    def __init__(self, encoder, config: TapSlfConfig, tasks=TASKS):
        super().__init__()
        self.encoder, self.config, self.tasks = encoder, config, tuple(tasks)
        self.prompts = None
        if config.prompt_mode is not None:
            bypass = () if config.det_prompts else ("det",)
            fan = 3 * getattr(encoder, "patch_size", 0) ** 2
            self.prompts = TaskPrompts(self.tasks, config.prompt_length, encoder.width, config.prompt_mode, bypass, fan)
        ch, sc, S = encoder.map_channels, encoder.map_scales, encoder.image_size
        out_w = getattr(encoder, "out_width", encoder.width)
        self.heads = nn.ModuleDict({"seg": SegHead(ch, sc, config.fpn_dim, S), "det": DetHead(ch, sc, config.fpn_dim),
                                    "cls": ClsHead(out_w, config.n_classes), "reg": RegHead(out_w)})

    def check_task(self, task) -> str:
        if isinstance(task, (list, tuple)):
            names = set(task)
            if len(names) != 1:
                raise ValueError(f"this batch mixes tasks {sorted(names)}; TAP-SLF selects one prompt set and one head "
                                 f"per batch: build single-task batches (see tapslf.train's round-robin schedule)")
            task = next(iter(names))
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; TAP-SLF knows {self.tasks} (seg, cls, det, reg)")
        return task

    def forward(self, x, task):
        task = self.check_task(task)
        prompts = self.prompts.get(task, x.shape[0]) if self.prompts is not None else None
        maps, pooled = self.encoder(x, prompts)
        return self.heads[task](maps if task in ("seg", "det") else pooled)
# endregion


# region: tapslf-build
def build_tapslf(backbone, config: TapSlfConfig | str = "tap_slf", tasks=TASKS, **encoder_kw) -> TapSlfModel:
    """Freeze ``backbone``, add prompts (eq. 1-2), LoRA on the top blocks (eqs. 3-5) and the four heads.

    ``backbone``: a course ``Backbone`` / open_clip vision transformer, or a Florence-2
    ``Florence2VisionBackbone``. ``config``: a :class:`TapSlfConfig` or a name in :data:`VARIANTS`.
    Afterwards exactly these train: the prompts, the LoRA ``A``/``B`` matrices, the heads.
    """
    if isinstance(config, str):
        if config not in VARIANTS:
            raise ValueError(f"unknown TAP-SLF variant {config!r}; choose from {sorted(VARIANTS)} or pass a TapSlfConfig")
        config = VARIANTS[config]
    encoder = make_encoder(backbone, **encoder_kw)
    encoder.requires_grad_(False)
    if config.lora:
        ids = lora_blocks(encoder.depth, config.frozen_ratio)
        if isinstance(encoder, ViTEncoder):  # the peft family's handling of nn.MultiheadAttention
            apply_lora(encoder.visual, rank=config.rank, alpha=config.alpha, targets=("attn",), blocks=ids)
        else:
            import warnings
            from peft import LoraConfig, inject_adapter_in_model

            cfg = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, bias="none",
                             target_modules=exact_pattern(encoder.lora_targets(ids)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inject_adapter_in_model(cfg, encoder)
        for n, p in encoder.named_parameters():
            p.requires_grad_("lora_" in n)
    model = TapSlfModel(encoder, config, tasks)
    return model
# endregion


def parameter_breakdown(model: TapSlfModel) -> dict:
    """Trainable parameters by part (``prompts``, ``lora``, ``heads``), ``trainable``, ``total`` and ``percent``
    (``100 * trainable / total``, total = encoder + prompts + LoRA + heads), all via ``train.count_parameters``."""
    lora = sum(p.numel() for n, p in model.encoder.named_parameters() if "lora_" in n and p.requires_grad)
    out = {"prompts": T.count_parameters(model.prompts, True) if model.prompts is not None else 0,
           "lora": lora, "heads": T.count_parameters(model.heads, True)}
    out["trainable"] = T.count_parameters(model, True)
    out["total"] = T.count_parameters(model)
    out["percent"] = 100.0 * out["trainable"] / out["total"]
    return out


def batch_task(batch) -> str:
    """The single task of a batch dict (``batch["task"]`` a name or a list of equal names)."""
    t = batch["task"]
    if isinstance(t, (list, tuple)):
        if len(set(t)) != 1:
            raise ValueError(f"this batch mixes tasks {sorted(set(t))}; build single-task batches")
        t = t[0]
    if t not in TASKS:
        raise ValueError(f"unknown task {t!r}; TAP-SLF knows {TASKS}")
    return t


# region: tapslf-losses
def task_loss(task: str, out: torch.Tensor, y: torch.Tensor, reg_scale=1.0) -> torch.Tensor:
    """Per-task loss: seg BCE + Dice; cls cross-entropy; det L1 + generalised IoU on normalised boxes;
    reg smooth-L1 on the standardised target (``reg_scale`` = the training sd)."""
    if task == "seg":
        return losses.bce_dice_loss(out, y.float())
    if task == "cls":
        return F.cross_entropy(out, y.long())
    if task == "det":
        from torchvision.ops import generalized_box_iou_loss

        return F.l1_loss(out, y) + generalized_box_iou_loss(out, y, reduction="mean")
    if task == "reg":
        return F.smooth_l1_loss(out / reg_scale, y / reg_scale)
    raise ValueError(f"unknown task {task!r}; TAP-SLF knows {TASKS}")
# endregion


def round_robin(data: dict, tasks, batch_size: int, seed: int = 0):
    """``draw(step) -> batch``: task ``tasks[step % n]``, indices without replacement from a per-task seeded
    permutation (refilled when used up). Batch values are indexed with the same indices (lists of maps too)."""
    gens = {t: torch.Generator().manual_seed(seed * 1000 + i) for i, t in enumerate(tasks)}
    queues = {t: [] for t in tasks}

    def take(v, idx):
        return [m[idx] for m in v] if isinstance(v, list) else v[idx]

    def draw(step):
        t = tasks[step % len(tasks)]
        n = len(data[t]["y"])
        idx = []
        while len(idx) < min(batch_size, n):
            if not queues[t]:
                queues[t] = torch.randperm(n, generator=gens[t]).tolist()
            idx.append(queues[t].pop())
        return {"task": t, **{k: take(v, idx) for k, v in data[t].items()}}

    return draw


# region: tapslf-schedule
def train(model: TapSlfModel, data: dict, *, steps: int, lr: float, batch_size: int, seed: int = 0,
          weight_decay: float = 1e-2, progress: bool = False, desc: str = "tap-slf") -> dict:
    """Multi-task training through ``train.fit`` (AdamW, cosine schedule).

    ``data``: ``{task: {"x": (N, 3, S, S) tensor, "y": targets}}`` (seg masks ``(N, 1, S, S)``, cls labels,
    det normalised boxes ``(N, 4)``, reg values in mm). Step ``k`` trains task ``tasks[k % n]`` on one
    single-task batch drawn without replacement from a per-task seeded permutation (round-robin schedule).
    """
    tasks = [t for t in model.tasks if t in data]
    if not tasks:
        raise ValueError(f"data has no known task (keys {sorted(data)}); expected some of {TASKS}")
    if "reg" in data:  # standardise the regression target with training statistics
        yr = torch.as_tensor(data["reg"]["y"], dtype=torch.float32)
        model.heads["reg"].mu.fill_(float(yr.mean()))
        model.heads["reg"].sd.fill_(float(yr.std().clamp_min(1e-6)))
    draw = round_robin(data, tasks, batch_size, seed)
    sd = float(model.heads["reg"].sd)

    def forward(m, batch):
        t = batch_task(batch)
        loss = task_loss(t, m(batch["x"], t), batch["y"], reg_scale=sd)
        return loss, {f"loss_{t}": loss.item()}

    return T.fit(model, draw, steps=steps, lr=lr, weight_decay=weight_decay, forward=forward, progress=progress,
                 desc=desc)
# endregion


def cache_features(model: TapSlfModel, data: dict) -> dict:
    """Features of the frozen, un-prompted encoder for every task in ``data``: ``{task: {"f", "y"}}`` with ``f`` the
    decoder maps (seg, det) or the GAP vector (cls, reg). Valid for any model built from the same backbone
    weights before training (LoRA ``B = 0`` at initialisation changes nothing)."""
    cached = {}
    dev = T.model_device(model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for t in [t for t in model.tasks if t in data]:
            chunks = [model.encoder(data[t]["x"][i:i + 64].to(dev), None) for i in range(0, len(data[t]["x"]), 64)]
            feats = [torch.cat([c[0][j] for c in chunks]) for j in range(len(chunks[0][0]))] if t in ("seg", "det") \
                else torch.cat([c[1] for c in chunks])
            cached[t] = {"f": feats, "y": data[t]["y"]}
    model.train(was_training)
    return cached


def warm_start_heads(model: TapSlfModel, data: dict, *, steps: int, lr: float, batch_size: int, seed: int = 0,
                     weight_decay: float = 1e-2, cached: dict | None = None) -> dict:
    """Train only the heads on cached features of the frozen, un-prompted encoder (the "backbone only"
    model; cheap because the encoder runs once) and return the heads' ``state_dict``. Every variant can
    start from these heads (linear-probe-then-fine-tune, Kumar et al., ICLR 2022), so a short adaptation
    budget is spent on prompts/LoRA rather than on learning heads from scratch. Same schedule and losses
    as :func:`train`; at the start LoRA (``B = 0``) changes nothing, prompts do change the features a little.
    ``cached``: the output of :func:`cache_features` (computed here when not given; reuse it across seeds).
    """
    if "reg" in data:
        yr = torch.as_tensor(data["reg"]["y"], dtype=torch.float32)
        model.heads["reg"].mu.fill_(float(yr.mean()))
        model.heads["reg"].sd.fill_(float(yr.std().clamp_min(1e-6)))
    tasks = [t for t in model.tasks if t in data]
    cached = cached if cached is not None else cache_features(model, data)
    draw = round_robin(cached, tasks, batch_size, seed)
    sd = float(model.heads["reg"].sd)

    def forward(heads, batch):
        t = batch["task"]
        loss = task_loss(t, heads[t](batch["f"]), batch["y"], reg_scale=sd)
        return loss, {f"loss_{t}": loss.item()}

    T.fit(model.heads, draw, steps=steps, lr=lr, weight_decay=weight_decay, forward=forward, progress=False)
    return {k: v.detach().clone() for k, v in model.heads.state_dict().items()}


def evaluate(model: TapSlfModel, data: dict, batch_size: int = 64) -> dict:
    """The paper's seven metrics on ``data`` (same layout as :func:`train`'s): ``dsc``, ``hd95`` (pixels),
    ``auc``, ``f1``, ``mcc`` (positive class 1), ``miou`` (mean IoU of predicted vs true box), ``mre``
    (mean relative error, %). Tasks absent from ``data`` give NaN."""
    out = {k: float("nan") for k in ("dsc", "hd95", "auc", "f1", "mcc", "miou", "mre")}
    for t in data:
        pred = T.predict(model, data[t]["x"], batch_size=batch_size, fn=lambda m, xb, t=t: m(xb, t))
        y = data[t]["y"]
        if t == "seg":
            s = metrics.segmentation((pred[:, 0] > 0).numpy(), np.asarray(y)[:, 0] > 0.5)
            out["dsc"], out["hd95"] = s["dice"], s["hd95"]
        elif t == "cls":
            c = metrics.classification(np.asarray(y), torch.softmax(pred, 1).numpy())
            out["auc"], out["f1"], out["mcc"] = c["auc"], c["f1"], c["mcc"]
        elif t == "det":
            S = model.encoder.image_size
            iou = metrics.box_iou(pred.numpy() * S, np.asarray(y) * S)
            out["miou"] = float(np.nanmean(np.diag(iou)))
        elif t == "reg":
            out["mre"] = 100.0 * metrics.mean_relative_error(pred.numpy(), np.asarray(y))
    return out

"""Attach Mona/HT adapters (or LoRA) to a frozen open_clip ViT, add the HT heads, train with the paper's
recipe and run HT's first stage (image–text tuning, adapters only). Used by notebook 09 (via experiments.ht).

Paper: Qu et al., arXiv:2506.08849 (HT), Sec. III–IV; Mona: Yin et al., CVPR 2025.

**Where the adapters go.** As in Mona (Sec. 3.2: "after the MSA and after the MLP of each block")
and HT, an adapter is applied to the *residual stream* right after each sub-layer's residual
addition::

    x = x + ls_1(Attn(ln_1(x)));   x = A_attn(x)
    x = x + ls_2(MLP(ln_2(x)));    x = A_mlp(x)

``positions=("attn", "mlp")`` is the default (both); either can be dropped. The block's own
modules keep their names (``resblocks[i].attn``, ``.mlp.c_fc`` ...), the adapters live at
``resblocks[i].adapters["attn" | "mlp"]`` and the block's ``forward`` is replaced per instance by
:func:`adapted_block_forward` (:func:`detach_adapters` restores it). Because the adapter's up-projection starts at zero, the
adapted block computes exactly what the frozen one does at init.

:func:`build_model` attaches adapters (or LoRA) only to the blocks that run, i.e. up to the
deepest block used by the multi-level aggregation (blocks 3, 6, 9 of 12 -> resblocks 0..8): blocks
above it never influence the heads, so adapters there would be dead parameters.

**Training recipe (HT Sec. IV).** AdamW (β = (0.9, 0.95)), lr 1e-4 with cosine decay, weight decay
1e-2; Dice + cross-entropy for segmentation (``monai.losses.DiceCELoss``), focal loss for
classification (``monai.losses.FocalLoss``). Sizes come from the ``hybrid_tuning`` profile section;
the quick profile uses a much larger lr (1e-2) because it trains for a few dozen steps only. Every
training loop here is a call to :func:`course_lib.train.fit` (step mode with a ``forward=`` hook), and
batched inference goes through :func:`course_lib.train.predict`.
"""
from __future__ import annotations

import math
import types
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ... import runtime, train
from ...losses import info_nce
from ..peft.lora import apply_lora
from .heads import ClassificationHead, MultiLevelAggregation, SegmentationHead, aggregation_blocks
from .ht_adapter import VARIANTS, HTAdapter
from .mona import Mona

__all__ = [
    "METHODS",
    "ADAPTER_KINDS",
    "vision_tower",
    "freeze",
    "attach_adapters",
    "detach_adapters",
    "adapters_of",
    "adapter_state",
    "load_adapter_state",
    "AdaptedViT",
    "adapted_block_forward",
    "build_model",
    "make_optimizer",
    "seg_loss",
    "cls_loss",
    "task_loss",
    "fit_task",
    "predict_proba",
    "stage1_image_text",
    "zero_shot_probs",
    "estimate_step_cost",
]

runtime.register_section(
    "hybrid_tuning",
    quick=dict(
        bottleneck=16,  # adapter width m
        d_red=32,  # aggregation width
        cls_hidden=32,
        lora_rank=4,
        epochs=6,  # x 2 steps per epoch on 24 BUSI training images: 12 updates per run (3 seeds x 6 methods x 2 tasks)
        batch_size=16,
        lr=1e-2,  # a few dozen steps only -> much larger lr than the paper's 1e-4
        weight_decay=1e-2,
        betas=(0.9, 0.95),
        n_train=24,  # SonoSynth training images of the Table VII analogue
        n_test=32,
        ablation_epochs=5,  # Table VII analogue (SonoSynth, 3 seeds): 5 epochs x 4 batches of 6 = 20 updates per run
        ablation_batch_size=6,  # 20 updates (10 gave Dice ~0.05: not converged) at 6 images each: 3 seeds fit the budget
        ablation_variants=("ht_ne", "ht_ff", "ht"),  # HT's components (Mona vs HT: §4; mona, ht_global: full profile)
        external_synth=32,  # external validation (§8): SonoSynth breast images exported to a folder
        external_real_limit=12,  # ... and real BUSI images per class read by the folder loader (0 = all)
        real_limit=24,  # BUSI images per class loaded per task (0 = all): 24 train + 24 test images
        real_split=(0.5, 0.5),  # seeded stratified train/test fractions of the loaded BUSI images
        ratios=(1.0,),  # Table IV analogue: a 24-image split is too small for data ratios -> full profile only (§6 says why)
        seeds=(0, 1, 2),  # training seeds of every comparison the notebook interprets (mean ± sd)
        stage1_seeds=(0, 1, 2),  # one stage 1 per stage-2 seed (a profile may share one: stage1_seeds=(0,))
        stage1_steps=6,
        stage1_samples=64,
        filter_steps=100,
    ),
    full=dict(
        bottleneck=64,
        d_red=256,
        cls_hidden=256,
        lora_rank=8,
        epochs=50,
        batch_size=16,
        lr=1e-4,  # the paper's value
        weight_decay=1e-2,
        betas=(0.9, 0.95),
        n_train=800,
        n_test=400,
        ablation_epochs=50,
        ablation_batch_size=16,
        ablation_variants=("mona", "ht_ne", "ht_ff", "ht", "ht_global"),
        external_synth=400,
        external_real_limit=0,  # all BUSI benign + malignant images with one mask file
        real_limit=0,  # 0 = all images
        real_split=(0.7, 0.3),
        ratios=(0.01, 0.05, 0.2, 0.5, 1.0),  # the paper's Table IV ratios
        seeds=(0, 1, 2),  # the paper averages Table IV over three seeds
        stage1_seeds=(0, 1, 2),  # one stage 1 per stage-2 seed
        stage1_steps=1000,
        stage1_samples=4000,
        filter_steps=300,
    ),
    # COURSE_SMOKE=1: ViT-B/16 at 224 px on a CPU peaked at 8.4 GiB at batch 16 and ran past the 300 s cap
    smoke=dict(batch_size=2, epochs=1, ablation_batch_size=2, n_train=8, n_test=8, real_limit=4, stage1_samples=8,
               external_synth=8, external_real_limit=4, ratios=(0.5, 1.0)),  # ratios: run the Table IV path (full only)
)

#: methods :func:`build_model` understands
METHODS = ("frozen", "lora", "mona", "ht", "ht_ne", "ht_ff", "ht_global")
#: adapter kinds :func:`attach_adapters` understands
ADAPTER_KINDS = ("mona",) + tuple(VARIANTS)


# ----------------------------------------------------------------------------- attaching
def vision_tower(model) -> nn.Module:
    """The open_clip ``VisionTransformer`` inside a Backbone, a CLIP, or the tower itself."""
    inner = getattr(model, "model", None)
    if not isinstance(model, nn.Module) and isinstance(inner, nn.Module):
        model = inner
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module or a course Backbone, got {type(model).__name__}")
    if hasattr(model, "transformer") and hasattr(getattr(model, "transformer"), "resblocks") and hasattr(model, "conv1"):
        return model
    vis = getattr(model, "visual", None)
    if vis is not None and hasattr(vis, "transformer") and hasattr(vis.transformer, "resblocks"):
        return vis
    raise TypeError(
        f"{type(model).__name__} is not an open_clip VisionTransformer (no .transformer.resblocks); "
        f"Mona/HT attach to open_clip ViTs such as load_backbone('sonoclip-tiny') or 'ViT-B-16'. "
        f"timm-based towers (e.g. BiomedCLIP) are not supported by this helper."
    )


def freeze(module: nn.Module) -> nn.Module:
    """``requires_grad_(False)`` on every parameter; returns the module."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _run_adapter(adapter: nn.Module, x: torch.Tensor, batch_first: bool, hw) -> torch.Tensor:
    if batch_first:
        return adapter(x, hw)
    return adapter(x.transpose(0, 1), hw).transpose(0, 1)


# region: ht-adapted-block
def adapted_block_forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
    """Replacement ``forward`` of an open_clip ``ResidualAttentionBlock`` with adapters on its residual stream."""
    batch_first = getattr(self.attn, "batch_first", True)
    x = q_x + self.ls_1(self.attention(q_x=self.ln_1(q_x), attn_mask=attn_mask))
    if "attn" in self.adapters:  # adapter after the attention sub-layer
        x = _run_adapter(self.adapters["attn"], x, batch_first, self._adapter_grid)
    x = x + self.ls_2(self.mlp(self.ln_2(x)))
    if "mlp" in self.adapters:  # adapter after the MLP sub-layer
        x = _run_adapter(self.adapters["mlp"], x, batch_first, self._adapter_grid)
    return x
# endregion


def _make_adapter(kind: str, dim: int, bottleneck: int, grid, dropout: float, **kw) -> nn.Module:
    if kind == "mona":
        return Mona(dim, bottleneck, dropout=dropout, **kw)
    if kind in VARIANTS:
        return HTAdapter(dim, bottleneck, dropout=dropout, grid=grid, **{**VARIANTS[kind], **kw})
    raise ValueError(f"unknown adapter kind {kind!r}; choose one of {ADAPTER_KINDS}")


def _grid_of(visual) -> tuple[int, int]:
    g = getattr(visual, "grid_size", None)
    if g is None:
        raise ValueError("the vision tower has no grid_size; pass grid=(H, W)")
    return (int(g[0]), int(g[1])) if isinstance(g, (tuple, list)) else (int(g), int(g))


def attach_adapters(model, kind: str = "ht", bottleneck: int = 64, positions: Sequence[str] = ("attn", "mlp"),
                    blocks: Sequence[int] | None = None, dropout: float = 0.1, grid=None, **kw) -> list[nn.Module]:
    """Freeze the vision tower and insert adapters after attention and/or MLP of the chosen blocks.

    ``kind``: ``"mona"``, ``"ht"`` (paper), ``"ht_ne"``, ``"ht_ff"``, ``"ht_global"``. Returns the new
    adapters (the only trainable parameters of the tower afterwards, besides any LoRA).
    """
    visual = vision_tower(model)
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose one of {ADAPTER_KINDS}")
    positions = tuple(positions)
    if not positions or any(p not in ("attn", "mlp") for p in positions):
        raise ValueError(f"positions must be a non-empty subset of ('attn', 'mlp'), got {positions}")
    resblocks = visual.transformer.resblocks
    depth = len(resblocks)
    idx = list(range(depth)) if blocks is None else [int(b) for b in blocks]
    bad = [b for b in idx if not -depth <= b < depth]
    if bad:
        raise ValueError(f"blocks {bad} out of range for a {depth}-block ViT (use 0..{depth - 1})")
    idx = sorted({b % depth for b in idx})
    grid = _grid_of(visual) if grid is None else grid
    freeze(visual)
    made = []
    for i in idx:
        blk = resblocks[i]
        if not all(hasattr(blk, a) for a in ("ln_1", "ln_2", "attention", "mlp", "ls_1", "ls_2")):
            raise TypeError(
                f"resblocks[{i}] is a {type(blk).__name__}, not an open_clip ResidualAttentionBlock; "
                f"adapters can only be attached to standard open_clip ViT blocks"
            )
        if hasattr(blk, "adapters"):
            raise ValueError(f"resblocks[{i}] already has adapters; call detach_adapters(model) first")
        width = blk.ln_1.normalized_shape[0]
        blk.adapters = nn.ModuleDict(
            {p: _make_adapter(kind, width, bottleneck, grid, dropout, **kw) for p in positions}
        )
        ref = next(blk.parameters())
        blk.adapters.to(device=ref.device, dtype=ref.dtype)
        blk._adapter_grid = tuple(grid)
        blk.forward = types.MethodType(adapted_block_forward, blk)
        made.extend(blk.adapters.values())
    return made


def adapters_of(model) -> list[nn.Module]:
    """All adapters attached to the tower (block order, attn before mlp)."""
    out = []
    for blk in vision_tower(model).transformer.resblocks:
        if hasattr(blk, "adapters"):
            out.extend(blk.adapters.values())
    return out


def detach_adapters(model) -> nn.Module:
    """Remove every adapter and restore the blocks' original ``forward``."""
    for blk in vision_tower(model).transformer.resblocks:
        if hasattr(blk, "adapters"):
            del blk.adapters
            blk.__dict__.pop("forward", None)
            blk.__dict__.pop("_adapter_grid", None)
    return model


def _is_adaptation(name: str) -> bool:
    return ".adapters." in name or "lora_" in name


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adaptation tensors of the vision tower (HT/Mona adapters, LoRA ``A``/``B``), detached copies keyed by
    their name inside the tower: what stage 1 hands to stage 2 (:func:`build_model` ``init=``)."""
    vis = vision_tower(model)
    state = {n: p.detach().clone() for n, p in vis.named_parameters() if _is_adaptation(n)}
    if not state:
        raise ValueError("the vision tower has no adapters or LoRA layers; attach some (or run stage 1) first")
    return state


def load_adapter_state(model, state: dict[str, torch.Tensor]) -> int:
    """Copy ``state`` (from :func:`adapter_state`) into the tower's adaptation tensors of the same name.

    Every adaptation tensor of ``model`` must be in ``state`` (with the same shape); entries of ``state`` the model
    does not have (e.g. adapters of blocks above the deepest aggregated one) are ignored. Returns the number of
    tensors copied.
    """
    vis = vision_tower(model)
    own = {n: p for n, p in vis.named_parameters() if _is_adaptation(n)}
    if not own:
        raise ValueError("the model has no adapters or LoRA layers to initialise; build it with an adapter method")
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"{len(missing)} adaptation tensor(s) have no stage-1 value, e.g. {missing[:3]}; stage 1 "
                         f"must use the same method, width and rank as stage 2")
    with torch.no_grad():
        for n, p in own.items():
            if tuple(state[n].shape) != tuple(p.shape):
                raise ValueError(f"{n}: stage-1 shape {tuple(state[n].shape)} != {tuple(p.shape)}; use the same "
                                 f"bottleneck/rank in both stages")
            p.copy_(state[n])
    return len(own)


# ----------------------------------------------------------------------------- model with heads
class AdaptedViT(nn.Module):
    """Frozen (optionally adapted) ViT + multi-level aggregation + a task head.

    ``forward(x)`` takes preprocessed images ``(B, 3, S, S)`` and returns segmentation logits
    ``(B, n_classes, S, S)`` or classification logits ``(B, n_classes)``.
    """

    def __init__(self, visual: nn.Module, task: str, n_classes: int = 2, blocks: Sequence[int] | None = None,
                 d_red: int = 256, cls_hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        if task not in ("seg", "cls"):
            raise ValueError(f"task must be 'seg' or 'cls', got {task!r}")
        self.visual, self.task = visual, task
        depth = len(visual.transformer.resblocks)
        self.blocks = sorted(aggregation_blocks(depth) if blocks is None else [int(b) % depth for b in blocks])
        self.grid = _grid_of(visual)
        width = visual.transformer.width
        self.agg = MultiLevelAggregation(width, self.blocks, d_red)
        self.head = SegmentationHead(d_red, n_classes) if task == "seg" else ClassificationHead(d_red, n_classes, cls_hidden, dropout)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens ``(B, N, D)`` of ``self.blocks`` (CLS removed), stopping after the deepest one."""
        out = self.visual.forward_intermediates(
            x, indices=self.blocks, stop_early=True, intermediates_only=True, output_fmt="NLC"
        )
        return out["image_intermediates"]

    def decode(self, feats: Sequence[torch.Tensor], out_size) -> torch.Tensor:
        """Aggregation + head on patch tokens from :meth:`features`."""
        fmap = self.agg(list(feats), self.grid)
        return self.head(fmap, out_size) if self.task == "seg" else self.head(fmap)

    # region: ht-adaptedvit-forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected preprocessed images (B, 3, S, S), got {tuple(x.shape)}; use bb.preprocess(images)")
        return self.decode(self.features(x), x.shape[-2:])
    # endregion

    def train(self, mode: bool = True):
        """Heads and adapters follow ``mode``; the frozen ViT itself stays in eval mode (its dropout/norms
        must not change while only the adapters learn)."""
        super().train(mode)
        if mode:
            self.visual.eval()
            for m in self.visual.modules():
                if hasattr(m, "adapters"):
                    m.adapters.train()
        return self

    def backbone_is_frozen(self) -> bool:
        """True when nothing inside the ViT trains (the frozen baseline): its features can be cached."""
        return not any(p.requires_grad for p in self.visual.parameters())


def build_model(backbone, method: str, task: str, n_classes: int = 2, *, bottleneck: int = 64, d_red: int = 256,
                cls_hidden: int = 256, lora_rank: int = 8, blocks: Sequence[int] | None = None,
                positions: Sequence[str] = ("attn", "mlp"), dropout: float = 0.1,
                init: dict[str, torch.Tensor] | None = None) -> AdaptedViT:
    """A fresh :class:`AdaptedViT` for ``method`` in :data:`METHODS` on (a deep copy of) the backbone's tower.

    ``init``: adapter/LoRA tensors from HT's stage 1 (:func:`adapter_state` after :func:`stage1_image_text`), loaded
    into the new adapters instead of their identity initialisation — the paper's two-stage pipeline (stage-1
    adapters are then trained further with the heads).

    ``frozen``: heads only; ``lora``: LoRA (``course_lib.methods.peft.lora.apply_lora``, attention targets) + heads;
    ``mona`` / ``ht`` / ``ht_ne`` / ``ht_ff`` / ``ht_global``: adapters + heads.
    Exactly the adapter/LoRA and head parameters are trainable.
    """
    import copy

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    visual = copy.deepcopy(vision_tower(backbone))
    freeze(visual)
    visual.eval()
    model = AdaptedViT(visual, task, n_classes, blocks, d_red, cls_hidden, dropout)
    used = list(range(max(model.blocks) + 1))
    if method == "lora":
        apply_lora(visual, lora_rank, targets=("attn",), blocks=used)
    elif method != "frozen":
        attach_adapters(visual, method, bottleneck, positions, blocks=used, dropout=dropout)
    if init is not None:
        if method == "frozen":
            raise ValueError("init= (stage-1 adapters) needs an adapter method, not 'frozen'")
        load_adapter_state(visual, init)
    ref = next(visual.parameters())
    model.agg.to(ref.device)
    model.head.to(ref.device)
    return model


# ----------------------------------------------------------------------------- recipe
def make_optimizer(model: nn.Module, total_steps: int, lr: float = 1e-4, weight_decay: float = 1e-2,
                   betas=(0.9, 0.95)):
    """AdamW over the trainable parameters + cosine decay over ``total_steps`` (HT Sec. IV)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; build it with build_model(...) (heads are trainable)")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(total_steps)))
    return opt, sched


def seg_loss():
    """Dice + cross-entropy on softmax logits ``(B, C, H, W)`` vs integer masks ``(B, 1, H, W)``.

    The Dice term is computed on the foreground class(es) only (``include_background=False``): with
    small lesions the background Dice is ~1 from the first step and would halve the useful gradient.
    """
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)


def cls_loss(gamma: float = 2.0):
    """Focal loss on logits ``(B, C)`` vs integer labels ``(B, 1)`` (softmax, one-hot targets)."""
    from monai.losses import FocalLoss

    return FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma)


def task_loss(task: str):
    """:func:`seg_loss` for ``"seg"``, :func:`cls_loss` for ``"cls"``."""
    if task not in ("seg", "cls"):
        raise ValueError(f"task must be 'seg' or 'cls', got {task!r}")
    return seg_loss() if task == "seg" else cls_loss()


def fit_task(model: AdaptedViT, X: torch.Tensor, Y: torch.Tensor, *, epochs: int = 1, batch_size: int,
             lr: float = 1e-4, weight_decay: float = 1e-2, betas=(0.9, 0.95), seed: int = 0, progress: bool = True,
             desc: str = "train", steps: int | None = None) -> dict:
    """Train ``model`` on preprocessed images ``X (N,3,S,S)`` and targets ``Y`` (masks ``(N,S,S)`` or labels ``(N,)``)
    with the HT recipe, through :func:`course_lib.train.fit`.

    AdamW + cosine (:func:`make_optimizer`), Dice+CE or focal loss (:func:`task_loss`). Mini-batches are drawn
    by a seeded permutation per epoch (``seed``); ``steps`` (optional) fixes the number of updates instead of
    ``epochs`` (data-ratio studies: small training sets get as many updates as large ones). When nothing in
    the backbone trains (the frozen baseline) its features are computed once (:func:`course_lib.train.predict`)
    and cached — same maths, much faster. Returns ``train.fit``'s history plus ``loss`` (per step) and
    ``seconds_per_step``.
    """
    X, Y = torch.as_tensor(X), torch.as_tensor(Y)
    if len(X) != len(Y) or len(X) == 0:
        raise ValueError(f"X has {len(X)} images and Y {len(Y)} targets; they must match and be non-empty")
    if model.task == "seg" and tuple(Y.shape[-2:]) != tuple(X.shape[-2:]):
        raise ValueError(f"masks {tuple(Y.shape[-2:])} and images {tuple(X.shape[-2:])} differ in size; resize the masks")
    device = train.model_device(model)
    g = torch.Generator().manual_seed(seed)
    batch_size = min(int(batch_size), len(X))
    steps_per_epoch = math.ceil(len(X) / batch_size)
    total = int(steps) if steps is not None else int(epochs) * steps_per_epoch
    if total <= 0:
        raise ValueError(f"nothing to train: epochs={epochs}, steps={steps}; pass a positive number")
    cached = None
    if model.backbone_is_frozen():
        cached = [c.to(device) for c in train.predict(model, X, batch_size=64, fn=lambda m, xb: m.features(xb))]
    opt, sched = make_optimizer(model, total, lr, weight_decay, betas)
    loss_fn = task_loss(model.task)
    size = X.shape[-2:]
    state = {"order": None}

    def draw(step: int) -> dict:  # a fresh seeded permutation at the start of every epoch
        k = step % steps_per_epoch
        if k == 0:
            state["order"] = torch.randperm(len(X), generator=g)
        idx = state["order"][k * batch_size:(k + 1) * batch_size]
        y = Y[idx].long().unsqueeze(1)  # seg (B,H,W) -> (B,1,H,W); cls (B,) -> (B,1)
        return {"idx": idx, "y": y} if cached is not None else {"x": X[idx], "y": y}

    def forward(m: AdaptedViT, b: dict) -> torch.Tensor:
        out = m.decode([c[b["idx"]] for c in cached], size) if cached is not None else m(b["x"])
        return loss_fn(out.float(), b["y"])

    hist = train.fit(model, draw, steps=total, optimizer=opt, scheduler=sched, forward=forward,
                     progress=progress, desc=desc)
    model.eval()
    hist["loss"] = hist["step_loss"]
    hist["seconds_per_step"] = hist["seconds"] / total
    return hist


def predict_proba(model: AdaptedViT, X: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Probability of class 1 (:func:`course_lib.train.predict`): ``(N, S, S)`` for segmentation, ``(N,)`` for
    classification."""
    return train.predict(model, torch.as_tensor(X), batch_size=batch_size,
                         fn=lambda m, xb: torch.softmax(m(xb).float(), dim=1)[:, 1]).numpy()


# ----------------------------------------------------------------------------- stage 1 (image-text)
class _TextTower(nn.Module):
    """Holds a CLIP's text transformer at ``.transformer`` so that ``apply_lora`` (which adapts
    ``<module>.transformer.resblocks``) reaches the text tower; the blocks are shared, not copied."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.transformer = clip_model.transformer


def stage1_image_text(clip_model: nn.Module, images: torch.Tensor, tokens: torch.Tensor, *, steps: int,
                      batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 1e-2, betas=(0.9, 0.95),
                      kind: str = "ht", bottleneck: int = 64, lora_rank: int = 8, text_lora: bool = False,
                      seed: int = 0, progress: bool = True) -> dict:
    """HT stage 1: adapt ``clip_model`` on image–report pairs with InfoNCE (:func:`course_lib.losses.info_nce`),
    through :func:`course_lib.train.fit`; everything but the adaptation tensors stays frozen.

    ``kind``: an adapter kind (``"ht"``, ``"mona"``, ...; attached to every block of ``clip_model.visual``, as in
    the paper: only the HT modules train) or ``"lora"`` (LoRA of rank ``lora_rank`` on the attention of every
    visual block; with ``text_lora=True`` also on every text block: the paper's "LoRA (V+T)").
    ``images``: preprocessed ``(N, 3, S, S)``; ``tokens``: tokenised reports ``(N, L)``. The model is modified in
    place (:func:`detach_adapters` undoes adapters; deep-copy the model first to keep it). Hand the result to
    stage 2 with ``build_model(..., init=adapter_state(clip_model.visual))``. Returns ``train.fit``'s history plus
    ``loss`` (per step) and ``trainable`` (number of trained parameters).
    """
    if len(images) != len(tokens) or len(images) < 2:
        raise ValueError(f"need >= 2 image-report pairs with matching counts, got {len(images)} images and {len(tokens)} reports")
    if text_lora and kind != "lora":
        raise ValueError("text_lora=True is the LoRA (V+T) variant: use it with kind='lora'")
    freeze(clip_model)
    if kind == "lora":
        apply_lora(clip_model.visual, lora_rank, targets=("attn",))
        if text_lora:
            apply_lora(_TextTower(clip_model), lora_rank, targets=("attn",))
    else:
        attach_adapters(clip_model.visual, kind, bottleneck, dropout=0.0)
    trained = nn.ParameterList([p for p in clip_model.parameters() if p.requires_grad])
    device = train.model_device(clip_model)
    txt = None
    if not text_lora:
        with torch.no_grad():  # the text tower is frozen: encode every report once
            txt = torch.cat([clip_model.encode_text(tokens[i:i + 256].to(device), normalize=True)
                             for i in range(0, len(tokens), 256)])
    opt = torch.optim.AdamW(list(trained), lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    scale = clip_model.logit_scale.exp().detach()
    g = torch.Generator().manual_seed(seed)
    clip_model.eval()  # frozen CLIP in eval mode; adapters use dropout 0 and LoRA dropout 0

    def draw(step: int) -> dict:
        idx = torch.randperm(len(images), generator=g)[:batch_size]
        return {"x": images[idx], "i": idx, "t": tokens[idx]}

    def forward(_trained, b: dict) -> torch.Tensor:
        img = clip_model.encode_image(b["x"], normalize=True)
        t = txt[b["i"]] if txt is not None else clip_model.encode_text(b["t"], normalize=True)
        return info_nce(img.float(), t.float(), scale)

    hist = train.fit(trained, draw, steps=int(steps), optimizer=opt, scheduler=sched, forward=forward,
                     progress=progress, desc=f"stage 1 (image-text, {kind}{'+text' if text_lora else ''})")
    clip_model.eval()
    hist["loss"] = hist["step_loss"]
    hist["trainable"] = train.count_parameters(trained)
    return hist


def zero_shot_probs(clip_model: nn.Module, images: torch.Tensor, class_tokens: Sequence[torch.Tensor],
                    batch_size: int = 128) -> np.ndarray:
    """Zero-shot class probabilities ``(N, C)``: one tokenised prompt set per class (embeddings averaged)."""
    if len(class_tokens) < 2:
        raise ValueError("zero-shot needs prompts for at least 2 classes")
    clip_model.eval()
    device = train.model_device(clip_model)
    cls = []
    with torch.no_grad():
        for toks in class_tokens:
            e = clip_model.encode_text(toks.to(device), normalize=True).float().mean(0)
            cls.append(e / e.norm())
        cls = torch.stack(cls).cpu()
        scale = clip_model.logit_scale.exp().float().cpu()
    img = train.predict(clip_model, images, batch_size=batch_size, fn=lambda m, xb: m.encode_image(xb, normalize=True))
    return torch.softmax(scale * img @ cls.t(), dim=-1).numpy()


# ----------------------------------------------------------------------------- cost estimate
def estimate_step_cost(model: AdaptedViT, batch_size: int, image_size: int | None = None) -> dict:
    """FLOPs and memory of one training step, counted (not timed) — works on the ``meta`` device.

    Build the full-profile model under ``with torch.device("meta"):`` (no weights are allocated)
    and call this to size a GPU run without a GPU. Returns ``flops`` (forward + backward matmuls
    and convolutions, ``torch.utils.flop_counter``; FFTs are not counted), ``activation_bytes``
    (tensors saved for backward, at the model's dtype: halve them for bf16 autocast),
    ``param_bytes`` and ``optimizer_bytes`` (AdamW: two fp32 states per trainable parameter).
    """
    from torch.utils.flop_counter import FlopCounterMode

    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    ref = next(model.parameters())
    s = image_size or _grid_of(model.visual)[0] * int(model.visual.patch_size[0])
    x = torch.zeros(batch_size, 3, s, s, device=ref.device, dtype=ref.dtype)
    saved = [0]

    def pack(t):  # storage size, not numel: expanded views (broadcasts) would be over-counted
        saved[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with FlopCounterMode(display=False) as fc:
            model(x).float().mean().backward()
    model.zero_grad(set_to_none=True)
    n_train = train.count_parameters(model, trainable=True)
    return {
        "flops": int(fc.get_total_flops()),
        "activation_bytes": int(saved[0]),
        "param_bytes": int(sum(p.numel() * p.element_size() for p in model.parameters())),
        "optimizer_bytes": int(2 * 4 * n_train),
        "trainable": n_train,
    }

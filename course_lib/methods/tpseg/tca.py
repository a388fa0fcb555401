"""TP-Seg's task-conditioned adapter (TCA, eqs. 1-3) placed before every block of a frozen encoder;
used by notebook 11 (``11_tp_seg.ipynb``).

TP-Seg (task-prototype framework for unified medical lesion segmentation), Sec. 3.1: before block
``b`` of a frozen SAM 2 Hiera encoder, the block input ``h`` receives

    h <- h + (1 - g_t(b)) * dh_s + g_t(b) * dh_t,        (fusion of eqs. 1-2 by the split gate)
    dh_s = Conv_s(GELU(Conv_s(GN(h))))                    (eq. 1, shared router)
    dh_t = Conv_t(GELU(Conv_t(GN(h))))                    (eq. 2, router of task t)

The *selective split gate* (eq. 3) turns a learnable vector ``L_t`` (one entry per block) into a
monotonically increasing routing weight by a cumulative sigmoid with a temperature that decays linearly
from 1.0 to 0.3 during training. The paper's eq. 3 is not legible in our copy; we implement

    c_t(b) = sum_{i <= b} softplus(L_t[i]),     g_t(b) = sigmoid((c_t(b) - (B + 1) / 2) / tem),

which is monotone in ``b`` by construction (softplus > 0), starts with the split in the middle of the
``B`` blocks (``L`` initialised so that each softplus is 1), becomes step-like as ``tem`` drops, and lets
each task move its split depth ``b_t`` (the first block with ``g >= 0.5``) by gradient descent.

The same code path serves the quick profile's open_clip ViT (tokens ``(B, 1 + N, C)``, a class token
first) and the full profile's SAM 2 Hiera from ``transformers`` (channels-last maps ``(B, H, W, C)``):
forward pre-hooks on the blocks rewrite their input, forward hooks collect multi-level features for
the decoder. The second conv of every router is zero-initialised, so an adapted encoder equals the
frozen one at initialisation.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


#: temperature of the split gate at the start and end of training (Sec. 3.1: "linearly decaying from 1.0 to 0.3")
TEMPERATURE_START, TEMPERATURE_END = 1.0, 0.3
ADAPTERS = ("dual", "shared", "task", "none", "lora", "adapter")
KINDS = ("vit", "hiera")
SAM2_MEAN, SAM2_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def gate_temperature(progress: float, start: float = TEMPERATURE_START, end: float = TEMPERATURE_END) -> float:
    """Linear decay of the split-gate temperature (Sec. 3.1): ``start`` at progress 0, ``end`` at 1."""
    p = min(max(float(progress), 0.0), 1.0)
    return start + (end - start) * p


def _groups(c: int) -> int:
    return math.gcd(c, 8)


# region: tpseg-router
class Router(nn.Module):
    """``Conv(GELU(Conv(GN(h))))`` (eqs. 1-2): a 3x3 conv down to ``hidden`` channels, GELU, a 1x1 conv
    back to ``dim``. The last conv starts at zero, so a router adds nothing at initialisation."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(dim), dim)
        self.down = nn.Conv2d(dim, hidden, 3, padding=1)
        self.up = nn.Conv2d(hidden, dim, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: (B, C, H, W)
        return self.up(F.gelu(self.down(self.norm(h))))
# endregion


# region: tpseg-tca
class TaskConditionedAdapter(nn.Module):
    """One TCA (Fig. 3): a shared router and one router per task, fused by the split-gate weight ``g``.

    ``routes``: ``"dual"`` (TP-Seg), ``"shared"`` (ablation B3, w/o task-specific route: ``g = 0``) or
    ``"task"`` (ablation B4, w/o shared route: ``g = 1``). Only the routers a variant uses are built.
    """

    def __init__(self, dim: int, n_tasks: int, hidden: int, routes: str = "dual"):
        super().__init__()
        if routes not in ("dual", "shared", "task"):
            raise ValueError(f"routes={routes!r}: use 'dual', 'shared' or 'task'")
        self.routes = routes
        self.shared = Router(dim, hidden) if routes in ("dual", "shared") else None
        self.task = nn.ModuleList(Router(dim, hidden) for _ in range(n_tasks)) if routes in ("dual", "task") else None

    def forward(self, h: torch.Tensor, task: int, g: torch.Tensor | float) -> torch.Tensor:
        if self.routes == "shared":
            return h + self.shared(h)
        if self.routes == "task":
            return h + self.task[task](h)
        return h + (1 - g) * self.shared(h) + g * self.task[task](h)
# endregion


# region: tpseg-split-gate
class SplitGate(nn.Module):
    """Selective split gate (eq. 3, our reading, see the module docstring): one learnable vector per task
    over the ``n_blocks`` blocks; ``forward(task, tem)`` gives the monotone routing weights ``g_t(b)``."""

    def __init__(self, n_tasks: int, n_blocks: int):
        super().__init__()
        # softplus(log(e - 1)) = 1, so c_t(b) = b and the split starts in the middle
        self.logits = nn.Parameter(torch.full((n_tasks, n_blocks), math.log(math.e - 1)))

    def forward(self, task: int, temperature: float) -> torch.Tensor:
        c = torch.cumsum(F.softplus(self.logits[task]), 0)
        centre = (self.logits.shape[1] + 1) / 2
        return torch.sigmoid((c - centre) / temperature)

    @torch.no_grad()
    def split_depth(self, task: int, temperature: float = TEMPERATURE_END) -> int:
        """``b_t``: the first block (1-based) whose routing weight reaches 0.5 (``n_blocks + 1``: never)."""
        g = self.forward(task, temperature)
        above = (g >= 0.5).nonzero()
        return int(above[0]) + 1 if len(above) else g.numel() + 1
# endregion


class BottleneckAdapter(nn.Module):
    """Ablation B2 ("Adapter"): one shared token-wise bottleneck ``Linear(GELU(Linear(h)))`` (Houlsby et
    al., ICML 2019) at the TCA's place, without GroupNorm or spatial conv; zero-initialised output."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor, task: int = 0, g=None) -> torch.Tensor:  # h: (B, C, H, W)
        t = h.permute(0, 2, 3, 1)
        return h + self.up(F.gelu(self.down(t))).permute(0, 3, 1, 2)


class LoRALinear(nn.Module):
    """Ablation B1 ("LoRA", Hu et al., ICLR 2022): ``W x + (alpha / r) B A x`` on a frozen ``nn.Linear``,
    one low-rank update shared by all tasks; ``B`` starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base = base
        self.scale = (alpha if alpha is not None else rank) / rank
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.A), self.B)


#: SAM 2.1 Hiera image encoders as published (sam2 configs: embed_dim, num_heads, stages, global_att_blocks,
#: window_pos_embed_bkg_spatial_size, window_spec); heads and widths double at every stage
SAM2_HIERA = {
    "tiny": (96, 1, (1, 2, 7, 2), (5, 7, 9), (7, 7), (8, 4, 14, 7)),
    "small": (96, 1, (1, 2, 11, 2), (7, 10, 13), (7, 7), (8, 4, 14, 7)),
    "base-plus": (112, 2, (2, 3, 16, 3), (12, 16, 20), (14, 14), (8, 4, 14, 7)),
    "large": (144, 2, (2, 6, 36, 4), (23, 33, 43), (7, 7), (8, 4, 16, 8)),
}


def random_sam2_model(name: str = "facebook/sam2.1-hiera-small"):
    """``Sam2Model`` with the published Hiera image encoder of ``name`` (tiny/small/base-plus/large, see
    :data:`SAM2_HIERA`) and ``transformers``' default prompt encoder / mask decoder, random weights: the offline
    stand-in that :mod:`course_lib.models.offline_hub` saves for smoke runs."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2Model, Sam2VisionConfig

    size = next((k for k in sorted(SAM2_HIERA, key=len, reverse=True) if f"hiera-{k}" in name.lower()), None)
    if size is None:
        raise ValueError(f"no offline SAM 2 architecture for {name!r}; known: "
                         f"{[f'facebook/sam2.1-hiera-{k}' for k in SAM2_HIERA]}")
    d, h, stages, glob, bkg, win = SAM2_HIERA[size]
    dims = [d * 2 ** i for i in range(4)]
    bc = Sam2HieraDetConfig(hidden_size=d, embed_dim_per_stage=dims, num_attention_heads_per_stage=[h * 2 ** i for i in range(4)],
                            blocks_per_stage=list(stages), global_attention_blocks=list(glob),
                            window_positional_embedding_background_size=list(bkg), window_size_per_stage=list(win))
    vc = Sam2VisionConfig(backbone_config=bc, backbone_channel_list=dims[::-1])
    return Sam2Model(Sam2Config(vision_config=vc)).eval()


def load_sam2_encoder(name: str = "facebook/sam2.1-hiera-small", device=None) -> nn.Module:
    """The vision encoder (``Sam2VisionModel``) of a SAM 2 checkpoint through ``transformers``' native
    classes (no remote code). Raises a ``RuntimeError`` that names the model and the fix when it cannot
    be loaded (offline and not cached)."""
    from transformers import Sam2Model

    from course_lib.models import offline_hub

    src = offline_hub.resolve(name, lambda: random_sam2_model(name))  # smoke mode offline: random-weight folder
    try:
        model = Sam2Model.from_pretrained(src)
    except Exception as e:  # noqa: BLE001 - re-raised with what was asked and how to fix it
        raise RuntimeError(
            f"could not load SAM 2 model {name!r} ({type(e).__name__}: {e}). It needs internet once (then the "
            f"Hugging Face cache), e.g. `huggingface-cli download {name}`; offline, use the quick profile's "
            f"sonoclip-tiny encoder instead") from None
    enc = model.vision_encoder
    return enc.to(device) if device is not None else enc


def _vit_layout(visual) -> dict:
    blocks = visual.transformer.resblocks
    width = visual.transformer.width
    size = visual.image_size if isinstance(visual.image_size, (tuple, list)) else (visual.image_size,) * 2
    patch = visual.patch_size if isinstance(visual.patch_size, (tuple, list)) else (visual.patch_size,) * 2
    grid = (size[0] // patch[0], size[1] // patch[1])
    depth = len(blocks)
    taps = sorted({max(0, round((k + 1) * depth / 4) - 1) for k in range(4)})
    if len(taps) < 4:
        taps = [min(k, depth - 1) for k in range(4)]
    return dict(blocks=blocks, dims=[width] * depth, taps=taps, tap_dims=[width] * 4, scales=[2.0, 1.0, 0.5, 0.25],
                grid=grid, image_size=tuple(size), mean=None, std=None)


def _hiera_layout(vision) -> dict:
    cfg = vision.config.backbone_config
    blocks = vision.backbone.blocks
    per_stage = list(cfg.blocks_per_stage)
    dims_stage = list(cfg.embed_dim_per_stage)
    stage_of = [s for s, n in enumerate(per_stage) for _ in range(n)]
    dims = [dims_stage[0]] + [dims_stage[stage_of[i - 1]] for i in range(1, len(blocks))]
    ends = list(torch.tensor(per_stage).cumsum(0) - 1)
    return dict(blocks=blocks, dims=dims, taps=[int(e) for e in ends], tap_dims=dims_stage,
                scales=[1.0] * len(ends), grid=None, image_size=tuple(cfg.image_size), mean=SAM2_MEAN, std=SAM2_STD)


# region: tpseg-encoder
class TaskConditionedEncoder(nn.Module):
    """A frozen encoder with a TCA before every block (the task-conditioned routing blocks, Fig. 2-3).

    ``forward(x, task)`` returns four feature maps ``(B, C_k, H_k, W_k)``, shallow to deep, taken after
    the ``taps`` blocks (Hiera: the last block of each stage; ViT: four evenly spaced blocks, resampled
    by ``scales`` into a pyramid as in ViTDet). ``adapter`` picks the variant: ``"dual"`` (TP-Seg),
    ``"shared"``/``"task"`` (ablations B3/B4), ``"none"`` (frozen encoder, A1/A2), ``"adapter"`` (B2),
    ``"lora"`` (B1: shared LoRA on every MLP ``nn.Linear`` of the blocks).
    """

    def __init__(self, encoder: nn.Module, kind: str, n_tasks: int, *, adapter: str = "dual", hidden: int = 16,
                 lora_rank: int = 4, mean=None, std=None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown encoder kind {kind!r}; use one of {KINDS}")
        if adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter {adapter!r}; use one of {ADAPTERS}")
        if not isinstance(n_tasks, int) or n_tasks < 1:
            raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
        self.encoder, self.kind, self.n_tasks, self.adapter_kind = encoder, kind, n_tasks, adapter
        for p in encoder.parameters():
            p.requires_grad_(False)
        lay = _vit_layout(encoder) if kind == "vit" else _hiera_layout(encoder)
        self.dims, self.taps, self.tap_dims, self.scales = lay["dims"], lay["taps"], lay["tap_dims"], list(lay["scales"])
        self.grid, self.image_size = lay["grid"], lay["image_size"]
        mean = mean if mean is not None else lay["mean"] or getattr(encoder, "image_mean", None)
        std = std if std is not None else lay["std"] or getattr(encoder, "image_std", None)
        self.register_buffer("mean", torch.tensor(mean or (0.5, 0.5, 0.5)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or (0.5, 0.5, 0.5)).view(1, 3, 1, 1), persistent=False)
        blocks = lay["blocks"]
        self.n_blocks = len(blocks)
        if adapter in ("dual", "shared", "task"):
            self.adapters = nn.ModuleList(TaskConditionedAdapter(d, n_tasks, hidden, adapter) for d in self.dims)
        elif adapter == "adapter":
            self.adapters = nn.ModuleList(BottleneckAdapter(d, hidden) for d in self.dims)
        else:
            self.adapters = None
        self.gate = SplitGate(n_tasks, self.n_blocks) if adapter == "dual" else None
        if adapter == "lora":
            for blk in blocks:
                for name, mod in list(blk.named_modules()):
                    if isinstance(mod, nn.Linear) and "mlp" in name:
                        parent = blk.get_submodule(name.rsplit(".", 1)[0]) if "." in name else blk
                        setattr(parent, name.rsplit(".", 1)[-1], LoRALinear(mod, lora_rank))
        self.temperature = TEMPERATURE_START
        self._task: int | None = None
        self._gates: torch.Tensor | None = None
        self._feats: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(blocks):
            if self.adapters is not None:
                blk.register_forward_pre_hook(self._pre_hook(i), with_kwargs=True)
            if i in self.taps:
                blk.register_forward_hook(self._tap_hook(i))

    # -- layout conversions: block input <-> (B, C, H, W)
    def _to_map(self, h: torch.Tensor):
        if self.kind == "hiera":
            return h.permute(0, 3, 1, 2), None
        prefix = h.shape[1] - self.grid[0] * self.grid[1]
        m = h[:, prefix:].transpose(1, 2).reshape(h.shape[0], h.shape[2], *self.grid)
        return m, h[:, :prefix]

    def _from_map(self, m: torch.Tensor, rest):
        if self.kind == "hiera":
            return m.permute(0, 2, 3, 1)
        return torch.cat([rest, m.flatten(2).transpose(1, 2)], 1)

    def _pre_hook(self, i: int):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            m, rest = self._to_map(h)
            g = self._gates[i] if self._gates is not None else 0.0
            m = self.adapters[i](m, self._task, g)
            h = self._from_map(m, rest)
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}
        return hook

    def _tap_hook(self, i: int):
        def hook(module, args, out):
            h = out[0] if isinstance(out, (tuple, list)) else out
            self._feats[i] = self._to_map(h)[0]
        return hook

    def train(self, mode: bool = True):
        """Train mode for the adapters only: the frozen encoder stays in eval mode (no dropout/drop-path)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def gates(self, task: int) -> torch.Tensor:
        """Routing weights ``g_t(b)`` of all blocks for ``task`` at the current temperature (eq. 3)."""
        if self.gate is None:
            val = {"shared": 0.0, "task": 1.0}.get(self.adapter_kind, 0.0)
            return torch.full((self.n_blocks,), val)
        return self.gate(task, self.temperature)

    def forward(self, x: torch.Tensor, task: int) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"images must be (B, 1 or 3, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.kind == "vit" and tuple(x.shape[-2:]) != tuple(self.image_size):
            # a ViT's positional embedding fixes its input size (e.g. 224 px for ViT-B/16): resample the images to
            # it; TPSeg.forward upsamples the logits back to the input size
            x = F.interpolate(x, size=tuple(self.image_size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        self._task, self._feats = task, {}
        self._gates = self.gates(task) if self.adapter_kind == "dual" else None
        try:
            if self.kind == "vit":
                self.encoder(x)
            else:
                self.encoder.backbone(x)
        finally:
            self._task, self._gates = None, None
        feats = []
        for i, s in zip(self.taps, self.scales):
            f = self._feats[i]
            if s != 1.0:
                f = F.interpolate(f, scale_factor=s, mode="bilinear", align_corners=False) if s > 1 else F.avg_pool2d(f, int(round(1 / s)))
            feats.append(f)
        self._feats = {}
        return feats
# endregion


def attach_report(enc: TaskConditionedEncoder) -> list[tuple[int, str, int]]:
    """``(block index, block class, number of forward pre-hooks)`` for every block: the TCA is attached
    before a block when it has a pre-hook (used by the tests and the notebook's sanity print)."""
    blocks = enc.encoder.transformer.resblocks if enc.kind == "vit" else enc.encoder.backbone.blocks
    return [(i, type(b).__name__, len(b._forward_pre_hooks)) for i, b in enumerate(blocks)]


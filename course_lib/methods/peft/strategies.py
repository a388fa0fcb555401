"""Adaptation strategies for few-shot segmentation with ``segfm-tiny``: a registry of small builders.
Used by notebook 05 through :mod:`course_lib.experiments.fseft` (the FSEFT comparison).

One function, :func:`prepare`, turns a pretrained :class:`~course_lib.models.seg_foundation.SegFoundation`
into a trainable :class:`TaskModel` for a new binary task with one of these strategies
(the rows of the FSEFT comparison in notebook 05):

Black-box adapters (the foundation model is frozen and only its output features are used)
    ``linear_probe``   a new 1x1 conv head on the frozen decoder features (FSEFT, Silva-Rodríguez
                       et al., MedIA 2025, Sec. 3: "linear probe").
    ``conv_adapter``   a residual spatial adapter (two 3x3 convs, the second zero-initialised) on those
                       features + the head (FSEFT's spatial adapter).
Selective PEFT (a subset of the existing weights)
    ``bitfit``         every bias of the network + the head (Ben Zaken et al., ACL 2022, Sec. 2).
    ``affine_ln``      the affine scale/shift of every normalisation layer (LayerNorm in the ViT,
                       GroupNorm in the stem/decoder) + the head (FSEFT's "Affine-LN").
Additive PEFT (new weights inside the encoder; the decoder is frozen)
    ``lora``           LoRA on the ViT's attention and MLP (:mod:`course_lib.methods.peft.lora`, via peft).
    ``adaptformer``    AdaptMLP: a parallel bottleneck ``s * up(ReLU(down(LN(x))))`` next to each MLP,
                       ``up`` zero-initialised (Chen et al., NeurIPS 2022, Eq. 1-2).
    ``arena``          LoRA with an l1-sparse diagonal and proximal steps (:mod:`course_lib.methods.peft.arena`).
Fine-tuning baselines and the survey's strategies
    ``decoder_only``   decoder + head.
    ``full_ft``        every weight (the pretrained multi-class head is unused and stays frozen).
    ``gradual_unfreezing``  ULMFiT (Howard & Ruder, ACL 2018, Sec. 3.3): head first, then the decoder,
                       then the top half of the ViT, then everything, at equal fractions of training.
    ``discriminative_lr``   full fine-tuning with a learning rate that decays by ``decay`` per depth
                       level from the head down to the patch embedding (ULMFiT, Eq. 2).

Each strategy is one small builder function registered with ``@register(name, family)`` in
:data:`STRATEGIES`; :func:`prepare` copies the model, makes the head, calls the builder and collects
the optimiser groups. Add a strategy by registering a builder; an unknown name raises an error that
lists the registered ones.

In every strategy the new binary head is trainable: for a structure seen in pretraining it starts
as that structure's pretrained logit (so "known task" methods start from a working model); for a
novel structure it starts small and random (see ``SegFoundation.binary_head``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from course_lib.methods.peft import arena as arena_mod
from course_lib.methods.peft import lora as lora_mod

__all__ = [
    "METHODS",
    "FAMILIES",
    "STRATEGIES",
    "DEFAULTS",
    "Build",
    "register",
    "TaskModel",
    "Adapted",
    "AdaptMLP",
    "ConvAdapter",
    "apply_adaptformer",
    "prepare",
    "trainable_names",
]

#: strategy -> family (for plots and the "which method when" table); filled by :func:`register`
FAMILIES: dict[str, str] = {}

#: default hyper-parameters of each strategy (learning rates for Adam; head lr is ``head_lr``)
DEFAULTS = dict(
    head_lr=1e-2,
    lr={
        "linear_probe": 1e-2,
        "conv_adapter": 3e-3,
        "bitfit": 3e-3,
        "affine_ln": 3e-3,
        "lora": 3e-3,
        "adaptformer": 3e-3,
        "arena": 3e-3,
        "decoder_only": 1e-3,
        "full_ft": 5e-4,
        "gradual_unfreezing": 1e-3,
        "discriminative_lr": 1e-3,
    },
    rank=4,
    arena_rank=16,
    arena_lam=5e-3,
    arena_warmup=0.25,
    adaptformer_dim=8,
    adaptformer_scale=0.5,
    lora_targets=("attn", "mlp"),
    decay=0.5,
    decoder=None,
)

#: strategies whose decoder treatment can be set explicitly with ``decoder="frozen"|"tuned"``
DECODER_CHOICES = ("frozen", "tuned")
DECODER_FACTOR_METHODS = ("bitfit", "affine_ln", "lora", "arena", "adaptformer")


class ConvAdapter(nn.Module):
    """Residual spatial adapter ``f + conv(GELU(conv(f)))``; the second conv starts at zero."""

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or channels
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, f):
        return f + self.conv2(self.act(self.conv1(f)))


class AdaptMLP(nn.Module):
    """AdaptFormer's parallel branch around a block's MLP: ``mlp(h) + s * up(ReLU(down(h)))``.

    ``h`` is the block's ``ln_2`` output, exactly the input of the original MLP (Eq. 1 of the paper
    uses the same LayerNorm output). ``up`` is zero-initialised, so the block is unchanged at init.
    """

    def __init__(self, mlp: nn.Module, width: int, dim: int = 8, scale: float = 0.5):
        super().__init__()
        self.mlp = mlp
        self.adaptformer_down = nn.Linear(width, dim)
        self.adaptformer_up = nn.Linear(dim, width)
        self.scale = float(scale)
        nn.init.kaiming_uniform_(self.adaptformer_down.weight, a=5**0.5)
        nn.init.zeros_(self.adaptformer_down.bias)
        nn.init.zeros_(self.adaptformer_up.weight)
        nn.init.zeros_(self.adaptformer_up.bias)

    def forward(self, h):
        return self.mlp(h) + self.scale * self.adaptformer_up(torch.relu(self.adaptformer_down(h)))


def apply_adaptformer(module: nn.Module, dim: int = 8, scale: float = 0.5, blocks=None) -> nn.Module:
    """Wrap each selected block's ``mlp`` in :class:`AdaptMLP` (in place); freezes everything else."""
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"adaptformer dim must be a positive integer, got {dim!r}; pass e.g. dim=8")
    names = lora_mod.resolve_targets(module, ("c_fc",), blocks)  # validates model and blocks
    model = lora_mod.unwrap_model(module)
    model.requires_grad_(False)
    for n in names:
        blk = model.get_submodule(n.rsplit(".mlp.", 1)[0])
        width = blk.mlp.c_fc.in_features
        blk.mlp = AdaptMLP(blk.mlp, width, dim, scale).to(blk.mlp.c_fc.weight.device)
    return module


class TaskModel(nn.Module):
    """The adapted foundation model + (optional) black-box adapter + new binary head.

    ``forward(images (B,H,W)) -> logits (B,1,H,W)``.
    """

    def __init__(self, fm: nn.Module, head: nn.Module, adapter: nn.Module | None = None, black_box: bool = False):
        super().__init__()
        self.fm = fm
        self.adapter = adapter
        self.head = head
        self.black_box = black_box

    def frozen_features(self, x):
        """Features of the frozen foundation model (black-box methods can cache these)."""
        self.fm.eval()
        with torch.no_grad():
            return self.fm.features(x)

    def from_features(self, f):
        """Adapter (if any) + head + x2 upsampling on decoder features."""
        from course_lib.models.seg_foundation import upsample_logits

        if self.adapter is not None:
            f = self.adapter(f)
        return upsample_logits(self.head(f))

    def forward(self, x):
        f = self.frozen_features(x) if self.black_box else self.fm.features(x)
        return self.from_features(f)


@dataclass
class Adapted:
    """What :func:`prepare` returns: the model, optimiser groups and training hooks."""

    method: str
    model: TaskModel
    param_groups: list[dict]
    #: called as ``on_step(step, total_steps)`` before each step (gradual unfreezing)
    on_step: Callable[[int, int], None] | None = None
    #: called as ``after_step(optimizer, step, total_steps)`` after each optimiser step (ARENA's prox)
    after_step: Callable[[torch.optim.Optimizer, int, int], None] | None = None
    info: dict = field(default_factory=dict)

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.param_groups)

    def trainable(self) -> int:
        """Trainable parameters at the end of training (all stages for gradual unfreezing)."""
        return sum(p.numel() for g in self.param_groups for p in g["params"])

    def fit_after_step(self, total_steps: int) -> Callable | None:
        """This strategy's post-step hook in :func:`course_lib.train.fit`'s ``after_step(step, model, opt)``
        form (ARENA's proximal step), or None."""
        if self.after_step is None:
            return None
        return lambda step, model, opt: self.after_step(opt, step, total_steps)


#: parameters of the foundation model that the segmentation path never uses
_UNUSED_PREFIXES = ("head.", "visual.ln_post.", "visual.proj")


def _used(name: str) -> bool:
    return not name.startswith(_UNUSED_PREFIXES)


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters with ``requires_grad``."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _vit_depth_groups(fm) -> list[list[nn.Parameter]]:
    """Parameters from the input up: [stem + patch/pos embeddings + ln_pre], block 0, ..., block L-1,
    [ln_post/proj (unused)], then decoder."""
    v = fm.visual
    emb = list(fm.stem.parameters()) + [v.conv1.weight, v.class_embedding, v.positional_embedding] + list(v.ln_pre.parameters())
    blocks = [list(b.parameters()) for b in v.transformer.resblocks]
    return [emb, *blocks]


# ---------------------------------------------------------------------- the strategy registry
@dataclass
class Build:
    """What a strategy builder returns: the optimiser groups of the new weights (the head's group is
    added by :func:`prepare`), and optional hooks / facts."""

    groups: list[dict]
    adapter: nn.Module | None = None
    black_box: bool = False
    on_step: Callable[[int, int], None] | None = None
    after_step: Callable[[torch.optim.Optimizer, int, int], None] | None = None
    info: dict = field(default_factory=dict)
    #: ``True`` when the builder already put the head in its groups (black-box methods at their own lr)
    has_head: bool = False


#: strategy name -> builder ``fn(fm, head, lr, cfg) -> Build``
STRATEGIES: dict[str, Callable] = {}


def register(name: str, family: str):
    """Decorator adding a builder to :data:`STRATEGIES` (and its family to :data:`FAMILIES`)."""

    def deco(fn):
        if name in STRATEGIES:
            raise ValueError(f"adaptation strategy {name!r} is registered twice")
        STRATEGIES[name] = fn
        FAMILIES[name] = family
        return fn

    return deco


def _trainable_of(fm: nn.Module) -> list[nn.Parameter]:
    return [p for p in fm.parameters() if p.requires_grad]


@register("linear_probe", "black-box")
def build_linear_probe(fm, head, lr, cfg) -> Build:
    """A new 1x1 conv head on the frozen decoder features (the head trains at the strategy's lr)."""
    return Build([{"params": list(head.parameters()), "lr": lr, "name": "head"}], black_box=True, has_head=True)


@register("conv_adapter", "black-box")
def build_conv_adapter(fm, head, lr, cfg) -> Build:
    """:class:`ConvAdapter` on the frozen decoder features + the head."""
    adapter = ConvAdapter(fm.feature_dim).to(head.weight.device)
    return Build([{"params": list(adapter.parameters()), "lr": lr, "name": "adapter"}], adapter=adapter, black_box=True)


# region: peft-strategies
@register("bitfit", "selective PEFT")
def build_bitfit(fm, head, lr, cfg) -> Build:
    """Every bias used by the segmentation path (BitFit, Ben Zaken et al. 2022)."""
    return Build([{"params": [p for n, p in fm.named_parameters() if n.endswith("bias") and _used(n)], "lr": lr, "name": "bias"}])


@register("affine_ln", "selective PEFT")
def build_affine_ln(fm, head, lr, cfg) -> Build:
    """The affine scale/shift of every LayerNorm/GroupNorm used by the segmentation path."""
    params = [p for mn, m in fm.named_modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and _used(mn + ".")
              for p in m.parameters(recurse=False)]
    return Build([{"params": params, "lr": lr, "name": "norm"}])


@register("lora", "additive PEFT")
def build_lora(fm, head, lr, cfg) -> Build:
    """LoRA of rank ``cfg["rank"]`` on ``cfg["lora_targets"]`` of every ViT block."""
    lora_mod.apply_lora(fm, cfg["rank"], targets=cfg["lora_targets"])
    return Build([{"params": _trainable_of(fm), "lr": lr, "name": "lora"}], info={"rank": cfg["rank"]})
# endregion


@register("adaptformer", "additive PEFT")
def build_adaptformer(fm, head, lr, cfg) -> Build:
    """AdaptFormer's parallel MLP branch in every block (:func:`apply_adaptformer`)."""
    apply_adaptformer(fm, cfg["adaptformer_dim"], cfg["adaptformer_scale"])
    return Build([{"params": _trainable_of(fm), "lr": lr, "name": "adaptformer"}])


# region: peft-arena-strategy
@register("arena", "additive PEFT")
def build_arena(fm, head, lr, cfg) -> Build:
    """ARENA of starting rank ``cfg["arena_rank"]``; proximal steps (``cfg["arena_lam"]``) start after
    the fraction ``cfg["arena_warmup"]`` of training."""
    arena_mod.apply_arena(fm, cfg["arena_rank"], targets=cfg["lora_targets"])
    lam, start = float(cfg["arena_lam"]), float(cfg["arena_warmup"])

    def after_step(opt, step, total):
        if step >= start * total:
            arena_mod.proximal_step(fm, lam, opt.param_groups[0]["lr"], optimizer=opt)

    return Build([{"params": _trainable_of(fm), "lr": lr, "name": "arena"}], after_step=after_step,
                 info=dict(rank=cfg["arena_rank"], lam=lam, warmup=start))
# endregion


@register("decoder_only", "fine-tuning")
def build_decoder_only(fm, head, lr, cfg) -> Build:
    """The decoder (+ head)."""
    return Build([{"params": list(fm.decoder.parameters()), "lr": lr, "name": "decoder"}])


@register("full_ft", "fine-tuning")
def build_full_ft(fm, head, lr, cfg) -> Build:
    """Every weight the segmentation path uses."""
    return Build([{"params": [p for n, p in fm.named_parameters() if _used(n)], "lr": lr, "name": "all"}])


@register("gradual_unfreezing", "survey strategy")
def build_gradual_unfreezing(fm, head, lr, cfg) -> Build:
    """ULMFiT's gradual unfreezing: head, +decoder, +top half of the ViT, +all, at equal fractions of
    training (``on_step(step, total)`` switches ``requires_grad``; the optimiser holds everything)."""
    params = [p for n, p in fm.named_parameters() if _used(n)]
    depth = len(fm.visual.transformer.resblocks)
    stages = [[], list(fm.decoder.parameters()),
              [p for b in list(fm.visual.transformer.resblocks)[depth // 2:] for p in b.parameters()], params]

    def on_step(step, total):
        k = min(len(stages) - 1, step * len(stages) // max(total, 1))
        for p in stages[-1]:
            p.requires_grad_(False)
        for s in stages[: k + 1]:
            for p in s:
                p.requires_grad_(True)

    info = {"stages": ["head", "+decoder", f"+ViT blocks {depth // 2}..{depth - 1}", "+all"]}
    return Build([{"params": params, "lr": lr, "name": "all"}], on_step=on_step, info=info)


@register("discriminative_lr", "survey strategy")
def build_discriminative_lr(fm, head, lr, cfg) -> Build:
    """Full fine-tuning with lr * decay^(i+1) at depth level i, from the decoder (i=0) down to the
    embeddings (ULMFiT, Eq. 2); the head trains at ``lr``."""
    levels = [list(fm.decoder.parameters())] + _vit_depth_groups(fm)[::-1]  # top (decoder) -> bottom
    groups = [{"params": list(head.parameters()), "lr": lr, "name": "head"}]
    groups += [{"params": ps, "lr": lr * cfg["decay"] ** (i + 1), "name": f"level{i}"} for i, ps in enumerate(levels)]
    return Build(groups, info={"decay": cfg["decay"]}, has_head=True)


METHODS = tuple(STRATEGIES)


# region: peft-decoder-factor
def apply_decoder_choice(method: str, fm: nn.Module, groups: list[dict], cfg: dict) -> list[dict]:
    """The decoder as an explicit factor (``cfg["decoder"]``): ``None`` keeps the strategy's own choice
    (BitFit / Affine-LN tune the decoder's biases / norms, LoRA / ARENA / AdaptFormer freeze it);
    ``"frozen"`` removes every decoder weight from the strategy's groups; ``"tuned"`` does that and
    adds the whole decoder at the decoder-only learning rate (the slides' "decoder fine-tuned + PEFT")."""
    choice = cfg["decoder"]
    if choice is None:
        return groups
    if choice not in DECODER_CHOICES:
        raise ValueError(f"decoder={choice!r}: use None (the strategy's default) or one of {DECODER_CHOICES}")
    if method not in DECODER_FACTOR_METHODS:
        raise ValueError(f"decoder={choice!r} applies to the PEFT strategies {DECODER_FACTOR_METHODS}, not {method!r}")
    dec = list(fm.decoder.parameters())
    dec_ids = {id(p) for p in dec}
    out = [dict(g, params=[p for p in g["params"] if id(p) not in dec_ids]) for g in groups]
    if choice == "tuned":
        out.append({"params": dec, "lr": cfg["lr"]["decoder_only"], "name": "decoder"})
    return out
# endregion


def prepare(method: str, fm: nn.Module, structure: str | None = None, *, copy_model: bool = True, **overrides) -> Adapted:
    """Build the :class:`Adapted` model for ``method`` from a pretrained segmentation model.

    ``structure``: the target structure's name if it was seen in pretraining (head init), else None.
    ``overrides``: any key of :data:`DEFAULTS` (``rank``, ``arena_lam``, ``lr={...}`` partial...).
    ``fm`` is deep-copied unless ``copy_model=False``. The strategy itself is the registered builder
    ``STRATEGIES[method]``; the new binary head is always trainable (at ``head_lr``, unless the
    builder puts it in its own group).
    """
    if method not in STRATEGIES:
        raise ValueError(f"unknown adaptation method {method!r}; known strategies: {', '.join(STRATEGIES)}")
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for prepare(); known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **overrides}
    cfg["lr"] = {**DEFAULTS["lr"], **overrides.get("lr", {})}
    if not hasattr(fm, "features") or not hasattr(fm, "binary_head"):
        raise TypeError(
            f"prepare() needs a course_lib.models.seg_foundation.SegFoundation, got {type(fm).__name__}; "
            f"load it with seg_foundation.load()"
        )
    fm = copy.deepcopy(fm) if copy_model else fm
    fm.requires_grad_(False)
    head = fm.binary_head(structure)
    head.requires_grad_(True)
    lr = cfg["lr"].get(method)
    if lr is None:
        raise ValueError(f"no learning rate for strategy {method!r}; pass lr={{{method!r}: ...}} or add it to DEFAULTS['lr']")
    b = STRATEGIES[method](fm, head, lr, cfg)
    groups = apply_decoder_choice(method, fm, list(b.groups), cfg)
    if not b.has_head:
        groups.append({"params": list(head.parameters()), "lr": cfg["head_lr"], "name": "head"})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    if b.on_step is not None:
        b.on_step(0, 1)  # e.g. gradual unfreezing starts with only the head trainable
    model = TaskModel(fm, head, b.adapter, b.black_box)
    return Adapted(method, model, groups, b.on_step, b.after_step, dict(b.info))

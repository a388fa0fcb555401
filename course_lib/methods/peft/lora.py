"""LoRA on the vision tower through Hugging Face ``peft``, with one target spec for every ViT.
Used by notebook 05 (and by the HT recipe of notebook 09 for its LoRA baseline).

Paper: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
A frozen weight ``W0`` (out x in) is adapted by a trainable low-rank product (Eq. 3)::

    h = W0 x + (alpha / r) * B A x,      B in R^{out x r} (init 0),  A in R^{r x in} (random)

so at initialisation ``B A = 0`` and the adapted model computes exactly what the frozen one
computes; after training the product can be merged, ``W = W0 + (alpha/r) B A``, and inference
costs nothing extra (Sec. 4.1).

Target spec (the same for the course's ``sonoclip-tiny``, the segmentation model of
:mod:`course_lib.models.seg_foundation` and a real open_clip ``ViT-B-16``)
-----------------------------------------------------------------------------------
open_clip ViT blocks live at ``<vision>.transformer.resblocks[i]`` and contain
``attn`` (an ``nn.MultiheadAttention`` with a fused ``in_proj_weight`` for q, k, v and an
``out_proj`` linear), ``mlp.c_fc`` and ``mlp.c_proj`` (``nn.Linear``). ``targets`` accepts:

``"attn"``   the whole attention layer: LoRA on the fused qkv projection (one ``A`` of
             ``r x D`` and one ``B`` of ``3D x r``) **and** on ``out_proj``. We target the
             ``nn.MultiheadAttention`` module itself because ``peft`` (>= 0.12) has a dedicated
             wrapper for it. Targeting ``attn.out_proj`` alone would be silently useless:
             ``nn.MultiheadAttention`` reads ``out_proj.weight`` directly and never calls
             ``out_proj.forward``, so a wrapped linear would never run. That is why
             ``"out_proj"`` is refused with an explanation.
             peft 0.21 applies the ``out_proj`` update **twice** inside its MultiheadAttention
             wrapper (``W_out + 2 s B A``; huggingface/peft PR #3774, open at the time of writing).
             :func:`apply_lora` measures this once on a tiny layer (:func:`peft_out_proj_factor`) and
             rescales that adapter's ``scaling`` so that the model computes exactly Eq. 3; with a
             fixed peft the factor is 1 and nothing changes.
``"mlp"``    both MLP linears (``"c_fc"`` and ``"c_proj"`` may be given separately).

``blocks`` picks blocks by index (negative = from the top, e.g. ``blocks=[-2, -1]`` adapts only
the two top blocks); ``None`` = all blocks.

:mod:`course_lib.methods.peft.arena` reuses :func:`resolve_targets` and :func:`unwrap_model`, so
ARENA adapts exactly the same weights.
"""
from __future__ import annotations

import copy
import functools
import re
import warnings
from typing import Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "TARGET_CHOICES",
    "unwrap_model",
    "vision_blocks",
    "resolve_targets",
    "apply_lora",
    "merge_lora",
    "lora_layers",
    "parameter_report",
    "format_report",
    "expected_lora_params",
]

#: what ``targets`` may contain
TARGET_CHOICES = ("attn", "mlp", "c_fc", "c_proj")


def unwrap_model(module) -> nn.Module:
    """Accept an ``nn.Module`` or a course ``Backbone`` (which carries ``.model``)."""
    if isinstance(module, nn.Module):
        return module
    inner = getattr(module, "model", None)
    if isinstance(inner, nn.Module):
        return inner
    raise TypeError(
        f"expected a torch nn.Module (or a course Backbone with .model), got {type(module).__name__}; "
        f"pass e.g. load_backbone('sonoclip-tiny').model or an open_clip model"
    )


def vision_blocks(module: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(prefix, resblocks)`` of the vision transformer inside ``module``.

    Looks for ``module.visual.transformer.resblocks`` (an open_clip CLIP or the course's
    segmentation model), then ``module.transformer.resblocks`` (a bare open_clip
    ``VisionTransformer``). The text tower of a CLIP is never touched.
    """
    module = unwrap_model(module)
    for prefix, owner in (("visual.", getattr(module, "visual", None)), ("", module)):
        tr = getattr(owner, "transformer", None) if owner is not None else None
        blocks = getattr(tr, "resblocks", None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return prefix + "transformer.resblocks", blocks
    raise ValueError(
        f"{type(module).__name__} has no open_clip vision transformer (looked for "
        f"'.visual.transformer.resblocks' and '.transformer.resblocks'); pass an open_clip CLIP, its "
        f".visual, a course Backbone or a course_lib.models.seg_foundation model"
    )


def _check_targets(targets) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not targets:
        raise ValueError(f"targets is empty; pass e.g. targets=('attn',) or ('attn', 'mlp') from {TARGET_CHOICES}")
    for t in targets:
        if t in ("out_proj", "attn.out_proj", "in_proj", "qkv"):
            raise ValueError(
                f"target {t!r} cannot be adapted on its own: nn.MultiheadAttention uses its fused in_proj_weight "
                f"and out_proj.weight directly (out_proj.forward is never called), so use targets=('attn',), "
                f"which adapts qkv and out_proj together"
            )
        if t not in TARGET_CHOICES:
            raise ValueError(f"unknown LoRA target {t!r}; choose from {TARGET_CHOICES}")
    return targets


def _check_blocks(blocks, depth: int) -> list[int]:
    if blocks is None:
        return list(range(depth))
    if isinstance(blocks, int):
        blocks = [blocks]
    out = []
    for b in blocks:
        if not isinstance(b, int) or isinstance(b, bool):
            raise TypeError(f"blocks must be integers (negative = from the top), got {b!r}")
        if not -depth <= b < depth:
            raise ValueError(
                f"block index {b} is out of range for a transformer with {depth} blocks; "
                f"use 0..{depth - 1} or -1..-{depth}"
            )
        out.append(b % depth)
    if not out:
        raise ValueError("blocks is empty; pass None for all blocks or e.g. blocks=[-2, -1]")
    return sorted(set(out))


def resolve_targets(module: nn.Module, targets=("attn",), blocks=None) -> list[str]:
    """Full module names to adapt, e.g. ``['visual.transformer.resblocks.3.attn', ...]``."""
    targets = _check_targets(targets)
    prefix, resblocks = vision_blocks(module)
    names = []
    for i in _check_blocks(blocks, len(resblocks)):
        blk = resblocks[i]
        for t in targets:
            subs = {"attn": ["attn"], "mlp": ["mlp.c_fc", "mlp.c_proj"], "c_fc": ["mlp.c_fc"], "c_proj": ["mlp.c_proj"]}[t]
            for s in subs:
                sub = blk.get_submodule(s)
                ok = isinstance(sub, nn.MultiheadAttention) if s == "attn" else isinstance(sub, nn.Linear)
                if not ok:
                    raise TypeError(
                        f"{prefix}.{i}.{s} is a {type(sub).__name__}, not the nn.MultiheadAttention/nn.Linear this "
                        f"target spec expects; was the model already adapted? Build a fresh model first"
                    )
                name = f"{prefix}.{i}.{s}"
                if name not in names:
                    names.append(name)
    return names


@functools.lru_cache(maxsize=None)
def peft_out_proj_factor() -> float:
    """How many times the installed peft applies the ``out_proj`` LoRA delta of an
    ``nn.MultiheadAttention`` in the forward pass (2.0 for peft 0.21, 1.0 once fixed)."""
    from peft import LoraConfig, inject_adapter_in_model

    gen = torch.Generator().manual_seed(0)

    class _M(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    ref = _M().eval()
    m = _M().eval()
    m.load_state_dict(ref.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inject_adapter_in_model(LoraConfig(r=1, lora_alpha=1, target_modules=["attn"]), m)
    op = m.attn.base_layer.out_proj
    with torch.no_grad():
        op.lora_B["default"].weight.copy_(torch.randn(op.lora_B["default"].weight.shape, generator=gen))
        delta = op.lora_B["default"].weight @ op.lora_A["default"].weight
    x = torch.randn(1, 3, 8, generator=gen)
    with torch.no_grad():
        y = m.attn(x, x, x, need_weights=False)[0]
        outs = {}
        for k in (1.0, 2.0):
            r = copy.deepcopy(ref.attn)
            r.out_proj.weight += k * delta
            outs[k] = (r(x, x, x, need_weights=False)[0] - y).abs().max().item()
    return min(outs, key=outs.get)


def apply_lora(
    module: nn.Module,
    rank: int,
    alpha: float | None = None,
    targets: Sequence[str] = ("attn",),
    blocks: Iterable[int] | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Inject ``peft`` LoRA adapters in place and freeze everything else; returns ``module``.

    ``alpha`` defaults to ``rank`` (scale 1). Only the LoRA ``A``/``B`` matrices are trainable
    afterwards; unfreeze a task head yourself (``head.requires_grad_(True)``).
    The returned object is the same model (same class, attributes and ``forward``).
    """
    from peft import LoraConfig, inject_adapter_in_model

    model = unwrap_model(module)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank!r}; pass e.g. rank=4")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    alpha = float(rank if alpha is None else alpha)
    # region: peft-lora-apply
    names = resolve_targets(model, targets, blocks)
    # exact-name regex so that peft matches nothing else (e.g. not the text tower)
    pattern = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=float(dropout), target_modules=pattern, bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that MultiheadAttention support is experimental
        inject_adapter_in_model(cfg, model)
    factor = peft_out_proj_factor()
    if factor != 1.0:  # undo peft's double application of the out_proj update (see module docstring)
        for layer in lora_layers(model).values():
            if hasattr(layer, "unload_and_optionally_merge_module"):
                op = layer.base_layer.out_proj
                for k in op.scaling:
                    op.scaling[k] = op.scaling[k] / factor
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    # endregion
    return module


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers inside ``module`` (outermost ones), by name."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = unwrap_model(module)
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, BaseTunerLayer) and not any(name.startswith(k + ".") for k in found):
            found[name] = m
    return found


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight (``W = W0 + s B A``) and remove the adapters.

    Returns the same (now plain) model; its outputs equal the adapted model's up to float error.
    """
    model = unwrap_model(module)
    layers = lora_layers(model)
    if not layers:
        raise ValueError("no LoRA layers found to merge; call apply_lora(model, rank) first")
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if hasattr(layer, "unload_and_optionally_merge_module"):  # peft's MultiheadAttention
            new = layer.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
        else:
            layer.merge()
            new = layer.get_base_layer()
        setattr(parent, child, new)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return module


def expected_lora_params(module: nn.Module, rank: int, targets=("attn",), blocks=None) -> int:
    """Number of LoRA parameters :func:`apply_lora` will add (``r * (in + out)`` per adapted matrix)."""
    model = unwrap_model(module)
    total = 0
    for name in resolve_targets(model, targets, blocks):
        m = model.get_submodule(name)
        if isinstance(m, nn.MultiheadAttention):
            d = m.embed_dim
            total += rank * (d + 3 * d) + rank * (d + d)
        else:
            total += rank * (m.in_features + m.out_features)
    return total


def parameter_report(module: nn.Module) -> dict:
    """Trainable vs total parameters, overall and by kind.

    Returns ``{"trainable", "total", "percent", "by_kind": {kind: trainable}}`` where kind is
    ``lora``, ``arena``, ``bias``, ``norm``, ``adapter``, ``head`` or ``other``.
    """
    model = unwrap_model(module)
    total = trainable = 0
    by_kind: dict[str, int] = {}
    norm_ids = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)) for p in m.parameters(recurse=False)}
    for n, p in model.named_parameters():
        total += p.numel()
        if not p.requires_grad:
            continue
        trainable += p.numel()
        if "lora_" in n:
            kind = "lora"
        elif "arena" in n or ".parametrizations." in n and not n.endswith(".original"):
            kind = "arena"
        elif "adapter" in n or "adaptformer" in n:
            kind = "adapter"
        elif "head" in n:
            kind = "head"
        elif id(p) in norm_ids:
            kind = "norm"
        elif n.endswith("bias"):
            kind = "bias"
        else:
            kind = "other"
        by_kind[kind] = by_kind.get(kind, 0) + p.numel()
    pct = 100.0 * trainable / total if total else 0.0
    return {"trainable": trainable, "total": total, "percent": pct, "by_kind": by_kind}


def format_report(module: nn.Module) -> str:
    """One line: ``trainable 12,345 / 1,234,567 (1.00 %) — lora 12,000, head 345``."""
    r = parameter_report(module)
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(r["by_kind"].items()))
    return f"trainable {r['trainable']:,} / {r['total']:,} ({r['percent']:.2f} %)" + (f" — {kinds}" if kinds else "")

"""Backbone adapters for TAP-SLF: one interface over an open_clip ViT and Florence-2's DaViT vision encoder
(``transformers`` native classes); used by :mod:`course_lib.methods.tapslf.tapslf` and notebook 10.

Both adapters expose the same things to the TAP-SLF model:

* ``blocks``: the encoder blocks in depth order (a flat list), which the frozen ratio counts;
* ``lora_targets(block_ids)``: exact module names of the attention projections (q, k, v and output)
  of those blocks, for ``peft`` (paper eqs. 3-5);
* ``width``: the token width ``d`` of the prompted sequence (paper eq. 1, ``P_t in R^{L x d}``);
* ``forward(x, prompts)`` -> ``(maps, pooled)``: feature maps for the FPN decoder (fine to coarse)
  and a global-average-pooled vector for the global heads; ``prompts`` is ``None`` or ``(B, L, d)``.

Where the prompts enter (eq. 2)
-------------------------------
*ViT (open_clip)*: ``z0 = [x_cls; P_t; E(x) + E_pos]`` after ``ln_pre``, right before block 0: the
positional embedding is added to the patch tokens *before* the prompts are inserted, so the prompts
carry no position and do not shift any patch's position. Prompt outputs are dropped after the
last block; the heads only see patch tokens.

*Florence-2 DaViT (hierarchical)*: there is no single token sequence. Each stage starts with a
strided convolution (the patch embedding; there is no additive positional embedding, position comes
from zero-padding of the convolutions) and alternates window attention (tokens of a
``window x window`` patch of the grid) with channel-group attention (channels attend to channels,
tokens are the feature axis) and depthwise convolutions. Prompt tokens cannot pass through the
convolutions, so they cannot be carried from block to block as in a ViT. We therefore prepend
``P_t in R^{L x d_s}`` to **every window's token sequence in the spatial (window) attention of
every block of one stage** (``prompt_stage``, default the last one, whose width ``d = 1024`` for
Florence-2-base is the encoder's output width), and drop the prompt outputs after each attention.
At 256 px the last stage's grid is 8 x 8, inside one 12 x 12 window, so there the window attention
is global and this is exactly eq. 2 for that stage's sequence. Channel attention is left as is
(adding tokens to it would change every channel-affinity score, not add a "prompt").
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ViTEncoder", "DaViTEncoder", "make_encoder", "tiny_florence2_config", "florence2_base_config",
           "random_florence2_model", "load_florence2_vision", "FLORENCE2_REPO"]

#: Hugging Face repository of the converted (native ``transformers``) Florence-2-base checkpoint
FLORENCE2_REPO = "florence-community/Florence-2-base"


# region: tapslf-vit-prompts
class ViTEncoder(nn.Module):
    """An open_clip ``VisionTransformer`` (``visual``) driven block by block, with optional prompts.

    ``feature_blocks``: block indices whose patch tokens feed the FPN decoder (fine -> coarse is
    emulated by upsampling shallower blocks more, ViTDet-style: x2 for the shallower, x1 for the last);
    default: relative depths 1/2 and 1 (blocks 1 and 3 of the 4-block tiny CLIP, 5 and 11 of ViT-B/16).
    """

    kind = "vit"

    def __init__(self, visual: nn.Module, feature_blocks=None, mean=None, std=None):
        super().__init__()
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise ValueError(
                f"{type(visual).__name__} has no '.transformer.resblocks'; TAP-SLF's ViT path needs an open_clip "
                f"VisionTransformer (e.g. load_backbone('sonoclip-tiny').visual) or a Florence-2 vision encoder")
        self.visual = visual
        self.depth = len(blocks)
        self.width = int(visual.transformer.width)
        self.grid = tuple(int(g) for g in visual.grid_size)
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.image_size = self.grid[0] * self.patch_size
        if feature_blocks is None:
            feature_blocks = sorted({max(0, math.ceil(f * self.depth) - 1) for f in (0.5, 1.0)})
        self.feature_blocks = [int(b) % self.depth for b in feature_blocks]
        self.map_channels = [self.width] * len(self.feature_blocks)
        # shallowest block upsampled most: ..., x4, x2, x1 (ViTDet's simple feature pyramid)
        n = len(self.feature_blocks)
        self.map_scales = [2 ** (n - 1 - i) for i in range(n)]
        self.mean = mean
        self.std = std

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def lora_targets(self, block_ids) -> list[str]:
        """``attn`` of each block: peft's ``nn.MultiheadAttention`` wrapper adapts the fused q/k/v
        projection and ``out_proj`` (see :mod:`course_lib.methods.peft.lora`)."""
        return [f"visual.transformer.resblocks.{i}.attn" for i in block_ids]

    def forward(self, x: torch.Tensor, prompts: torch.Tensor | None = None):
        v = self.visual
        x = v.conv1(x)  # (B, d, gh, gw): patch embedding E(x)
        B, d, gh, gw = x.shape
        x = x.reshape(B, d, gh * gw).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).expand(B, 1, d)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)  # + E_pos (patches keep positions)
        x = v.patch_dropout(x)
        x = v.ln_pre(x)
        L = 0
        if prompts is not None:  # eq. 2: z0 = [x_cls; P_t; E(x) + E_pos]
            L = prompts.shape[1]
            x = torch.cat([x[:, :1], prompts.to(x.dtype), x[:, 1:]], dim=1)
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        maps = []
        for i, blk in enumerate(v.transformer.resblocks):
            x = blk(x)
            if i in self.feature_blocks:
                t = x if batch_first else x.transpose(0, 1)
                patch = t[:, 1 + L:]  # prompt outputs are dropped: heads see patch tokens only
                maps.append(patch.transpose(1, 2).reshape(B, d, gh, gw))
        last = (x if batch_first else x.transpose(0, 1))[:, 1 + L:]
        pooled = v.ln_post(last.mean(dim=1))  # GAP over patch tokens
        return maps, pooled
# endregion


def _window_attention(attn: nn.Module, h: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
    """Florence-2 window attention on ``h`` (B, H, W, C), with ``prompts`` (B, L, C) prepended to every
    window's tokens (as queries, keys and values); prompt outputs are dropped. With ``prompts=None``
    this is the stock computation (tested against the ``transformers`` module)."""
    B, H, W, C = h.shape
    ws = attn.window_size
    pad_r, pad_b = (ws - W % ws) % ws, (ws - H % ws) % ws
    h = F.pad(h, (0, 0, 0, pad_r, 0, pad_b))
    Hp, Wp = h.shape[1], h.shape[2]
    nh, nw = Hp // ws, Wp // ws
    win = h.view(B, nh, ws, nw, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B * nh * nw, ws * ws, C)
    L = 0
    if prompts is not None:
        L = prompts.shape[1]
        p = prompts.to(win.dtype).repeat_interleave(nh * nw, dim=0)  # same P_t in every window of an image
        win = torch.cat([p, win], dim=1)
    n_win, n_tok, _ = win.shape
    heads = attn.num_heads
    qkv = attn.qkv(win).reshape(n_win, n_tok, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    out = out.transpose(1, 2).reshape(n_win, n_tok, C)
    out = attn.proj(out)[:, L:]
    out = out.reshape(B, nh, nw, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    return out[:, :H, :W].reshape(B, H * W, C)


def _spatial_block(blk: nn.Module, x: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
    """``Florence2VisionSpatialBlock.forward`` with prompted window attention."""
    B, C, H, W = x.shape
    x = blk.conv1(x) + x
    x = x.flatten(2).transpose(1, 2)
    res = x
    h = blk.norm1(x).view(B, H, W, C)
    x = res + blk.drop_path1(_window_attention(blk.window_attn, h, prompts))
    x = x.transpose(1, 2).view(B, C, H, W)
    x = blk.conv2(x) + x
    x = x.flatten(2).transpose(1, 2)
    x = x + blk.drop_path2(blk.ffn(blk.norm2(x)))
    return x.transpose(1, 2).view(B, C, H, W)


# region: tapslf-davit-prompts
class DaViTEncoder(nn.Module):
    """Florence-2's DaViT vision encoder (``transformers.Florence2VisionBackbone``) driven stage by stage.

    Blocks (``Florence2VisionBlock`` = spatial window-attention block + channel-attention block) are
    counted flat over the stages (Florence-2-base: depths 1, 1, 9, 1 -> 12 blocks). Prompts enter the
    window attention of every block of ``prompt_stage`` (see the module docstring); the decoder gets
    the outputs of ``feature_stages`` (default the last three: strides 8, 16, 32).
    """

    kind = "davit"

    def __init__(self, vision: nn.Module, prompt_stage: int = -1, feature_stages=(1, 2, 3),
                 image_size: int = 256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        convs, stages = getattr(vision, "convs", None), getattr(vision, "blocks", None)
        if not isinstance(stages, nn.ModuleList) or not isinstance(convs, nn.ModuleList) or len(stages) == 0:
            raise ValueError(
                f"{type(vision).__name__} has no '.convs'/'.blocks' stages; pass a transformers "
                f"Florence2VisionBackbone (e.g. load_florence2_vision() or Florence2VisionBackbone(config))")
        self.vision = vision
        n_st = len(stages)
        if not -n_st <= prompt_stage < n_st:
            raise ValueError(f"prompt_stage {prompt_stage} out of range for {n_st} stages; use 0..{n_st - 1} or -1")
        self.prompt_stage = prompt_stage % n_st
        self.feature_stages = [int(s) % n_st for s in feature_stages]
        dims = list(vision.config.embed_dim)
        self.width = dims[self.prompt_stage]
        self.out_width = dims[-1]
        self.map_channels = [dims[s] for s in self.feature_stages]
        self.map_scales = [1] * len(self.feature_stages)
        self.depth = sum(len(s) for s in stages)
        self.image_size = image_size
        self.mean, self.std = mean, std
        self._index = [(s, j) for s, st in enumerate(stages) for j in range(len(st))]

    @property
    def blocks(self) -> list[nn.Module]:
        return [blk for st in self.vision.blocks for blk in st]

    def lora_targets(self, block_ids) -> list[str]:
        """q/k/v (fused ``qkv``) and output (``proj``) of both attentions of each block."""
        names = []
        for i in block_ids:
            s, j = self._index[i]
            base = f"vision.blocks.{s}.{j}"
            names += [f"{base}.spatial_block.window_attn.qkv", f"{base}.spatial_block.window_attn.proj",
                      f"{base}.channel_block.channel_attn.qkv", f"{base}.channel_block.channel_attn.proj"]
        return names

    def forward(self, x: torch.Tensor, prompts: torch.Tensor | None = None):
        v = self.vision
        x = x.to(v.convs[0].conv.weight.dtype)
        maps = []
        for s, (conv, stage) in enumerate(zip(v.convs, v.blocks)):
            x = conv(x)
            for blk in stage:
                p = prompts if s == self.prompt_stage else None
                x = _spatial_block(blk.spatial_block, x, p)
                x = blk.channel_block(x)
            if s in self.feature_stages:
                maps.append(x)
        pooled = x.mean(dim=(2, 3))
        return maps, pooled
# endregion


def tiny_florence2_config(**overrides):
    """A tiny random-weight Florence-2 vision config (4 stages, 5 blocks, widths 16..64) for offline tests."""
    from transformers import Florence2VisionConfig

    kw = dict(embed_dim=[16, 32, 48, 64], depths=[1, 1, 2, 1], num_heads=[1, 2, 3, 4], num_groups=[1, 2, 3, 4],
              window_size=4, drop_path_rate=0.0, projection_dim=64)
    kw.update(overrides)
    return Florence2VisionConfig(**kw)


def florence2_base_config():
    """Florence-2-base's vision encoder config (DaViT: widths 128/256/512/1024, depths 1/1/9/1, window 12);
    these are ``transformers``' defaults for ``Florence2VisionConfig``. No download."""
    from transformers import Florence2VisionConfig

    return Florence2VisionConfig(embed_dim=[128, 256, 512, 1024], depths=[1, 1, 9, 1], num_heads=[4, 8, 16, 32],
                                 num_groups=[4, 8, 16, 32], window_size=12, drop_path_rate=0.0)


def random_florence2_model():
    """``Florence2ForConditionalGeneration`` with Florence-2-base's vision encoder (:func:`florence2_base_config`)
    and a tiny BART language model, random weights: what :mod:`course_lib.models.offline_hub` saves as the offline
    stand-in of ``FLORENCE2_REPO`` (only the vision tower is used by TAP-SLF; the language model is dropped)."""
    from transformers import BartConfig, Florence2Config, Florence2ForConditionalGeneration

    text = BartConfig(vocab_size=64, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
    return Florence2ForConditionalGeneration(Florence2Config(vision_config=florence2_base_config(), text_config=text,
                                                             image_token_id=63)).eval()


def load_florence2_vision(pretrained: bool = True, repo: str = FLORENCE2_REPO, config=None):
    """The Florence-2 vision encoder as a ``transformers.Florence2VisionBackbone``.

    ``pretrained=False`` builds it from ``config`` (default: :func:`florence2_base_config`) with random
    weights, offline. ``pretrained=True`` loads ``repo`` with the native classes (no remote code) and
    keeps only ``model.vision_tower``; offline or unreachable, it raises a ``RuntimeError`` saying how
    to get the weights, except in smoke mode (``COURSE_SMOKE=1``), where the same ``from_pretrained`` call loads
    a local random-weight folder in the hub layout (:func:`random_florence2_model`, ``models.offline_hub``).
    """
    from transformers import Florence2VisionBackbone

    if not pretrained:
        return Florence2VisionBackbone(config or florence2_base_config()).eval()
    from course_lib.models import offline_hub

    src = offline_hub.resolve(repo, random_florence2_model)  # smoke mode offline: a local random-weight folder
    try:
        from transformers import Florence2ForConditionalGeneration

        full = Florence2ForConditionalGeneration.from_pretrained(src)
    except Exception as e:  # network, cache or format problem: say what was asked and how to fix it
        raise RuntimeError(
            f"could not load Florence-2 weights from {repo!r} ({type(e).__name__}: {e}). Download them once with "
            f"internet access (huggingface-cli download {repo}) or use pretrained=False for random weights"
        ) from e
    vision = full.model.vision_tower
    del full.model.language_model
    return vision.eval()


def make_encoder(backbone, **kw) -> nn.Module:
    """Wrap a backbone: a course ``Backbone`` / open_clip CLIP / ``VisionTransformer`` -> :class:`ViTEncoder`,
    a ``Florence2VisionBackbone`` -> :class:`DaViTEncoder`. Anything else: ``ValueError`` naming the fix."""
    if isinstance(backbone, (ViTEncoder, DaViTEncoder)):
        return backbone
    mean = getattr(backbone, "mean", None)
    std = getattr(backbone, "std", None)
    visual = getattr(backbone, "visual", backbone)
    if isinstance(getattr(getattr(visual, "transformer", None), "resblocks", None), nn.ModuleList):
        return ViTEncoder(visual, mean=mean, std=std, **kw)
    if isinstance(getattr(backbone, "convs", None), nn.ModuleList) and hasattr(backbone, "config"):
        return DaViTEncoder(backbone, **kw)
    raise ValueError(
        f"TAP-SLF cannot find encoder blocks in {type(backbone).__name__}: expected an open_clip vision transformer "
        f"('.visual.transformer.resblocks', e.g. load_backbone('sonoclip-tiny')) or a Florence-2 vision encoder "
        f"('.convs' + '.blocks', e.g. load_florence2_vision())")


def exact_pattern(names) -> str:
    """A regex matching exactly these module names (so peft adapts nothing else)."""
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"

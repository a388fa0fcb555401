"""One interface for every vision-language backbone of the course (course-built sonoclip-tiny, open_clip models).
Used by notebooks 01-05 and 09-11 (every notebook that encodes images or text with a CLIP).

``load_backbone(name, pretrained=...)`` returns a :class:`Backbone` wrapping an open_clip
``CLIP`` module (Radford et al., 2021, "Learning Transferable Visual Models From Natural
Language Supervision", ICML; the contrastive objective is its Fig. 3 / Eq. of the
symmetric InfoNCE, see :mod:`course_lib.models.pretrain`). Names:

=====================  =====================================================================
``"sonoclip-tiny"``    the course-built tiny CLIP (custom open_clip config, trained by
                       ``python -m course_lib.models.pretrain`` on SonoSynth image-report pairs;
                       checkpoint in ``course_lib/assets``, SHA-256 checked on load)
``"ViT-B-16"``         open_clip ViT-B/16; ``pretrained="openai"`` (default) or any open_clip tag,
                       ``pretrained=None`` builds the real architecture with random weights, offline
``"biomedclip"``       BiomedCLIP (Zhang et al., 2023; 15M PubMed figure-caption pairs):
                       ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``; its timm vision
                       tower does not fit the course interface: :class:`Backbone` refuses it with a clear error
``"metaclip-b16"``     MetaCLIP ViT-B/16 (Xu et al., 2024, "Demystifying CLIP data"):
                       open_clip ``ViT-B-16-quickgelu`` / ``metaclip_400m``
``"auto"``             the best backbone of :data:`AUTO_ORDER` that can actually be had right now (cached or hub
                       reachable), printed together with the reason; offline -> ``sonoclip-tiny``
                       (smoke mode, ``COURSE_SMOKE=1``: ViT-B-16 at 224 px with random weights)
any open_clip name     e.g. ``"ViT-B-32"`` with an open_clip pretrained tag
=====================  =====================================================================

Every backbone exposes the same attributes (``name, image_size, patch_size, grid, width, depth,
embed_dim, context_length``) and methods (``preprocess, encode_image, tokenize, encode_text,
tokens``), and ``bb.visual`` is an open_clip ``VisionTransformer`` whose blocks live at
``bb.visual.transformer.resblocks[i]`` with ``attn`` (``nn.MultiheadAttention``), ``ln_1``,
``ln_2``, ``mlp.c_fc``, ``mlp.c_proj`` -- so LoRA targets, hooks and adapters attach to the tiny
model exactly as they do to ViT-B/16.

Offline behaviour: an *explicit* request for pretrained weights that are neither cached under
``runtime.cache_dir("open_clip")`` nor downloadable raises :class:`BackboneUnavailableError`
within a couple of seconds (``runtime.hub_reachable`` has a short timeout and honours
``HF_HUB_OFFLINE``); the message names the model, the reason and the fix. Only ``"auto"`` falls back.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import checkpoints, runtime
from course_lib.checkpoints import ChecksumError, sha256_file  # noqa: F401  (re-exported)

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"

#: The course-built CLIP: an open_clip config (registered with ``open_clip.add_model_config``).
#: Small on purpose, so that it pretrains on a 2-core CPU in minutes: 64 px images, 8 px patches
#: (8x8 grid + CLS = 65 tokens), a 4-block vision tower of width 96 (3 heads of 32), a 3-block text
#: tower of width 96 with CLIP's context length 77 (the median SonoSynth report is ~63 BPE tokens, the
#: 90th percentile ~85; longer ones lose whole sentences via :func:`course_lib.models.pretrain.fit_text`),
#: joint embedding 96. The full 49408-token BPE vocabulary of the open_clip tokenizer is kept so
#: ``open_clip.get_tokenizer`` works unchanged; its token embedding (4.7M of the 5.5M parameters)
#: dominates the ~11 MB fp16 checkpoint.
#: Relative depths: ViT-B/16 blocks 3/6/9 of 12 (1-based) correspond to blocks 1/2/3 of 4 here;
#: use :meth:`Backbone.blocks_at` to get 0-based indices for any depth.
SONOCLIP_TINY_NAME = "sonoclip-tiny"
SONOCLIP_TINY_CFG = {
    "embed_dim": 96,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 96, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 3},
}
SONOCLIP_TINY_FILE = ASSETS_DIR / "sonoclip-tiny.safetensors"
#: SHA-256 of the committed checkpoint (also in data_cards/sonoclip-tiny.md). ``None`` while untrained.
SONOCLIP_TINY_SHA256: str | None = "4f3d9f91fe81a3d04c4539ef4fb7b8a827212f3c0ceeebe88acc4c86b5c7cc5d"
#: digest of the checkpoint's *tensors* (:func:`state_digest`): what every number computed with the model depends
#: on. Unchanged when the file was re-saved in the checksummed format (header changed, weights bit-identical).
SONOCLIP_TINY_WEIGHTS_SHA256 = "a8b62e133b3484101719e884d6caa919bec41fe3855420a31bb2e5a7c6268db2"
SONOCLIP_TINY_REBUILD = "python -m course_lib.models.pretrain --out course_lib/assets/sonoclip-tiny.safetensors"

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: friendly name -> (open_clip model name, default pretrained tag, hub host, description)
REAL_BACKBONES = {
    "ViT-B-16": ("ViT-B-16", "openai", "huggingface.co", "OpenAI CLIP ViT-B/16 (400M web pairs)"),
    "biomedclip": (
        "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        None,
        "huggingface.co",
        "BiomedCLIP ViT-B/16 + PubMedBERT (15M PubMed figure-caption pairs)",
    ),
    "metaclip-b16": ("ViT-B-16-quickgelu", "metaclip_400m", "huggingface.co", "MetaCLIP ViT-B/16 (400M curated pairs)"),
}
_ALIASES = {
    "sonoclip-tiny": "sonoclip-tiny",
    "sonoclip_tiny": "sonoclip-tiny",
    "tiny": "sonoclip-tiny",
    "vit-b-16": "ViT-B-16",
    "vit-b/16": "ViT-B-16",
    "openai": "ViT-B-16",
    "biomedclip": "biomedclip",
    "hf-hub:microsoft/biomedclip-pubmedbert_256-vit_base_patch16_224": "biomedclip",
    "metaclip-b16": "metaclip-b16",
    "metaclip": "metaclip-b16",
    "vit-b-16-quickgelu": "metaclip-b16",
}
#: order in which ``auto`` tries backbones on a GPU (full profile). BiomedCLIP is not among them: its vision tower is
#: a timm ViT (open_clip ``TimmModel``), not an open_clip ``VisionTransformer``, so the course interface (LoRA, HT,
#: CoOp, TAP-SLF attach to ``.visual.transformer.resblocks``) cannot wrap it (:class:`Backbone` refuses it clearly)
AUTO_ORDER = ("ViT-B-16", "metaclip-b16")
#: what ``auto`` resolves to in smoke mode (``COURSE_SMOKE=1``) when nothing is cached and the hub is unreachable:
#: the ViT-B/16 architecture at 224 px with random weights (BiomedCLIP's config and tokenizer live on the hub)
SMOKE_AUTO = "ViT-B-16"

DEFAULT = "default"


class BackboneUnavailableError(RuntimeError):
    """Pretrained weights were asked for explicitly and cannot be had (offline, not cached...)."""


# --------------------------------------------------------------------------- helpers
class _DropOpenClipNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # pragma: no cover - trivial
        msg = record.getMessage()
        return not ("No pretrained weights loaded" in msg or "initialized randomly" in msg)


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs an expected 'no pretrained weights' warning on the root logger; hide only that."""
    flt = _DropOpenClipNoise()
    root = logging.getLogger()
    root.addFilter(flt)
    handlers = list(root.handlers)
    for h in handlers:
        h.addFilter(flt)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*QuickGELU mismatch.*")
            warnings.filterwarnings("ignore", message=".*enable_nested_tensor.*")
            yield
    finally:
        root.removeFilter(flt)
        for h in handlers:
            h.removeFilter(flt)


def _register_tiny_config() -> None:
    """Make ``open_clip.create_model("sonoclip-tiny")`` / ``get_tokenizer`` know our config."""
    import open_clip

    if SONOCLIP_TINY_NAME in open_clip.list_models():
        return
    path = runtime.cache_dir("open_clip_configs") / f"{SONOCLIP_TINY_NAME}.json"
    text = json.dumps(SONOCLIP_TINY_CFG, indent=1)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    open_clip.add_model_config(path)


def canonical_name(name: str) -> str:
    """Map user spellings to the canonical backbone name (raises with the list of known names)."""
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"backbone name must be a non-empty string, got {name!r}; e.g. 'sonoclip-tiny'")
    key = name.strip()
    if key.lower() in _ALIASES:
        return _ALIASES[key.lower()]
    if key.lower() == "auto":
        return "auto"
    import open_clip

    if key in open_clip.list_models() or key.startswith("hf-hub:"):
        return key
    raise ValueError(
        f"unknown backbone {name!r}. Known names: 'auto', 'sonoclip-tiny', 'ViT-B-16', 'biomedclip', "
        f"'metaclip-b16', or any open_clip architecture (open_clip.list_models()), e.g. 'ViT-B-32'."
    )


# --------------------------------------------------------------------------- the wrapper
class Backbone:
    """A CLIP-style model behind the course interface (see CONTRIBUTING.md, 'Backbone interface')."""

    def __init__(self, model, name: str, tokenizer, *, pretrained: str | None, mean=OPENAI_MEAN, std=OPENAI_STD,
                 description: str = ""):
        self.model = model
        self.visual = model.visual
        self.name = name
        self.pretrained = pretrained
        self.description = description
        self._tokenizer = tokenizer
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        vis = self.visual
        if not isinstance(getattr(getattr(vis, "transformer", None), "resblocks", None), torch.nn.ModuleList):
            raise TypeError(
                f"{name}: its vision tower is a {type(vis).__name__} (e.g. BiomedCLIP's timm ViT), not an open_clip "
                f"VisionTransformer with .transformer.resblocks, which the course's Backbone interface needs (LoRA, HT, "
                f"CoOp, TAP-SLF attach there). Use 'ViT-B-16' or 'metaclip-b16' (or open_clip directly for this model).")
        self.image_size = int(_pair(vis.image_size)[0])
        self.patch_size = int(_pair(vis.patch_size)[0])
        self.grid = tuple(int(g) for g in vis.grid_size)
        self.width = int(vis.transformer.width)
        self.depth = len(vis.transformer.resblocks)
        self.embed_dim = int(vis.output_dim)
        self.context_length = int(getattr(model, "context_length", getattr(tokenizer, "context_length", 77)))
        self.num_tokens = self.grid[0] * self.grid[1] + 1  # + CLS

    # -- bookkeeping
    def __repr__(self) -> str:
        return (
            f"Backbone({self.name!r}, pretrained={self.pretrained!r}, image {self.image_size}px, patch "
            f"{self.patch_size}, grid {self.grid}, width {self.width}, depth {self.depth}, embed {self.embed_dim}, "
            f"context {self.context_length})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device) -> "Backbone":
        self.model.to(device)
        return self

    def eval(self) -> "Backbone":
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> "Backbone":
        self.model.train(mode)
        return self

    def freeze(self) -> "Backbone":
        """Set ``requires_grad=False`` on every parameter (adaptation methods then add their own)."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def blocks_at(self, fractions: Sequence[float] = (0.25, 0.5, 0.75)) -> list[int]:
        """0-based block indices at relative depths: ViT-B/16 (12 blocks) -> [2, 5, 8] (blocks 3/6/9),
        the 4-block tiny CLIP -> [0, 1, 2]."""
        out = []
        for f in fractions:
            if not 0 < f <= 1:
                raise ValueError(f"relative depth {f!r} must be in (0, 1]; e.g. 0.25 for a quarter of the depth")
            out.append(max(0, int(round(f * self.depth)) - 1))
        return out

    # -- images
    def preprocess(self, x) -> torch.Tensor:
        """Images -> ``(B, 3, S, S)`` normalised float tensor on the model's device.

        Accepts ``(B,H,W)``, ``(B,1,H,W)``, ``(B,3,H,W)`` (numpy or torch, float in [0,1] or uint8),
        a single ``(H,W)`` image, or a list of PIL images / arrays. Greyscale is repeated to 3 channels,
        the size is changed with antialiased bilinear interpolation to ``image_size``.
        """
        x = _to_image_tensor(x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x - mean) / std
        return x.to(self.device, dtype=self.dtype)

    def _model_input(self, x) -> torch.Tensor:
        """Raw images are preprocessed; a ``(B,3,S,S)`` tensor at the model size is taken as already
        preprocessed (the output of :meth:`preprocess`)."""
        if (
            isinstance(x, torch.Tensor)
            and x.ndim == 4
            and x.shape[1] == 3
            and tuple(x.shape[-2:]) == (self.image_size, self.image_size)
            and x.is_floating_point()
        ):
            return x.to(self.device, dtype=self.dtype)
        return self.preprocess(x)

    def encode_image(self, x, normalize: bool = True) -> torch.Tensor:
        """``(B, embed_dim)`` image embeddings (L2-normalised by default). ``x``: raw images or the
        output of :meth:`preprocess`."""
        return self.model.encode_image(self._model_input(x), normalize=normalize)

    def tokens(self, x, blocks: Iterable[int] | None = None) -> dict[int, dict[str, torch.Tensor]]:
        """Intermediate tokens of the vision tower: ``{block: {"cls": (B,D), "patch": (B,N,D)}}``.

        ``blocks`` are 0-based indices into ``visual.transformer.resblocks`` (negative allowed; default:
        :meth:`blocks_at`). Tokens are each block's raw output (before ``ln_post``); ``N = grid[0]*grid[1]``
        and ``patch.reshape(B, *bb.grid, D)`` gives the spatial map. Gradients flow (hooks, no copies).
        """
        blocks = self.blocks_at() if blocks is None else list(blocks)
        if len(blocks) == 0:
            raise ValueError("tokens() needs at least one block index; e.g. blocks=[bb.depth - 1]")
        norm = []
        for b in blocks:
            if not isinstance(b, (int, np.integer)) or not -self.depth <= b < self.depth:
                raise ValueError(
                    f"block index {b!r} is out of range for {self.name} (depth {self.depth}); use 0..{self.depth - 1}"
                )
            norm.append(int(b) % self.depth)
        captured: dict[int, torch.Tensor] = {}
        resblocks = self.visual.transformer.resblocks
        batch_first = getattr(self.visual.transformer, "batch_first", True)

        def make_hook(i):
            def hook(_module, _inp, out):
                captured[i] = out if batch_first else out.transpose(0, 1)

            return hook

        handles = [resblocks[i].register_forward_hook(make_hook(i)) for i in sorted(set(norm))]
        try:
            self.visual(self._model_input(x))
        finally:
            for h in handles:
                h.remove()
        out = {}
        for b, i in zip(blocks, norm):
            t = captured[i]
            out[b] = {"cls": t[:, 0], "patch": t[:, 1:]}
        return out

    # -- text
    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """``LongTensor (N, context_length)`` with the model's own (open_clip) tokenizer; long texts are
        truncated to the context length."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if len(texts) == 0:
            raise ValueError("tokenize() got no texts; pass e.g. ['a benign lesion', 'a malignant lesion']")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError(f"tokenize() needs strings, got {[type(t).__name__ for t in texts][:4]}")
        return self._tokenizer(texts)

    def encode_text(self, tokens, normalize: bool = True) -> torch.Tensor:
        """``(N, embed_dim)`` text embeddings. ``tokens``: output of :meth:`tokenize` or a list of strings."""
        if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)):
            tokens = self.tokenize(tokens)
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.long, torch.int):
            raise TypeError("encode_text expects the LongTensor from bb.tokenize(texts) (or a list of strings)")
        return self.model.encode_text(tokens.to(self.device), normalize=normalize)

    @torch.no_grad()
    def similarity(self, images, texts) -> torch.Tensor:
        """Cosine similarities ``(B_images, N_texts)``."""
        return self.encode_image(images) @ self.encode_text(texts).T


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _to_image_tensor(x) -> torch.Tensor:
    """Anything image-like -> float ``(B, C, H, W)`` in [0, 1] on CPU (C = 1 or 3)."""
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise ValueError("preprocess() got an empty list of images; pass at least one image")
        items = []
        for im in x:
            if hasattr(im, "convert") and hasattr(im, "size"):  # PIL
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            else:
                arr = np.asarray(im)
            items.append(torch.as_tensor(np.asarray(arr)))
        shapes = {tuple(t.shape) for t in items}
        if len(shapes) > 1:
            items = [_resize_single(t, max(s[-1] for s in shapes)) for t in items]
        x = torch.stack([_to_image_tensor(t[None])[0] for t in items])
        return x
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"preprocess() cannot read {type(x).__name__}; pass a (B,H,W) or (B,C,H,W) array/tensor or a list of PIL images"
        )
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        x = x.float()
    x = x.detach().float().cpu() if not x.requires_grad else x.float().cpu()
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError(f"images contain {int((~torch.isfinite(x)).sum())} NaN/inf values; the embeddings would be NaN "
                         f"and every argmax class 0. Clean them first, e.g. torch.nan_to_num(x) or drop those images")
    if x.numel() == 0:
        raise ValueError(f"preprocess() got an empty batch (shape {tuple(x.shape)}); pass at least one image")
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        if x.shape[-1] in (1, 3) and x.shape[0] not in (1, 3):  # (H, W, C) single image
            x = x.permute(2, 0, 1)[None]
        elif x.shape[0] == 3 and x.shape[-1] not in (1, 3):
            raise ValueError(
                f"ambiguous image tensor of shape {tuple(x.shape)}: one RGB image (3, H, W) or three grey images "
                f"(B=3, H, W)? Pass x[None] for one RGB image (1, 3, H, W), or x[:, None] for three grey images "
                f"(3, 1, H, W)")
        else:
            x = x[:, None]  # (B, H, W)
    elif x.ndim == 4:
        if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"images must have 2-4 dims ((H,W), (B,H,W), (B,C,H,W)); got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(x.shape)}; use (B,H,W) or (B,1|3,H,W)")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"image values must be in [0, 1] (got min {lo:.3g}, max {hi:.3g}); divide uint8 images by 255 — "
            f"or pass the output of bb.preprocess at the model size ({'(B,3,S,S)'}) to encode_image directly"
        )
    return x


def _resize_single(t: torch.Tensor, size: int) -> torch.Tensor:
    t = t.float()
    if t.ndim == 2:
        return F.interpolate(t[None, None], size=(size, size), mode="bilinear", antialias=True)[0, 0]
    return t


# --------------------------------------------------------------------------- builders
def build_sonoclip_tiny(cfg: dict | None = None, seed: int | None = None):
    """A randomly initialised sonoclip-tiny open_clip ``CLIP`` (the registered custom config)."""
    import open_clip

    _register_tiny_config()
    if seed is not None:
        torch.manual_seed(seed)
    with _quiet_open_clip():
        if cfg is None:
            model = open_clip.create_model(SONOCLIP_TINY_NAME, pretrained=None)
        else:
            model = open_clip.CLIP(**cfg)
    return model


def tiny_tokenizer(context_length: int | None = None):
    import open_clip

    _register_tiny_config()
    return open_clip.get_tokenizer(SONOCLIP_TINY_NAME, context_length=context_length)


def state_digest(tensors: dict) -> str:
    """SHA-256 over the names, dtypes and raw bytes of a state dict's tensors (sorted by name): identifies
    the *weights*, independently of the file format or header."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(model, path: str | os.PathLike, meta: dict | None = None) -> str:
    """fp16 checkpoint written with :func:`course_lib.checkpoints.save_state` (safetensors, payload
    checksum and the model config in the header; deterministic bytes); returns the file's SHA-256."""
    sd = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    return checkpoints.save_state(path, sd, {"config": SONOCLIP_TINY_CFG, **(meta or {})})


def read_checkpoint_meta(path: str | os.PathLike = SONOCLIP_TINY_FILE) -> dict:
    """The metadata (config, recipe, metrics, ...) stored in a sonoclip-tiny checkpoint's header."""
    return checkpoints.read_meta(path)


def load_sonoclip_tiny(pretrained=DEFAULT, expected_sha256: str | None = DEFAULT):
    """The tiny CLIP with its committed weights (``pretrained=DEFAULT``), a checkpoint file path, or
    random weights (``pretrained=None``). Read with :func:`course_lib.checkpoints.load_state` (payload
    checksum verified for every file); the committed file's SHA-256 is checked too. An explicit path
    that does not exist raises ``FileNotFoundError``."""
    model = build_sonoclip_tiny()
    if pretrained is None:
        return model, None
    if pretrained in (DEFAULT, True, "course", "sonosynth"):
        path = SONOCLIP_TINY_FILE
        sha = SONOCLIP_TINY_SHA256 if expected_sha256 == DEFAULT else expected_sha256
        if not path.exists():
            if sha is None:
                warnings.warn(
                    f"sonoclip-tiny has no trained checkpoint yet ({path} missing): using RANDOM weights. "
                    f"Build it with `{SONOCLIP_TINY_REBUILD}`.",
                    stacklevel=3,
                )
                return model, None
            raise FileNotFoundError(
                f"sonoclip-tiny checkpoint {path} is missing (it ships with the repository). Restore it from git, "
                f"or rebuild it with `{SONOCLIP_TINY_REBUILD}` (seeded; see data_cards/sonoclip-tiny.md)."
            )
    else:
        path = Path(pretrained)
        sha = None if expected_sha256 == DEFAULT else expected_sha256
        if not path.exists():
            raise FileNotFoundError(
                f"sonoclip-tiny checkpoint {path} not found; pass an existing file, pretrained='default' "
                f"for the committed one, or pretrained=None for random weights"
            )
    if sha is not None and sha256_file(path) != sha:
        raise ChecksumError(
            f"sonoclip-tiny checkpoint {path} has SHA-256 {sha256_file(path)}, expected {sha} (recorded in "
            f"course_lib/models/backbones.py and data_cards/sonoclip-tiny.md). The file is corrupt or was "
            f"replaced: restore it with `git checkout -- {path.name}` or rebuild with `{SONOCLIP_TINY_REBUILD}` "
            f"and update the recorded checksum."
        )
    tensors, _meta = checkpoints.load_state(path)
    sd = {k: v.float() for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not match the sonoclip-tiny config (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); rebuild it with `{SONOCLIP_TINY_REBUILD}`"
        )
    return model, str(path)


def _hf_cached(repo_id: str, filenames: Sequence[str], cache_dir: Path) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    for fn in filenames:
        for cd in (str(cache_dir), None):
            try:
                hit = try_to_load_from_cache(repo_id, fn, cache_dir=cd)
            except Exception:
                hit = None
            if isinstance(hit, str) and os.path.exists(hit):
                return True
    return False


_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def weights_cached(name: str, pretrained: str | None = DEFAULT) -> bool:
    """Are the pretrained weights of a real backbone already in the cache (no network used)?"""
    import open_clip

    name = canonical_name(name)
    arch, tag = _arch_and_tag(name, pretrained)
    cache = runtime.cache_dir("open_clip")
    if arch.startswith("hf-hub:"):
        return _hf_cached(arch[len("hf-hub:"):], _WEIGHT_FILES, cache)
    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if not cfg:
        return bool(tag) and os.path.isfile(str(tag))
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, fn = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        files = (fn,) if fn else _WEIGHT_FILES
        if _hf_cached(repo, files, cache):
            return True
    url = cfg.get("url", "")
    return bool(url) and (cache / os.path.basename(url)).exists()


def _arch_and_tag(name: str, pretrained) -> tuple[str, str | None]:
    if name in REAL_BACKBONES:
        arch, default_tag, _, _ = REAL_BACKBONES[name]
    else:
        arch, default_tag = name, None
    tag = default_tag if pretrained == DEFAULT else pretrained
    return arch, tag


def _load_real(name: str, pretrained, device) -> Backbone:
    import open_clip

    arch, tag = _arch_and_tag(name, pretrained)
    desc = REAL_BACKBONES.get(name, (arch, tag, "huggingface.co", arch))[3]
    cache = runtime.cache_dir("open_clip")
    is_hub_model = arch.startswith("hf-hub:")
    if is_hub_model and pretrained is None:
        raise BackboneUnavailableError(
            f"{name}: its architecture (ViT-B/16 + PubMedBERT text tower) is defined on the Hugging Face hub, so "
            f"pretrained=None cannot build it offline. Use load_backbone('ViT-B-16', pretrained=None) for the same "
            f"vision geometry with random weights, or go online once so {arch} is cached in {cache}."
        )
    wants_weights = is_hub_model or tag is not None
    if wants_weights and not (tag and os.path.isfile(str(tag))):
        cached = weights_cached(name, pretrained)
        if not cached and not runtime.hub_reachable():
            reason = "HF_HUB_OFFLINE/COURSE_OFFLINE is set" if runtime.offline_forced() else "the hub is unreachable"
            raise BackboneUnavailableError(
                f"{name} ({arch}, pretrained={tag!r}): the weights are not in the cache ({cache}) and {reason}. "
                f"Fix: run once with internet access (unset HF_HUB_OFFLINE) so they are downloaded into the cache, "
                f"or set COURSE_CACHE to a folder that already holds them; for a random-weight architecture pass "
                f"pretrained=None; to work fully offline use load_backbone('sonoclip-tiny') or 'auto'."
            )
    kwargs = {}
    if tag is not None and not is_hub_model:
        pcfg = open_clip.get_pretrained_cfg(arch, tag)
        if pcfg.get("quick_gelu") and not arch.endswith("quickgelu"):
            kwargs["force_quick_gelu"] = True  # OpenAI weights were trained with QuickGELU
    try:
        with _quiet_open_clip():
            model = open_clip.create_model(arch, pretrained=None if is_hub_model else tag, cache_dir=str(cache),
                                           **kwargs)
            tokenizer = open_clip.get_tokenizer(arch, cache_dir=str(cache)) if is_hub_model else open_clip.get_tokenizer(arch)
    except BackboneUnavailableError:
        raise
    except Exception as e:  # download / parsing failures -> one clear message
        raise BackboneUnavailableError(
            f"{name} ({arch}, pretrained={tag!r}) could not be loaded: {type(e).__name__}: {e}. Fix: check the "
            f"network (or unset HF_HUB_OFFLINE) and the cache folder {cache}; pretrained=None gives random weights."
        ) from e
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    bb = Backbone(model, name, tokenizer, pretrained=tag, mean=pp.get("mean", OPENAI_MEAN),
                  std=pp.get("std", OPENAI_STD), description=desc)
    return bb.to(device).eval()


def auto_choice(profile=None, verbose: bool = True) -> tuple[str, str]:
    """(name, reason) of the backbone ``auto`` resolves to."""
    P = profile or runtime.get_profile()
    if P.name == "quick":
        return SONOCLIP_TINY_NAME, "quick profile: the course-built tiny CLIP runs on CPU in seconds"
    for cand in AUTO_ORDER:
        if weights_cached(cand):
            return cand, f"{REAL_BACKBONES[cand][3]}: weights already cached"
    if runtime.hub_reachable():
        return AUTO_ORDER[0], f"{REAL_BACKBONES[AUTO_ORDER[0]][3]}: hub reachable, will download once"
    if getattr(P, "smoke", False):
        return SMOKE_AUTO, (f"SMOKE mode, offline: the real {REAL_BACKBONES[SMOKE_AUTO][3].split(' (')[0]} architecture "
                            f"at 224 px with RANDOM weights (no pretrained backbone cached, hub unreachable): shapes and "
                            f"code paths are the GPU learner's, every number is meaningless")
    return SONOCLIP_TINY_NAME, "no pretrained backbone cached and the hub is unreachable (offline)"


def smoke_random_weights(name: str, pretrained=DEFAULT) -> bool:
    """In smoke mode (``COURSE_SMOKE=1``), should ``name`` be built with random weights? True for a real
    open_clip architecture asked with its *default* weights (``pretrained="default"``) that are neither cached
    nor downloadable; the notebook's code path then runs on the real architecture (the smoke run checks shapes,
    not numbers). An explicit tag (``pretrained="openai"``) still raises offline, as outside smoke mode."""
    if not runtime.smoke_mode() or pretrained != DEFAULT:
        return False
    name = canonical_name(name)
    if name in (SONOCLIP_TINY_NAME, "auto") or _arch_and_tag(name, DEFAULT)[0].startswith("hf-hub:"):
        return False
    return not weights_cached(name, pretrained) and not runtime.hub_reachable()


def load_backbone(name: str = "auto", pretrained=DEFAULT, device=None, verbose: bool = True) -> Backbone:
    """Load a backbone by name (see the module docstring for names and ``pretrained`` values).

    ``pretrained``: ``"default"`` (the name's standard weights: committed checkpoint for sonoclip-tiny,
    ``openai`` for ViT-B-16 ...), an open_clip tag, a checkpoint path, or ``None`` (random weights,
    offline). The model is returned in eval mode on ``device`` (default ``runtime.get_device()``).
    """
    device = torch.device(device) if device is not None else runtime.get_device()
    cname = canonical_name(name)
    if cname == "auto":
        cname, why = auto_choice()
        if verbose:
            print(f"load_backbone('auto') -> {cname}: {why}")
        pretrained = DEFAULT
    if smoke_random_weights(cname, pretrained):
        print(f"load_backbone({name!r}): SMOKE mode, offline -> {cname} with RANDOM weights (pretrained=None): the real "
              f"architecture, meaningless numbers")
        pretrained = None
    if cname == SONOCLIP_TINY_NAME:
        model, path = load_sonoclip_tiny(pretrained)
        tok = tiny_tokenizer()
        desc = "course-built tiny CLIP trained on SonoSynth image-report pairs" if path else "sonoclip-tiny, random weights"
        bb = Backbone(model, SONOCLIP_TINY_NAME, tok, pretrained=None if path is None else "sonosynth",
                      description=desc)
        return bb.to(device).eval()
    return _load_real(cname, pretrained, device)

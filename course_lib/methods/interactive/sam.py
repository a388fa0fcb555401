"""SAM-family models through ``transformers``' ``SamModel``: the course-built ``sonosam-tiny``, real SAM
and MedSAM, one prompt interface (points, boxes, a previous mask). Used by notebook 07.

SAM (Kirillov et al., "Segment Anything", ICCV 2023, Sec. 3, Fig. 4) has three parts: a heavy
**image encoder** (a ViT with windowed + global attention) run once per image; a light **prompt
encoder** that turns points (positional encoding + a learned embedding per label), boxes (two corner
points) and a dense mask prompt (convolutions) into tokens; and a **mask decoder** (two-way
transformer between prompt tokens and image embedding) that returns three candidate masks (the
*ambiguity*: part, object, whole) with a predicted IoU each, or one mask when a single answer is
wanted (``multimask_output=False``, used after the first click).

``sonosam-tiny`` is exactly that architecture with a small config (:data:`SONOSAM_CONFIG`), trained
by the course on SonoSynth (:mod:`course_lib.methods.interactive.recipe`). In the full profile the
same code loads ``facebook/sam-vit-base`` or MedSAM (``wanglab/medsam-vit-base``: SAM ViT-B
fine-tuned on 1.5 M medical image–mask pairs with box prompts, Ma et al., Nature Communications 2024).

Simplification: the real SAM processor resizes the longest side to 1024 and pads; here images are
square and resized to the model's ``image_size`` (prompt coordinates are in that pixel space).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import checkpoints, runtime

NAME = "sonosam-tiny"
ASSETS = runtime.PACKAGE_DIR / "assets"
CHECKPOINT = ASSETS / "sonosam-tiny.safetensors"
#: SHA-256 of the committed checkpoint (also in data_cards/sonosam-tiny.md); None until it is built
CHECKPOINT_SHA256: str | None = "bf1d95b4f110f3091a53c2f5cd4fc97515f148ce14f86b73e3ab994744c4561c"
REBUILD = "python -m course_lib.methods.interactive.recipe --out course_lib/assets/sonosam-tiny.safetensors"
HUB_MODELS = {"sam-vit-base": "facebook/sam-vit-base", "medsam": "wanglab/medsam-vit-base"}

#: the small SAM config: same classes as SAM ViT-B, a 128-px input, 8-px patches (16x16 embedding grid)
SONOSAM_CONFIG = dict(
    vision_config=dict(hidden_size=48, output_channels=32, num_hidden_layers=3, num_attention_heads=4, image_size=128,
                       patch_size=8, window_size=4, global_attn_indexes=[2], mlp_dim=96, num_pos_feats=16,
                       initializer_range=0.02),  # HF's SAM default (1e-10) only suits loading pretrained weights
    prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=8, mask_input_channels=8),
    mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                             iou_head_hidden_dim=32),
)
# SAM normalises RGB with the ImageNet statistics (on 0..255 pixels)
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def build_sonosam_tiny(seed: int = 0):
    """``sonosam-tiny`` with random weights (seeded)."""
    from transformers import SamConfig, SamModel

    torch.manual_seed(seed)
    model = SamModel(SamConfig(**SONOSAM_CONFIG))
    # SAM's random-Fourier positional encoding of points and pixels uses a Gaussian matrix of scale 1
    # (Kirillov et al. 2023; Tancik et al. 2020). transformers initialises it with scale hidden_size / 2 (= 24
    # here), which only matters when training from scratch: such frequencies turn neighbouring pixels into
    # unrelated codes, and the tiny model could not learn where a click is. Re-draw it at SAM's scale.
    # The prompt encoder keeps its own copy of that matrix: points and pixels must be encoded with the SAME one
    # (a pretrained checkpoint loads equal values into both; from scratch they would be two unrelated draws).
    with torch.no_grad():
        pe = model.shared_image_embedding.positional_embedding
        pe.copy_(torch.randn(pe.shape, generator=torch.Generator().manual_seed(seed)))
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(pe)
    return model.eval()


@dataclass
class InteractiveSAM:
    """A ``SamModel`` plus the course's prompt interface (all sizes in the model's input pixels)."""

    model: torch.nn.Module
    name: str

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def mask_size(self) -> int:
        """Side of the low-resolution masks the decoder returns (and takes as a mask prompt)."""
        vc = self.model.config.vision_config
        return 4 * (vc.image_size // vc.patch_size)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def preprocess(self, images) -> torch.Tensor:
        """``(B, H, W)`` or ``(B, 1, H, W)`` grey images in [0, 1] (or ``(B, 3, H, W)``) -> normalised
        ``(B, 3, S, S)`` pixel values on the model's device."""
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images, dtype=torch.float32)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"images must be (B, H, W), (B, 1, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or inf values; clean or mask them before prompting SAM")
        if x.numel() and (float(x.min()) < -1e-3 or float(x.max()) > 1 + 1e-3):
            raise ValueError(f"images must be scaled to [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        S = self.image_size
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False)
        return ((x - _MEAN) / _STD).to(self.device)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image encoder with gradients (``SamModel.get_image_embeddings`` runs without them)."""
        return self.model.vision_encoder(pixel_values)[0]

    def embed(self, images, batch_size: int = 64) -> torch.Tensor:
        """Image embeddings ``(B, C, g, g)`` for inference: the heavy part, computed once per image."""
        from course_lib import train

        return train.predict(self.model, self.preprocess(images), batch_size=batch_size,
                             fn=lambda m, xb: m.vision_encoder(xb)[0]).to(self.device)

    # region: interactive-prompt
    def decode(self, embeddings, points=None, labels=None, boxes=None, mask_input=None, multimask: bool = False):
        """Run the prompt encoder + mask decoder.

        ``points``: ``(B, N, 2)`` (x, y) with ``labels`` ``(B, N)`` (1 = object, 0 = background);
        ``boxes``: ``(B, 4)`` (x0, y0, x1, y1); ``mask_input``: ``(B, 1, m, m)`` low-resolution logits of a
        previous prediction (``m`` = :attr:`mask_size`). Returns ``(logits, iou)``: ``(B, K, m, m)`` mask
        logits and ``(B, K)`` predicted IoUs, ``K = 3`` with ``multimask`` else 1.
        """
        B = embeddings.shape[0]
        kw = {}
        if points is not None:
            pts = torch.as_tensor(points, dtype=torch.float32, device=embeddings.device)
            lab = torch.as_tensor(labels, dtype=torch.long, device=embeddings.device)
            if pts.ndim != 3 or pts.shape[0] != B or pts.shape[2] != 2 or lab.shape != pts.shape[:2]:
                raise ValueError(f"points must be (B={B}, N, 2) with labels (B, N); got {tuple(pts.shape)} and "
                                 f"{tuple(lab.shape)}")
            if (pts < 0).any() or (pts >= self.image_size).any():
                raise ValueError(f"a point lies outside the {self.image_size}x{self.image_size} input; prompt in the "
                                 f"model's pixel space (resize coordinates with the image)")
            kw.update(input_points=pts[:, None], input_labels=lab[:, None])
        if boxes is not None:
            bx = torch.as_tensor(boxes, dtype=torch.float32, device=embeddings.device)
            if bx.shape != (B, 4):
                raise ValueError(f"boxes must be (B={B}, 4) = (x0, y0, x1, y1), got {tuple(bx.shape)}")
            if ((bx[:, 2] <= bx[:, 0]) | (bx[:, 3] <= bx[:, 1])).any():
                raise ValueError("a box is empty or inverted: need x0 < x1 and y0 < y1")
            kw.update(input_boxes=bx[:, None])
        if mask_input is not None:
            m = torch.as_tensor(mask_input, dtype=torch.float32, device=embeddings.device)
            if m.shape != (B, 1, self.mask_size, self.mask_size):
                raise ValueError(f"mask_input must be (B={B}, 1, {self.mask_size}, {self.mask_size}) low-res logits "
                                 f"(the decoder's previous output), got {tuple(m.shape)}")
            kw.update(input_masks=m)
        if not kw:
            raise ValueError("give at least one prompt: points (+ labels), boxes or mask_input")
        with runtime.autocast(self.device):
            out = self.model(image_embeddings=embeddings, multimask_output=multimask, **kw)
        return out.pred_masks[:, 0].float(), out.iou_scores[:, 0].float()
    # endregion

    def upsample(self, logits: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Low-resolution logits ``(B, K, m, m)`` -> ``(B, K, size, size)`` (default: the input size)."""
        size = size or self.image_size
        return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def from_pretrained(src: str, device, name: str) -> InteractiveSAM:
    from transformers import SamModel

    model = SamModel.from_pretrained(src)
    return InteractiveSAM(model.to(device).eval(), name)


def load_course(path: Path, sha: str | None, device) -> InteractiveSAM:
    tensors, meta = checkpoints.load_state(path, expected_sha256=sha)
    if meta.get("model") != NAME:
        raise checkpoints.CheckpointError(f"{path} is a course checkpoint of {meta.get('model')!r}, not {NAME}")
    from transformers import SamConfig, SamModel

    model = SamModel(SamConfig(**meta["config"]))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    missing = [k for k in missing if "positional_embedding" not in k]
    if missing or unexpected:
        raise checkpoints.CheckpointError(f"{path} does not match the {NAME} config (missing {missing[:4]}, "
                                          f"unexpected {unexpected[:4]}); rebuild it with `{REBUILD}`")
    sam = InteractiveSAM(model.to(device).eval(), NAME)
    sam.meta = meta
    return sam


def save(sam: InteractiveSAM, path: str | os.PathLike, meta: dict | None = None) -> str:
    """Store a sonosam-tiny model (fp16 safetensors + config in the header); returns the file's SHA-256."""
    state = {k: v.detach().to("cpu", torch.float16) for k, v in sam.model.state_dict().items()}
    return checkpoints.save_state(path, state, {"model": NAME, "config": SONOSAM_CONFIG, **(meta or {})})

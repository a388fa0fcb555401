"""``segfm-tiny``: the course's small supervised-pretrained segmentation "foundation model".
Used by notebook 05 (LoRA, ARENA, PEFT and the FSEFT comparison of :mod:`course_lib.experiments.fseft`).

Idea (SuPreM: Li et al., "How Well Do Supervised 3D Models Transfer to Medical Imaging Tasks?",
ICLR 2024): pretrain a segmentation network *with supervision* on many annotated structures, then
adapt it to new tasks with few labelled images (FSEFT: Silva-Rodríguez et al., "Towards foundation
models and few-shot parameter-efficient fine-tuning for volumetric organ segmentation", MedIA 2025).

Architecture (UNet-like, but with a ViT encoder so that PEFT targeting means what it means on the
course's CLIP backbones):

- ``stem``: a strided conv block giving skip features at 1/2 resolution;
- ``visual``: an open_clip ``VisionTransformer`` (same class and module names as
  ``sonoclip-tiny`` and OpenAI ``ViT-B-16``: ``transformer.resblocks[i].attn`` /
  ``ln_1`` / ``ln_2`` / ``mlp.c_fc`` / ``mlp.c_proj``), whose patch tokens form a
  ``(width, H/p, W/p)`` map — LoRA, ARENA and AdaptFormer attach here, LayerNorms are the
  Affine-LN targets;
- ``decoder``: upsampling conv blocks with GroupNorm that fuse the skip, up to 1/2 resolution
  (kept at half resolution so that CPU training stays cheap);
- ``head``: a 1x1 conv giving one logit map per class, bilinearly upsampled x2 to the input size.
  ``features(x)`` returns the decoder output *before* the head (what black-box adapters see).

Pretraining: SonoSynth label maps of many structures; the structures in :data:`HELD_OUT` and the
centre :data:`HELD_OUT_CENTER` are never shown (they are the "novel structure" and "new centre"
tasks of notebook 05); held-out structures are labelled background, as partially-labelled
pretraining sets do.

Checkpoint: ``course_lib/assets/segfm-tiny.safetensors`` (fp16 tensors; config, class names and the
training facts in its header), written by :func:`course_lib.checkpoints.save_state` and read by
:func:`course_lib.checkpoints.load_state` (no pickle), SHA-256 in :data:`CHECKPOINT_SHA256` and in
``data_cards/segfm-tiny.md``. Rebuild::

    python -m course_lib.models.seg_foundation --rebuild   # ~2 min on an idle 2-core CPU (19 min on a heavily shared one)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from course_lib import checkpoints, losses, metrics, runtime, train

NAME = "segfm-tiny"
ASSET_DIR = runtime.PACKAGE_DIR / "assets"
CHECKPOINT = ASSET_DIR / "segfm-tiny.safetensors"
#: SHA-256 of the committed checkpoint (also in data_cards/segfm-tiny.md)
CHECKPOINT_SHA256 = "00d1e390a5b9c8e7b02d79f0e5cd5d6ef561feab7ed256c55b99d5c1bccc43d0"

#: SonoSynth structures kept out of pretraining (the "novel structure" task)
HELD_OUT: tuple[str, ...] = ("kidney", "renal_sinus")
#: SonoSynth centre kept out of pretraining (the "known structure, new centre" task)
HELD_OUT_CENTER = "D"

runtime.register_section(
    "seg_foundation",
    # the checkpoint is the same in both profiles (it is committed); these are its training sizes
    quick=dict(n_pretrain=3000, epochs=10, batch_size=32, lr=2e-3, image_size=64),
    full=dict(n_pretrain=3000, epochs=10, batch_size=32, lr=2e-3, image_size=64),
)

DEFAULT_CONFIG = dict(image_size=64, patch_size=8, width=64, layers=4, heads=4, mlp_ratio=4.0, skip=16, dec=(48, 32, 32))


def upsample_logits(logits: torch.Tensor) -> torch.Tensor:
    """Half-resolution logits -> input resolution (bilinear x2)."""
    return F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(groups, cout), nn.GELU())


class Decoder(nn.Module):
    """Tokens (1/p) -> x2 -> x2 (+ stem skip at 1/2) -> features at half resolution."""

    def __init__(self, width: int, skip: int, dec: tuple[int, int, int], patch_size: int):
        super().__init__()
        if patch_size != 8:
            raise ValueError(f"the decoder upsamples x4 from 1/8 to 1/2, so patch_size must be 8 (got {patch_size})")
        self.proj = _block(width, dec[0])  # 1/8
        self.up1 = _block(dec[0], dec[1])  # 1/4
        self.up2 = _block(dec[1] + skip, dec[2])  # 1/2

    def forward(self, tokens, skip):
        x = self.proj(tokens)
        x = self.up1(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.up2(torch.cat([x, skip], 1))


class SegFoundation(nn.Module):
    """Small ViT-encoder / conv-decoder segmentation network (see module docstring)."""

    def __init__(self, n_classes: int, class_names: tuple[str, ...] | None = None, **config):
        super().__init__()
        from open_clip.transformer import VisionTransformer

        cfg = {**DEFAULT_CONFIG, **config}
        unknown = set(config) - set(DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"unknown SegFoundation config keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
        self.config = cfg
        self.n_classes = int(n_classes)
        self.class_names = tuple(class_names) if class_names is not None else tuple(f"class{i}" for i in range(n_classes))
        self.image_size = cfg["image_size"]
        self.patch_size = cfg["patch_size"]
        self.stem = _block(1, cfg["skip"], stride=2)  # skip features at 1/2 resolution
        self.visual = VisionTransformer(
            image_size=cfg["image_size"], patch_size=cfg["patch_size"], width=cfg["width"], layers=cfg["layers"],
            heads=cfg["heads"], mlp_ratio=cfg["mlp_ratio"], output_dim=cfg["width"],
        )
        self.decoder = Decoder(cfg["width"], cfg["skip"], cfg["dec"], cfg["patch_size"])
        self.feature_dim = cfg["dec"][-1]
        self.head = nn.Conv2d(self.feature_dim, self.n_classes, 1)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x[:, None]
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected images of shape (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"{NAME} takes {self.image_size}x{self.image_size} images, got {tuple(x.shape[-2:])}; resize with "
                f"course_lib.data.common.resize_image / load data with image_size={self.image_size}"
            )
        return x

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens of the last ViT block as a map ``(B, width, H/p, W/p)``."""
        x = self._check_input(x)
        v = self.visual
        z = v.conv1((x - 0.5) / 0.25 * torch.ones(1, 3, 1, 1, device=x.device, dtype=x.dtype))
        z = z.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(z.dtype).expand(z.shape[0], 1, -1)
        z = torch.cat([cls, z], 1) + v.positional_embedding.to(z.dtype)
        z = v.ln_pre(z)
        z = v.transformer(z)
        g = self.image_size // self.patch_size
        return z[:, 1:].transpose(1, 2).reshape(z.shape[0], -1, g, g)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output before the head, ``(B, feature_dim, H/2, W/2)``."""
        x = self._check_input(x)
        return self.decoder(self.tokens(x), self.stem(x))

    def forward(self, x: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """Logits ``(B, n_classes, H, W)`` (the head runs at 1/2 resolution, logits are upsampled x2).

        ``head`` replaces ``self.head`` (e.g. a binary head for a new task)."""
        return upsample_logits((head or self.head)(self.features(x)))

    # ------------------------------------------------------------------ heads
    def binary_head(self, structure: str | None = None) -> nn.Conv2d:
        """A new 1-logit head. For a structure seen in pretraining it starts as the pretrained
        "structure vs background" logit difference (so the frozen model already segments it);
        otherwise it starts with small random weights (N(0, 0.05^2)) and bias -2, so that gradients reach
        the encoder from the first step (an all-zero head would block them)."""
        head = nn.Conv2d(self.feature_dim, 1, 1).to(self.head.weight.device)
        with torch.no_grad():
            if structure is not None and structure in self.class_names:
                c = self.class_names.index(structure)
                head.weight.copy_(self.head.weight[c : c + 1] - self.head.weight[0:1])
                head.bias.copy_(self.head.bias[c : c + 1] - self.head.bias[0:1])
            else:
                head.weight.normal_(0.0, 0.05)
                head.bias.fill_(-2.0)
        return head


# ---------------------------------------------------------------------- checkpoint
def save(model: SegFoundation, path: str | Path = CHECKPOINT, meta: dict | None = None) -> str:
    """Write ``model`` as fp16 safetensors with :func:`course_lib.checkpoints.save_state` (config,
    class names and ``meta`` in the header); returns the file's SHA-256."""
    state = {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items()}
    header = {"model": NAME, "config": model.config, "class_names": list(model.class_names), "training": meta or {}}
    return checkpoints.save_state(path, state, header)


def load(path: str | Path | None = None, device=None, check_sha: bool = True, rebuild: bool = True) -> SegFoundation:
    """Load ``segfm-tiny``. Only the default checkpoint is rebuilt with :func:`pretrain` when it is
    missing (``rebuild=True``); an explicit ``path`` that does not exist raises ``FileNotFoundError``.
    The default file's SHA-256 is checked against :data:`CHECKPOINT_SHA256` (``check_sha``); every
    file's payload checksum is checked by :func:`course_lib.checkpoints.load_state`."""
    default = path is None or Path(path).resolve() == CHECKPOINT.resolve()
    path = CHECKPOINT if path is None else Path(path)
    if not path.exists():
        if not default:
            raise FileNotFoundError(f"{NAME} checkpoint not found at {path} (an explicit path is never rebuilt); "
                                    f"check the path, or omit it to use the shipped {CHECKPOINT.name}")
        if not rebuild:
            raise FileNotFoundError(
                f"{NAME} checkpoint not found at {path}; rebuild it with `python -m course_lib.models.seg_foundation --rebuild`"
            )
        model, _ = pretrain(out=path)
        return model.to(device or runtime.get_device())
    expected = CHECKPOINT_SHA256 if (check_sha and default and CHECKPOINT_SHA256) else None
    tensors, meta = checkpoints.load_state(path, expected_sha256=expected)
    if meta.get("model") != NAME:
        raise checkpoints.CheckpointError(f"{path} holds a {meta.get('model')!r} checkpoint, not {NAME}; pass a {NAME} file")
    cfg = dict(meta["config"])
    cfg["dec"] = tuple(cfg["dec"])
    model = SegFoundation(len(meta["class_names"]), tuple(meta["class_names"]), **cfg)
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    model.meta = meta.get("training", {})
    return model.to(device or runtime.get_device()).eval()


# ---------------------------------------------------------------------- pretraining data
def pretraining_classes() -> tuple[str, ...]:
    """Background + every SonoSynth structure except :data:`HELD_OUT`."""
    from course_lib.data import sonosynth as ss

    return ("background",) + tuple(s for s in ss.STRUCTURES[1:] if s not in HELD_OUT)


def pretraining_data(n: int, seed: int = 0, image_size: int = 64):
    """``(images (n,H,W) float32, labels (n,H,W) int64)`` from SonoSynth, held-out structures ->
    background, held-out centre excluded."""
    from course_lib.data import sonosynth as ss

    classes = pretraining_classes()
    centers = tuple(c for c in ss.CENTERS if c != HELD_OUT_CENTER)
    b = ss.generate_batch(n, seed=seed, image_size=image_size, centers=centers)
    lut = np.zeros(len(ss.STRUCTURES), dtype=np.int64)
    for i, s in enumerate(ss.STRUCTURES):
        lut[i] = classes.index(s) if s in classes else 0
    imgs = np.asarray(b["image"], dtype=np.float32)
    labels = lut[np.asarray(b["label_map"]).astype(np.int64)]
    return imgs, labels, classes


def pretrain(out: str | Path | None = CHECKPOINT, seed: int = 0, profile=None, verbose: bool = True):
    """Supervised pretraining on SonoSynth label maps; saves the fp16 checkpoint to ``out``.

    Loss: cross-entropy + soft Dice over the foreground classes (:func:`course_lib.losses.dice_ce_loss`),
    AdamW with a one-cycle schedule, trained by :func:`course_lib.train.fit`. Returns
    ``(model, info)`` with the training history and the SHA-256 of the written file.
    """
    P = profile or runtime.get_profile("quick")
    S = P.section("seg_foundation")
    runtime.seed_everything(seed)
    device = runtime.get_device()
    t0 = time.perf_counter()
    imgs, labels, classes = pretraining_data(S.n_pretrain, seed=seed, image_size=S.image_size)
    n_val = max(64, S.n_pretrain // 10)
    x = torch.from_numpy(imgs)
    y = torch.from_numpy(labels)
    xtr, ytr, xva, yva = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
    model = SegFoundation(len(classes), classes, image_size=S.image_size).to(device)
    steps_per_epoch = max(1, len(xtr) // S.batch_size)
    total = S.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=S.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=S.lr, total_steps=total, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    state: dict = {}

    def batch(step: int):
        """Minibatch ``step``: a fresh permutation at each epoch start, then a coin flip for a horizontal flip."""
        i = step % steps_per_epoch
        if i == 0:
            state["perm"] = torch.randperm(len(xtr), generator=g)
        idx = state["perm"][i * S.batch_size : (i + 1) * S.batch_size]
        xb, yb = xtr[idx], ytr[idx]
        if torch.rand(1, generator=g).item() < 0.5:  # horizontal flip augmentation
            xb, yb = xb.flip(-1), yb.flip(-1)
        return xb, yb

    def forward(m, b):
        xb, yb = b
        loss = losses.dice_ce_loss(m(xb).float(), yb)
        state["loss"] = float(loss.detach())
        return loss

    def after_step(step, m, _opt):
        if (step + 1) % steps_per_epoch == 0:  # end of an epoch: validation Dice
            dice = per_class_dice(m, xva, yva)
            history.append({"epoch": (step + 1) // steps_per_epoch, "loss": state["loss"],
                            "val_mean_dice": float(np.nanmean(list(dice.values())))})

    train.fit(model, batch, steps=total, optimizer=opt, scheduler=sched, forward=forward,
              after_step=after_step, progress=verbose, desc=f"pretrain {NAME}")
    info = {
        "seed": seed,
        "n_pretrain": S.n_pretrain,
        "epochs": S.epochs,
        "classes": list(classes),
        "held_out_structures": list(HELD_OUT),
        "held_out_center": HELD_OUT_CENTER,
        "val_dice": {k: round(v, 4) for k, v in per_class_dice(model, xva, yva).items()},
        "history": history,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "device": device.type,
    }
    if out is not None:
        info["sha256"] = save(model, out, meta=info)
    return model.eval(), info


def per_class_dice(model: SegFoundation, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Dice of the argmax prediction for every foreground class present in ``y``, pooled over all the
    images (:func:`course_lib.metrics.dice` of the stacked masks; inference by :func:`course_lib.train.predict`)."""
    pred = np.asarray(train.predict(model, x, batch_size=batch_size, fn=lambda m, xb: m(xb).argmax(1)))
    y = np.asarray(y)
    out = {}
    for c in range(1, model.n_classes):
        t = y == c
        if not t.any():
            continue
        w = t.shape[-1]
        out[model.class_names[c]] = float(metrics.dice((pred == c).reshape(1, -1, w), t.reshape(1, -1, w))[0])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=f"Rebuild the {NAME} checkpoint (supervised SonoSynth pretraining).")
    ap.add_argument("--rebuild", action="store_true", help="train and write the checkpoint")
    ap.add_argument("--out", default=str(CHECKPOINT))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.rebuild:
        ap.print_help()
        return 0
    _, info = pretrain(out=args.out, seed=args.seed)
    print(json.dumps({k: v for k, v in info.items() if k != "history"}, indent=1))
    print("sha256", info["sha256"])
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

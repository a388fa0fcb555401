"""The course's meta-trained UniverSeg checkpoint ``universeg-tiny``: load (checksummed safetensors),
rebuild by meta-training, command line (notebook 06, benchmarks/eval_universeg.py, data_cards/universeg-tiny.md).

The committed file ``course_lib/assets/universeg-tiny.safetensors`` is rebuilt with::

    python -m course_lib.methods.segfm --train

It is written by :func:`course_lib.checkpoints.save_state` (fp16 tensors + the training facts as JSON
metadata, no pickle) and read by :func:`course_lib.checkpoints.load_state`, which verifies the payload
checksum on every load and, for the shipped default, the whole-file SHA-256 :data:`CHECKPOINT_SHA256`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from course_lib import checkpoints, runtime
from course_lib.methods.segfm.meta_training import DEFAULT_TRAIN, meta_train
from course_lib.methods.segfm.universeg import UniverSeg

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
CHECKPOINT_NAME = "universeg-tiny.safetensors"
#: SHA-256 of the committed checkpoint (also in data_cards/universeg-tiny.md)
CHECKPOINT_SHA256 = "e7aa29cdf360400e270dfb879f8ab8f8f47cce49522555d7096d1ca05fb30f81"
REBUILD = "python -m course_lib.methods.segfm --train"


def checkpoint_path() -> Path:
    """The shipped default checkpoint path (the only one that may be rebuilt by meta-training)."""
    return ASSETS_DIR / CHECKPOINT_NAME


def save_checkpoint(model: UniverSeg, path, meta: dict) -> str:
    """Save ``model`` in fp16 with ``meta`` (its ``channels`` are added) via :func:`checkpoints.save_state`;
    returns the file's SHA-256."""
    state = {k: v.detach().cpu().half() for k, v in model.state_dict().items()}
    return checkpoints.save_state(path, state, dict(meta, channels=list(model.channels)))


def load_pretrained(path=None, *, device=None, build_if_missing: bool = True) -> UniverSeg:
    """The course's meta-trained UniverSeg (``universeg-tiny``), fp32 on ``device``, in eval mode.

    ``path=None`` is the shipped checkpoint, verified against :data:`CHECKPOINT_SHA256`; if it is missing
    it is rebuilt with :func:`train_checkpoint` (about 4-15 min on a CPU) when ``build_if_missing``.
    An explicit ``path`` that does not exist raises ``FileNotFoundError`` (nothing is trained for it).
    """
    default = path is None
    path = checkpoint_path() if default else Path(path)
    if not path.exists():
        if not default:
            raise FileNotFoundError(f"UniverSeg checkpoint {path} does not exist; pass an existing file, or omit the path "
                                    f"to use (and if missing rebuild) the shipped one with `{REBUILD}`")
        if not build_if_missing:
            raise FileNotFoundError(f"UniverSeg checkpoint {path} is missing; rebuild it with `{REBUILD}` "
                                    f"(about 4-15 min on a CPU)")
        print(f"{path.name} missing: meta-training it now ({REBUILD})")
        train_checkpoint(path)
    expected = CHECKPOINT_SHA256 if default and CHECKPOINT_SHA256 != "TO_BE_FILLED" else None
    tensors, meta = checkpoints.load_state(path, expected_sha256=expected)
    if "channels" not in meta:
        raise checkpoints.CheckpointError(f"checkpoint {path} has no 'channels' in its metadata: it is not a UniverSeg "
                                          f"checkpoint; rebuild it with `{REBUILD}`")
    model = UniverSeg(meta["channels"])
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    model.meta = meta
    device = torch.device(device) if device is not None else runtime.get_device()
    return model.to(device).eval()


def train_checkpoint(path=None, **overrides) -> tuple[UniverSeg, dict]:
    """Build the SonoSynth task pool, meta-train with :data:`DEFAULT_TRAIN` and save the checkpoint."""
    from course_lib.data import seg_tasks

    cfg = dict(DEFAULT_TRAIN, **overrides)
    path = Path(path) if path is not None else checkpoint_path()
    runtime.seed_everything(cfg["seed"])
    t0 = time.perf_counter()
    train_tasks, _held_tasks = seg_tasks.sonosynth_split(image_size=cfg["image_size"], seed=cfg["seed"])
    t_data = time.perf_counter() - t0
    model, hist = meta_train(
        train_tasks,
        channels=cfg["channels"],
        steps=cfg["steps"],
        batch_tasks=cfg["batch_tasks"],
        max_support=cfg["max_support"],
        lr=cfg["lr"],
        seed=cfg["seed"],
    )
    meta = dict(
        cfg,
        device=str(runtime.get_device()),
        channels=list(cfg["channels"]),
        train_tasks=[t.name for t in train_tasks],
        held_out_structures=list(seg_tasks.HELD_OUT_STRUCTURES),
        history=hist,
        data_seconds=round(t_data, 1),
        train_seconds=round(time.perf_counter() - t0 - t_data, 1),
        torch=torch.__version__,
    )
    digest = save_checkpoint(model, path, meta)
    print(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB) sha256={digest}")
    return model, meta


def main(argv=None):
    """``python -m course_lib.methods.segfm --train``: meta-train and write the checkpoint."""
    ap = argparse.ArgumentParser(description="Meta-train the course's UniverSeg checkpoint on SonoSynth tasks.")
    ap.add_argument("--train", action="store_true", help="meta-train and write the checkpoint")
    ap.add_argument("--steps", type=int, default=DEFAULT_TRAIN["steps"])
    ap.add_argument("--out", default=None, help=f"output path (default course_lib/assets/{CHECKPOINT_NAME})")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    if not args.train:
        ap.print_help()
        return
    if args.device:
        import os

        os.environ["COURSE_DEVICE"] = args.device
    train_checkpoint(args.out, steps=args.steps)


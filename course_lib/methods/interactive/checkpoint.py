"""Loading SAM-family models by name or path: the committed ``sonosam-tiny`` (rebuilt only when the default file
is missing), a course checkpoint file, or real SAM / MedSAM through ``from_pretrained`` (notebook 07)."""
from __future__ import annotations

import os
from pathlib import Path

from course_lib import runtime
from course_lib.methods.interactive import recipe
from course_lib.methods.interactive import sam as sm
from course_lib.methods.interactive.sam import InteractiveSAM


def load(name_or_path: str | os.PathLike = sm.NAME, device=None, rebuild: bool = True) -> InteractiveSAM:
    """Load a SAM-family model.

    ``"sonosam-tiny"``: the committed course checkpoint (rebuilt by training only if the default file is
    missing and ``rebuild``); a ``.safetensors`` path: a sonosam-tiny checkpoint written by the course;
    ``"sam-vit-base"`` / ``"medsam"`` / a hub id / a local folder in the hub layout (``config.json`` +
    weights): ``SamModel.from_pretrained`` — the full profile's path, tested offline on a folder of
    random weights. An explicit path that does not exist is an error (nothing is trained for it).
    """
    device = device or runtime.get_device()
    key = str(name_or_path)
    if key == sm.NAME:
        if not sm.CHECKPOINT.exists():
            if not rebuild:
                raise FileNotFoundError(f"{sm.NAME} checkpoint {sm.CHECKPOINT} is missing; rebuild it with `{sm.REBUILD}`")
            recipe.pretrain(out=sm.CHECKPOINT)
        return sm.load_course(sm.CHECKPOINT, sm.CHECKPOINT_SHA256, device)
    path = Path(key).expanduser()
    if path.suffix == ".safetensors":
        if not path.exists():
            raise FileNotFoundError(f"SAM checkpoint {path} does not exist; check the path, or use '{sm.NAME}' for the "
                                    f"committed model")
        return sm.load_course(path, None, device)
    if path.is_dir():
        return sm.from_pretrained(str(path), device, key)
    repo = sm.HUB_MODELS.get(key.lower(), key)
    if "/" not in repo:
        raise ValueError(f"unknown SAM model {key!r}: use '{sm.NAME}', one of {sorted(sm.HUB_MODELS)}, a hub id like "
                         f"'facebook/sam-vit-base', a .safetensors file or a local model folder")
    if runtime.offline_forced() or not runtime.hub_reachable():
        raise RuntimeError(f"cannot download {repo}: the model hub is not reachable (offline, or HF_HUB_OFFLINE=1). "
                           f"Download it once online (SamModel.from_pretrained('{repo}')) or pass a local folder; "
                           f"offline, use '{sm.NAME}'")
    return sm.from_pretrained(repo, device, key)

"""Local folders in the Hugging Face hub's layout (``config.json`` + ``model.safetensors``) holding a real
architecture with RANDOM weights, so the full profile's ``from_pretrained`` path runs offline; notebooks 10, 11 (smoke).

The full profile loads some models by hub id through ``transformers``' ``from_pretrained`` (Florence-2 in
notebook 10, SAM 2 in notebook 11). Offline (``HF_HUB_OFFLINE=1`` or no network) in smoke mode
(``COURSE_SMOKE=1``), :func:`resolve` swaps the hub id for a folder built here once: the model class is
instantiated from a config (the real architecture, randomly initialised, seed 0) and written with
``save_pretrained``; the caller then runs the same ``from_pretrained(folder)`` call as online. What this
cannot check offline: the real weights (numbers), the hub's own ``config.json`` (ours is built from
``transformers``' config classes with the published sizes), tokenizers and processors (not saved here).

Folders live under ``runtime.cache_dir("offline_hub", "<owner>--<name>")`` and carry a ``RANDOM_WEIGHTS.txt``
marker; :func:`folder` never treats a folder without that marker (or without its weights) as built.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

from course_lib import runtime

__all__ = ["MARKER", "folder", "is_built", "build", "resolve"]

#: file written last into every folder built here: says what the folder is (and marks it complete)
MARKER = "RANDOM_WEIGHTS.txt"


def folder(repo_id: str) -> Path:
    """Where the random-weight stand-in of ``repo_id`` (``"owner/name"``) lives (not created)."""
    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise ValueError(f"expected a hub id 'owner/name', got {repo_id!r}")
    return runtime.cache_dir("offline_hub") / repo_id.replace("/", "--")


def is_built(repo_id: str) -> bool:
    """True when :func:`build` finished for ``repo_id`` (config, weights and marker present)."""
    path = folder(repo_id)
    return (path / MARKER).is_file() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def build(repo_id: str, make_model: Callable[[], object], *, rebuild: bool = False) -> Path:
    """Build (once) the folder of ``repo_id`` from ``make_model()``, a randomly initialised ``transformers``
    ``PreTrainedModel`` of the real architecture, and return its path. Seeded (torch seed 0); written to a
    temporary folder first, so an interrupted build is never taken for a finished one."""
    import torch

    path = folder(repo_id)
    if is_built(repo_id) and not rebuild:
        return path
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make_model()
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"make_model() must return a transformers PreTrainedModel, got {type(model).__name__}")
    model.save_pretrained(tmp, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    (tmp / MARKER).write_text(
        f"{repo_id}: the real architecture ({type(model).__name__}, {n:,} parameters) with RANDOM weights "
        f"(torch seed 0), built offline by course_lib.models.offline_hub for smoke runs. Not the published weights.\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def resolve(repo_id: str, make_model: Callable[[], object], *, verbose: bool = True) -> str:
    """What to pass to ``from_pretrained``: ``repo_id`` itself, unless smoke mode is on and the hub is
    unreachable, then the local random-weight folder (built on first use) with a printed warning."""
    if not runtime.smoke_mode() or runtime.hub_reachable():
        return repo_id
    path = build(repo_id, make_model)
    if verbose:
        print(f"{repo_id}: SMOKE mode, offline -> the real architecture with RANDOM weights from {path} "
              f"(hub layout, loaded with from_pretrained as online; numbers are meaningless)")
    return str(path)

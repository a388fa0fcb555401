"""On-disk cache of image/text features so probes and adapters train without re-encoding.
Used by notebooks 02-04 (and the few-shot / concept-frequency experiments).

A cache entry is keyed by ``(backbone, dataset, split, size, seed)`` (:class:`FeatureKey`); the
backbone part is a *fingerprint* of the weights (name, pretrained tag and a hash of the parameters),
so fine-tuned or re-initialised weights never reuse stale features. Each file also stores its key
and a hash of the input data; a mismatch on load (the key changed, or the same key now points at
different images) invalidates the entry and the features are recomputed. Files are safetensors
written with :func:`course_lib.checkpoints.save_state` (no pickle; payload checksum verified on load,
a corrupt file is recomputed), live under ``runtime.cache_dir("features")`` and are rebuilt whenever
missing.

Usage::

    from course_lib.models.feature_cache import cached_image_features
    feats = cached_image_features(bb, images, dataset="sonosynth", split="train", seed=0)
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from course_lib import checkpoints, runtime


@dataclass(frozen=True)
class FeatureKey:
    backbone: str  # use backbone_fingerprint(bb)
    dataset: str
    split: str
    size: int  # number of samples (or image size; whatever identifies the set)
    seed: int
    kind: str = "image"  # "image" | "text" | anything else a caller needs to separate

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]

    def filename(self) -> str:
        safe = lambda s: "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(s))[:40]  # noqa: E731
        return f"{safe(self.dataset)}_{safe(self.split)}_{self.kind}_{self.digest()}.safetensors"


def backbone_fingerprint(bb) -> str:
    """``name|pretrained|<hash of the weights>`` (hash over every parameter/buffer of the model)."""
    cached = getattr(bb, "_fingerprint", None)
    version = sum(int(p._version) for p in bb.model.parameters())
    if cached is not None and cached[0] == version:
        return cached[1]
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(bb.model.state_dict().items()):
            h.update(name.encode())
            a = t.detach().float().cpu().contiguous().numpy()
            h.update(a.tobytes() if a.size <= 4_000_000 else a[:: max(1, a.size // 4_000_000)].tobytes())
    fp = f"{bb.name}|{bb.pretrained}|{h.hexdigest()[:16]}"
    try:
        bb._fingerprint = (version, fp)
    except AttributeError:  # pragma: no cover
        pass
    return fp


def data_fingerprint(x) -> str:
    """Hash of an array/tensor/list of strings (detects different data under the same key)."""
    h = hashlib.sha256()
    if isinstance(x, (list, tuple)) and (len(x) == 0 or isinstance(x[0], str)):
        for s in x:
            h.update(s.encode())
            h.update(b"\0")
    else:
        a = np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class FeatureCache:
    """A folder of ``.safetensors`` files, one per :class:`FeatureKey`; counts ``hits``/``misses``/``invalidated``."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else runtime.cache_dir("features")
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = self.invalidated = 0

    def path(self, key: FeatureKey) -> Path:
        return self.root / key.filename()

    def load(self, key: FeatureKey, data_hash: str | None = None) -> dict | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            tensors, meta = checkpoints.load_state(p)
        except (checkpoints.CheckpointError, OSError):  # corrupt/partial/foreign file -> recompute
            self.invalidated += 1
            return None
        if meta.get("key") != asdict(key) or (data_hash is not None and meta.get("data_hash") != data_hash) \
                or "features" not in tensors:
            self.invalidated += 1
            return None
        return {**meta, "features": tensors["features"]}

    def save(self, key: FeatureKey, features: torch.Tensor, data_hash: str | None = None, **extra) -> Path:
        p = self.path(key)
        checkpoints.save_state(p, {"features": features.detach().cpu()}, {"key": asdict(key), "data_hash": data_hash, **extra})
        return p

    def get_or_compute(self, key: FeatureKey, compute: Callable[[], torch.Tensor], data_hash: str | None = None,
                       **extra) -> torch.Tensor:
        obj = self.load(key, data_hash)
        if obj is not None:
            self.hits += 1
            return obj["features"]
        self.misses += 1
        feats = compute()
        try:
            self.save(key, feats, data_hash, **extra)
        except OSError as e:  # the features are computed: return them, say why they were not kept
            warnings.warn(f"could not write the feature cache entry {self.path(key)} ({e.strerror or e}); the features "
                          f"were computed and are returned, but will be recomputed next time. Set COURSE_CACHE to a "
                          f"writable folder to keep them.", RuntimeWarning, stacklevel=2)
        return feats

    #: the names this cache writes (:meth:`FeatureKey.filename`); nothing else is ever deleted
    OWN_NAME = re.compile(r"^[A-Za-z0-9_.\-]+_[a-z0-9_\-]+_[0-9a-f]{20}\.safetensors$")

    def owns(self, path: Path) -> bool:
        """True for a file this cache wrote: its name has the cache's pattern *and* its header holds a feature key."""
        if not (path.is_file() and self.OWN_NAME.match(path.name)):
            return False
        try:
            return "key" in checkpoints.read_meta(path)
        except (checkpoints.CheckpointError, OSError, ValueError):
            return False

    def clear(self) -> int:
        """Delete the entries this cache wrote (and nothing else: a user's own files in the same folder,
        models, results, other ``.safetensors``, survive). Returns the number of files deleted."""
        n = 0
        for p in sorted(self.root.glob("*.safetensors")):
            if self.owns(p):
                p.unlink()
                n += 1
        return n


def cached_image_features(bb, images, *, dataset: str, split: str, seed: int, size: int | None = None,
                          cache: FeatureCache | None = None, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """L2-normalised image features of ``images`` with ``bb``, from the cache when the key and data match."""
    from course_lib.models.zero_shot import encode_images

    if len(images) == 0:
        raise ValueError("cached_image_features got no images")
    cache = cache or FeatureCache()
    key = FeatureKey(backbone_fingerprint(bb), dataset, split, int(size if size is not None else len(images)), int(seed))
    return cache.get_or_compute(key, lambda: encode_images(bb, images, batch_size=batch_size, progress=progress),
                                data_hash=data_fingerprint(images))


def cached_text_features(bb, texts, *, dataset: str, split: str, seed: int = 0,
                         cache: FeatureCache | None = None) -> torch.Tensor:
    """L2-normalised text features of a list of strings (prompts, reports), cached like images."""
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("cached_text_features needs a non-empty list of strings")
    cache = cache or FeatureCache()
    key = FeatureKey(backbone_fingerprint(bb), dataset, split, len(texts), int(seed), kind="text")

    def compute():
        with torch.no_grad():
            return torch.cat([bb.encode_text(bb.tokenize(list(texts[i:i + 256]))).float().cpu()
                              for i in range(0, len(texts), 256)])

    return cache.get_or_compute(key, compute, data_hash=data_fingerprint(list(texts)))

"""Feature cache: hit, miss, invalidation when the key or the data or the weights change."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.models.feature_cache import (
    FeatureCache,
    FeatureKey,
    backbone_fingerprint,
    cached_image_features,
    cached_text_features,
    data_fingerprint,
)


@pytest.fixture(scope="module")
def bb():
    from course_lib.models import load_backbone

    return load_backbone("sonoclip-tiny", pretrained=None, device="cpu")


def test_hit_miss_and_key_change(tmp_path):
    cache = FeatureCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).view(2, 3)

    key = FeatureKey("bb|none|abc", "sonosynth", "train", 2, 0)
    a = cache.get_or_compute(key, compute)
    b = cache.get_or_compute(key, compute)
    assert torch.equal(a, b) and len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    # every field of the key separates entries
    for other in (FeatureKey("bb|none|abd", "sonosynth", "train", 2, 0), FeatureKey("bb|none|abc", "busi", "train", 2, 0),
                  FeatureKey("bb|none|abc", "sonosynth", "test", 2, 0), FeatureKey("bb|none|abc", "sonosynth", "train", 3, 0),
                  FeatureKey("bb|none|abc", "sonosynth", "train", 2, 1)):
        assert cache.path(other) != cache.path(key)
        cache.get_or_compute(other, compute)
    assert len(calls) == 6 and cache.hits == 1
    assert cache.clear() == 6


def test_data_change_under_the_same_key_invalidates(tmp_path):
    cache = FeatureCache(tmp_path)
    key = FeatureKey("bb", "d", "s", 2, 0)
    cache.get_or_compute(key, lambda: torch.zeros(2, 3), data_hash=data_fingerprint(np.zeros((2, 4))))
    out = cache.get_or_compute(key, lambda: torch.ones(2, 3), data_hash=data_fingerprint(np.ones((2, 4))))
    assert torch.equal(out, torch.ones(2, 3)) and cache.invalidated == 1 and cache.misses == 2


def test_corrupt_file_is_recomputed(tmp_path):
    cache = FeatureCache(tmp_path)
    key = FeatureKey("bb", "d", "s", 2, 0)
    cache.path(key).write_bytes(b"not a torch file")
    out = cache.get_or_compute(key, lambda: torch.ones(1))
    assert torch.equal(out, torch.ones(1)) and cache.invalidated == 1


def test_entries_are_checksummed_safetensors_not_pickles(tmp_path):
    """Entries are written with checkpoints.save_state: a flipped payload byte is refused on load
    (payload checksum) and the features are recomputed, never unpickled."""
    from course_lib import checkpoints

    cache = FeatureCache(tmp_path)
    key = FeatureKey("bb", "d", "s", 2, 0)
    cache.get_or_compute(key, lambda: torch.full((2, 3), 2.0))
    p = cache.path(key)
    assert p.suffix == ".safetensors"
    tensors, meta = checkpoints.load_state(p)
    assert torch.equal(tensors["features"], torch.full((2, 3), 2.0)) and meta["key"]["dataset"] == "d"
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF  # flip a bit of the last feature value
    p.write_bytes(bytes(raw))
    out = cache.get_or_compute(key, lambda: torch.full((2, 3), 5.0))
    assert torch.equal(out, torch.full((2, 3), 5.0)) and cache.invalidated == 1


def test_cached_image_features_end_to_end(tmp_path, bb):
    cache = FeatureCache(tmp_path)
    imgs = np.random.default_rng(0).random((5, 64, 64), dtype=np.float32)
    f1 = cached_image_features(bb, imgs, dataset="toy", split="train", seed=0, cache=cache)
    f2 = cached_image_features(bb, imgs, dataset="toy", split="train", seed=0, cache=cache)
    assert f1.shape == (5, bb.embed_dim) and torch.equal(f1, f2) and cache.hits == 1
    # changing the weights changes the fingerprint -> a new entry (no stale features)
    fp = backbone_fingerprint(bb)
    with torch.no_grad():
        bb.model.visual.proj.add_(0.01)
    assert backbone_fingerprint(bb) != fp
    f3 = cached_image_features(bb, imgs, dataset="toy", split="train", seed=0, cache=cache)
    assert cache.misses == 2 and not torch.equal(f1, f3)
    t1 = cached_text_features(bb, ["a benign lesion", "a malignant lesion"], dataset="prompts", split="x", cache=cache)
    assert t1.shape == (2, bb.embed_dim)
    with pytest.raises(ValueError, match="no images"):
        cached_image_features(bb, np.zeros((0, 64, 64)), dataset="toy", split="train", seed=0, cache=cache)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        cached_text_features(bb, "just one string", dataset="p", split="x", cache=cache)


def test_default_cache_lives_under_course_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    assert FeatureCache().root == tmp_path / "features"

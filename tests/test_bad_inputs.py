"""Bad and edge inputs across the library (issue 19): nothing deletes a learner's files, runs foreign code, starts
training for a typo, or returns a wrong number without an error. Organised by entry point; more cases live beside
each module's tests (runtime, checkpoints, metrics, data loaders, methods)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from course_lib import checkpoints


# ----------------------------------------------------------------------------- caches
def test_feature_cache_clear_leaves_foreign_files_untouched(tmp_path):
    from course_lib.models.feature_cache import FeatureCache, FeatureKey

    cache = FeatureCache(tmp_path)
    key = FeatureKey("bb|x|0", "sonosynth", "train", 4, 0)
    cache.get_or_compute(key, lambda: torch.ones(4, 3))
    mine = cache.path(key)
    foreign = {
        "my_finetuned_model.pt": b"not ours",
        "results.safetensors": None,  # a safetensors file the cache did not write
        "notes.txt": b"hello",
        "sonosynth_train_image_0123456789abcdef0123.safetensors": b"looks like ours by name, but is not",
    }
    for name, data in foreign.items():
        if data is None:
            from safetensors.torch import save_file

            save_file({"w": torch.zeros(2)}, str(tmp_path / name))
        else:
            (tmp_path / name).write_bytes(data)
    assert cache.clear() == 1
    assert not mine.exists()
    for name in foreign:
        assert (tmp_path / name).exists(), f"clear() deleted a file it did not write: {name}"


def test_cache_write_failure_still_returns_the_features(tmp_path, monkeypatch):
    from course_lib.models.feature_cache import FeatureCache, FeatureKey

    cache = FeatureCache(tmp_path)

    def boom(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache, "save", boom)
    with pytest.warns(RuntimeWarning, match="COURSE_CACHE"):
        out = cache.get_or_compute(FeatureKey("b", "d", "s", 2, 0), lambda: torch.full((2, 2), 7.0))
    assert torch.equal(out, torch.full((2, 2), 7.0))


# ----------------------------------------------------------------------------- checkpoints (every loader)
class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


LOADERS = []


def _loaders():
    from course_lib.methods.interactive import checkpoint as sam_ck
    from course_lib.methods.segfm import checkpoint as useg_ck
    from course_lib.models import backbones, seg_foundation

    return {
        "segfm-tiny": lambda p: seg_foundation.load(p),
        "universeg-tiny": lambda p: useg_ck.load_pretrained(p),
        "sonosam-tiny": lambda p: sam_ck.load(p),
        "sonoclip-tiny": lambda p: backbones.load_backbone("sonoclip-tiny", pretrained=str(p), verbose=False),
    }


@pytest.mark.parametrize("name", ["segfm-tiny", "universeg-tiny", "sonosam-tiny", "sonoclip-tiny"])
def test_pickled_payload_is_refused_without_executing(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    with pytest.raises((checkpoints.CheckpointError, ValueError, RuntimeError)):
        _loaders()[name](evil)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


@pytest.mark.parametrize("name", ["segfm-tiny", "universeg-tiny", "sonosam-tiny"])
def test_byte_flipped_copy_of_a_course_checkpoint_is_refused(name, tmp_path):
    from course_lib.methods.interactive import sam as sm
    from course_lib.methods.segfm import checkpoint as useg_ck
    from course_lib.models import seg_foundation

    src = {"segfm-tiny": seg_foundation.CHECKPOINT, "universeg-tiny": useg_ck.checkpoint_path(),
           "sonosam-tiny": sm.CHECKPOINT}[name]
    data = bytearray(open(src, "rb").read())
    data[-3] ^= 0x5A  # inside the last tensor
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(bytes(data))
    with pytest.raises(checkpoints.CheckpointError, match="corrupted"):
        _loaders()[name](copy)


@pytest.mark.parametrize("name", ["segfm-tiny", "universeg-tiny", "sonosam-tiny", "sonoclip-tiny"])
def test_mistyped_explicit_path_raises_instead_of_training(name, tmp_path):
    typo = tmp_path / "sub" / "my_modle.safetensors"
    with pytest.raises(FileNotFoundError):
        _loaders()[name](typo)
    assert not typo.exists() and not typo.parent.exists()


def test_truncated_checkpoint_names_the_file(tmp_path):
    from course_lib.models import seg_foundation

    t = tmp_path / "trunc.safetensors"
    t.write_bytes(open(seg_foundation.CHECKPOINT, "rb").read()[:100])
    with pytest.raises(checkpoints.CheckpointError, match="trunc.safetensors"):
        seg_foundation.load(t)


# ----------------------------------------------------------------------------- backbones
def test_backbone_rejects_nan_ambiguous_and_empty_images(tiny_clip):
    from course_lib.models import backbones

    bb = backbones.load_backbone("sonoclip-tiny", verbose=False)
    S = bb.image_size
    with pytest.raises(ValueError, match="NaN"):
        bb.preprocess(np.full((2, S, S), np.nan, np.float32))
    with pytest.raises(ValueError, match="ambiguous"):
        bb.preprocess(torch.rand(3, S, S))
    assert bb.preprocess(torch.rand(3, 1, S, S)).shape == (3, 3, S, S)
    assert bb.preprocess(torch.rand(1, 3, S, S)).shape == (1, 3, S, S)
    with pytest.raises(ValueError, match="empty"):
        bb.preprocess(np.zeros((0, S, S), np.float32))


# ----------------------------------------------------------------------------- methods
def test_linear_probe_returns_the_labels_it_was_fitted_on():
    from course_lib.methods.clip_fewshot.linear_probe import LinearProbe

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20, 8, generator=g) + 4, torch.randn(20, 8, generator=g) - 4])
    y = torch.tensor([0] * 20 + [2] * 20)
    probe = LinearProbe(seed=0).fit(x, y)
    pred = probe.predict(x)
    assert set(np.unique(pred)) == {0, 2}
    assert (pred == y.numpy()).mean() == 1.0
    assert list(probe.classes_) == [0, 2]


# ----------------------------------------------------------------------------- metrics
def test_metrics_refuse_swapped_float_and_string_labels():
    from course_lib import metrics

    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.9, 0.2, 0.8])
    with pytest.raises(ValueError):
        metrics.classification(p, y)  # arguments swapped
    with pytest.raises(ValueError):
        metrics.classification(np.array([0.0, 0.5, 1.0, 1.0]), p)
    with pytest.raises((TypeError, ValueError)):
        metrics.classification(np.array(["a", "b", "a", "b"]), p)
    with pytest.raises(ValueError, match="0/1"):
        metrics.dice(np.array([[0.2, 0.7]]), np.array([[0, 1]]))  # probabilities: binarise first


# ----------------------------------------------------------------------------- training loop
def test_fit_refuses_absurd_budgets():
    from course_lib import train

    m = torch.nn.Linear(2, 1)
    data = [(torch.randn(4, 2), torch.randn(4, 1))]
    with pytest.raises(ValueError, match="beyond any course budget"):
        train.fit(m, data, torch.nn.functional.mse_loss, steps=10**9, lr=1e-3)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        train.fit(m, data, torch.nn.functional.mse_loss, epochs=1, lr=-1)
    with pytest.raises(ValueError, match="empty"):
        train.fit(m, [], torch.nn.functional.mse_loss, epochs=1, lr=1e-3)

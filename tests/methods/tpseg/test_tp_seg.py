"""TP-Seg model, sampler and training: task ids, size mismatches, balanced sampling (weights 1/N_t), one task
per batch, training with an empty-foreground task, prototype analyses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.methods.tpseg import (TPSegConfig, TaskBatchSampler, build_tpseg, evaluate_tasks, fg_bg_separation,
                                      prototype_similarity, train_unified)


@pytest.fixture
def model(tiny_vit):
    torch.manual_seed(0)
    return build_tpseg("vit", ["breast", "thyroid", "empty"], TPSegConfig(hidden=4, width=16), encoder=tiny_vit(layers=2))


def test_unknown_task_and_size_mismatch(model):
    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(KeyError, match="unknown task id 3"):
        model(x, 3)
    with pytest.raises(KeyError, match="unknown task 'liver'"):
        model(x, "liver")
    with pytest.raises(KeyError, match="unknown task id"):
        model(x, -1)
    assert model(x, "thyroid").shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="differ in batch or size"):
        model(x, 0, mask=torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="differ in batch or size"):
        model(x, 0, mask=torch.zeros(3, 1, 32, 32))


def test_sampler_balanced_and_one_task_per_batch():
    sizes = [400, 40, 10]
    s = TaskBatchSampler(sizes, 4, 3000, balanced=True, seed=0)
    np.testing.assert_allclose(s.task_probabilities(), [1 / 3] * 3)
    counts = np.zeros(3)
    for idx in s:
        tasks = set(s.task_of[idx])
        assert len(tasks) == 1 and len(idx) == 4
        counts[tasks.pop()] += 1
    np.testing.assert_allclose(counts / counts.sum(), [1 / 3] * 3, atol=0.04)
    off = TaskBatchSampler(sizes, 4, 3000, balanced=False, seed=0)
    np.testing.assert_allclose(off.task_probabilities(), np.array(sizes) / 450)
    c = np.bincount([off.task_of[i[0]] for i in off], minlength=3) / 3000
    np.testing.assert_allclose(c, np.array(sizes) / 450, atol=0.04)
    with pytest.raises(ValueError, match="at least one training sample"):
        TaskBatchSampler([5, 0], 4, 10)


def test_sampler_is_seeded():
    a = list(TaskBatchSampler([30, 10], 4, 20, seed=3))
    b = list(TaskBatchSampler([30, 10], 4, 20, seed=3))
    assert a == b


def _sets(n=8, size=32, empty=False, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.random((n, size, size)).astype(np.float32)
    mask = np.zeros((n, size, size), np.uint8)
    if not empty:
        mask[:, 8:20, 10:22] = 1
        img[:, 8:20, 10:22] += 0.5
    return dict(image=img, mask=mask)


def test_training_with_empty_foreground_task_stays_finite(model):
    sets = [_sets(8), _sets(6, seed=1), _sets(4, empty=True)]
    before = {k: m.prototypes.clone() for k, m in model.decoder.pgtd_modules().items()}
    hist = train_unified(model, sets, steps=9, lr=1e-3, batch_size=2, seed=0)
    assert sum(hist["task_counts"]) == 9 and all(np.isfinite(hist["step_loss"]))
    assert abs(model.encoder.temperature - 0.3) < 1e-9  # linear decay 1.0 -> 0.3 reached
    for k, m in model.decoder.pgtd_modules().items():
        assert torch.isfinite(m.prototypes).all()
        torch.testing.assert_close(m.prototypes.norm(dim=-1), torch.ones(3, 2))
        # the empty task never had foreground: its FG prototype is still the MLP initialisation
        assert torch.equal(m.prototypes[2, 0], before[k][2, 0])
    res = evaluate_tasks(model, sets)
    assert set(res) == {"breast", "thyroid", "empty"}
    assert all(0 <= r["dice"] <= 100 and 0 <= r["miou"] <= 100 for r in res.values())


def test_training_rejects_mask_image_mismatch(model):
    bad = dict(image=np.zeros((4, 32, 32), np.float32), mask=np.zeros((4, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="masks must match images"):
        train_unified(model, [bad, _sets(4), _sets(4)], steps=2, lr=1e-3)


def test_prototype_analyses(model):
    sim = prototype_similarity(model)
    sep = fg_bg_separation(model)
    assert set(sim) == set(sep) == {"PGTD1", "PGTD2", "PGTD3"}
    for k in sim:
        assert sim[k].shape == (3, 3)
        np.testing.assert_allclose(np.diag(sim[k]), 1, atol=1e-5)
        assert np.all((sep[k] >= 0) & (sep[k] <= 2))
    m = model.decoder.pgtd_modules()["PGTD1"]
    with torch.no_grad():
        m.prototypes[0, 1] = -m.prototypes[0, 0]
    assert abs(fg_bg_separation(model)["PGTD1"][0] - 2) < 1e-5

"""UniverSeg meta-training (course_lib.methods.segfm.meta_training): augmentations, episodes, the loss
and the loop through train.fit."""
import numpy as np
import pytest
import torch

from course_lib.methods.segfm import meta_training as mt




def test_augmentations_keep_ranges_and_binary_labels():
    rng = np.random.default_rng(0)
    x = torch.rand(5, 16, 16)
    y = (torch.rand(5, 16, 16) > 0.5).float()
    for fn in (mt.in_task_augment, mt.task_augment):
        xa, ya = fn(x, y, rng)
        assert xa.shape == x.shape and ya.shape == y.shape
        assert float(xa.min()) >= 0 and float(xa.max()) <= 1
        assert set(ya.unique().tolist()) <= {0.0, 1.0}


def test_task_augmentation_is_shared_by_all_images():
    x = torch.rand(1, 16, 16).repeat(4, 1, 1)
    y = (torch.rand(1, 16, 16) > 0.5).float().repeat(4, 1, 1)
    for seed in range(5):
        xa, ya = mt.task_augment(x, y, np.random.default_rng(seed))
        assert torch.allclose(xa, xa[:1].expand_as(xa)) and torch.equal(ya, ya[:1].expand_as(ya))


def test_episode_and_meta_train_step_run(toy_task):
    t = toy_task()
    q, qy, sup = mt.sample_episode([t], 3, 4, np.random.default_rng(0), "cpu")
    assert q.shape == (3, 1, 16, 16) and qy.shape == (3, 1, 16, 16) and sup.shape == (3, 4, 2, 16, 16)
    _model, hist = mt.meta_train([t], channels=(4, 4, 4), steps=3, batch_tasks=2, max_support=3, device="cpu", progress=False, log_every=1)
    assert len(hist["loss"]) == 3 and all(np.isfinite(hist["loss"]))
    with pytest.raises(ValueError, match="no tasks"):
        mt.meta_train([], steps=1)




def test_episode_loss_is_per_sample_soft_dice_with_smoothing_1_plus_half_bce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g) * 2
    target = (torch.rand(3, 1, 8, 8, generator=g) > 0.6).float()
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(mt.episode_loss(logits, target), dice + 0.5 * bce, atol=1e-6)


def test_running_mean_logs_every_k_steps_and_the_last():
    h = mt.running_mean([1.0, 0.0, 0.0, 0.0], every=2)
    assert h["step"] == [0, 2, 3]
    assert h["loss"] == pytest.approx([1.0, 0.98 ** 2, 0.98 ** 3])

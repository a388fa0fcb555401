"""course_lib.losses: the one soft Dice (MONAI underneath), BCE/CE + Dice and the symmetric InfoNCE."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib import losses


def _hand_dice(p, t, smooth, dims):
    inter = (p * t).sum(dims)
    return 1 - (2 * inter + smooth) / (p.sum(dims) + t.sum(dims) + smooth)


def test_binary_dice_matches_the_formula_per_sample_and_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g)
    target = (torch.rand(3, 1, 8, 8, generator=g) > 0.5).float()
    p = torch.sigmoid(logits)
    per = _hand_dice(p, target, 1.0, (2, 3))
    assert torch.allclose(losses.dice_loss(logits, target, reduction="none"), per, atol=1e-6)
    assert torch.allclose(losses.dice_loss(logits, target), per.mean(), atol=1e-6)
    glob = _hand_dice(p, target, 1.0, (0, 2, 3))
    assert torch.allclose(losses.dice_loss(logits, target, batch=True), glob.mean(), atol=1e-6)
    # (B, H, W) inputs are one channel
    assert torch.allclose(losses.dice_loss(logits[:, 0], target[:, 0]), per.mean(), atol=1e-6)


def test_perfect_prediction_has_near_zero_dice_loss():
    t = torch.zeros(2, 1, 8, 8)
    t[:, :, 2:6, 2:6] = 1
    assert losses.dice_loss(t * 40 - 20, t, smooth=1e-5) < 1e-4


def test_multiclass_dice_ce_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 6, 6, generator=g)
    labels = torch.randint(0, 3, (2, 6, 6), generator=g)
    prob = logits.softmax(1)
    onehot = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    d = _hand_dice(prob, onehot, 1.0, (0, 2, 3))[1:].mean()
    assert torch.allclose(losses.dice_ce_loss(logits, labels), F.cross_entropy(logits, labels) + d, atol=1e-6)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="differs from logits"):
        losses.dice_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="integer labels"):
        losses.dice_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), multiclass=True)
    with pytest.raises(ValueError, match="reduction"):
        losses.dice_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), reduction="sum")


def test_info_nce_is_symmetric_cross_entropy_and_minimal_for_aligned_pairs():
    g = torch.Generator().manual_seed(2)
    a = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    b = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    logits = 10 * a @ b.T
    y = torch.arange(5)
    want = 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))
    assert torch.allclose(losses.info_nce(a, b, 10.0), want)
    assert losses.info_nce(a, a, 100.0) < 1e-3
    with pytest.raises(ValueError, match="matching pairs"):
        losses.info_nce(a, b[:4], 1.0)

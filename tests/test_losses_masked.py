"""Masked losses for partially labelled data: the maths of the slide (masking, per-sample 1/sum_k w_nk
normalisation, no Dice on annotated-but-absent structures)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib import losses as ml


def _batch(B=3, K=4, H=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, H, H, generator=g, requires_grad=True)
    target = (torch.rand(B, K, H, H, generator=g) > 0.6).float()
    return logits, target


@pytest.mark.parametrize("fn", [ml.masked_bce, ml.masked_dice, ml.masked_bce_dice])
def test_gradient_is_exactly_zero_where_w_is_zero(fn):
    logits, target = _batch()
    w = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.float32)
    loss = fn(logits, target, w)
    loss.backward()
    g = logits.grad
    off = w == 0
    assert torch.count_nonzero(g[off]) == 0  # exactly zero, not just small
    assert (g[~off].abs().flatten(1).sum(1) > 0).all()  # annotated channels do learn


def test_unlabelled_channels_do_not_change_the_loss():
    logits, target = _batch()
    w = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.float32)
    a = ml.masked_bce_dice(logits, target, w)
    target2 = target.clone()
    target2[w == 0] = 1 - target2[w == 0]  # scramble what nobody annotated
    logits2 = logits.detach().clone()
    logits2[w == 0] = 10.0
    assert torch.allclose(a, ml.masked_bce_dice(logits2, target2, w))


def test_equals_plain_loss_when_all_labelled():
    logits, target = _batch(B=2, K=3)
    w = torch.ones(2, 3)
    assert torch.allclose(ml.masked_bce_dice(logits, target, w), ml.plain_bce_dice(logits, target), atol=1e-6)
    assert torch.allclose(ml.masked_bce(logits, target, w), F.binary_cross_entropy_with_logits(logits, target), atol=1e-6)


def test_normalised_per_sample_as_the_slide():
    logits, target = _batch(B=2, K=3)
    per = ml.per_channel_bce(logits, target) + ml.per_channel_dice(logits, target)
    w = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.float32)
    # sample 0 labels two structures, sample 1 one: each sample counts once (1 / sum_k w_nk)
    expected = ((per[0, 0] + per[0, 2]) / 2 + per[1, 2]) / 2
    assert torch.allclose(ml.masked_bce_dice(logits, target, w), expected, atol=1e-6)
    # the batch normalisation (sum_nk w) weighs sample 0 twice as much
    batch = (per[0, 0] + per[0, 2] + per[1, 2]) / 3
    assert torch.allclose(ml.masked_bce_dice(logits, target, w, normalize="batch"), batch, atol=1e-6)
    assert not torch.allclose(expected, batch)
    # a sample with nothing annotated does not dilute the mean
    w3 = torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=torch.float32)
    assert torch.allclose(ml.masked_bce_dice(logits, target, w3), (per[0, 0] + per[0, 2]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        ml.masked_bce_dice(logits, target, w, normalize="pixels")


def test_annotated_but_absent_structure_gets_bce_only():
    logits, target = _batch(B=2, K=2)
    target = target.detach().clone()
    target[0, 1] = 0  # structure 1 annotated in sample 0 but absent from the image
    w = torch.ones(2, 2)
    bce = ml.per_channel_bce(logits, target)
    dice = ml.per_channel_dice(logits, target)
    assert dice[0, 1] > 0.99  # the smoothed Dice of an empty target is ~1 whatever is predicted
    expected = ((bce[0, 0] + dice[0, 0] + bce[0, 1]) / 2 + (bce[1] + dice[1]).sum() / 2) / 2
    assert torch.allclose(ml.masked_bce_dice(logits, target, w), expected, atol=1e-6)
    keep = ((bce[0] + dice[0]).sum() / 2 + (bce[1] + dice[1]).sum() / 2) / 2
    assert torch.allclose(ml.masked_bce_dice(logits, target, w, empty_dice="keep"), keep, atol=1e-6)
    # a single false-positive pixel costs ~1 with the kept Dice, almost nothing without it
    lg = torch.full((1, 1, 8, 8), -12.0)
    lg[0, 0, 0, 0] = 12.0
    empty, one = torch.zeros(1, 1, 8, 8), torch.ones(1, 1)
    assert ml.masked_dice(lg, empty, one, empty_dice="keep").item() > 0.99
    assert ml.masked_bce_dice(lg, empty, one).item() < 0.2


def test_nothing_annotated_gives_zero_loss_and_no_nan():
    logits, target = _batch(B=2, K=2)
    loss = ml.masked_bce_dice(logits, target, torch.zeros(2, 2))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_naive_target_turns_unlabelled_structures_into_background():
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, :2] = 1  # structure 1 (e.g. liver), annotated
    target[0, 1, 2:] = 1  # structure 2 (e.g. kidney), NOT annotated in this dataset
    lab = ml.partial_to_softmax_target(target, torch.tensor([[1.0, 0.0]]))
    assert lab[0, :2].eq(1).all() and lab[0, 2:].eq(0).all()
    full = ml.partial_to_softmax_target(target, torch.ones(1, 2))
    assert full[0, 2:].eq(2).all()
    logits = torch.randn(1, 3, 4, 4)
    assert torch.allclose(ml.naive_softmax_ce(logits, target, torch.tensor([[1.0, 0.0]])), F.cross_entropy(logits, lab))


def test_bad_inputs_have_clear_errors():
    logits, target = _batch(B=2, K=3)
    with pytest.raises(ValueError, match="w must be"):
        ml.masked_bce_dice(logits, target, torch.ones(2, 4))
    with pytest.raises(ValueError, match="target shape"):
        ml.masked_bce_dice(logits, target[:, :2], torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ml.masked_bce_dice(logits, target, torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="K \\+ 1"):
        ml.naive_softmax_ce(torch.randn(2, 3, 8, 8), target, torch.ones(2, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ml.masked_bce(logits.detach().numpy(), target, torch.ones(2, 3))


def test_naive_ce_dice_uses_the_naive_target():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = (torch.rand(2, 2, 8, 8, generator=g) > 0.5).float()
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    from monai.losses import DiceLoss

    lab = ml.partial_to_softmax_target(target, w)
    ref = F.cross_entropy(logits, lab) + DiceLoss(softmax=True, to_onehot_y=True, include_background=False, smooth_nr=1e-5, smooth_dr=1e-5)(logits, lab[:, None])
    assert torch.allclose(ml.naive_softmax_ce_dice(logits, target, w), ref)

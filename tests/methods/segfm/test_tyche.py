"""Tyche (course_lib.methods.segfm.tyche): K candidates that differ through the noise, identity with UniverSeg at
warm start, SetBlock equivariance, the winner-takes-all loss is the min over candidates (and only the winner gets a
gradient), exact parameter counts, GED / best-candidate Dice on hand examples, TTA undoes its transforms, clear
errors for K <= 0 and annotator count <= 0, the committed checkpoint."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from course_lib import losses
from course_lib.data.seg_tasks import Task
from course_lib.methods.segfm import tyche as T
from course_lib.methods.segfm.universeg import UniverSeg
from course_lib.train import count_parameters




def test_k_candidates_differ_through_the_noise(icl_inputs):
    torch.manual_seed(0)
    base = UniverSeg((8, 8))
    m = T.from_universeg(base, candidates=4, noise_init=1.0)
    q, s = icl_inputs()
    g = torch.Generator().manual_seed(1)
    out = m(q, s, generator=g)
    assert out.shape == (2, 4, 16, 16)
    for a in range(4):
        for b in range(a + 1, 4):
            assert (out[:, a] - out[:, b]).abs().max() > 1e-4
    assert m(q, s, k=6).shape == (2, 6, 16, 16)
    # same noise -> same output; the noise is the only source of randomness
    noise = torch.randn(2, 3, 1, 16, 16)
    assert torch.equal(m(q, s, k=3, noise=noise), m(q, s, k=3, noise=noise))
    # identical noise for every candidate -> identical candidates
    same = m(q, s, noise=noise[:, :1].expand(-1, 4, -1, -1, -1))
    assert torch.allclose(same[:, 0], same[:, 3], atol=1e-6)


def test_warm_start_is_universeg_when_the_noise_column_is_zero(icl_inputs):
    torch.manual_seed(0)
    base = UniverSeg((8, 8, 8))
    m = T.from_universeg(base, candidates=3, noise_init=0.0)
    q, s = icl_inputs(H=32)
    out = m(q, s)
    ref = base(q, s)
    assert torch.allclose(out, ref.expand(-1, 3, -1, -1), atol=1e-6)
    w = m.enc[0].cross.conv.weight
    assert torch.equal(w[:, 0], base.enc[0].cross.conv.weight[:, 0]) and torch.equal(w[:, 2:], base.enc[0].cross.conv.weight[:, 1:])


def test_parameter_counts():
    base = UniverSeg((16, 16, 16, 16))
    m = T.Tyche((16, 16, 16, 16))
    assert count_parameters(base) == 58_273  # the data card's number
    noise_column = 16 * 1 * 3 * 3
    setblocks = 7 * (2 * 16 * 16 * 3 * 3 + 16)  # 4 encoder + 3 decoder levels
    assert count_parameters(m) == 58_273 + noise_column + setblocks == 90_785
    assert count_parameters(m, trainable=True) == count_parameters(m)


def test_setblock_identity_at_init_and_candidate_equivariance():
    blk = T.SetBlock(4)
    u = torch.randn(2, 3, 4, 8, 8)
    assert torch.equal(blk(u), u)
    nn.init.normal_(blk.conv.weight)
    perm = torch.tensor([2, 0, 1])
    assert torch.allclose(blk(u)[:, perm], blk(u[:, perm]), atol=1e-5)
    # a candidate's output depends on the others (through the mean)
    u2 = u.clone()
    u2[:, 2] += 1.0
    assert (blk(u2)[:, 0] - blk(u)[:, 0]).abs().max() > 1e-4


def test_wta_loss_is_the_min_over_candidates_and_only_the_winner_learns():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 8, 8, requires_grad=True)
    target = (torch.rand(3, 8, 8) > 0.5).float()
    per = T.candidate_losses(logits, target)
    for b in range(3):
        for k in range(4):
            ref = losses.bce_dice_loss(logits[b:b + 1, k:k + 1], target[b:b + 1, None], bce_weight=0.5, dice_weight=1.0, smooth=1.0)
            assert torch.allclose(per[b, k], ref, atol=1e-6)
    loss = T.best_candidate_loss(logits, target)
    assert torch.allclose(loss, per.min(1).values.mean())
    loss.backward()
    win = per.argmin(1)
    for b in range(3):
        for k in range(4):
            assert (logits.grad[b, k].abs().sum() > 0) == (k == int(win[b]))


def _sq(H=8, y0=0, y1=4, x0=0, x1=4):
    m = np.zeros((H, H), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_ged_and_best_candidate_dice_hand_examples():
    A = _sq(x0=0, x1=4)  # 16 px
    B = _sq(x0=2, x1=6)  # 16 px, overlap 8: IoU = 8/24 = 1/3, Dice = 1/2
    assert T.generalized_energy_distance(A[None], A[None]) == pytest.approx(0.0)
    assert T.generalized_energy_distance(A[None], B[None]) == pytest.approx(2 * (2 / 3))
    # S = {A, B}, Y = {A}: 2 * (0 + 2/3)/2 - (0 + 2/3 + 2/3 + 0)/4 - 0 = 1/3
    assert T.generalized_energy_distance(np.stack([A, B]), A[None]) == pytest.approx(1 / 3)
    # S = Y = {A, B}: 2 * 1/3 - 1/3 - 1/3 = 0
    assert T.generalized_energy_distance(np.stack([A, B]), np.stack([A, B])) == pytest.approx(0.0)
    assert T.best_candidate_dice(np.stack([A, B]), np.stack([A, B])) == pytest.approx(1.0)
    assert T.best_candidate_dice(A[None], np.stack([A, B])) == pytest.approx((1 + 0.5) / 2)
    # two empty masks have IoU 1 -> distance 0
    E = np.zeros((8, 8), bool)
    assert T.generalized_energy_distance(E[None], E[None]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="binary"):
        T.generalized_energy_distance(np.full((1, 8, 8), 0.3), A[None])
    with pytest.raises(ValueError, match="non-empty stack"):
        T.best_candidate_dice(np.zeros((0, 8, 8), bool), A[None])


class _Echo(nn.Module):
    """Predicts the query itself (logit 20 (x - 1/2)): TTA must give back the same mask for every transform."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, q, s):
        return 20 * (q - 0.5) + 0 * self.p


def test_tta_undoes_its_transforms():
    q = (torch.rand(2, 16, 16) > 0.5).float()
    s_img, s_lab = np.random.rand(3, 16, 16).astype(np.float32), np.zeros((3, 16, 16), np.float32)
    out = T.tta_candidates(_Echo(), q, s_img, s_lab, k=6, shift=2)
    assert out.shape == (2, 6, 16, 16)
    for k in range(6):
        assert torch.equal(out[:, k] > 0.5, q > 0.5)
    assert len(set(T.tta_transforms(6))) == 6


def test_bad_k_and_annotator_counts(icl_inputs):
    base = UniverSeg((4, 4))
    m = T.from_universeg(base, candidates=2)
    q, s = icl_inputs()
    for bad in (0, -1):
        with pytest.raises(ValueError, match="number of candidates K"):
            m(q, s, k=bad)
        with pytest.raises(ValueError, match="number of candidates K"):
            T.Tyche((4, 4), candidates=bad)
        with pytest.raises(ValueError, match="number of candidates K"):
            T.tta_candidates(base, q[:, 0], s[0, :, 0], s[0, :, 1], k=bad)
        with pytest.raises(ValueError, match="annotator count"):
            T.annotated_tasks([], bad)
    with pytest.raises(ValueError, match="noise must have shape"):
        m(q, s, k=2, noise=torch.randn(2, 3, 1, 16, 16))
    with pytest.raises(ValueError, match="support set is empty"):
        m(q, s[:, :0])


def _blob_task(n=10, H=16, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :H]
    labels = np.stack([(yy - rng.integers(5, 11)) ** 2 + (xx - rng.integers(5, 11)) ** 2 <= 9 for _ in range(n)])
    images = np.clip(0.3 + 0.4 * labels + 0.05 * rng.standard_normal(labels.shape), 0, 1)
    return Task("blob", images, labels)


def test_train_tyche_runs_through_fit_and_changes_weights():
    torch.manual_seed(0)
    base = UniverSeg((4, 4))
    model, hist = T.train_tyche([_blob_task()], base, candidates=2, annotators=2, steps=3, batch_tasks=2,
                                max_support=2, progress=False, device="cpu", log_every=1)
    assert len(hist["loss"]) == 3 and np.isfinite(hist["loss"]).all()
    assert not torch.equal(model.set_enc[0].conv.weight, torch.zeros_like(model.set_enc[0].conv.weight))
    with pytest.raises(ValueError, match="annotator count"):
        T.train_tyche([_blob_task()], base, annotators=0, steps=1, progress=False)


def test_annotated_tasks_and_episode_shapes():
    t = _blob_task()
    ann = T.annotated_tasks([t], 3, seed=5)[0]
    assert ann.shape == (10, 3, 16, 16)
    rng = np.random.default_rng(0)
    q, qy, sup = T.sample_annotated_episode([t], 3, 2, 3, rng, "cpu", seed=5)
    assert q.shape == (2, 1, 16, 16) and qy.shape == (2, 16, 16) and sup.shape == (2, 3, 2, 16, 16)
    assert set(np.unique(qy.numpy())) <= {0.0, 1.0}


def test_explicit_missing_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.load_tyche(tmp_path / "nope.safetensors")


def test_committed_checkpoint(icl_inputs):
    from course_lib import checkpoints

    path = T.checkpoint_path()
    assert path.exists(), f"rebuild with {T.REBUILD}"
    assert checkpoints.sha256_file(path) == T.CHECKPOINT_SHA256
    assert path.stat().st_size < 1_000_000
    m = T.load_tyche(device="cpu", build_if_missing=False)
    assert m.candidates == m.meta["candidates"] and m.meta["warm_start"] == "universeg-tiny"
    q, s = icl_inputs(B=1, S=2, H=64)
    out = T.tyche_candidates(m, q, s[0, :, 0], s[0, :, 1], k=3, seed=0)
    assert out.shape == (1, 3, 64, 64)
    assert torch.equal(out, T.tyche_candidates(m, q, s[0, :, 0], s[0, :, 1], k=3, seed=0))

"""UniverSeg-style in-context segmentation: CrossBlock maths, support-order invariance, shapes,
the input contract, augmentation, ensembling and the committed checkpoint."""
import numpy as np
import pytest
import torch

from course_lib.methods import universeg as us


def _inputs(B=2, S=3, H=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(B, 1, H, H, generator=g)
    s = torch.rand(B, S, 2, H, H, generator=g)
    s[:, :, 1] = (s[:, :, 1] > 0.5).float()
    return q, s


def test_crossconv_applies_the_same_conv_to_each_pair():
    cc = us.CrossConv2d(3, 5, 4)
    u, v = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 5, 8, 8)
    out = cc(u, v)
    assert out.shape == (2, 4, 4, 8, 8)
    for i in range(4):
        ref = cc.conv(torch.cat([u, v[:, i]], 1))
        assert torch.allclose(out[:, i], ref, atol=1e-6)


def test_crossblock_implements_eq2():
    torch.manual_seed(0)
    blk = us.CrossBlock(3, 5, 6)
    u, v = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 5, 8, 8)
    u2, v2 = blk(u, v)
    z = blk.act(blk.cross(u, v))
    assert torch.allclose(u2, z.mean(1), atol=1e-6)
    assert torch.allclose(v2[:, 1], blk.act(blk.conv_v(z[:, 1])), atol=1e-6)
    assert u2.shape == (2, 6, 8, 8) and v2.shape == (2, 4, 6, 8, 8)


def test_query_output_invariant_to_support_order():
    torch.manual_seed(0)
    blk = us.CrossBlock(1, 2, 4)
    q, s = _inputs(S=5)
    perm = torch.tensor([3, 0, 4, 2, 1])
    u_a, v_a = blk(q, s)
    u_b, v_b = blk(q, s[:, perm])
    assert torch.allclose(u_a, u_b, atol=1e-6)
    assert torch.allclose(v_a[:, perm], v_b, atol=1e-6)  # support outputs are permuted along
    net = us.UniverSeg((4, 4, 4)).eval()
    assert torch.allclose(net(q, s), net(q, s[:, perm]), atol=1e-5)


@pytest.mark.parametrize("S", [1, 8])
def test_shapes_for_s1_and_s8(S):
    net = us.UniverSeg((4, 4, 4))
    q, s = _inputs(B=2, S=S)
    out = net(q, s)
    assert out.shape == (2, 1, 16, 16)
    assert torch.isfinite(out).all()


def test_architecture_levels_and_parameter_count():
    net = us.UniverSeg((16, 16, 16, 16))
    assert net.depth == 3 and len(net.enc) == 4 and len(net.dec) == 3
    # enc: CrossConv (1+2 -> 16) + Conv(16 -> 16); then 3 x (CrossConv(32 -> 16) + Conv)
    enc = (3 * 16 * 9 + 16) + (16 * 16 * 9 + 16) + 3 * ((32 * 16 * 9 + 16) + (16 * 16 * 9 + 16))
    dec = 3 * ((64 * 16 * 9 + 16) + (16 * 16 * 9 + 16))
    out = 16 + 1
    assert us.count_parameters(net) == enc + dec + out


@pytest.mark.parametrize(
    "q_shape, s_shape, match",
    [
        ((2, 1, 16, 16), (2, 0, 2, 16, 16), "empty"),
        ((2, 16, 16), (2, 3, 2, 16, 16), r"\(B, 1, H, W\)"),
        ((2, 1, 16, 16), (2, 2, 16, 16), r"\(B, S, 2, H, W\)"),
        ((2, 1, 16, 16), (2, 3, 3, 16, 16), "2 channels"),
        ((2, 1, 16, 16), (3, 3, 2, 16, 16), "batch"),
        ((2, 1, 16, 16), (2, 3, 2, 8, 8), "differs"),
        ((2, 1, 18, 18), (2, 3, 2, 18, 18), "divisible by 2\\*\\*depth"),
    ],
)
def test_bad_shapes_raise_clear_errors(q_shape, s_shape, match):
    net = us.UniverSeg((4, 4, 4))
    with pytest.raises(ValueError, match=match):
        net(torch.rand(q_shape), torch.rand(s_shape))


def test_bad_ranges_and_types():
    net = us.UniverSeg((4, 4, 4))
    q, s = _inputs()
    with pytest.raises(ValueError, match=r"query must lie in \[0, 1\]"):
        net(q * 255, s)
    bad = s.clone()
    bad[:, :, 1] *= 2
    with pytest.raises(ValueError, match="support labels"):
        net(q, bad)
    bad = s.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        net(q, bad)
    with pytest.raises(TypeError, match="torch.Tensor"):
        net(q.numpy(), s)
    with pytest.raises(TypeError, match="float"):
        net((q * 255).to(torch.uint8), s)


def test_augmentations_keep_ranges_and_binary_labels():
    rng = np.random.default_rng(0)
    x = torch.rand(5, 16, 16)
    y = (torch.rand(5, 16, 16) > 0.5).float()
    for fn in (us.in_task_augment, us.task_augment):
        xa, ya = fn(x, y, rng)
        assert xa.shape == x.shape and ya.shape == y.shape
        assert float(xa.min()) >= 0 and float(xa.max()) <= 1
        assert set(ya.unique().tolist()) <= {0.0, 1.0}


def test_task_augmentation_is_shared_by_all_images():
    x = torch.rand(1, 16, 16).repeat(4, 1, 1)
    y = (torch.rand(1, 16, 16) > 0.5).float().repeat(4, 1, 1)
    for seed in range(5):
        xa, ya = us.task_augment(x, y, np.random.default_rng(seed))
        assert torch.allclose(xa, xa[:1].expand_as(xa)) and torch.equal(ya, ya[:1].expand_as(ya))


class _Task:
    def __init__(self, n=12, H=16, seed=0):
        rng = np.random.default_rng(seed)
        self.images = rng.random((n, H, H)).astype(np.float32)
        self.labels = (self.images > 0.5).astype(np.float32)
        self.name = "toy"

    def __len__(self):
        return len(self.images)


def test_episode_and_meta_train_step_run():
    t = _Task()
    q, qy, sup = us.sample_episode([t], 3, 4, np.random.default_rng(0), "cpu")
    assert q.shape == (3, 1, 16, 16) and qy.shape == (3, 1, 16, 16) and sup.shape == (3, 4, 2, 16, 16)
    _model, hist = us.meta_train([t], channels=(4, 4, 4), steps=3, batch_tasks=2, max_support=3, device="cpu", progress=False, log_every=1)
    assert len(hist["loss"]) == 3 and all(np.isfinite(hist["loss"]))
    with pytest.raises(ValueError, match="no tasks"):
        us.meta_train([], steps=1)


def test_predict_ensembling_averages_probabilities():
    torch.manual_seed(0)
    net = us.UniverSeg((4, 4, 4)).eval()
    t = _Task()
    p1 = us.predict(net, t.images[:2], t.images[2:], t.labels[2:], support_size=3, ensemble=1, seed=0)
    p4 = us.predict(net, t.images[:2], t.images[2:], t.labels[2:], support_size=3, ensemble=4, seed=0)
    assert p1.shape == p4.shape == (2, 1, 16, 16)
    assert float(p4.min()) >= 0 and float(p4.max()) <= 1
    # by hand: mean of 4 sigmoid outputs on the same random subsets
    rng = np.random.default_rng(0)
    pool = torch.stack([torch.as_tensor(t.images[2:]), torch.as_tensor(t.labels[2:])], 1)
    q = torch.as_tensor(t.images[:2])[:, None]
    ref = sum(torch.sigmoid(net(q, pool[torch.as_tensor(rng.choice(10, 3, replace=False))][None].expand(2, -1, -1, -1, -1))) for _ in range(4)) / 4
    assert torch.allclose(p4, ref, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        us.predict(net, t.images[:2], t.images[:0], t.labels[:0])
    with pytest.raises(ValueError, match="ensemble"):
        us.predict(net, t.images[:2], t.images[2:], t.labels[2:], support_size=2, ensemble=0)


def test_dice_np():
    a = np.zeros((2, 4, 4), bool)
    b = a.copy()
    a[0, :2] = True
    b[0, :1] = True
    assert np.allclose(us.dice_np(a, b), [2 * 4 / (8 + 4), 1.0])


def test_committed_checkpoint_loads_and_matches_its_checksum():
    path = us.checkpoint_path()
    if not path.exists():
        pytest.skip("checkpoint not built yet: python -m course_lib.methods.universeg --train")
    assert us.sha256(path) == us.CHECKPOINT_SHA256
    assert path.stat().st_size < 1_000_000
    model = us.load_pretrained(device="cpu", build_if_missing=False)
    q, s = _inputs(B=1, S=2, H=64)
    assert model(q, s).shape == (1, 1, 64, 64)


def test_missing_checkpoint_error_says_how_to_rebuild(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train"):
        us.load_pretrained(tmp_path / "nope.pt", build_if_missing=False)


# ----------------------------------------------------------------------------- tasks (course_lib.seg_tasks)
def test_sonosynth_tasks_group_by_anatomy_structure_center_and_hold_out():
    from course_lib import seg_tasks

    train, held = seg_tasks.sonosynth_split(12, image_size=32, anatomies=("abdomen",), centers=("A",), min_images=4)
    assert train and held
    assert all(t.structure not in seg_tasks.HELD_OUT_STRUCTURES for t in train)
    assert {t.structure for t in held} <= set(seg_tasks.HELD_OUT_STRUCTURES)
    for t in train + held:
        assert t.anatomy == "abdomen" and t.center == "A" and t.images.shape[1:] == (32, 32)
        assert t.labels.reshape(len(t), -1).sum(1).min() >= 12  # every image shows the structure
        assert set(np.unique(t.labels).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="equal shapes"):
        seg_tasks.Task("bad", np.zeros((2, 8, 8)), np.zeros((3, 8, 8)))


def test_real_tasks_load_as_binary_tasks(real_data_dir):
    from course_lib import seg_tasks

    real_data_dir("busi_gt")
    real_data_dir("hc18")
    b = seg_tasks.busi_task(image_size=32, limit=2)
    h = seg_tasks.hc18_task(image_size=32, limit=3)
    assert len(b) == 4 and len(h) == 3
    for t in (b, h):
        assert t.images.shape[1:] == (32, 32) and 0 < t.labels.mean() < 1

"""Partial-label training (course_lib.methods.segfm.partial_labels): the assembly and its availability
vectors, the K / K+1 output nets, training through fit, per-structure Dice."""
import numpy as np
import pytest
import torch

from course_lib.methods.segfm import partial_labels as pl

# ----------------------------------------------------------------------------- partial-label assembly


def _samples(n=6, H=16):
    out = []
    for i in range(n):
        lm = np.zeros((H, H), np.uint8)
        lm[:4] = 1  # liver
        lm[8:12, :4] = 2  # kidney
        out.append(dict(image=np.full((H, H), i / n, np.float32), label_map=lm, structures=("background", "liver", "kidney"), id=f"s{i}"))
    return out


def test_assemble_hides_unlabelled_structures_and_sets_w():
    data = pl.assemble(_samples(), ("liver", "kidney"), {"A": ("kidney",), "C": ("liver",)}, seed=0)
    assert data.w.shape == (6, 2) and data.full_targets.shape == (6, 2, 16, 16)
    for i in range(6):
        expected = [0.0, 1.0] if data.dataset[i] == "A" else [1.0, 0.0]
        assert data.w[i].tolist() == expected
        assert data.full_targets[i].sum() > 0 and data.targets[i, data.w[i] == 0].sum() == 0
    assert (data.dataset == "A").sum() == 3
    assert data.table().loc["A", "kidney"] == "yes" and data.table().loc["A", "liver"] == "-"
    with pytest.raises(ValueError, match="not among structures"):
        pl.assemble(_samples(), ("liver",), {"A": ("spleen",)})
    with pytest.raises(ValueError, match="has no structure"):
        pl.one_hot_structures(_samples(1), ("spleen",))


def test_partial_nets_have_k_or_k_plus_1_outputs_and_train():
    data = pl.assemble(_samples(4), ("liver", "kidney"), {"A": ("kidney",), "C": ("liver",)})
    for mode, k in (("naive", 3), ("masked", 2)):
        net, losses = pl.train_partial(data, mode, steps=2, batch_size=2, features=(4, 8), progress=False, device="cpu")
        assert net(torch.zeros(1, 1, 16, 16)).shape == (1, k, 16, 16) and np.isfinite(losses).all()
        assert pl.predict_partial(net, data.images, mode).shape == (4, 2, 16, 16)
    with pytest.raises(ValueError, match="mode must be"):
        pl.build_net("softmax", 2)


def test_per_structure_dice_counts_false_positives_on_images_without_the_structure():
    t = np.zeros((2, 1, 4, 4), np.float32)
    t[0, 0, :2] = 1  # 8 pixels, image 0 only
    p = np.zeros((2, 1, 4, 4), bool)
    p[0, 0, :1] = True  # 4 correct pixels
    p[1, 0] = True  # 16 false positives on the image without the structure
    assert pl.per_structure_dice(p, t, ("x",)) == pytest.approx({"x": 2 * 4 / (4 + 16 + 8)})  # pooled
    d0 = 2 * 4 / (4 + 8)
    assert pl.per_structure_dice(p, t, ("x",), images="present") == pytest.approx({"x": d0})
    assert pl.per_structure_dice(p, t, ("x",), images="all") == pytest.approx({"x": (d0 + 0.0) / 2})
    p[1, 0] = False
    assert pl.per_structure_dice(p, t, ("x",)) == pytest.approx({"x": d0})
    assert pl.per_structure_dice(np.zeros_like(p), t, ("x",)) == {"x": 0.0}  # predicting nothing scores 0 pooled
    assert pl.per_structure_dice(np.zeros_like(p), t, ("x",), images="all") == {"x": 0.5}  # ... but 0.5 per image
    assert pl.false_positive_rate(p, t, ("x",)) == {"x": 0.0}
    p[1, 0, 0, 0] = True
    assert pl.false_positive_rate(p, t, ("x",)) == {"x": 1.0}
    with pytest.raises(ValueError, match="images must be"):
        pl.per_structure_dice(p, t, ("x",), images="some")


def test_training_uses_the_fused_adamw_and_it_is_the_same_update(monkeypatch):
    """train_partial's fused AdamW (one kernel over all parameters) gives the same weights as the
    per-parameter AdamW over a few steps (float rounding only)."""
    data = pl.assemble(_samples(4), ("liver", "kidney"), {"A": ("kidney",), "C": ("liver",)})
    seen = []
    real = torch.optim.AdamW

    def adamw(params, **kw):
        seen.append(kw.get("fused"))
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    fused, _ = pl.train_partial(data, "masked", steps=3, batch_size=2, features=(4, 8), progress=False, device="cpu")
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, **kw: real(params, **{**kw, "fused": None}))
    plain, _ = pl.train_partial(data, "masked", steps=3, batch_size=2, features=(4, 8), progress=False, device="cpu")
    assert seen == [True]
    # compare what the nets compute: a conv bias right before a BatchNorm has a ~0 gradient, and Adam turns that
    # rounding noise into full-size steps that the BatchNorm then removes
    x = torch.as_tensor(data.images[:, None])
    with torch.no_grad():
        assert torch.allclose(fused(x), plain(x), atol=1e-3)  # measured gap ~1e-4 (rounding through 3 steps)

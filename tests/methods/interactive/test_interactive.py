"""methods.interactive: SAM through transformers (tiny config, random weights, offline), prompts, recipe,
evaluation and MedSAM-style fine-tuning settings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.methods.interactive import checkpoint as ck
from course_lib.methods.interactive import evaluate as ev
from course_lib.methods.interactive import finetune as ft
from course_lib.methods.interactive import prompts as pr
from course_lib.methods.interactive import recipe
from course_lib.methods.interactive import sam as sm


@pytest.fixture
def sam():
    return sm.InteractiveSAM(sm.build_sonosam_tiny(seed=0), "test")


def _square(S=128, a=40, b=80):
    m = np.zeros((S, S), bool)
    m[a:b, a:b] = True
    return m


# ----------------------------------------------------------------------------- architecture and prompts
def test_decoder_returns_three_masks_and_ious_then_one(sam):
    emb = sam.embed(np.random.default_rng(0).random((2, 128, 128)))
    assert emb.shape == (2, 32, 16, 16)
    logits, iou = sam.decode(emb, torch.tensor([[[50.0, 60.0]], [[70.0, 20.0]]]), torch.ones(2, 1, dtype=torch.long),
                             multimask=True)
    assert logits.shape == (2, 3, sam.mask_size, sam.mask_size) and iou.shape == (2, 3)
    logits1, _ = sam.decode(emb, boxes=torch.tensor([[10.0, 10.0, 60.0, 60.0]] * 2), mask_input=logits[:, :1])
    assert logits1.shape == (2, 1, 64, 64)


def test_prompts_change_the_output(sam):
    emb = sam.embed(np.random.default_rng(0).random((1, 128, 128)))
    a, _ = sam.decode(emb, torch.tensor([[[20.0, 20.0]]]), torch.ones(1, 1, dtype=torch.long))
    b, _ = sam.decode(emb, torch.tensor([[[100.0, 90.0]]]), torch.ones(1, 1, dtype=torch.long))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("kwargs, match", [
    (dict(points=torch.tensor([[[130.0, 5.0]]]), labels=torch.ones(1, 1, dtype=torch.long)), "outside"),
    (dict(points=torch.tensor([[5.0, 5.0]]), labels=torch.ones(1, 1, dtype=torch.long)), r"points must be \(B=1"),
    (dict(boxes=torch.tensor([[50.0, 10.0, 20.0, 60.0]])), "empty or inverted"),
    (dict(boxes=torch.tensor([[10.0, 10.0, 10.0, 60.0]])), "empty or inverted"),
    (dict(mask_input=torch.zeros(1, 1, 32, 32)), r"mask_input must be \(B=1, 1, 64, 64\)"),
    (dict(), "at least one prompt"),
])
def test_bad_prompts_are_named(sam, kwargs, match):
    emb = sam.embed(np.zeros((1, 128, 128)))
    with pytest.raises(ValueError, match=match):
        sam.decode(emb, **kwargs)


def test_prompt_helpers_validate_and_simulate():
    m = _square()
    rng = np.random.default_rng(0)
    x, y = pr.random_point(m, rng)
    assert m[int(y), int(x)]
    x0, y0, x1, y1 = pr.jittered_box(m, rng)
    assert x0 < x1 and y0 < y1 and abs(x0 - 40) <= 20
    assert pr.tight_box(m) == (40.0, 40.0, 80.0, 80.0)
    with pytest.raises(ValueError, match="outside"):
        pr.check_point((200, 3), 128)
    with pytest.raises(ValueError, match="inverted"):
        pr.check_box((50, 50, 10, 60), 128)
    with pytest.raises(ValueError, match="empty"):
        pr.check_box((50, 50, 50, 60), 128)
    with pytest.raises(ValueError, match="empty mask"):
        pr.random_point(np.zeros((8, 8), bool), rng)


def test_center_click_targets_the_largest_error():
    gt = _square()
    pred = np.zeros_like(gt)
    (x, y), lab = pr.center_click(pred, gt)
    assert lab == pr.POSITIVE and 55 <= x <= 65 and 55 <= y <= 65       # the object's centre
    pred = gt.copy()
    pred[0:30, 0:60] = True                                              # a large false positive
    (x, y), lab = pr.center_click(pred, gt)
    assert lab == pr.NEGATIVE and y < 30
    assert pr.center_click(gt, gt) is None


def test_random_correction_is_in_the_error_region():
    gt, pred = _square(), np.zeros((128, 128), bool)
    rng = np.random.default_rng(1)
    for _ in range(20):
        (x, y), lab = pr.random_correction(pred, gt, rng)
        assert gt[int(y), int(x)] and lab == pr.POSITIVE


# ----------------------------------------------------------------------------- recipe and evaluation
def test_interactive_loss_trains_encoder_and_decoder(sam):
    imgs, lmaps = recipe.structure_pool(4, 128, seed=3)
    tg = recipe.pick_targets(lmaps, np.random.default_rng(0))
    loss, logs = recipe.interactive_loss(sam, imgs, tg, np.random.default_rng(0), corrections=1)
    loss.backward()
    assert loss.ndim == 0 and set(logs) == {"mask_loss", "iou_loss"}
    enc = [p.grad for p in sam.model.vision_encoder.parameters() if p.grad is not None]
    dec = [p.grad for p in sam.model.mask_decoder.parameters() if p.grad is not None]
    assert enc and dec and any(g.abs().sum() > 0 for g in enc)


def test_best_of_three_loss_takes_the_minimum():
    tgt = torch.zeros(1, 1, 8, 8)
    tgt[..., 2:6, 2:6] = 1
    good = tgt * 20 - 10
    per = torch.stack([recipe.mask_loss(x, tgt) for x in (good, -good, torch.zeros_like(good))], 1)
    assert per.argmin(1).item() == 0 and per[0, 0] < per[0, 2] < per[0, 1]


def test_pretrain_runs_and_saves_a_verified_checkpoint(tmp_path):
    out = tmp_path / "s.safetensors"
    s, info = recipe.pretrain(out, steps=2, batch=2, pool=8, progress=False)
    assert info["steps"] == 2 and out.exists()
    again = ck.load(out)
    for (k, a), (_, b) in zip(s.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.allclose(a.half().float(), b, atol=1e-3), k


def test_dice_vs_clicks_shapes_and_errors(sam):
    imgs = np.random.default_rng(0).random((3, 128, 128)).astype(np.float32)
    masks = np.stack([_square()] * 3)
    d = ev.dice_vs_clicks(sam, imgs, masks, clicks=(1, 3))
    assert set(d) == {1, 3} and d[1].shape == (3,) and ((d[3] >= 0) & (d[3] <= 1)).all()
    with pytest.raises(ValueError, match="empty"):
        ev.dice_vs_clicks(sam, imgs, np.zeros((3, 128, 128), bool))
    with pytest.raises(ValueError, match="positive click counts"):
        ev.dice_vs_clicks(sam, imgs, masks, clicks=(0,))
    m3, iou = ev.ambiguous_masks(sam, imgs[0], (60, 60))
    assert m3.shape == (3, 128, 128) and iou.shape == (3,)


# ----------------------------------------------------------------------------- fine-tuning settings
def test_prepare_trains_exactly_the_intended_parameters(sam):
    from course_lib import train

    dec = train.count_parameters(sam.model.mask_decoder)
    enc = train.count_parameters(sam.model.vision_encoder)
    c = ft.prepare(sam, "decoder")
    assert c == {"image_encoder": 0, "prompt_encoder": 0, "mask_decoder": dec, "total": dec}
    s2 = sm.InteractiveSAM(sm.build_sonosam_tiny(0), "t")
    c = ft.prepare(s2, "full")
    assert c["image_encoder"] == enc and c["prompt_encoder"] == 0 and c["total"] == enc + dec
    s3 = sm.InteractiveSAM(sm.build_sonosam_tiny(0), "t")
    c = ft.prepare(s3, "adapter", rank=4)
    cfg = sm.SONOSAM_CONFIG["vision_config"]
    D, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    assert c["image_encoder"] == L * 4 * (D + 3 * D)  # A: r x D, B: 3D x r per block
    assert c["total"] == c["image_encoder"] + dec
    with pytest.raises(ValueError, match="unknown fine-tuning mode"):
        ft.prepare(s3, "everything")


def test_adapter_starts_as_the_identity(sam):
    x = np.random.default_rng(0).random((1, 128, 128))
    before = sam.embed(x)
    ft.prepare(sam, "adapter")
    assert torch.allclose(before, sam.embed(x), atol=1e-6)


def test_finetune_changes_only_trainable_parts(sam):
    ft.prepare(sam, "decoder")
    enc0 = [p.clone() for p in sam.model.vision_encoder.parameters()]
    dec0 = [p.clone() for p in sam.model.mask_decoder.parameters()]
    ft.finetune(sam, np.random.default_rng(0).random((4, 128, 128)), np.stack([_square()] * 4), steps=2, batch=2, lr=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(enc0, sam.model.vision_encoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(dec0, sam.model.mask_decoder.parameters()))
    with pytest.raises(ValueError, match="same size"):
        ft.finetune(sam, np.zeros((2, 128, 128)), np.zeros((2, 64, 64)), steps=1, batch=1, lr=1e-3)


# ----------------------------------------------------------------------------- loading paths
def test_hub_layout_folder_loads_through_from_pretrained(tmp_path):
    """The full profile's path (SamModel.from_pretrained) on a folder in the hub layout, offline."""
    model = sm.build_sonosam_tiny(seed=1)
    model.save_pretrained(tmp_path / "sam-vit-base")
    assert (tmp_path / "sam-vit-base" / "config.json").exists()
    loaded = ck.load(tmp_path / "sam-vit-base")
    sd0, sd1 = model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert loaded.image_size == 128 and loaded.mask_size == 64


def test_loading_errors(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.load(tmp_path / "typo.safetensors")
    with pytest.raises(ValueError, match="unknown SAM model"):
        ck.load("sam-huge-please")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="not reachable"):
        ck.load("medsam")


def test_preprocess_rejects_bad_images(sam):
    with pytest.raises(ValueError, match="NaN"):
        sam.preprocess(np.full((1, 8, 8), np.nan))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sam.preprocess(np.full((1, 8, 8), 255.0))
    with pytest.raises(ValueError, match="must be"):
        sam.preprocess(np.zeros((8, 8)))

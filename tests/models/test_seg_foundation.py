"""segfm-tiny: shapes, PEFT-relevant structure, heads, checkpoint round trip and checksum, data."""
import numpy as np
import pytest
import torch

from course_lib.methods import lora
from course_lib.models import seg_foundation as sf

CFG = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, skip=8, dec=(16, 16, 8))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sf.SegFoundation(3, ("background", "lesion", "liver"), **CFG).eval()


def test_shapes(model):
    x = torch.rand(2, 32, 32)
    assert model(x).shape == (2, 3, 32, 32)
    assert model(x[:, None]).shape == (2, 3, 32, 32)
    assert model.features(x).shape == (2, 8, 16, 16)
    assert model.tokens(x).shape == (2, 32, 4, 4)


def test_vit_encoder_has_open_clip_names(model):
    prefix, blocks = lora.vision_blocks(model)
    assert prefix == "visual.transformer.resblocks" and len(blocks) == 2
    assert lora.resolve_targets(model, ("attn", "mlp"), blocks=[-1]) == [
        "visual.transformer.resblocks.1.attn", "visual.transformer.resblocks.1.mlp.c_fc", "visual.transformer.resblocks.1.mlp.c_proj"]


def test_binary_head_known_and_novel(model):
    x = torch.rand(2, 32, 32)
    with torch.no_grad():
        full = model(x)
        known = model(x, head=model.binary_head("liver"))
    assert torch.allclose(known[:, 0], full[:, 2] - full[:, 0], atol=1e-5)
    head = model.binary_head("kidney")
    assert torch.all(head.bias == -2.0) and 0 < head.weight.abs().max() < 0.5  # small random: gradients flow


def test_checkpoint_round_trip(model, tmp_path):
    path = tmp_path / "m.pt"
    digest = sf.save(model, path, meta={"note": "test"})
    assert digest == sf.sha256(path) and len(digest) == 64
    m2 = sf.load(path, device="cpu")
    x = torch.rand(2, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m2(x), model(x), atol=5e-2)  # fp16 storage
    assert m2.class_names == model.class_names and m2.meta == {"note": "test"}


def test_committed_checkpoint_matches_recorded_sha():
    if not sf.CHECKPOINT.exists():
        pytest.fail(f"{sf.CHECKPOINT} is missing; rebuild with python -m course_lib.models.seg_foundation --rebuild")
    assert sf.sha256(sf.CHECKPOINT) == sf.CHECKPOINT_SHA256
    m = sf.load(device="cpu")
    assert "kidney" not in m.class_names and "renal_sinus" not in m.class_names and "lesion" in m.class_names
    assert m.meta["held_out_center"] == sf.HELD_OUT_CENTER


def test_pretraining_data_hides_held_out_structures_and_center():
    from course_lib.data import sonosynth as ss

    imgs, labels, classes = sf.pretraining_data(24, seed=5, image_size=32)
    assert imgs.shape == labels.shape == (24, 32, 32)
    assert classes[0] == "background" and not set(sf.HELD_OUT) & set(classes)
    assert labels.max() < len(classes)
    raw = ss.generate_batch(24, seed=5, image_size=32, centers=tuple(c for c in ss.CENTERS if c != sf.HELD_OUT_CENTER))
    held = np.isin(raw["label_map"], [ss.structure_id(s) for s in sf.HELD_OUT])
    assert (labels[held] == 0).all()
    assert sf.HELD_OUT_CENTER not in set(raw["center"])


def test_dice_ce_loss_is_small_for_perfect_logits():
    y = torch.randint(0, 3, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float() * 50
    assert sf.dice_ce_loss(perfect, y).item() < 1e-3
    assert sf.dice_ce_loss(torch.zeros(2, 3, 8, 8), y).item() > 1.0


def test_clear_errors(model, tmp_path):
    with pytest.raises(ValueError, match="takes 32x32 images"):
        model(torch.rand(1, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, H, W\) or \(B, 1, H, W\)"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown SegFoundation config"):
        sf.SegFoundation(2, depth=3)
    with pytest.raises(ValueError, match="patch_size must be 8"):
        sf.SegFoundation(2, patch_size=16, image_size=32)
    with pytest.raises(FileNotFoundError, match="--rebuild"):
        sf.load(tmp_path / "missing.pt", rebuild=False)

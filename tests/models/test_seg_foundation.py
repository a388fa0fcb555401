"""segfm-tiny: shapes, PEFT-relevant structure, heads, safetensors checkpoint round trip and checksums,
pretraining data and a two-step pretraining run through train.fit."""
import numpy as np
import pytest
import torch

from course_lib.methods.peft import lora
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
    from course_lib import checkpoints

    path = tmp_path / "m.safetensors"
    digest = sf.save(model, path, meta={"note": "test"})
    assert digest == checkpoints.sha256_file(path) and len(digest) == 64
    assert path.read_bytes()[:2] not in (b"\x80\x02", b"\x80\x04", b"\x80\x05", b"PK")  # not a pickle
    m2 = sf.load(path, device="cpu")
    for k, v in model.state_dict().items():  # exactly the fp16-rounded weights
        assert torch.equal(m2.state_dict()[k], v.half().float()), k
    assert m2.class_names == model.class_names and m2.meta == {"note": "test"} and m2.config == model.config


def test_committed_checkpoint_matches_recorded_sha():
    from course_lib import checkpoints

    if not sf.CHECKPOINT.exists():
        pytest.fail(f"{sf.CHECKPOINT} is missing; rebuild with python -m course_lib.models.seg_foundation --rebuild")
    assert sf.CHECKPOINT.suffix == ".safetensors"
    assert checkpoints.sha256_file(sf.CHECKPOINT) == sf.CHECKPOINT_SHA256
    m = sf.load(device="cpu")
    assert "kidney" not in m.class_names and "renal_sinus" not in m.class_names and "lesion" in m.class_names
    assert m.meta["held_out_center"] == sf.HELD_OUT_CENTER
    assert all(v.dtype == torch.float16 for v in checkpoints.load_state(sf.CHECKPOINT)[0].values())


def test_tampered_or_foreign_checkpoint_is_refused(model, tmp_path):
    from course_lib import checkpoints

    path = tmp_path / "m.safetensors"
    sf.save(model, path)
    with pytest.raises(checkpoints.ChecksumError):
        checkpoints.load_state(path, expected_sha256="0" * 64)
    other = tmp_path / "other.safetensors"
    checkpoints.save_state(other, {"w": torch.zeros(2)}, {"model": "something-else"})
    with pytest.raises(checkpoints.CheckpointError, match="not segfm-tiny"):
        sf.load(other, device="cpu")


def test_pretrain_two_steps_with_fit(tmp_path):
    from types import SimpleNamespace

    class Tiny:
        name = "tiny"

        def section(self, name):
            assert name == "seg_foundation"
            return SimpleNamespace(n_pretrain=80, epochs=2, batch_size=16, lr=2e-3, image_size=64)

    out = tmp_path / "pre.safetensors"
    model, info = sf.pretrain(out=out, profile=Tiny(), verbose=False)
    assert [h["epoch"] for h in info["history"]] == [1, 2] and all(np.isfinite(h["loss"]) for h in info["history"])
    assert set(info["val_dice"]) <= set(model.class_names[1:])
    m2 = sf.load(out, device="cpu")
    assert m2.meta["epochs"] == 2 and m2.class_names == model.class_names


def test_per_class_dice_is_pooled_metrics_dice(model):
    x = torch.rand(3, 32, 32)
    with torch.no_grad():
        pred = model(x).argmax(1)
    d = sf.per_class_dice(model, x, pred)  # the model's own prediction as ground truth: Dice 1
    assert d and all(v == 1.0 for v in d.values())


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


def test_clear_errors(model, tmp_path):
    with pytest.raises(ValueError, match="takes 32x32 images"):
        model(torch.rand(1, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, H, W\) or \(B, 1, H, W\)"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown SegFoundation config"):
        sf.SegFoundation(2, depth=3)
    with pytest.raises(ValueError, match="patch_size must be 8"):
        sf.SegFoundation(2, patch_size=16, image_size=32)
    for rebuild in (True, False):  # an explicit path is never rebuilt
        with pytest.raises(FileNotFoundError, match="explicit path"):
            sf.load(tmp_path / "missing.safetensors", rebuild=rebuild)

"""The universeg-tiny checkpoint (course_lib.methods.segfm.checkpoint): safetensors, recorded SHA-256,
explicit missing paths raise, the same weights as the original pickle."""
import pytest
import torch

from course_lib.methods.segfm import checkpoint as ck




def test_committed_checkpoint_is_safetensors_with_the_recorded_checksum(icl_inputs):
    from course_lib import checkpoints

    path = ck.checkpoint_path()
    assert path.suffix == ".safetensors" and path.exists(), f"rebuild with {ck.REBUILD}"
    assert checkpoints.sha256_file(path) == ck.CHECKPOINT_SHA256
    assert path.stat().st_size < 1_000_000
    model = ck.load_pretrained(device="cpu", build_if_missing=False)
    assert model.channels == (16, 16, 16, 16) and not model.training
    assert model.meta["held_out_structures"] == ["kidney", "renal_sinus", "thyroid"]
    q, s = icl_inputs(B=1, S=2, H=64)
    assert model(q, s).shape == (1, 1, 64, 64)


def test_explicit_missing_path_raises_and_trains_nothing(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(ck, "train_checkpoint", lambda *a, **k: called.append(a))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.load_pretrained(tmp_path / "nope.safetensors")
    assert not called and not (tmp_path / "nope.safetensors").exists()


def test_missing_default_is_rebuilt_only_when_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "ASSETS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="--train"):
        ck.load_pretrained(build_if_missing=False)
    from course_lib.methods.segfm.universeg import UniverSeg

    def fake_train(path):
        ck.save_checkpoint(UniverSeg((4, 4)), path, {"steps": 0})

    monkeypatch.setattr(ck, "train_checkpoint", fake_train)
    monkeypatch.setattr(ck, "CHECKPOINT_SHA256", "TO_BE_FILLED")
    model = ck.load_pretrained(device="cpu")
    assert model.channels == (4, 4) and (tmp_path / ck.CHECKPOINT_NAME).exists()


def test_save_load_roundtrip_and_tampering_is_refused(tmp_path):
    from course_lib import checkpoints

    torch.manual_seed(0)
    net = ck.UniverSeg((4, 4, 4))
    path = tmp_path / "u.safetensors"
    digest = ck.save_checkpoint(net, path, {"note": "test"})
    assert digest == checkpoints.sha256_file(path)
    back = ck.load_pretrained(path, device="cpu")
    for k, v in net.state_dict().items():
        assert torch.equal(back.state_dict()[k], v.half().float())  # stored in fp16
    assert back.meta["note"] == "test" and back.meta["channels"] == [4, 4, 4]
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(checkpoints.CheckpointError):
        ck.load_pretrained(path, device="cpu")


def test_a_pickle_is_refused_with_a_clear_error(tmp_path):
    from course_lib import checkpoints

    path = tmp_path / "old.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(checkpoints.CheckpointError, match="pickle"):
        ck.load_pretrained(path)

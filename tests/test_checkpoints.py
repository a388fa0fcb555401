"""course_lib.checkpoints: no pickle, verified loads, atomic writes, clear errors."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from course_lib import checkpoints as ck


def _state():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(8, 4, generator=g), "b": torch.zeros(4)}


def test_round_trip_and_meta(tmp_path):
    p = tmp_path / "m.safetensors"
    sha = ck.save_state(p, _state(), {"config": {"width": 4}})
    assert sha == ck.sha256_file(p)
    tensors, meta = ck.load_state(p, expected_sha256=sha)
    assert torch.equal(tensors["w"], _state()["w"]) and meta == {"config": {"width": 4}}
    assert ck.read_meta(p) == meta
    assert ck.save_state(tmp_path / "again.safetensors", _state(), {"config": {"width": 4}}) == sha  # deterministic


def test_byte_flipped_copy_is_refused_without_a_recorded_checksum(tmp_path):
    p = tmp_path / "m.safetensors"
    ck.save_state(p, _state())
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's bytes
    q = tmp_path / "copy.safetensors"
    q.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match="corrupted"):
        ck.load_state(q)


def test_expected_sha_mismatch(tmp_path):
    p = tmp_path / "m.safetensors"
    ck.save_state(p, _state())
    with pytest.raises(ck.ChecksumError, match="expected 00"):
        ck.load_state(p, expected_sha256="00" * 32)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_payload_is_refused_without_executing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps({"state_dict": _Boom()}))
    with pytest.raises(ck.CheckpointError, match="pickle"):
        ck.load_state(p)
    assert not (tmp_path / "PWNED").exists()
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(ck.CheckpointError, match="never pickles"):
        ck.load_state(tmp_path / "plain.pt")


def test_truncated_foreign_and_missing_files(tmp_path):
    p = tmp_path / "m.safetensors"
    ck.save_state(p, _state())
    t = tmp_path / "trunc.safetensors"
    t.write_bytes(p.read_bytes()[:40])
    with pytest.raises(ck.CheckpointError, match="truncated"):
        ck.load_state(t)
    from safetensors.torch import save_file

    save_file(_state(), str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ck.CheckpointError, match="not written by course_lib"):
        ck.load_state(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.load_state(tmp_path / "typo.safetensors")
    with pytest.raises(ck.CheckpointError, match="folder"):
        ck.load_state(tmp_path)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with ck.atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["out.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    import stat

    p = tmp_path / "m.safetensors"
    ck.save_state(p, _state())
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask

"""Random-weight stand-ins in the hub layout (course_lib.models.offline_hub): built once, loaded with the same
``from_pretrained`` call as online, only in smoke mode and offline; the Florence-2 / SAM 2 loaders use them."""
from __future__ import annotations

import pytest
import torch

from course_lib.models import offline_hub as oh


def _tiny_sam2():
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2Model, Sam2VisionConfig

    bc = Sam2HieraDetConfig(hidden_size=16, embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 2, 2],
                            blocks_per_stage=[1, 1, 2, 1], global_attention_blocks=[3], window_size_per_stage=[4, 4, 4, 4],
                            window_positional_embedding_background_size=[4, 4], image_size=[64, 64])
    vc = Sam2VisionConfig(backbone_config=bc, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=32)
    return Sam2Model(Sam2Config(vision_config=vc)).eval()


@pytest.fixture
def smoke_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COURSE_SMOKE", "1")
    return tmp_path


def test_resolve_builds_a_hub_layout_folder_once_and_from_pretrained_loads_it(smoke_offline, capsys):
    from transformers import Sam2Model

    calls = []

    def make():
        calls.append(1)
        return _tiny_sam2()

    src = oh.resolve("facebook/sam2.1-hiera-small", make)
    assert "RANDOM weights" in capsys.readouterr().out
    path = oh.folder("facebook/sam2.1-hiera-small")
    assert src == str(path) and path.parent.parent == smoke_offline
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file() and (path / oh.MARKER).is_file()
    loaded = Sam2Model.from_pretrained(src)
    torch.manual_seed(0)
    ref = make().state_dict()  # build() seeds with 0: the same random weights as the saved ones
    got = loaded.state_dict()
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
    assert oh.resolve("facebook/sam2.1-hiera-small", make) == src and len(calls) == 2  # built once (+ ref above)


def test_resolve_is_the_hub_id_outside_smoke_mode_or_online(smoke_offline, monkeypatch):
    monkeypatch.setenv("COURSE_SMOKE", "0")
    assert oh.resolve("facebook/sam2.1-hiera-small", _tiny_sam2) == "facebook/sam2.1-hiera-small"
    assert not oh.is_built("facebook/sam2.1-hiera-small")


def test_unfinished_folder_is_not_taken_for_built_and_bad_ids(smoke_offline):
    path = oh.folder("owner/model")
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")  # no weights, no marker: an interrupted build
    assert not oh.is_built("owner/model")
    with pytest.raises(ValueError, match="owner/name"):
        oh.folder("../../etc")
    with pytest.raises(TypeError, match="PreTrainedModel"):
        oh.build("owner/other", lambda: torch.nn.Linear(2, 2))


def test_sam2_and_florence2_loaders_use_the_offline_folder_in_smoke_mode(smoke_offline, monkeypatch):
    """The full profile's loaders of notebooks 10 and 11 (from_pretrained by hub id) run offline in smoke mode;
    outside smoke mode they still refuse with the fix."""
    from course_lib.methods.tapslf import encoders as E
    from course_lib.methods.tpseg import tca

    monkeypatch.setattr(tca, "random_sam2_model", lambda name: _tiny_sam2())
    enc = tca.load_sam2_encoder("facebook/sam2.1-hiera-small")
    assert type(enc).__name__ == "Sam2VisionModel" and len(enc.backbone.blocks) == 5

    def tiny_florence():
        from transformers import BartConfig, Florence2Config, Florence2ForConditionalGeneration

        text = BartConfig(vocab_size=64, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
        return Florence2ForConditionalGeneration(Florence2Config(vision_config=E.tiny_florence2_config(), text_config=text,
                                                                 image_token_id=63))

    monkeypatch.setattr(E, "random_florence2_model", tiny_florence)
    vis = E.load_florence2_vision()
    assert type(vis).__name__ == "Florence2VisionBackbone" and list(vis.config.embed_dim) == [16, 32, 48, 64]
    monkeypatch.setenv("COURSE_SMOKE", "0")
    with pytest.raises(RuntimeError, match="could not load SAM 2"):
        tca.load_sam2_encoder("facebook/sam2.1-hiera-small")
    with pytest.raises(RuntimeError, match="could not load Florence-2"):
        E.load_florence2_vision()


def test_random_sam2_model_names():
    from course_lib.methods.tpseg import tca

    with pytest.raises(ValueError, match="no offline SAM 2 architecture"):
        tca.random_sam2_model("facebook/sam2.1-hiera-gigantic")
    assert tca.SAM2_HIERA["small"][2] == (1, 2, 11, 2)  # Hiera-S: 16 blocks

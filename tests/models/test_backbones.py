"""Backbone interface (tiny CLIP and random-weight ViT-B/16), tokenizer, checksum, offline errors,
InfoNCE and retrieval maths."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib import runtime
from course_lib.models import backbones as B
from course_lib.models import load_backbone
from course_lib.losses import info_nce as clip_loss
from course_lib.models.pretrain import recall_at_k, train_clip


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("sonoclip-tiny", pretrained=None, device="cpu", verbose=False)


@pytest.fixture(scope="module")
def vitb():
    return load_backbone("ViT-B-16", pretrained=None, device="cpu", verbose=False)


# --------------------------------------------------------------------------- interface
def test_tiny_geometry_and_shapes(tiny):
    assert (tiny.image_size, tiny.patch_size, tiny.grid, tiny.width, tiny.depth) == (64, 8, (8, 8), 96, 4)
    assert tiny.embed_dim == 96 and tiny.context_length == 77
    x = torch.rand(4, 64, 64)  # four grey images ((3, H, W) is ambiguous and refused: tests/test_bad_inputs.py)
    assert tiny.preprocess(x).shape == (4, 3, 64, 64)
    f = tiny.encode_image(x)
    assert f.shape == (4, 96)
    assert torch.allclose(f.norm(dim=-1), torch.ones(4), atol=1e-5)
    t = tiny.encode_text(tiny.tokenize(["a benign lesion", "an irregular mass"]))
    assert t.shape == (2, 96)
    toks = tiny.tokens(x, blocks=[0, 3])
    assert set(toks) == {0, 3}
    assert toks[3]["cls"].shape == (4, 96) and toks[3]["patch"].shape == (4, 64, 96)


def test_tiny_parameter_count_is_the_documented_one(tiny):
    # vision: 4 blocks of width 96 on an 8x8 grid; text: 3 blocks of width 96, context 77; embed 96
    n = sum(p.numel() for p in tiny.model.parameters())
    assert n == 5_577_217
    assert tiny.model.token_embedding.weight.numel() == 49408 * 96  # the tokenizer's full BPE vocabulary
    assert sum(p.numel() for p in tiny.visual.parameters()) == 8 * 8 * 3 * 96 + 96 + 65 * 96 + 4 * (12 * 96 * 96 + 13 * 96) + 4 * 96 + 96 * 96


def test_vitb16_random_weights_offline_geometry(vitb):
    assert (vitb.image_size, vitb.patch_size, vitb.grid, vitb.width, vitb.depth) == (224, 16, (14, 14), 768, 12)
    assert vitb.num_tokens == 197 and vitb.embed_dim == 512 and vitb.context_length == 77
    assert vitb.blocks_at() == [2, 5, 8]
    toks = vitb.tokens(torch.rand(1, 1, 96, 96), blocks=[2, 5, 8])
    assert [tuple(toks[b]["patch"].shape) for b in (2, 5, 8)] == [(1, 196, 768)] * 3
    assert toks[8]["cls"].shape == (1, 768)


def test_tiny_has_the_same_module_names_as_vitb16(tiny, vitb):
    def names(bb):
        blk = bb.visual.transformer.resblocks[0]
        assert isinstance(blk.attn, torch.nn.MultiheadAttention)
        assert isinstance(blk.mlp.c_fc, torch.nn.Linear) and isinstance(blk.mlp.c_proj, torch.nn.Linear)
        return {n for n, _ in blk.named_modules()}

    assert names(tiny) == names(vitb)
    assert type(tiny.visual).__name__ == type(vitb.visual).__name__ == "VisionTransformer"
    assert tiny.blocks_at() == [0, 1, 2]


def test_tokens_are_block_outputs_and_keep_gradients(tiny):
    x = torch.rand(2, 64, 64)
    captured = {}
    h = tiny.visual.transformer.resblocks[2].register_forward_hook(lambda m, i, o: captured.setdefault("o", o))
    toks = tiny.tokens(x, blocks=[2])
    h.remove()
    assert torch.equal(torch.cat([toks[2]["cls"][:, None], toks[2]["patch"]], 1), captured["o"])
    p = tiny.visual.transformer.resblocks[1].mlp.c_fc.weight
    toks[2]["patch"].sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    tiny.model.zero_grad(set_to_none=True)


def test_negative_block_index_and_bad_blocks(tiny):
    x = torch.rand(1, 64, 64)
    assert torch.equal(tiny.tokens(x, [-1])[-1]["cls"], tiny.tokens(x, [3])[3]["cls"])
    with pytest.raises(ValueError, match="out of range.*use 0..3"):
        tiny.tokens(x, blocks=[4])
    with pytest.raises(ValueError, match="at least one block"):
        tiny.tokens(x, blocks=[])
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        tiny.blocks_at([0.0])


def test_preprocess_accepts_common_layouts(tiny):
    from PIL import Image

    a = tiny.preprocess(np.full((2, 32, 32), 0.5, np.float32))
    b = tiny.preprocess(torch.full((2, 1, 32, 32), 0.5))
    c = tiny.preprocess([Image.fromarray(np.full((20, 30), 128, np.uint8))] * 2)
    d = tiny.preprocess(np.full((2, 32, 32), 128, np.uint8))
    assert a.shape == b.shape == c.shape == d.shape == (2, 3, 64, 64)
    assert torch.allclose(a, b)
    assert torch.allclose(a, d, atol=1e-2)
    # the three channels are normalised with the CLIP mean/std of each channel
    assert torch.allclose(a[0, :, 0, 0], (0.5 - torch.tensor(B.OPENAI_MEAN)) / torch.tensor(B.OPENAI_STD))


def test_preprocess_bad_input_errors(tiny):
    with pytest.raises(ValueError, match=r"values must be in \[0, 1\].*divide uint8"):
        tiny.preprocess(torch.full((1, 8, 8), 3.0))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        tiny.preprocess(torch.rand(1, 5, 8, 8))
    with pytest.raises(ValueError, match="empty list"):
        tiny.preprocess([])
    with pytest.raises(TypeError, match="cannot read"):
        tiny.preprocess("image.png")


def test_encode_image_takes_raw_or_preprocessed(tiny):
    x = torch.rand(2, 48, 48)
    assert torch.allclose(tiny.encode_image(x), tiny.encode_image(tiny.preprocess(x)))


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_context_length_and_truncation(tiny, vitb):
    t = tiny.tokenize(["a lesion", "word " * 100])
    assert t.dtype == torch.long and t.shape == (2, 77)
    assert int(t[1, -1]) == 49407  # truncated texts end with the end-of-text token
    assert vitb.tokenize("x").shape == (1, 77)
    # same BPE ids in both (open_clip SimpleTokenizer), only the length differs
    assert torch.equal(tiny.tokenize("a benign mass")[0, :6], vitb.tokenize("a benign mass")[0, :6])
    with pytest.raises(ValueError, match="no texts"):
        tiny.tokenize([])
    with pytest.raises(TypeError, match="needs strings"):
        tiny.tokenize([1, 2])


# --------------------------------------------------------------------------- names, checkpoint, offline
def test_unknown_backbone_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet-9000'.*Known names"):
        load_backbone("resnet-9000")


def test_checkpoint_roundtrip_and_checksum_mismatch(tmp_path, tiny):
    path = tmp_path / "tiny.safetensors"
    sha = B.save_checkpoint(tiny.model, path, meta={"note": "test"})
    assert sha == B.sha256_file(path) and len(sha) == 64
    model, used = B.load_sonoclip_tiny(path, expected_sha256=sha)
    assert used == str(path)
    sd = tiny.model.state_dict()
    k = "visual.transformer.resblocks.0.attn.in_proj_weight"
    assert torch.allclose(model.state_dict()[k], sd[k].half().float())
    assert B.read_checkpoint_meta(path)["note"] == "test"
    with pytest.raises(B.ChecksumError, match="expected 0000.*rebuild with `python -m course_lib.models.pretrain"):
        B.load_sonoclip_tiny(path, expected_sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="not found; pass an existing file"):
        B.load_sonoclip_tiny(tmp_path / "missing.safetensors")


def test_committed_checkpoint_matches_recorded_sha256():
    if B.SONOCLIP_TINY_SHA256 is None:
        pytest.skip("sonoclip-tiny not trained yet")
    assert B.sha256_file(B.SONOCLIP_TINY_FILE) == B.SONOCLIP_TINY_SHA256
    bb = load_backbone("sonoclip-tiny", device="cpu")
    assert bb.pretrained == "sonosynth"
    assert B.SONOCLIP_TINY_FILE.stat().st_size <= 20 * 2**20


def test_committed_checkpoint_weights_unchanged_by_resave():
    """The committed file was re-saved in the checksummed format (checkpoints.save_state) without
    retraining: its tensors are bit-identical to the original checkpoint (file SHA-256 dde308e8...),
    whose tensor digest was a8b62e13... (computed from that file with safetensors.load_file)."""
    from course_lib import checkpoints

    tensors, meta = checkpoints.load_state(B.SONOCLIP_TINY_FILE, expected_sha256=B.SONOCLIP_TINY_SHA256)
    assert B.state_digest(tensors) == B.SONOCLIP_TINY_WEIGHTS_SHA256
    assert B.SONOCLIP_TINY_WEIGHTS_SHA256 == "a8b62e133b3484101719e884d6caa919bec41fe3855420a31bb2e5a7c6268db2"
    assert all(t.dtype == torch.float16 for t in tensors.values())
    assert meta["config"] == B.SONOCLIP_TINY_CFG and "dde308e8" in meta["resaved"]


def test_explicit_missing_checkpoint_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_backbone("sonoclip-tiny", pretrained=str(tmp_path / "nope.safetensors"), device="cpu", verbose=False)


def test_tampered_committed_checkpoint_raises(monkeypatch):
    if B.SONOCLIP_TINY_SHA256 is None:
        pytest.skip("sonoclip-tiny not trained yet")
    monkeypatch.setattr(B, "SONOCLIP_TINY_SHA256", "f" * 64)
    with pytest.raises(B.ChecksumError, match="sonoclip-tiny checkpoint .* has SHA-256"):
        load_backbone("sonoclip-tiny", device="cpu")


@pytest.mark.parametrize("name", ["ViT-B-16", "biomedclip", "metaclip-b16"])
def test_explicit_pretrained_offline_raises_fast(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(B.BackboneUnavailableError) as e:
        load_backbone(name)
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert name in msg and "HF_HUB_OFFLINE" in msg and "Fix:" in msg


def test_unreachable_hub_without_forced_offline_raises(monkeypatch, tmp_path):
    for v in ("HF_HUB_OFFLINE", "COURSE_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(B.BackboneUnavailableError, match="ViT-B-16.*hub is unreachable.*Fix: run once with internet"):
        load_backbone("ViT-B-16", pretrained="openai")


def test_biomedclip_random_init_is_explained():
    with pytest.raises(B.BackboneUnavailableError, match="pretrained=None cannot build it offline"):
        load_backbone("biomedclip", pretrained=None)


def test_auto_offline_picks_tiny_and_says_why(monkeypatch, capsys):
    monkeypatch.delenv("COURSE_SMOKE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COURSE_PROFILE", "full")
    name, why = B.auto_choice()
    assert name == "sonoclip-tiny" and "offline" in why
    monkeypatch.setenv("COURSE_PROFILE", "quick")
    bb = load_backbone("auto", device="cpu")
    assert bb.name == "sonoclip-tiny"
    assert "load_backbone('auto') -> sonoclip-tiny" in capsys.readouterr().out


def test_auto_in_smoke_mode_offline_is_random_vit_b16_at_224(monkeypatch, capsys, tmp_path):
    """COURSE_SMOKE=1 offline: 'auto' is the real ViT-B/16 architecture at 224 px with random weights (it was the
    64-px sonoclip-tiny, so notebooks 01-04 never ran ViT-B/16), and says so; the quick profile is unchanged."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COURSE_SMOKE", "1")
    monkeypatch.setenv("COURSE_PROFILE", "full")
    name, why = B.auto_choice()
    assert name == "ViT-B-16" and "RANDOM weights" in why and "224 px" in why
    bb = load_backbone("auto", device="cpu")
    out = capsys.readouterr().out
    assert "load_backbone('auto') -> ViT-B-16" in out and "RANDOM weights" in out
    assert bb.pretrained is None
    assert (bb.image_size, bb.patch_size, bb.grid, bb.width, bb.depth, bb.embed_dim) == (224, 16, (14, 14), 768, 12, 512)
    with torch.no_grad():
        assert bb.encode_image(torch.rand(1, 3, 224, 224)).shape == (1, 512)
    # the default weights of a named open_clip model also fall back in smoke mode (notebook 03's CoOp fallback) ...
    assert load_backbone("ViT-B-16", device="cpu", verbose=False).pretrained is None
    # ... an explicit tag still raises offline, and outside smoke mode nothing changes
    with pytest.raises(B.BackboneUnavailableError):
        load_backbone("ViT-B-16", pretrained="openai", device="cpu")
    monkeypatch.setenv("COURSE_SMOKE", "0")
    assert B.auto_choice()[0] == "sonoclip-tiny"
    with pytest.raises(B.BackboneUnavailableError):
        load_backbone("ViT-B-16", device="cpu")
    monkeypatch.setenv("COURSE_SMOKE", "1")
    monkeypatch.setenv("COURSE_PROFILE", "quick")
    assert B.auto_choice()[0] == "sonoclip-tiny"


# --------------------------------------------------------------------------- maths
def test_clip_loss_matches_hand_computation():
    torch.manual_seed(0)
    u = F.normalize(torch.randn(4, 8), dim=-1)
    v = F.normalize(torch.randn(4, 8), dim=-1)
    s = 1 / 0.07
    logits = s * u @ v.T
    i2t = -torch.stack([logits[i, i] - torch.logsumexp(logits[i], 0) for i in range(4)]).mean()
    t2i = -torch.stack([logits[j, j] - torch.logsumexp(logits[:, j], 0) for j in range(4)]).mean()
    assert torch.allclose(clip_loss(u, v, s), (i2t + t2i) / 2, atol=1e-6)
    # symmetric in its two arguments
    assert torch.allclose(clip_loss(u, v, s), clip_loss(v, u, s), atol=1e-6)
    # perfectly aligned, orthogonal pairs and a sharp temperature -> loss ~ 0; uniform logits -> log N
    e = torch.eye(4)
    assert clip_loss(e, e, 100.0) < 1e-6
    assert math.isclose(float(clip_loss(e, e, 0.0)), math.log(4), rel_tol=1e-6)
    with pytest.raises(ValueError, match="matching pairs"):
        clip_loss(u, v[:3], s)


def test_recall_at_k():
    s = torch.eye(5)
    assert recall_at_k(s, 1) == 1.0
    s = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.0], [0.0, 0.0, 0.0]])
    # row 0: rank 0; row 1: rank 1 (0.8 > 0.5); row 2: three-way tie -> pessimistic rank 2
    assert recall_at_k(s, 1) == pytest.approx(1 / 3)
    assert recall_at_k(s, 2) == pytest.approx(2 / 3)
    assert recall_at_k(s, 3) == 1.0
    with pytest.raises(ValueError, match="square"):
        recall_at_k(torch.zeros(2, 3))


def micro_backbone():
    """A 1-block, width-32 CLIP with the tiny's geometry: fast enough for training tests."""
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    model = B.build_sonoclip_tiny(cfg=cfg, seed=0)
    return B.Backbone(model, "micro", B.tiny_tokenizer(16), pretrained=None)


def test_train_clip_learns_a_toy_pairing():
    bb = micro_backbone()
    rng = np.random.default_rng(0)
    imgs = np.zeros((16, 64, 64), np.float32)
    texts = []
    for i in range(16):
        k = i % 2
        imgs[i, :, :32] = 0.9 if k else 0.1
        imgs[i] += rng.random((64, 64), dtype=np.float32) * 0.05
        texts.append("a bright left half" if k else "a dark left half")
    corpus = {"images": imgs, "texts": texts}
    scale0 = bb.model.logit_scale.item()
    hist = train_clip(bb, corpus, steps=4, batch_size=8, lr=1e-3, seed=0, progress=False)
    assert len(hist["loss"]) == 4 and all(np.isfinite(hist["loss"]))
    assert bb.model.logit_scale.item() != scale0  # temperature is learnable
    hist = train_clip(bb, corpus, steps=2, batch_size=8, temperature=0.5, progress=False)
    assert hist["tau"] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="lower batch_size"):
        train_clip(bb, corpus, steps=1, batch_size=32, progress=False)


def test_fit_text_drops_sentences_not_the_impression():
    from course_lib.models.backbones import tiny_tokenizer
    from course_lib.models.pretrain import fit_text

    tok = tiny_tokenizer()
    short = "Thyroid ultrasound. Impression: normal study."
    assert fit_text(short, tok) == short
    long = ("Breast ultrasound, left side. The skin and subcutaneous fat are unremarkable. "
            + " ".join(f"Margins are circumscribed and the lesion number {i} is oval." for i in range(12))
            + " Impression: suspicious for malignancy.")
    out = fit_text(long, tok)
    assert len(tok.encode(out)) + 2 <= tok.context_length < len(tok.encode(long)) + 2
    assert out.startswith("Breast ultrasound, left side.") and out.endswith("Impression: suspicious for malignancy.")
    assert "subcutaneous" not in out  # sentences without a clinical concept go first


def test_timm_tower_is_refused_clearly_and_auto_never_picks_it(monkeypatch, tmp_path):
    """BiomedCLIP's vision tower is a timm ViT (open_clip TimmModel): the course interface cannot wrap it. It was
    first in auto's order online (a GPU learner with internet got an AttributeError in notebooks 02-04, 09)."""
    import json

    import open_clip

    cfg = {"embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "course-timm-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "course-timm-test.json")
    with B._quiet_open_clip():
        model = open_clip.create_model("course-timm-test", pretrained=None)
    with pytest.raises(TypeError, match="timm ViT.*not an open_clip VisionTransformer"):
        B.Backbone(model, "biomedclip", open_clip.get_tokenizer("ViT-B-16"), pretrained=None)
    assert "biomedclip" not in B.AUTO_ORDER
    monkeypatch.delenv("COURSE_SMOKE", raising=False)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "hub_reachable", lambda *a, **k: True)
    assert B.auto_choice(runtime.get_profile("full"))[0] == "ViT-B-16"

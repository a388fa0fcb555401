"""TAP-SLF: prompts (eqs. 1-2), detection bypass, selective LoRA (eqs. 3-5) on an open_clip ViT and on a tiny
random-weight Florence-2 DaViT, exact trainable-parameter counts, schedule, metrics and clear errors."""
import copy

import pytest
import torch
from torch import nn

from course_lib import train as T
from course_lib.methods.tapslf import encoders as E
from course_lib.methods.tapslf import tapslf as ts


@pytest.fixture
def vit(tiny_vit):
    return tiny_vit(layers=4, width=32, heads=4, image_size=32, patch_size=8)


@pytest.fixture
def davit():
    from transformers import Florence2VisionBackbone

    torch.manual_seed(0)
    return Florence2VisionBackbone(E.tiny_florence2_config()).eval()


def _hook_tokens(visual, x, block):
    out = {}
    h = visual.transformer.resblocks[block].register_forward_hook(lambda m, i, o: out.setdefault("t", o))
    with torch.no_grad():
        visual(x)
    h.remove()
    return out["t"]


# ----------------------------------------------------------------------------------- encoders
def test_vit_encoder_without_prompts_is_the_frozen_vit(vit):
    x = torch.randn(2, 3, 32, 32)
    enc = E.ViTEncoder(vit)
    with torch.no_grad():
        maps, pooled = enc(x)
    ref = _hook_tokens(vit, x, 3)[:, 1:]
    assert torch.allclose(maps[-1].flatten(2).transpose(1, 2), ref, atol=1e-6)
    assert torch.allclose(pooled, vit.ln_post(ref.mean(1)), atol=1e-6)
    assert enc.feature_blocks == [1, 3] and enc.map_scales == [2, 1]


def test_vit_prompts_enter_after_positional_embedding(vit):
    """Prompts are inserted after E_pos is added: with an all-zero positional embedding *and* prompts, the
    patch tokens at block 0's input are exactly conv(x) (+ ln_pre), whatever the prompts are."""
    enc = E.ViTEncoder(vit)
    captured = {}
    h = vit.transformer.resblocks[0].register_forward_pre_hook(lambda m, a: captured.setdefault("z0", a[0]))
    x = torch.randn(2, 3, 32, 32)
    p = torch.randn(2, 10, 32)
    with torch.no_grad():
        enc(x, p)
    h.remove()
    z0 = captured["z0"]
    assert z0.shape == (2, 1 + 10 + 16, 32)
    assert torch.equal(z0[:, 1:11], p)  # eq. 2: [x_cls; P_t; E(x) + E_pos]
    with torch.no_grad():
        e = vit.conv1(x).flatten(2).transpose(1, 2) + vit.positional_embedding[1:]
        assert torch.allclose(z0[:, 11:], vit.ln_pre(e), atol=1e-5)


def test_davit_encoder_without_prompts_matches_transformers(davit):
    x = torch.randn(2, 3, 64, 64)
    enc = E.DaViTEncoder(davit, image_size=64)
    with torch.no_grad():
        maps, pooled = enc(x)
        ref = davit(x).last_hidden_state
    assert torch.allclose(maps[-1], ref, atol=1e-5)
    assert torch.allclose(pooled, ref.mean((2, 3)), atol=1e-5)
    assert enc.depth == 5 and enc.width == 64 and [m.shape[1] for m in maps] == [32, 48, 64]


def test_davit_prompts_change_only_the_prompted_stage(davit):
    enc = E.DaViTEncoder(davit, prompt_stage=-1, image_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        m0, _ = enc(x)
        m1, _ = enc(x, torch.randn(2, 10, 64))
    assert torch.equal(m0[0], m1[0]) and torch.equal(m0[1], m1[1])  # stages 1, 2 untouched
    assert not torch.allclose(m0[2], m1[2])  # the last stage attends to the prompts


# ----------------------------------------------------------------------------------- frozen ratio / LoRA
@pytest.mark.parametrize("depth,ratio,blocks", [
    (4, 0.5, [2, 3]), (4, 0.6, [2, 3]), (4, 0.7, [3]), (4, 0.8, [3]), (4, 0.0, [0, 1, 2, 3]),
    (12, 0.7, [8, 9, 10, 11]), (12, 0.5, [6, 7, 8, 9, 10, 11]), (5, 0.7, [4]), (12, 0.8, [10, 11])])
def test_lora_blocks(depth, ratio, blocks):
    assert ts.lora_blocks(depth, ratio) == blocks


def test_vit_tap_slf_trains_exactly_prompts_top_lora_and_heads(vit):
    n_vit = T.count_parameters(vit)
    model = ts.build_tapslf(vit, "tap_slf")
    train_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith(("prompts.", "heads.")) or ".lora_" in n for n in train_names)
    lora_names = [n for n in train_names if ".lora_" in n]
    assert lora_names and all(".resblocks.3.attn" in n for n in lora_names)  # top 30 % of 4 blocks = block 3
    d, r = 32, 8
    lora = r * (d + 3 * d) + r * (d + d)  # fused qkv (A: r x d, B: 3d x r) + out_proj (A: r x d, B: d x r)
    prompts = 3 * 10 * d  # seg, cls, reg; detection bypasses
    heads = T.count_parameters(model.heads, True)
    pb = ts.parameter_breakdown(model)
    assert (pb["lora"], pb["prompts"]) == (lora, prompts)
    assert pb["trainable"] == T.count_parameters(model, True) == lora + prompts + heads
    assert pb["total"] == n_vit + lora + prompts + heads


def test_vit_lora_is_identity_at_init_and_scaled_alpha_over_r(vit):
    x = torch.randn(2, 3, 32, 32)
    ref = copy.deepcopy(vit)
    model = ts.build_tapslf(vit, ts.TapSlfConfig(prompt_mode=None, frozen_ratio=0.0))
    with torch.no_grad():
        a, _ = model.encoder(x)
        b, _ = E.ViTEncoder(ref)(x)
    assert torch.allclose(a[-1], b[-1], atol=1e-6)
    attn = model.encoder.visual.transformer.resblocks[0].attn
    assert attn.scaling["default"] == pytest.approx(16 / 8)  # eq. 4: alpha / r


def test_davit_tap_slf_attaches_top_layer_lora_and_prompts(davit):
    model = ts.build_tapslf(davit, "tap_slf", image_size=64)
    lora_names = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n]
    # 5 blocks, 70 % frozen -> block 4 = stage 3, block 0: window + channel attention, qkv + proj, A + B
    assert len(lora_names) == 8 and all(".blocks.3.0." in n for n in lora_names)
    train_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith(("prompts.", "heads.")) or ".lora_" in n for n in train_names)
    d, r = 64, 8
    assert ts.parameter_breakdown(model)["lora"] == 2 * (r * (d + 3 * d) + r * (d + d))
    assert ts.parameter_breakdown(model)["prompts"] == 3 * 10 * d
    x = torch.randn(2, 3, 64, 64)
    seg = model(x, "seg")
    seg.mean().backward()
    assert model.prompts.prompts["seg"].grad is not None and model.prompts.prompts["seg"].grad.abs().sum() > 0
    assert model(x, "det").shape == (2, 4) and model(x, "cls").shape == (2, 2) and model(x, "reg").shape == (2,)


@pytest.mark.parametrize("ratio,blocks", [(0.5, {3, 4}), (0.3, {2, 3, 4}), (0.8, {4}), (0.0, {0, 1, 2, 3, 4})])
def test_davit_frozen_ratio_selects_blocks(davit, ratio, blocks):
    model = ts.build_tapslf(davit, ts.TapSlfConfig(frozen_ratio=ratio), image_size=64)
    index = model.encoder._index
    got = {i for i, (s, j) in enumerate(index) for n, _ in model.named_parameters()
           if f".blocks.{s}.{j}." in n and ".lora_" in n}
    assert got == blocks


def test_florence2_base_trainable_count_from_config():
    from transformers import Florence2VisionBackbone

    with torch.device("meta"):
        vis = Florence2VisionBackbone(E.florence2_base_config())
        model = ts.build_tapslf(vis, "tap_slf", image_size=256)
    pb = ts.parameter_breakdown(model)
    # LoRA on blocks 8..11 = stage 2 blocks 6, 7, 8 (d = 512) and stage 3 block 0 (d = 1024): 96 d each
    assert pb["lora"] == 96 * (3 * 512 + 1024)
    assert pb["prompts"] == 3 * 10 * 1024


# ----------------------------------------------------------------------------------- prompts and detection bypass
def test_detection_bypasses_prompts_and_shared_prompts_do_not(vit):
    x = torch.randn(2, 3, 32, 32)
    model = ts.build_tapslf(vit, ts.TapSlfConfig(lora=False))
    assert set(model.prompts.prompts) == {"seg", "cls", "reg"}
    with torch.no_grad():
        det0, seg0 = model(x, "det"), model(x, "seg")
        for p in model.prompts.prompts.values():
            p.add_(1.0)
        det1, seg1 = model(x, "det"), model(x, "seg")
    assert torch.equal(det0, det1) and not torch.allclose(seg0, seg1)
    vpt = ts.build_tapslf(copy.deepcopy(vit), "vpt_shared")
    assert set(vpt.prompts.prompts) == {"shared"} and vpt.prompts.get("det", 2).shape == (2, 10, 32)
    with_det = ts.build_tapslf(copy.deepcopy(vit), "tap_slf_det_prompts")
    assert set(with_det.prompts.prompts) == {"seg", "cls", "det", "reg"}


def test_det_head_soft_argmax_box_is_valid(vit):
    model = ts.build_tapslf(vit, "heads_only")
    box = model(torch.randn(3, 3, 32, 32), "det")
    assert box.shape == (3, 4) and (box[:, 2] >= box[:, 0]).all() and (box[:, 3] >= box[:, 1]).all()
    assert box.min() >= 0 and box.max() <= 1


# ----------------------------------------------------------------------------------- schedule, losses, metrics
def test_round_robin_schedule_single_task_batches_without_replacement():
    data = {t: {"x": torch.arange(6).float()[:, None], "y": torch.arange(6)} for t in ts.TASKS}
    draw = ts.round_robin(data, list(ts.TASKS), batch_size=3, seed=0)
    batches = [draw(k) for k in range(8)]
    assert [b["task"] for b in batches] == list(ts.TASKS) * 2
    seg = torch.cat([batches[0]["y"], batches[4]["y"]])
    assert sorted(seg.tolist()) == list(range(6))  # one pass over the task's data before any repeat


def test_task_losses_are_zero_at_perfect_prediction():
    box = torch.tensor([[0.1, 0.2, 0.5, 0.6]])
    assert ts.task_loss("det", box, box).item() == pytest.approx(0.0, abs=1e-6)
    assert ts.task_loss("reg", torch.tensor([3.0]), torch.tensor([3.0])).item() == 0.0
    ce = ts.task_loss("cls", torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
    assert ce.item() == pytest.approx(float(torch.log(torch.tensor(2.0))))


def test_train_and_evaluate_seven_metrics(vit):
    torch.manual_seed(0)
    n = 8
    x = torch.randn(n, 3, 32, 32)
    mask = torch.zeros(n, 1, 32, 32)
    mask[:, :, 8:20, 8:20] = 1
    data = {"seg": {"x": x, "y": mask}, "cls": {"x": x, "y": torch.arange(n) % 2},
            "det": {"x": x, "y": torch.tensor([[0.25, 0.25, 0.6, 0.6]]).repeat(n, 1)},
            "reg": {"x": x, "y": torch.linspace(5, 20, n)}}
    model = ts.build_tapslf(vit, "tap_slf")
    hist = ts.train(model, data, steps=4, lr=1e-3, batch_size=4)
    assert [next(iter(l)) for l in hist["logs"]] == ["loss_seg", "loss_cls", "loss_det", "loss_reg"]
    assert float(model.heads["reg"].mu) == pytest.approx(12.5)
    res = ts.evaluate(model, data)
    assert set(res) == {"dsc", "hd95", "auc", "f1", "mcc", "miou", "mre"}
    assert 0 <= res["dsc"] <= 1 and 0 <= res["miou"] <= 1 and res["mre"] >= 0
    warm = ts.warm_start_heads(ts.build_tapslf(copy.deepcopy(vit), "heads_only"), data, steps=4, lr=1e-3,
                               batch_size=4)
    model.heads.load_state_dict(warm)  # warm heads fit every variant's heads


# ----------------------------------------------------------------------------------- bad input
def test_unknown_task_and_mixed_batch_raise(vit):
    model = ts.build_tapslf(vit, "tap_slf")
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        model(x, "depth")
    with pytest.raises(ValueError, match="mixes tasks"):
        model(x, ["seg", "cls"])
    assert model(x, ["cls", "cls"]).shape == (2, 2)
    with pytest.raises(ValueError, match="mixes tasks"):
        ts.batch_task({"task": ["seg", "det"]})
    with pytest.raises(ValueError, match="unknown task"):
        ts.task_loss("depth", x, x)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_frozen_ratio_outside_range_raises(ratio):
    with pytest.raises(ValueError, match=r"frozen_ratio must be in \[0, 1\)"):
        ts.TapSlfConfig(frozen_ratio=ratio)
    with pytest.raises(ValueError, match=r"frozen_ratio must be in \[0, 1\)"):
        ts.lora_blocks(4, ratio)


def test_frozen_ratio_that_freezes_every_block_raises():
    with pytest.raises(ValueError, match="no block gets LoRA"):
        ts.lora_blocks(4, 0.9)


@pytest.mark.parametrize("length", [0, -3, 2.5])
def test_prompt_length_must_be_positive(length):
    with pytest.raises(ValueError, match="prompt_length must be a positive integer"):
        ts.TapSlfConfig(prompt_length=length)
    with pytest.raises(ValueError, match="prompt length must be a positive integer"):
        ts.TaskPrompts(ts.TASKS, length, 8)


def test_backbone_without_blocks_raises():
    with pytest.raises(ValueError, match="cannot find encoder blocks"):
        ts.build_tapslf(nn.Linear(4, 4), "tap_slf")
    with pytest.raises(ValueError, match="no '.transformer.resblocks'"):
        E.ViTEncoder(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no '.convs'/'.blocks' stages"):
        E.DaViTEncoder(nn.Linear(4, 4))


def test_unknown_variant_and_prompt_mode_raise(vit):
    with pytest.raises(ValueError, match="unknown TAP-SLF variant"):
        ts.build_tapslf(vit, "tap")
    with pytest.raises(ValueError, match="prompt_mode"):
        ts.TapSlfConfig(prompt_mode="deep")


def test_florence2_pretrained_offline_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="could not load Florence-2 weights from 'florence-community/Florence-2-base'"):
        E.load_florence2_vision(pretrained=True)

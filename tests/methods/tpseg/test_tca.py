"""Task-conditioned adapter (eqs. 1-3): attachment before every block (open_clip ViT and a tiny random-weight
SAM 2 Hiera built offline), monotone split gate, temperature schedule, identity at init, exact trainable counts."""
from __future__ import annotations

import math

import pytest
import torch

from course_lib import train
from course_lib.methods.tpseg import SplitGate, TPSegConfig, TaskConditionedEncoder, build_tpseg, gate_temperature
from course_lib.methods.tpseg.tca import LoRALinear, attach_report


def tiny_sam2_vision():
    """A random-weight SAM 2 vision encoder (Hiera, 4 stages, 5 blocks) from a config, offline."""
    from transformers import Sam2HieraDetConfig, Sam2VisionConfig, Sam2VisionModel

    torch.manual_seed(0)
    bc = Sam2HieraDetConfig(hidden_size=16, embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 2, 2],
                            blocks_per_stage=[1, 1, 2, 1], global_attention_blocks=[3], window_size_per_stage=[4, 4, 4, 4],
                            window_positional_embedding_background_size=[4, 4], image_size=[64, 64])
    vc = Sam2VisionConfig(backbone_config=bc, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=32)
    return Sam2VisionModel(vc).eval()


def router_params(d: int, h: int) -> int:
    """GN(d) affine + Conv3x3(d->h) + Conv1x1(h->d), eqs. 1-2."""
    return 2 * d + (9 * d * h + h) + (h * d + d)


def test_tca_before_every_hiera_block_and_dims():
    vis = tiny_sam2_vision()
    n_blocks = len(vis.backbone.blocks)
    m = build_tpseg("sam2-test", ["a", "b", "c"], TPSegConfig(hidden=4, width=16), encoder=vis)
    rep = attach_report(m.encoder)
    assert len(rep) == n_blocks == 5
    assert all(n_hooks == 1 for _, _, n_hooks in rep)
    # block input channels: stage dims shifted by one block (the first block of a stage sees the previous dim)
    assert m.encoder.dims == [16, 16, 32, 64, 64]
    assert [a.shared.norm.num_channels for a in m.encoder.adapters] == m.encoder.dims
    x = torch.rand(2, 1, 64, 64)
    feats = m.encoder(x, 1)
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
    assert m(x, 2).shape == (2, 1, 64, 64)


def test_exact_trainable_parameters_hiera():
    vis = tiny_sam2_vision()
    frozen = train.count_parameters(vis)
    T, h = 3, 4
    m = build_tpseg("sam2-test", ["a", "b", "c"], TPSegConfig(hidden=h, width=16), encoder=vis)
    tca = sum(router_params(d, h) * (1 + T) for d in m.encoder.dims) + T * len(m.encoder.dims)
    assert train.count_parameters(m.encoder, True) == tca
    assert train.count_parameters(m.encoder.encoder, True) == 0
    assert train.count_parameters(m.encoder.encoder, False) == frozen
    assert train.count_parameters(m, True) == tca + train.count_parameters(m.decoder, True)
    # the prototype MLP only initialises prototypes (eq. 5): frozen
    for mod in m.decoder.pgtd_modules().values():
        assert train.count_parameters(mod.proto_mlp, True) == 0


def test_growth_per_task_is_one_router_per_block_and_a_gate_row(tiny_vit):
    h = 4
    counts = []
    for T in (1, 2, 5):
        m = build_tpseg("vit", [f"t{i}" for i in range(T)], TPSegConfig(hidden=h, width=16), encoder=tiny_vit(layers=3))
        counts.append(train.count_parameters(m, True))
    B, d = 3, 32
    per_task = B * router_params(d, h) + B
    assert counts[1] - counts[0] == per_task
    assert counts[2] - counts[1] == 3 * per_task


@pytest.mark.parametrize("adapter", ["shared", "task", "none", "adapter", "lora"])
def test_variant_trainable_counts(tiny_vit, adapter):
    T, h, B, d = 2, 4, 2, 32
    m = build_tpseg("vit", ["a", "b"], TPSegConfig(adapter=adapter, hidden=h, width=16, lora_rank=2), encoder=tiny_vit(layers=B))
    expect = {"shared": B * router_params(d, h), "task": T * B * router_params(d, h), "none": 0,
              "adapter": B * ((d * h + h) + (h * d + d)),
              "lora": B * 2 * (2 * (d + 2 * d))}[adapter]  # MLP (ratio 2): c_fc d->2d, c_proj 2d->d, rank 2
    assert train.count_parameters(m.encoder, True) == expect
    if adapter == "lora":
        assert sum(isinstance(x, LoRALinear) for x in m.encoder.modules()) == 2 * B


def test_identity_at_initialisation(tiny_vit):
    vit = tiny_vit(layers=2)
    ref = TaskConditionedEncoder(vit, "vit", 2, adapter="none")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        base = ref(x, 0)
    import copy

    ad = TaskConditionedEncoder(copy.deepcopy(vit), "vit", 2, adapter="dual", hidden=4)
    with torch.no_grad():
        out = ad(x, 1)
    for a, b in zip(base, out):
        torch.testing.assert_close(a, b)


def test_adapter_changes_features_only_for_its_task(tiny_vit):
    enc = TaskConditionedEncoder(tiny_vit(layers=2), "vit", 2, adapter="task", hidden=4)
    with torch.no_grad():
        for r in enc.adapters:
            r.task[1].up.weight.normal_()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        f0, f1 = enc(x, 0), enc(x, 1)
        ref = TaskConditionedEncoder(tiny_vit(layers=2), "vit", 2, adapter="none")(x, 0)
    torch.testing.assert_close(f0[-1], ref[-1])
    assert not torch.allclose(f1[-1], ref[-1])


def test_gate_monotone_and_sharpens():
    torch.manual_seed(0)
    g = SplitGate(4, 12)
    with torch.no_grad():
        g.logits.normal_(0, 2)
    for t in range(4):
        for tem in (1.0, 0.6, 0.3):
            w = g(t, tem)
            assert torch.all(w[1:] >= w[:-1])
            assert torch.all((w >= 0) & (w <= 1))
    # at initialisation the split is in the middle and a lower temperature makes the step sharper
    g0 = SplitGate(1, 4)
    w_hi, w_lo = g0(0, 1.0), g0(0, 0.3)
    assert g0.split_depth(0) == 3
    torch.testing.assert_close(w_hi, torch.sigmoid(torch.tensor([-1.5, -0.5, 0.5, 1.5])))
    assert w_lo[0] < w_hi[0] and w_lo[-1] > w_hi[-1]


def test_temperature_schedule():
    assert gate_temperature(0.0) == 1.0
    assert math.isclose(gate_temperature(1.0), 0.3)
    assert math.isclose(gate_temperature(0.5), 0.65)
    assert math.isclose(gate_temperature(2.0), 0.3)  # clamped


def test_gate_receives_gradients(tiny_vit):
    m = build_tpseg("vit", ["a", "b"], TPSegConfig(hidden=4, width=16), encoder=tiny_vit(layers=2))
    with torch.no_grad():
        for a in m.encoder.adapters:
            for r in [a.shared, *a.task]:
                r.up.weight.normal_(0, 0.1)
    m(torch.rand(2, 1, 32, 32), 1).sum().backward()
    assert m.encoder.gate.logits.grad[1].abs().sum() > 0
    assert m.encoder.gate.logits.grad[0].abs().sum() == 0


def test_bad_arguments(tiny_vit):
    with pytest.raises(ValueError, match="adapter"):
        TaskConditionedEncoder(tiny_vit(), "vit", 2, adapter="prefix")
    with pytest.raises(ValueError, match="kind"):
        TaskConditionedEncoder(tiny_vit(), "swin", 2)
    with pytest.raises(ValueError, match="n_tasks"):
        TaskConditionedEncoder(tiny_vit(), "vit", 0)
    enc = TaskConditionedEncoder(tiny_vit(), "vit", 2)
    with pytest.raises(ValueError, match="images must be"):
        enc(torch.rand(2, 32, 32), 0)


def test_vit_b16_at_224_px_takes_other_input_sizes():
    """The full profile feeds 512-px images; a ViT-B/16 encoder is built for 224 px (positional embedding of
    14x14+1 tokens). The encoder resamples the images to its own size and TP-Seg returns logits at the input size
    (it failed with 'size of tensor a (1025) must match ... (197)' before)."""
    import open_clip

    torch.manual_seed(0)
    visual = open_clip.create_model("ViT-B-16", pretrained=None).visual.eval()
    assert visual.image_size in (224, (224, 224))
    m = build_tpseg("ViT-B-16", ["a", "b"], TPSegConfig(hidden=4, width=16), encoder=visual)
    with torch.no_grad():
        feats = m.encoder(torch.rand(1, 1, 512, 512), 0)
        assert [tuple(f.shape[-2:]) for f in feats] == [(28, 28), (14, 14), (7, 7), (3, 3)]
        assert m(torch.rand(1, 1, 512, 512), 1).shape == (1, 1, 512, 512)
        assert m(torch.rand(1, 3, 224, 224), 0).shape == (1, 1, 224, 224)  # its own size: unchanged path

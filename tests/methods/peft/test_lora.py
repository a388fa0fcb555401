"""LoRA through peft: identity at init, merge equivalence, exact trainable counts, targeting on
a tiny open_clip ViT and on a random-weight ViT-B/16."""
import copy

import pytest
import torch
from open_clip.transformer import VisionTransformer

from course_lib.methods.peft import lora


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(image_size=32, patch_size=8, width=32, layers=3, heads=4, mlp_ratio=2.0, output_dim=16).eval()


@pytest.fixture(scope="module")
def vit_b16():
    import open_clip

    return open_clip.create_model("ViT-B-16", pretrained=None).eval()


def _randomise_B(model, std=0.05):
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=std)


def test_identity_at_init_and_only_lora_trainable():
    v = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    ref = v(x)
    m = lora.apply_lora(copy.deepcopy(v), rank=4, targets=("attn", "mlp"))
    assert torch.allclose(m(x), ref, atol=1e-5)  # B = 0 at init
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # r*(D+3D) for fused qkv + r*(D+D) out_proj + r*(D+2D) c_fc + r*(2D+D) c_proj, D=32, r=4, 3 blocks
    per_block = 4 * (32 + 96) + 4 * (32 + 32) + 4 * (32 + 64) + 4 * (64 + 32)
    assert lora.parameter_report(m)["trainable"] == 3 * per_block == lora.expected_lora_params(v, 4, ("attn", "mlp"))
    assert lora.parameter_report(m)["by_kind"] == {"lora": 3 * per_block}


def test_lora_changes_output_and_merge_is_equivalent():
    v = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    m = lora.apply_lora(copy.deepcopy(v), rank=2, alpha=4, targets=("attn", "mlp"))
    _randomise_B(m)
    y = m(x)
    assert (y - v(x)).abs().max() > 1e-3
    n_before = sum(p.numel() for p in v.parameters())
    lora.merge_lora(m)
    assert not lora.lora_layers(m)
    assert isinstance(m.transformer.resblocks[0].attn, torch.nn.MultiheadAttention)
    assert sum(p.numel() for p in m.parameters()) == n_before
    assert torch.allclose(m(x), y, atol=1e-5)


def test_gradients_reach_lora_of_attention():
    m = lora.apply_lora(tiny_vit(), rank=2, targets=("attn",))
    _randomise_B(m)
    m(torch.randn(2, 3, 32, 32)).pow(2).mean().backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None]


def test_block_selection_top_blocks_only():
    v = tiny_vit()
    names = lora.resolve_targets(v, ("attn",), blocks=[-1])
    assert names == ["transformer.resblocks.2.attn"]
    m = lora.apply_lora(copy.deepcopy(v), rank=4, targets=("c_fc",), blocks=[0, -1])
    adapted = sorted(lora.lora_layers(m))
    assert adapted == ["transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.2.mlp.c_fc"]
    assert lora.parameter_report(m)["trainable"] == 2 * 4 * (32 + 64)


def test_same_targeting_on_random_vit_b16(vit_b16):
    m = copy.deepcopy(vit_b16)
    names = lora.resolve_targets(m, ("attn", "mlp"), blocks=[-2, -1])
    assert names == [
        "visual.transformer.resblocks.10.attn", "visual.transformer.resblocks.10.mlp.c_fc", "visual.transformer.resblocks.10.mlp.c_proj",
        "visual.transformer.resblocks.11.attn", "visual.transformer.resblocks.11.mlp.c_fc", "visual.transformer.resblocks.11.mlp.c_proj",
    ]
    lora.apply_lora(m, rank=8, targets=("attn", "mlp"), blocks=[-2, -1])
    d = 768
    per_block = 8 * (d + 3 * d) + 8 * (2 * d) + 8 * (d + 4 * d) * 2
    rep = lora.parameter_report(m)
    assert rep["trainable"] == 2 * per_block
    # the text tower (which also has transformer.resblocks) is untouched
    assert not any(k.startswith("transformer.") for k in lora.lora_layers(m))
    # B = 0: the adapted top blocks compute what the random-weight originals compute (tokens of width 768)
    x = torch.randn(1, 10, d)
    with torch.no_grad():
        for i in (10, 11):
            assert torch.allclose(m.visual.transformer.resblocks[i](x), vit_b16.visual.transformer.resblocks[i](x), atol=1e-5)


def test_clear_errors():
    v = tiny_vit()
    with pytest.raises(ValueError, match="out_proj"):
        lora.apply_lora(v, 4, targets=("out_proj",))
    with pytest.raises(ValueError, match="unknown LoRA target"):
        lora.apply_lora(v, 4, targets=("qkvo",))
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        lora.apply_lora(v, 0)
    with pytest.raises(ValueError, match="out of range"):
        lora.apply_lora(v, 4, blocks=[5])
    with pytest.raises(ValueError, match="targets is empty"):
        lora.apply_lora(v, 4, targets=())
    with pytest.raises(ValueError, match="no open_clip vision transformer"):
        lora.apply_lora(torch.nn.Linear(3, 3), 4)
    with pytest.raises(TypeError, match="nn.Module"):
        lora.apply_lora("model", 4)
    with pytest.raises(ValueError, match="no LoRA layers"):
        lora.merge_lora(tiny_vit())


def test_attention_update_is_exactly_eq3():
    """W_qkv = W0 + s B A and W_out = W0 + s B A (works around peft's doubled out_proj delta)."""
    v = tiny_vit()
    m = lora.apply_lora(copy.deepcopy(v), rank=2, alpha=6, targets=("attn",), blocks=[0])
    _randomise_B(m)
    layer = m.transformer.resblocks[0].attn
    s = 6 / 2
    ref = copy.deepcopy(v.transformer.resblocks[0].attn)
    op = layer.base_layer.out_proj
    with torch.no_grad():
        ref.in_proj_weight += s * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        ref.out_proj.weight += s * op.lora_B["default"].weight @ op.lora_A["default"].weight
    x = torch.randn(2, 5, 32)
    assert torch.allclose(layer(x, x, x, need_weights=False)[0], ref(x, x, x, need_weights=False)[0], atol=1e-5)
    assert lora.peft_out_proj_factor() in (1.0, 2.0)

"""ARENA: soft-threshold maths, lambda=0 equals LoRA of the same rank, large lambda recovers the
frozen model, effective ranks, merge, same targeting as LoRA (tiny ViT and random ViT-B/16)."""
import copy

import pytest
import torch
from open_clip.transformer import VisionTransformer

from course_lib.methods.peft import arena, lora


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_ratio=2.0, output_dim=16).eval()


def test_soft_threshold_maths():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.2, 1.0, 2.5])
    out = arena.soft_threshold(x, 1.0)
    assert torch.equal(out, torch.tensor([-2.0, 0.0, 0.0, 0.0, 0.0, 1.5]))
    assert torch.equal(arena.soft_threshold(x, 0.0), x)
    # it is the prox of t*|x|: argmin_z 0.5 (z - x)^2 + t|z|, checked on a grid
    z = torch.linspace(-4, 4, 80001)
    for xi in x.tolist():
        obj = 0.5 * (z - xi) ** 2 + 1.0 * z.abs()
        assert abs(z[obj.argmin()].item() - arena.soft_threshold(torch.tensor(xi), 1.0).item()) < 1e-3
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        arena.soft_threshold(x, -1)


def test_identity_at_init_and_counts():
    v = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    m = arena.apply_arena(copy.deepcopy(v), rank=8, targets=("attn", "mlp"))
    assert torch.allclose(m(x), v(x), atol=1e-6)
    D, r = 32, 8
    per_block = r * (D + 3 * D + 1) + r * (2 * D + 1) + r * (D + 2 * D + 1) * 2
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 2 * per_block
    assert arena.expected_arena_params(v, r, ("attn", "mlp")) == 2 * per_block
    # ARENA = LoRA count + r scalars per adapted matrix
    assert 2 * per_block == lora.expected_lora_params(v, r, ("attn", "mlp")) + 2 * 4 * r
    assert set(arena.effective_ranks(m).values()) == {8}
    assert len(arena.effective_ranks(m)) == 2 * 4  # qkv, out, c_fc, c_proj per block


def test_lambda_zero_is_lora_of_same_rank():
    """With v = 1 (lambda = 0 never shrinks it) B diag(v) A = B A: copy peft's A, B into ARENA."""
    v = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    lm = lora.apply_lora(copy.deepcopy(v), rank=4, alpha=8, targets=("attn", "mlp"))
    torch.manual_seed(3)
    for n, p in lm.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    am = arena.apply_arena(copy.deepcopy(v), rank=4, alpha=8, targets=("attn", "mlp"))
    P = dict(lm.named_parameters())
    for label, d in arena.arena_modules(am).items():
        blk, kind = label.split(".resblocks.")[1].split(".", 1)
        base = f"transformer.resblocks.{blk}."
        src = {"attn.qkv": "attn.lora_{}.default.weight", "attn.out": "attn.base_layer.out_proj.lora_{}.default.weight",
               "mlp.c_fc": "mlp.c_fc.lora_{}.default.weight", "mlp.c_proj": "mlp.c_proj.lora_{}.default.weight"}[kind]
        with torch.no_grad():
            d.arena_A.copy_(P[base + src.format("A")])
            d.arena_B.copy_(P[base + src.format("B")])
    assert torch.allclose(am(x), lm(x), atol=1e-5)
    assert arena.proximal_step(am, lam=0.0, lr=1.0) == 0  # lambda = 0: nothing shrinks
    assert torch.allclose(am(x), lm(x), atol=1e-5)


def test_large_lambda_zeroes_v_and_recovers_frozen_model():
    v = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    m = arena.apply_arena(copy.deepcopy(v), rank=4, targets=("attn", "mlp"))
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = (m(x) - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        arena.proximal_step(m, lam=0.1, lr=1e-2)
    assert (m(x) - v(x)).abs().max() > 1e-4  # it learnt something
    zeros = arena.proximal_step(m, lam=1e4, lr=1.0)
    assert zeros == 4 * 2 * 4
    assert set(arena.effective_ranks(m).values()) == {0}
    assert torch.equal(m(x), v(x)) or torch.allclose(m(x), v(x), atol=1e-6)
    assert arena.l1_penalty(m).item() == 0.0


def test_prox_zeroes_exactly_and_effective_rank():
    m = arena.apply_arena(tiny_vit(), rank=4, targets=("c_fc",), blocks=[0])
    (d,) = arena.arena_modules(m).values()
    with torch.no_grad():
        d.arena_v.copy_(torch.tensor([0.05, -0.3, 1.0, -0.09]))
    arena.proximal_step(m, lam=1.0, lr=0.1)
    assert torch.allclose(d.arena_v, torch.tensor([0.0, -0.2, 0.9, 0.0]))
    assert (d.arena_v == 0).sum() == 2
    assert arena.effective_ranks(m) == {"transformer.resblocks.0.mlp.c_fc": 2}
    assert arena.v_values(m)["transformer.resblocks.0.mlp.c_fc"][1] == pytest.approx(0.2)


def test_merge_equivalence():
    v = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    m = arena.apply_arena(copy.deepcopy(v), rank=4, targets=("attn", "mlp"))
    torch.manual_seed(0)
    for d in arena.arena_modules(m).values():
        torch.nn.init.normal_(d.arena_B, std=0.05)
    y = m(x)
    arena.merge_arena(m)
    assert not any("arena" in n for n, _ in m.named_parameters())
    assert torch.allclose(m(x), y, atol=1e-5)
    with pytest.raises(ValueError, match="no ARENA layers"):
        arena.merge_arena(m)


def test_same_targeting_as_lora_on_vit_b16():
    import open_clip

    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    arena.apply_arena(model, rank=2, targets=("attn",), blocks=[-1])
    assert sorted(arena.effective_ranks(model)) == ["visual.transformer.resblocks.11.attn.out", "visual.transformer.resblocks.11.attn.qkv"]
    d = 768
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (d + 3 * d + 1) + 2 * (2 * d + 1)


def test_clear_errors():
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        arena.apply_arena(tiny_vit(), rank=-1)
    with pytest.raises(ValueError, match="no ARENA layers"):
        arena.effective_ranks(tiny_vit())
    m = arena.apply_arena(tiny_vit(), rank=2)
    with pytest.raises(ValueError, match="lam and lr must be >= 0"):
        arena.proximal_step(m, lam=-1, lr=0.1)

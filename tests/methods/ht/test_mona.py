"""Mona adapter (course_lib.methods.ht.mona): identity at init, CLS handling, shapes, exact parameter counts,
bad inputs, attaching to a CLIP ViT."""
import pytest
import torch

from course_lib.train import count_parameters

from course_lib.methods.ht import recipe as at
from course_lib.methods.ht.mona import Mona, infer_grid, map_to_tokens, tokens_to_map


def mona_params(D, m, kernels=(3, 5, 7)):
    """Independent count: LN(2D) + γ,γx (2D) + W_down (Dm+m) + W_up (mD+D) + DW convs + 1x1 conv."""
    return 2 * D + 2 * D + (D * m + m) + (m * D + D) + sum(m * k * k + m for k in kernels) + (m * m + m)


def test_identity_at_init_and_shapes():
    torch.manual_seed(0)
    a = Mona(32, 8)
    z = torch.randn(2, 1 + 16, 32)
    assert torch.equal(a(z), z)  # W_up = 0, b_up = 0 -> exact identity
    torch.nn.init.normal_(a.up.weight)
    assert a(z).shape == z.shape and not torch.allclose(a(z), z)


def test_parameter_count():
    assert count_parameters(Mona(128, 16)) == mona_params(128, 16)


def test_cls_token_skips_spatial_ops():
    """Changing one patch token moves its neighbours (convolution) but never the CLS output,
    and the CLS output equals the token-wise path (spatial middle = identity)."""
    torch.manual_seed(0)
    a = Mona(16, 8, dropout=0.0, gamma_init=1.0)
    torch.nn.init.normal_(a.up.weight)
    z = torch.randn(1, 1 + 9, 16)
    z2 = z.clone()
    z2[0, 1 + 4] += 5.0  # centre patch of a 3x3 grid
    out, out2 = a(z), a(z2)
    assert torch.allclose(out[0, 0], out2[0, 0])  # CLS untouched by patch changes
    assert not torch.allclose(out[0, 2], out2[0, 2])  # a neighbour patch is affected
    f_in = a.down(a.norm(z) * a.gamma + z * a.gammax)
    expected_cls = z[0, 0] + a.up(a.act(f_in[0, 0]))
    assert torch.allclose(out[0, 0], expected_cls, atol=1e-6)


def test_token_map_roundtrip_is_row_major():
    t = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    m = tokens_to_map(t, (2, 3))
    assert m.shape == (2, 3, 2, 3) and m[0, :, 1, 0].tolist() == t[0, 3].tolist()
    assert torch.equal(map_to_tokens(m), t)


def test_bad_inputs_have_clear_errors():
    a = Mona(16, 4)
    with pytest.raises(ValueError, match="batch first"):
        a(torch.randn(2, 10, 8))
    with pytest.raises(ValueError, match="square grid"):
        a(torch.randn(2, 1 + 10, 16))
    with pytest.raises(ValueError, match="does not match"):
        infer_grid(10, (3, 3))
    with pytest.raises(ValueError, match="odd"):
        Mona(16, 4, kernels=(2, 4))
    with pytest.raises(ValueError, match="positive int"):
        Mona(16, 0)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        Mona(16, 4, num_prefix_tokens=-1)


def test_attach_mona_to_tiny_clip_identity_and_counts(tiny_clip):
    vis = tiny_clip.visual
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = vis(x)
    made = at.attach_adapters(vis, "mona", bottleneck=16, positions=("attn", "mlp"))
    n_blocks = len(vis.transformer.resblocks)
    assert len(made) == 2 * n_blocks
    assert count_parameters(vis, trainable=True) == 2 * n_blocks * mona_params(vis.transformer.width, 16)
    with torch.no_grad():
        assert torch.allclose(vis(x), ref, atol=1e-6)
    # the block's own module names are unchanged (LoRA targets still resolve)
    names = dict(vis.named_modules())
    assert "transformer.resblocks.0.attn" in names and "transformer.resblocks.0.adapters.mlp.down" in names
    with pytest.raises(ValueError, match="detach_adapters"):
        at.attach_adapters(vis, "mona", 16)
    at.detach_adapters(vis)
    assert at.adapters_of(vis) == [] and "forward" not in vis.transformer.resblocks[0].__dict__

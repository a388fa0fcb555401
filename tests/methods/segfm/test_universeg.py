"""UniverSeg network (course_lib.methods.segfm.universeg): CrossConv/CrossBlock maths (eqs. 1-2),
support-order invariance, shapes, exact parameter count and the input contract."""
import pytest
import torch

from course_lib.methods.segfm import universeg as us
from course_lib.train import count_parameters




def test_crossconv_applies_the_same_conv_to_each_pair():
    cc = us.CrossConv2d(3, 5, 4)
    u, v = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 5, 8, 8)
    out = cc(u, v)
    assert out.shape == (2, 4, 4, 8, 8)
    for i in range(4):
        ref = cc.conv(torch.cat([u, v[:, i]], 1))
        assert torch.allclose(out[:, i], ref, atol=1e-6)


def test_crossblock_implements_eq2():
    torch.manual_seed(0)
    blk = us.CrossBlock(3, 5, 6)
    u, v = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 5, 8, 8)
    u2, v2 = blk(u, v)
    z = blk.act(blk.cross(u, v))
    assert torch.allclose(u2, z.mean(1), atol=1e-6)
    assert torch.allclose(v2[:, 1], blk.act(blk.conv_v(z[:, 1])), atol=1e-6)
    assert u2.shape == (2, 6, 8, 8) and v2.shape == (2, 4, 6, 8, 8)


def test_query_output_invariant_to_support_order(icl_inputs):
    torch.manual_seed(0)
    blk = us.CrossBlock(1, 2, 4)
    q, s = icl_inputs(S=5)
    perm = torch.tensor([3, 0, 4, 2, 1])
    u_a, v_a = blk(q, s)
    u_b, v_b = blk(q, s[:, perm])
    assert torch.allclose(u_a, u_b, atol=1e-6)
    assert torch.allclose(v_a[:, perm], v_b, atol=1e-6)  # support outputs are permuted along
    net = us.UniverSeg((4, 4, 4)).eval()
    assert torch.allclose(net(q, s), net(q, s[:, perm]), atol=1e-5)


@pytest.mark.parametrize("S", [1, 8])
def test_shapes_for_s1_and_s8(S, icl_inputs):
    net = us.UniverSeg((4, 4, 4))
    q, s = icl_inputs(B=2, S=S)
    out = net(q, s)
    assert out.shape == (2, 1, 16, 16)
    assert torch.isfinite(out).all()


def test_architecture_levels_and_parameter_count():
    net = us.UniverSeg((16, 16, 16, 16))
    assert net.depth == 3 and len(net.enc) == 4 and len(net.dec) == 3
    # enc: CrossConv (1+2 -> 16) + Conv(16 -> 16); then 3 x (CrossConv(32 -> 16) + Conv)
    enc = (3 * 16 * 9 + 16) + (16 * 16 * 9 + 16) + 3 * ((32 * 16 * 9 + 16) + (16 * 16 * 9 + 16))
    dec = 3 * ((64 * 16 * 9 + 16) + (16 * 16 * 9 + 16))
    out = 16 + 1
    assert count_parameters(net) == enc + dec + out


@pytest.mark.parametrize(
    "q_shape, s_shape, match",
    [
        ((2, 1, 16, 16), (2, 0, 2, 16, 16), "empty"),
        ((2, 16, 16), (2, 3, 2, 16, 16), r"\(B, 1, H, W\)"),
        ((2, 1, 16, 16), (2, 2, 16, 16), r"\(B, S, 2, H, W\)"),
        ((2, 1, 16, 16), (2, 3, 3, 16, 16), "2 channels"),
        ((2, 1, 16, 16), (3, 3, 2, 16, 16), "batch"),
        ((2, 1, 16, 16), (2, 3, 2, 8, 8), "differs"),
        ((2, 1, 18, 18), (2, 3, 2, 18, 18), "divisible by 2\\*\\*depth"),
    ],
)
def test_bad_shapes_raise_clear_errors(q_shape, s_shape, match):
    net = us.UniverSeg((4, 4, 4))
    with pytest.raises(ValueError, match=match):
        net(torch.rand(q_shape), torch.rand(s_shape))


def test_bad_ranges_and_types(icl_inputs):
    net = us.UniverSeg((4, 4, 4))
    q, s = icl_inputs()
    with pytest.raises(ValueError, match=r"query must lie in \[0, 1\]"):
        net(q * 255, s)
    bad = s.clone()
    bad[:, :, 1] *= 2
    with pytest.raises(ValueError, match="support labels"):
        net(q, bad)
    bad = s.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        net(q, bad)
    with pytest.raises(TypeError, match="torch.Tensor"):
        net(q.numpy(), s)
    with pytest.raises(TypeError, match="float"):
        net((q * 255).to(torch.uint8), s)

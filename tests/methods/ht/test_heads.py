"""Multi-level aggregation and heads (course_lib.methods.ht.heads): documented blocks, shapes, exact parameter
counts."""
import pytest
import torch

from course_lib.train import count_parameters

from course_lib.methods.ht import recipe as at
from course_lib.methods.ht.heads import (ClassificationHead, MultiLevelAggregation, SegmentationHead,
                                      aggregation_blocks)


def test_aggregation_blocks_are_documented_depths():
    assert aggregation_blocks(12) == [2, 5, 8]  # blocks 3, 6, 9 (1-based) of ViT-B/16
    assert aggregation_blocks(4) == [0, 1, 2]  # same relative depths for sonoclip-tiny
    with pytest.raises(ValueError, match="positive number of transformer blocks"):
        aggregation_blocks(0)


def test_blocks_agree_with_backbone_blocks_at(tiny_clip):
    """Same relative depths as the backbone interface's Backbone.blocks_at, for every depth."""
    from types import SimpleNamespace

    from course_lib.models.backbones import Backbone

    for depth in range(1, 25):
        assert aggregation_blocks(depth) == sorted(set(Backbone.blocks_at(SimpleNamespace(depth=depth)))), depth
    vis = tiny_clip.visual
    m = at.AdaptedViT(vis, "seg", d_red=8)
    assert m.blocks == aggregation_blocks(len(vis.transformer.resblocks))


def test_aggregation_uses_exactly_the_chosen_blocks(tiny_vit):
    """AdaptedViT.features returns the raw outputs of resblocks[2], [5], [8] (CLS removed) for a 12-block ViT."""
    vis = tiny_vit(layers=12, width=16, heads=2, output_dim=8)
    model = at.AdaptedViT(vis, "seg", d_red=8)
    assert model.blocks == [2, 5, 8]
    seen = {}
    hooks = [vis.transformer.resblocks[i].register_forward_hook(lambda m, i_, o, i=i: seen.__setitem__(i, o))
             for i in range(12)]
    x = torch.randn(2, 3, 32, 32)
    feats = model.features(x)
    for h in hooks:
        h.remove()
    assert sorted(seen) == list(range(9))  # stops after block 9: deeper blocks never run
    for f, i in zip(feats, [2, 5, 8]):
        assert torch.equal(f, seen[i][:, 1:])


def test_aggregation_maths_and_counts():
    torch.manual_seed(0)
    agg = MultiLevelAggregation(width=12, blocks=[0, 1], d_red=6)
    assert count_parameters(agg) == 2 * ((12 * 6 + 6) + 2 * 6 + (6 * 6 + 6))
    t = [torch.randn(2, 16, 12), torch.randn(2, 16, 12)]
    expected = sum(r(n(p(x))) for x, p, n, r in zip(t, agg.proj, agg.norm, agg.refine))
    out = agg(t, (4, 4))
    assert out.shape == (2, 6, 4, 4)
    assert torch.allclose(out.flatten(2).transpose(1, 2), expected, atol=1e-6)
    assert torch.allclose(agg({0: t[0], 1: t[1]}), out)
    with pytest.raises(ValueError, match="missing"):
        agg({0: t[0]})
    with pytest.raises(ValueError, match="patch tokens"):
        agg([torch.randn(2, 16, 5), torch.randn(2, 16, 5)])


def test_heads_shapes_and_counts():
    seg = SegmentationHead(8, 2)
    y = seg(torch.randn(3, 8, 4, 4), (32, 32))
    assert y.shape == (3, 2, 32, 32) and count_parameters(seg) == 8 * 2 + 2
    cls = ClassificationHead(8, 2, hidden=5, dropout=0.1)
    assert cls(torch.randn(3, 8, 4, 4)).shape == (3, 2)
    assert count_parameters(cls) == (8 * 5 + 5) + (5 * 2 + 2)
    with pytest.raises(ValueError, match="n_classes"):
        ClassificationHead(8, 1)


def test_upsample_then_conv_equals_conv_then_upsample():
    """The documented reordering of the segmentation head is exact (both maps are linear)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    seg = SegmentationHead(8, 2)
    f = torch.randn(1, 8, 4, 4)
    a = seg(f, (16, 16))
    b = seg.conv(F.interpolate(f, size=(16, 16), mode="bilinear", align_corners=False))
    assert torch.allclose(a, b, atol=1e-5)


def test_bad_task_and_input(tiny_clip):
    vis = tiny_clip.visual
    with pytest.raises(ValueError, match="task"):
        at.AdaptedViT(vis, "det")
    m = at.AdaptedViT(vis, "cls", d_red=8, cls_hidden=8)
    with pytest.raises(ValueError, match="preprocess"):
        m(torch.randn(2, 64, 64))

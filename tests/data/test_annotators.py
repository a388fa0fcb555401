"""Simulated annotators (course_lib.data.sonosynth.annotators): determinism, shapes, the identity of a neutral
style, the styles' direction, the halo ring, one-at-a-time draws equal to the stack, clear errors."""
import numpy as np
import pytest

from course_lib.data.sonosynth.annotators import (STYLES, AnnotatorStyle, annotate_batch, annotator, annotators,
                                                  signed_distance)


def _disc(H=64, r=10, cy=32, cx=30):
    yy, xx = np.mgrid[:H, :H]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_shapes_and_determinism():
    m = np.stack([_disc(), _disc(r=6, cx=20)])
    a = annotators(m, 5, seed=3)
    assert a.shape == (2, 5, 64, 64) and a.dtype == bool
    assert np.array_equal(a, annotators(m.astype(np.float32), 5, seed=3))
    assert not np.array_equal(a, annotators(m, 5, seed=4))
    assert annotators(m[0], 4, seed=3).shape == (4, 64, 64)
    # annotators differ from each other (jitter, bias, halo)
    assert len({a[0, j].tobytes() for j in range(5)}) == 5


def test_neutral_style_returns_the_reference_and_halo_is_a_dilation_ring():
    m = _disc()
    neutral = AnnotatorStyle(bias_px=0.0, halo_prob=0.0, jitter_px=0.0)
    # the per-image bias perturbation has sd 0.25 px: |t| < 1 keeps the mask for this seed range
    for seed in range(5):
        assert np.array_equal(annotators(m, 1, seed, styles=[neutral])[0], m)
    halo = AnnotatorStyle(bias_px=0.0, halo_prob=1.0, jitter_px=0.0)
    h = annotators(m, 1, seed=0, styles=[halo], halo_px=3.0)[0]
    assert (h & m).sum() == m.sum()  # contains the object
    ring = h & ~m
    assert ring.any() and signed_distance(m)[ring].max() < 3.5  # only pixels within ~3 px outside


def test_styles_differ_in_the_intended_direction():
    m = np.stack([_disc(r=r, cx=20 + r) for r in (6, 8, 10, 12)])
    area = {}
    for name in ("tight", "average", "generous"):
        area[name] = annotators(m, 8, seed=1, styles=[name]).sum(axis=(2, 3)).mean()
    assert area["tight"] < m.sum(axis=(1, 2)).mean() < area["generous"]
    assert area["tight"] < area["average"] < area["generous"]
    # default: annotator j has style j % 3
    a = np.stack([annotators(m, 3, seed=s) for s in range(6)])  # (seeds, N, 3, H, W)
    per_annotator = a.sum((-2, -1)).mean((0, 1))
    assert per_annotator[0] < per_annotator[1] < per_annotator[2]


def test_one_at_a_time_equals_the_stack_and_batches():
    m = np.stack([_disc(), _disc(r=5), np.zeros((64, 64), bool)])
    stack = annotators(m, 4, seed=9)
    for i in range(3):
        for j in range(4):
            assert np.array_equal(annotator(m[i], j, 9, image_index=i), stack[i, j])
    assert not stack[2].any()  # empty reference: nobody draws anything
    b = {"mask": m}
    assert np.array_equal(annotate_batch(b, 4, seed=9), stack)


def test_tiny_object_is_never_erased():
    m = np.zeros((64, 64), bool)
    m[30:32, 30:32] = True
    tight = AnnotatorStyle(bias_px=-5.0, halo_prob=0.0, jitter_px=0.0)
    assert annotators(m, 3, seed=0, styles=[tight]).reshape(3, -1).any(1).all()


def test_image_size_scales_distances():
    small = annotators(_disc(H=64, r=12), 3, seed=0, styles=["generous"])
    m2 = np.kron(_disc(H=64, r=12), np.ones((2, 2), bool))
    big = annotators(m2, 3, seed=0, styles=["generous"])
    grow_small = small.sum((1, 2)) / _disc(H=64, r=12).sum()
    grow_big = big.sum((1, 2)) / m2.sum()
    assert np.allclose(grow_small, grow_big, atol=0.08)


@pytest.mark.parametrize("n", [0, -2, 1.5, True])
def test_bad_annotator_count(n):
    with pytest.raises(ValueError, match="number of annotators"):
        annotators(_disc(), n)


def test_bad_masks_and_styles():
    with pytest.raises(ValueError, match="binary"):
        annotators(np.full((8, 8), 0.5), 2)
    with pytest.raises(ValueError, match="binary"):
        annotators(np.full((8, 8), 2), 2)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(N, H, W\)"):
        annotators(np.zeros((1, 1, 8, 8)), 2)
    with pytest.raises(ValueError, match="unknown annotator style"):
        annotators(_disc(), 2, styles=["sloppy"])
    with pytest.raises(ValueError, match="styles is empty"):
        annotators(_disc(), 2, styles=[])
    with pytest.raises(ValueError, match="index j"):
        annotator(_disc(), -1)
    with pytest.raises(KeyError, match="mask"):
        annotate_batch({"image": 0}, 2)
    assert set(STYLES) == {"tight", "average", "generous"}

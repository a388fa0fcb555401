"""The shared sample schema helpers: splits, few-shot sampling, resizing, HF conversion, bad input."""
import numpy as np
import pytest

from course_lib.data import common


def _sample(i, size=8):
    img = np.full((size, size), i / 10, np.float32)
    mask = np.zeros((size, size), np.uint8)
    mask[2:5, 3:7] = 1
    return dict(
        image=img, mask=mask, label_map=mask.copy(), structures=("background", "lesion"),
        box=common.box_from_mask(mask), measurement=1.5, label=i % 2, class_names=("benign", "malignant"),
        attributes={"shape": "oval", "size_mm": 12.0}, report="an oval mass", anatomy="breast", center="A",
        pixel_spacing_mm=0.2, source="test", id=f"t{i}",
    )


def test_box_from_mask_and_empty():
    m = np.zeros((6, 6), np.uint8)
    assert np.isnan(common.box_from_mask(m)).all()
    m[1:3, 2:5] = 1
    assert common.box_from_mask(m).tolist() == [2, 1, 5, 3]


def test_split_is_seeded_disjoint_complete_and_stratified():
    labels = [0] * 60 + [1] * 40
    a = common.split_indices(100, (0.5, 0.5), seed=1, stratify=labels)
    b = common.split_indices(100, (0.5, 0.5), seed=1, stratify=labels)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(set(a[0]) & set(a[1])) == 0 and len(a[0]) + len(a[1]) == 100
    assert sum(labels[i] for i in a[0]) == 20  # half of each class
    with pytest.raises(ValueError, match="sum to 1"):
        common.split_indices(10, (0.5, 0.2))


def test_few_shot_exact_k_and_seeded():
    labels = np.array([0] * 20 + [1] * 10 + [2] * 5)
    idx = common.few_shot_indices(labels, 4, seed=3)
    assert np.bincount(labels[idx]).tolist() == [4, 4, 4]
    assert np.array_equal(idx, common.few_shot_indices(labels, 4, seed=3))
    assert not np.array_equal(idx, common.few_shot_indices(labels, 4, seed=4))
    with pytest.raises(ValueError, match="only 5 samples"):
        common.few_shot_indices(labels, 6)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_non_positive_counts_rejected(bad):
    with pytest.raises(ValueError, match="positive integer"):
        common.check_positive("n", bad)


def test_image_size_divisibility_message():
    assert common.check_image_size(64, 8) == 64
    with pytest.raises(ValueError, match="not divisible by 8.*use 64 or 72"):
        common.check_image_size(70, 8)


def test_resize_keeps_labels_integer():
    lab = np.zeros((10, 10), np.uint8)
    lab[:5] = 3
    out = common.resize_labels(lab, 20)
    assert out.shape == (20, 20) and set(np.unique(out)) == {0, 3}
    img = common.resize_image(np.random.rand(10, 12).astype(np.float32), (5, 6))
    assert img.shape == (5, 6) and img.dtype == np.float32


def test_hf_roundtrip_and_torch_format():
    samples = [_sample(i) for i in range(4)]
    ds = common.to_hf_dataset(samples)
    assert len(ds) == 4
    back = common.from_hf_row(ds[1])
    assert np.allclose(back["image"], samples[1]["image"])
    assert back["attributes"] == {"shape": "oval", "size_mm": 12.0}
    assert back["class_names"] == ("benign", "malignant")
    t = ds.with_format("torch")[0:2]
    assert tuple(t["image"].shape) == (2, 8, 8)
    with pytest.raises(ValueError, match="no samples"):
        common.to_hf_dataset([])

"""Segmentation tasks for in-context learning (course_lib.data.seg_tasks): grouping, held-out structure
types, validation, real tasks."""
import numpy as np
import pytest

from course_lib.data import seg_tasks


def test_sonosynth_tasks_group_by_anatomy_structure_center_and_hold_out():
    train, held = seg_tasks.sonosynth_split(12, image_size=32, anatomies=("abdomen",), centers=("A",), min_images=4)
    assert train and held
    assert all(t.structure not in seg_tasks.HELD_OUT_STRUCTURES for t in train)
    assert {t.structure for t in held} <= set(seg_tasks.HELD_OUT_STRUCTURES)
    for t in train + held:
        assert t.anatomy == "abdomen" and t.center == "A" and t.images.shape[1:] == (32, 32)
        assert t.labels.reshape(len(t), -1).sum(1).min() >= 12  # every image shows the structure
        assert set(np.unique(t.labels).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="equal shapes"):
        seg_tasks.Task("bad", np.zeros((2, 8, 8)), np.zeros((3, 8, 8)))


def test_real_tasks_load_as_binary_tasks(real_data_dir):
    real_data_dir("busi_gt")
    real_data_dir("hc18")
    b = seg_tasks.busi_task(image_size=32, limit=2)
    h = seg_tasks.hc18_task(image_size=32, limit=3)
    assert len(b) == 4 and len(h) == 3
    for t in (b, h):
        assert t.images.shape[1:] == (32, 32) and 0 < t.labels.mean() < 1

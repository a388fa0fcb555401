"""Experiment runners of notebook 09 (course_lib.experiments.ht): the seeded build/train/predict run and the BUSI
task tensors."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from course_lib.experiments import ht as xht
from course_lib.models import load_backbone
from course_lib.train import count_parameters

S = SimpleNamespace(bottleneck=4, d_red=8, cls_hidden=8, lora_rank=2, epochs=1, batch_size=4, lr=1e-2,
                    weight_decay=1e-2, betas=(0.9, 0.95), real_limit=4, real_split=(0.5, 0.5))


@pytest.fixture(scope="module")
def bb():
    return load_backbone("sonoclip-tiny", pretrained=None, verbose=False, device="cpu")


def test_run_is_seeded_and_returns_probabilities(bb):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(6, 3, bb.image_size, bb.image_size, generator=g)
    Y = (torch.rand(6, bb.image_size, bb.image_size, generator=g) > 0.7).long()
    runs = [xht.run(bb, S, "ht", "seg", X, Y, X[:3], seed=s, progress=False) for s in (1, 1, 2)]
    model, hist, prob = runs[0]
    assert prob.shape == (3, bb.image_size, bb.image_size) and ((prob >= 0) & (prob <= 1)).all()
    assert hist["steps"] == 2 and len(hist["loss"]) == 2  # 1 epoch of 6 images at batch 4
    assert count_parameters(model, trainable=True) == hist["parameters"]["trainable"]
    assert np.array_equal(runs[0][2], runs[1][2])  # same seed -> same numbers
    assert not np.array_equal(runs[0][2], runs[2][2])  # another seed -> another initialisation and order
    _, hist_cls, p_cls = xht.run(bb, S, "frozen", "cls", X, torch.tensor([0, 1, 0, 1, 1, 0]), X, steps=3, progress=False)
    assert p_cls.shape == (6,) and hist_cls["steps"] == 3


def test_busi_tasks_split_is_stratified_and_disjoint(bb, real_data_dir):
    real_data_dir("busi_gt")
    real_data_dir("busi_256")
    t = xht.busi_tasks(bb, S)
    for tr, te in (t.seg_split, t.cls_split):
        assert len(tr) == len(te) == 4 and not set(tr) & set(te)  # 4 per class, half/half
    n = bb.image_size
    assert tuple(t.seg_train_x.shape) == (4, 3, n, n) and tuple(t.seg_train_y.shape) == (4, n, n)
    assert t.seg_test_y.shape == t.seg_test_images.shape == (4, n, n)
    assert sorted(t.cls_test_y.tolist()) == [0, 0, 1, 1] and sorted(t.cls_train_y.tolist()) == [0, 0, 1, 1]
    assert t.seg_train_y.dtype == torch.long and set(np.unique(t.seg_test_y)) <= {0, 1}

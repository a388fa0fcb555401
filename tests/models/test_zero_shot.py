"""Zero-shot prompts: template/description sets, ensemble averaging maths, metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.models import zero_shot as zs


def test_prompt_sets_have_the_documented_sizes():
    single = zs.build_prompts("single")
    assert single == {"benign": ["an ultrasound image of a benign lesion."],
                      "malignant": ["an ultrasound image of a malignant lesion."]}
    ens = zs.build_prompts("ensemble")
    assert [len(v) for v in ens.values()] == [len(zs.TEMPLATES) + 3] * 2
    assert ens["malignant"][0] == zs.TEMPLATES[0].format("malignant") and ens["malignant"][-1] == zs.CLASS_PHRASES["malignant"][-1]
    desc = zs.build_prompts("descriptions")
    assert [len(v) for v in desc.values()] == [10, 10]  # ten clinical descriptions per class (HT paper)
    assert len(set(desc["benign"]) | set(desc["malignant"])) == 20


def test_bad_prompt_requests():
    with pytest.raises(ValueError, match="unknown prompt kind 'fancy'.*single"):
        zs.build_prompts("fancy")
    with pytest.raises(ValueError, match="no clinical descriptions for class 'normal'"):
        zs.build_prompts("descriptions", class_names=("benign", "normal"))
    with pytest.raises(ValueError, match="at least two classes"):
        zs._check_prompts({"benign": ["x"]})
    with pytest.raises(ValueError, match="non-empty list"):
        zs._check_prompts({"benign": [], "malignant": ["x"]})


def test_ensemble_averaging_maths():
    torch.manual_seed(0)
    v = F.normalize(torch.randn(5, 8), dim=-1)
    t = [F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)]
    emb = zs.ensemble_scores(v, t, mode="embedding")
    sim = zs.ensemble_scores(v, t, mode="similarity")
    for c in range(2):
        mean = t[c].mean(0)
        # embedding mode: cosine with the re-normalised mean prompt embedding (CLIP Sec. 3.1.4)
        assert torch.allclose(emb[:, c], v @ (mean / mean.norm()), atol=1e-6)
        # similarity mode: mean of the per-description cosines (HT paper) ...
        assert torch.allclose(sim[:, c], (v @ t[c].T).mean(1), atol=1e-6)
        # ... which equals the cosine with the mean scaled by its norm
        assert torch.allclose(sim[:, c], emb[:, c] * mean.norm(), atol=1e-6)


def test_single_prompt_ensemble_equals_plain_cosine():
    torch.manual_seed(1)
    v = F.normalize(torch.randn(4, 6), dim=-1)
    t = [F.normalize(torch.randn(1, 6), dim=-1) for _ in range(3)]
    for mode in ("embedding", "similarity"):
        assert torch.allclose(zs.ensemble_scores(v, t, mode=mode), v @ torch.cat(t).T, atol=1e-6)


def test_ensemble_scores_bad_input():
    v = torch.randn(2, 8)
    with pytest.raises(ValueError, match="mode must be"):
        zs.ensemble_scores(v, [torch.randn(1, 8)] * 2, mode="max")
    with pytest.raises(ValueError, match=r"must be \(M, 8\)"):
        zs.ensemble_scores(v, [torch.randn(1, 4)] * 2)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        zs.ensemble_scores(torch.randn(8), [torch.randn(1, 8)] * 2)


def test_evaluate_scores_binary():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    out = zs.evaluate_scores(scores, [0, 1, 1, 1])
    assert out["acc"] == 0.75
    assert out["auc"] == 1.0  # the positive scores (col1 - col0) rank every malignant above the benign one
    assert out["cm"].tolist() == [[1, 0], [1, 2]]
    assert np.allclose(out["probs"].sum(1), 1)


def test_zero_shot_scores_with_a_real_tokenizer():
    from course_lib.models import load_backbone

    bb = load_backbone("sonoclip-tiny", pretrained=None, device="cpu")
    imgs = torch.rand(3, 64, 64)
    s_desc = zs.zero_shot_scores(bb, imgs, prompts="descriptions")
    assert s_desc.shape == (3, 2)
    feats = zs.encode_images(bb, imgs)
    tf = zs.text_features(bb, zs.build_prompts("descriptions"))
    assert torch.allclose(s_desc, zs.ensemble_scores(feats, tf, mode="similarity"), atol=1e-5)


def test_encode_images_batches_of_three_grey_images_are_not_read_as_rgb():
    """(N, H, W) batches are grey images even when a chunk (or the whole batch) holds exactly 3."""
    from course_lib.models import load_backbone

    bb = load_backbone("sonoclip-tiny", pretrained=None, verbose=False)
    imgs = torch.rand(7, 64, 64)
    a = zs.encode_images(bb, imgs, batch_size=4)     # chunks of 4 and 3
    b = zs.encode_images(bb, imgs[:, None], batch_size=7)
    assert a.shape == (7, bb.embed_dim) and torch.allclose(a, b, atol=1e-5)

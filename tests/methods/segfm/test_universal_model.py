"""CLIP-driven universal model (course_lib.methods.segfm.universal_model): the dynamic head is three 1x1
convolutions with controller-written weights, embeddings are frozen, exact parameter count, controls."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.methods.segfm import partial_labels as pl
from course_lib.methods.segfm import universal_model as um
from course_lib.train import count_parameters


def test_dynamic_head_is_three_1x1_convs_with_the_controller_weights():
    torch.manual_seed(0)
    m = um.UniversalModel(um.random_embeddings(3, 5), features=(4, 8), head_channels=4, hidden=8).eval()
    x = torch.rand(2, 1, 16, 16)
    out = m(x)
    assert out.shape == (2, 3, 16, 16)
    feats = m.backbone(x)
    theta = m.head_parameters(feats)
    C, h = 4, 8
    for b in range(2):
        for k in range(3):
            p = theta[b, k]
            w1, p = p[:h * C].view(h, C, 1, 1), p[h * C:]
            b1, p = p[:h], p[h:]
            w2, p = p[:h * h].view(h, h, 1, 1), p[h * h:]
            b2, p = p[:h], p[h:]
            w3, b3 = p[:h].view(1, h, 1, 1), p[h:]
            y = F.conv2d(F.relu(F.conv2d(F.relu(F.conv2d(feats[b:b + 1], w1, b1)), w2, b2)), w3, b3)
            assert torch.allclose(out[b, k], y[0, 0], atol=1e-5)


def test_embeddings_are_frozen_and_parameter_count_is_exact():
    e = um.one_hot_embeddings(4)
    assert torch.equal(e, torch.eye(4))
    m = um.UniversalModel(e, features=(4, 8), head_channels=4, hidden=8, embed_dim=6, controller_width=10)
    assert "embeddings" in dict(m.named_buffers()) and all(p is not m.embeddings for p in m.parameters())
    P = (8 * 4 + 8) + (8 * 8 + 8) + (8 + 1)
    expected = count_parameters(m.backbone) + (4 * 6 + 6) + ((6 + 4) * 10 + 10) + (10 * P + P)
    assert count_parameters(m, trainable=True) == expected
    r = um.random_embeddings(4, 16, seed=1)
    assert torch.allclose(r.norm(dim=1), torch.ones(4)) and not torch.allclose(r, um.random_embeddings(4, 16, seed=2))
    with pytest.raises(ValueError, match="one row per structure"):
        um.UniversalModel(torch.zeros(5))


def test_trains_with_the_masked_loss_through_train_partial():
    H = 16
    samples = []
    for i in range(4):
        lm = np.zeros((H, H), np.uint8)
        lm[:4] = 1
        lm[8:12, :4] = 2
        samples.append(dict(image=np.full((H, H), i / 4, np.float32), label_map=lm, structures=("background", "liver", "kidney"), id=f"s{i}"))
    data = pl.assemble(samples, ("liver", "kidney"), {"A": ("kidney",), "C": ("liver",)})
    emb = um.random_embeddings(2, 8)
    net, losses = pl.train_partial(data, "masked", steps=2, batch_size=2, progress=False, device="cpu",
                                   model_fn=lambda: um.UniversalModel(emb, features=(4, 8), head_channels=4))
    assert isinstance(net, um.UniversalModel) and np.isfinite(losses).all() and len(losses) == 2
    assert pl.predict_partial(net, data.images, "masked").shape == (4, 2, H, H)
    with pytest.raises(ValueError, match="mode='masked'"):
        pl.train_partial(data, "naive", steps=1, model_fn=lambda: um.UniversalModel(emb))

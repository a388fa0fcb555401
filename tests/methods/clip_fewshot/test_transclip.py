"""TransCLIP-style transduction: valid distributions, beats inductive on a separable mixture."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.methods.clip_fewshot.checks import single_thread
from course_lib.methods.clip_fewshot.zero_shot_head import zero_shot_logits
from course_lib.methods.clip_fewshot.transclip import knn_affinity, transclip

D, K = 16, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids oversubscription on the shared 2-core CI box."""
    with single_thread():
        yield


def mixture(n_per_class=60, seed=0, noisy_text=1.2, counts=None):
    """Well-separated Gaussian clusters; text weights are *noisy* versions of the centres so the
    zero-shot (inductive) classifier makes mistakes that the cluster structure can fix."""
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(K, D, generator=g), dim=-1)
    counts = counts or [n_per_class] * K
    y = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    x = 4.0 * centers[y] + 0.5 * torch.randn(len(y), D, generator=g)
    text = F.normalize(centers + noisy_text * torch.randn(K, D, generator=g) / D**0.5, dim=-1)
    return x, y, text


def test_returns_valid_distribution():
    x, y, t = mixture()
    z, y_hat = transclip(x, t, logit_scale=20.0, return_init=True)
    for p in (z, y_hat):
        assert p.shape == (len(x), K)
        assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(len(x)), atol=1e-5)
    idx = torch.tensor([0, 1, 60, 61, 120, 121])
    zs = transclip(x, t, support=x[idx], support_labels=y[idx], logit_scale=20.0)
    assert zs.shape == (len(x), K) and torch.allclose(zs.sum(1), torch.ones(len(x)), atol=1e-5)


def test_beats_inductive_on_separable_mixture():
    wins = 0
    for seed in range(3):
        x, y, t = mixture(seed=seed)
        inductive = (zero_shot_logits(x, t, 20.0).argmax(1) == y).float().mean()
        trans = (transclip(x, t, logit_scale=20.0).argmax(1) == y).float().mean()
        assert trans >= inductive
        wins += int(trans > inductive)
        assert trans > 0.95
    assert wins >= 1


def test_large_lambda_stays_at_zero_shot():
    x, y, t = mixture()
    z, y_hat = transclip(x, t, logit_scale=20.0, lam=1e4, ll_weight=0.0, n_neighbors=1, return_init=True)
    assert torch.equal(z.argmax(1), y_hat.argmax(1))


def test_affinity_is_symmetric_nonnegative_knn():
    x, _, _ = mixture(n_per_class=5)
    W = knn_affinity(F.normalize(x, dim=-1), n_neighbors=2)
    assert torch.allclose(W, W.t()) and (W >= 0).all() and torch.all(W.diagonal() == 0)
    assert ((W > 0).sum(1) >= 1).all()


def test_errors():
    x, y, t = mixture(n_per_class=4)
    with pytest.raises(ValueError, match="both support and support_labels"):
        transclip(x, t, support=x[:3])
    with pytest.raises(ValueError, match="lam"):
        transclip(x, t, lam=-1.0)
    with pytest.raises(ValueError, match="same backbone"):
        transclip(torch.randn(5, D + 2), t)
    with pytest.raises(ValueError, match="2-D"):
        transclip(torch.randn(D), t)


def test_iteration_errors():
    x, y, t = mixture(n_per_class=4)
    with pytest.raises(ValueError, match="iters"):
        transclip(x, t, iters=0)

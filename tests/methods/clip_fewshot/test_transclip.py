"""TransCLIP transduction: valid distributions, beats inductive on a separable mixture, and (issue 12) on real
sonoclip-tiny features the text-KL weight changes predictions, support sets weigh as a whole, means on the sphere."""
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
    z, y_hat = transclip(x, t, logit_scale=20.0, lam=1e4, temperature=1e12, n_neighbors=1, return_init=True)
    assert torch.equal(z.argmax(1), y_hat.argmax(1))


# --------------------------------------------------------------------------- issue 12: real features
@pytest.fixture(scope="module")
def sonosynth_features():
    """Real sonoclip-tiny features of 192 SonoSynth breast + thyroid lesions (test split) and the
    ensemble text weights: the setting where the old z-update clustered by anatomy and ignored lambda."""
    from course_lib.data import sonosynth as ss
    from course_lib.methods.clip_fewshot.zero_shot_head import text_weights
    from course_lib.models import load_backbone
    from course_lib.models.zero_shot import encode_images

    bb = load_backbone("sonoclip-tiny", device="cpu", verbose=False)
    b = ss.generate_batch(192, start=ss.SPLIT_OFFSETS["test"], seed=0, image_size=bb.image_size,
                          anatomies=("breast", "thyroid"))
    x = encode_images(bb, b["image"])
    anatomy = torch.tensor([a == "breast" for a in b["anatomy"]]).long()
    return x, torch.as_tensor(b["label"]), anatomy, text_weights(bb, "ensemble"), float(bb.model.logit_scale.detach().exp())


def test_lambda_changes_predictions_on_real_features(sonosynth_features):
    """Old code: lambda = 0 and lambda = 1 gave identical predictions (the raw log-likelihood swamped
    the text term). With the likelihood temperature the text-KL weight matters."""
    x, _, _, t, scale = sonosynth_features
    p0 = transclip(x, t, logit_scale=scale, lam=0.0).argmax(1)
    p1 = transclip(x, t, logit_scale=scale, lam=1.0).argmax(1)
    assert (p0 != p1).float().mean() >= 0.05


def test_text_kl_pulls_clusters_toward_zero_shot_classes(sonosynth_features):
    """Without the text term the clusters follow the anatomy (breast vs thyroid); the text-KL term pulls
    them toward the zero-shot classes: agreement with zero-shot grows and agreement with anatomy falls."""
    x, _, anatomy, t, scale = sonosynth_features
    zs = zero_shot_logits(x, t, scale).argmax(1)

    def agree(a, b):
        m = (a == b).float().mean()
        return float(torch.maximum(m, 1 - m))  # cluster labels are only defined up to a swap

    p0 = transclip(x, t, logit_scale=scale, lam=0.0).argmax(1)
    p3 = transclip(x, t, logit_scale=scale, lam=3.0).argmax(1)
    assert agree(p0, anatomy) > 0.9
    assert float((p3 == zs).float().mean()) > float((p0 == zs).float().mean()) + 0.1
    assert agree(p3, anatomy) < agree(p0, anatomy) - 0.1


def test_swapping_the_text_weights_permutes_the_predictions(sonosynth_features):
    """Permutation equivariance: relabelling the classes (swapping their text weights) relabels every
    prediction and changes nothing else. Issue 12 saw the old code 'simply flip' under this swap; the flip
    itself is what any classifier must do — the defect was that lambda had no other effect (tested above)."""
    x, _, _, t, scale = sonosynth_features
    for lam in (0.0, 1.0):
        z = transclip(x, t, logit_scale=scale, lam=lam)
        z_sw = transclip(x, t.flip(0), logit_scale=scale, lam=lam)
        assert torch.allclose(z_sw, z.flip(1), atol=1e-5), lam


def test_support_set_is_weighted_as_a_whole(sonosynth_features):
    """Each set's likelihood term is normalised by its size: repeating the support set (same shots,
    five times) changes nothing. The old code counted each shot as one query sample: on these real
    features five copies of 4 shots per class moved a query probability by 0.99996 (one prediction flipped)."""
    xr, yr, _, tr, scale = sonosynth_features
    sup = torch.cat([torch.nonzero(yr == k)[:4, 0] for k in (0, 1)])
    z_once = transclip(xr, tr, support=xr[sup], support_labels=yr[sup], logit_scale=scale)
    z_five = transclip(xr, tr, support=xr[sup.repeat(5)], support_labels=yr[sup.repeat(5)], logit_scale=scale)
    assert torch.allclose(z_once, z_five, atol=1e-5)
    x, y, t = mixture(noisy_text=2.0)
    idx = torch.tensor([0, 1, 60, 61, 120, 121])
    a = transclip(x, t, support=x[idx], support_labels=y[idx], logit_scale=20.0, return_state=True)
    b = transclip(x, t, support=x[idx.repeat(5)], support_labels=y[idx.repeat(5)], logit_scale=20.0, return_state=True)
    for k in ("z", "mu", "var"):
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_class_means_are_renormalised_to_the_sphere():
    x, y, t = mixture()
    st = transclip(x, t, logit_scale=20.0, return_state=True)
    assert torch.allclose(st["mu"].norm(dim=-1), torch.ones(K), atol=1e-5)
    assert (st["var"] > 0).all() and st["var"].shape == (D,)


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
    with pytest.raises(ValueError, match="temperature"):
        transclip(x, t, temperature=0.0)
    with pytest.raises(ValueError, match="same backbone"):
        transclip(torch.randn(5, D + 2), t)
    with pytest.raises(ValueError, match="2-D"):
        transclip(torch.randn(D), t)


def test_iteration_errors():
    x, y, t = mixture(n_per_class=4)
    with pytest.raises(ValueError, match="iters"):
        transclip(x, t, iters=0)

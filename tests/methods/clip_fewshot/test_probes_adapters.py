"""Linear probe, LP++-style and CLAP-style probes, CLIP-Adapter, Tip-Adapter(-F), the few-shot
sampler and the feature trainer: trainable counts, identities with zero-shot, errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.data.common import few_shot_indices
from course_lib.methods.clip_fewshot.checks import check_support, single_thread
from course_lib.methods.clip_fewshot.clip_adapter import CLIPAdapter
from course_lib.methods.clip_fewshot.linear_probe import ClapProbe, LinearProbe, TextInitProbe
from course_lib.methods.clip_fewshot.tip_adapter import TipAdapter
from course_lib.methods.clip_fewshot.trainer import train_on_features
from course_lib.methods.clip_fewshot.zero_shot_head import zero_shot_logits
from course_lib.train import count_parameters


def count_trainable(m):
    return count_parameters(m, trainable=True)

D, K = 16, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids oversubscription on the shared 2-core CI box."""
    with single_thread():
        yield


def toy(n_per_class=8, seed=0, sep=3.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(K, D, generator=g)
    y = torch.arange(K).repeat_interleave(n_per_class)
    x = sep * centers[y] + torch.randn(len(y), D, generator=g)
    text = centers + 0.8 * torch.randn(K, D, generator=g)
    return F.normalize(x, dim=-1), y, F.normalize(text, dim=-1)


# --------------------------------------------------------------------------- sampler
def test_few_shot_sampler_exact_k_per_class_and_seeded():
    labels = np.array([0] * 30 + [1] * 7 + [2] * 12)
    for k in (1, 2, 4, 7):
        idx = few_shot_indices(labels, k, seed=3)
        assert np.bincount(labels[idx]).tolist() == [k, k, k]
        assert len(set(idx.tolist())) == 3 * k
        assert np.array_equal(idx, few_shot_indices(labels, k, seed=3))
    assert not np.array_equal(few_shot_indices(labels, 4, seed=0), few_shot_indices(labels, 4, seed=1))
    with pytest.raises(ValueError, match="only 7 samples"):
        few_shot_indices(labels, 8)


# --------------------------------------------------------------------------- linear probes
def test_linear_probe_counts_and_accuracy():
    x, y, _ = toy()
    lp = LinearProbe().fit(x, y)
    assert lp.C_ in lp.Cs
    assert lp.n_trainable == K * D + K
    assert (lp.predict(x) == y.numpy()).mean() == 1.0
    xb, yb = x[y < 2], y[y < 2]
    assert LinearProbe().fit(xb, yb).n_trainable == D + 1  # binary: one weight row + bias
    one = LinearProbe().fit(x[::8], y[::8])  # 1 shot per class: no CV possible
    assert one.C_ == one.default_C
    lpv = LinearProbe(Cs=(0.1, 10.0)).fit(x, y, val=(x, y))
    assert lpv.C_ in (0.1, 10.0)


def test_linear_probe_errors():
    x, y, _ = toy()
    with pytest.raises(RuntimeError, match="not fitted"):
        LinearProbe().predict(x)
    with pytest.raises(ValueError, match="single class"):
        LinearProbe().fit(x[:4], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="positive"):
        LinearProbe(Cs=(0.0,))
    with pytest.raises(ValueError, match="2-D"):
        LinearProbe().fit(x[0], y[:1])
    with pytest.raises(ValueError, match="one label per"):
        LinearProbe().fit(x, y[:3])


def test_text_init_probe_counts_identity_and_fit():
    x, y, t = toy(sep=0.7)
    m = TextInitProbe(t)
    assert count_trainable(m) == K * D + K
    with torch.no_grad():  # W = 0, alpha = 1: logits are the zero-shot cosines
        assert torch.allclose(m(x), zero_shot_logits(x, t, 1.0), atol=1e-6)
    lw, la = m.lipschitz(x)
    assert 0 < lw <= 0.5 + 1e-6 and 0 < la <= 0.5 + 1e-6
    hist = m.fit(x, y, steps=50)
    assert hist[-1] < hist[0]
    assert (m(x).argmax(1) == y).float().mean() >= 0.9
    assert torch.equal(m.text, F.normalize(t, dim=-1))  # text stays frozen


def test_clap_probe_init_is_zero_shot_and_constraint_pulls_back():
    x, y, t = toy(sep=1.0)
    m = ClapProbe(t, logit_scale=10.0)
    assert count_trainable(m) == K * D
    with torch.no_grad():
        assert torch.allclose(m(x), zero_shot_logits(x, t, 10.0), atol=1e-5)
    m.fit(x, y, steps=60, lr=0.05)
    free = ClapProbe(t, logit_scale=10.0, constraint=False)
    free.fit(x, y, steps=60, lr=0.05)
    assert (m.lambdas > 0).all() and (free.lambdas == 0).all()
    assert (m.W - m.text).norm() < (free.W - free.text).norm()


# --------------------------------------------------------------------------- CLIP-Adapter
def test_clip_adapter_counts_and_ratio_zero_is_zero_shot():
    x, y, t = toy()
    m = CLIPAdapter(t, reduction=4, ratio=0.2, logit_scale=50.0)
    assert count_trainable(m) == 2 * D * (D // 4)
    zero = CLIPAdapter(t, reduction=4, ratio=0.0, logit_scale=50.0)
    with torch.no_grad():
        assert torch.allclose(zero(x), zero_shot_logits(x, t, 50.0), atol=1e-5)
    losses = train_on_features(m, x, y, epochs=20, lr=1e-2, batch_size=8)
    assert losses[-1] < losses[0]
    assert torch.equal(m.text, F.normalize(t, dim=-1))
    with pytest.raises(ValueError, match="ratio"):
        CLIPAdapter(t, ratio=1.5)
    with pytest.raises(ValueError, match="reduction"):
        CLIPAdapter(t, reduction=100)
    with pytest.raises(ValueError, match="same backbone"):
        m(torch.randn(2, D + 1))


# --------------------------------------------------------------------------- Tip-Adapter
def test_tip_adapter_alpha_zero_and_beta_zero_are_zero_shot():
    x, y, t = toy()
    q = torch.randn(10, D)
    tip = TipAdapter(t, x, y, alpha=1.0, beta=5.5, logit_scale=100.0)
    zs = zero_shot_logits(q, t, 100.0)
    with torch.no_grad():
        assert torch.allclose(tip(q, alpha=0.0), zs, atol=1e-5)
        # beta -> 0: every affinity is 1, the cache adds the same constant (shots per class)
        out = tip(q, alpha=3.0, beta=0.0)
        assert torch.allclose(out - zs, torch.full_like(zs, 3.0 * 8), atol=1e-4)
        assert torch.allclose(out.softmax(-1), zs.softmax(-1), atol=1e-6)
        small = tip(q, alpha=3.0, beta=1e-6).softmax(-1)
        assert torch.allclose(small, zs.softmax(-1), atol=1e-4)


def test_tip_adapter_recovers_support_labels():
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(12, D, generator=g), dim=-1)
    y = torch.arange(K).repeat(4)
    t = F.normalize(torch.randn(K, D, generator=g), dim=-1)
    tip = TipAdapter(t, x, y, alpha=1000.0, beta=50.0, logit_scale=100.0)
    with torch.no_grad():
        assert torch.equal(tip.cache_logits(x).argmax(1), y)
        assert torch.equal(tip(x).argmax(1), y)


def test_tip_adapter_f_counts_and_training():
    x, y, t = toy()
    tip = TipAdapter(t, x, y)
    assert count_trainable(tip) == 0
    tipf = TipAdapter(t, x, y, finetune=True)
    assert count_trainable(tipf) == len(y) * D
    keys0 = tipf.keys.detach().clone()
    train_on_features(tipf, x, y, epochs=5, lr=1e-2, batch_size=8)
    assert not torch.equal(tipf.keys.detach(), keys0)
    assert torch.equal(tipf.values, F.one_hot(y, K).float())


def test_tip_adapter_search_and_errors():
    x, y, t = toy()
    tip = TipAdapter(t, x, y)
    a, b = tip.search_hparams(x, y, alphas=(0.0, 1.0, 10.0), betas=(1.0, 5.0), leave_one_out=True)
    assert (a, b) == (tip.alpha, tip.beta)
    with pytest.raises(ValueError, match="support set itself"):
        tip.search_hparams(x[:5], y[:5], (1.0,), (1.0,), leave_one_out=True)
    with pytest.raises(ValueError, match=">= 0"):
        TipAdapter(t, x, y, alpha=-1.0)
    with pytest.raises(ValueError, match="no sample of class"):
        TipAdapter(t, x[y < 2], y[y < 2])
    with pytest.raises(ValueError, match="empty"):
        TipAdapter(t, torch.zeros(0, D), torch.zeros(0))
    with pytest.raises(ValueError, match="one row per class"):
        TipAdapter(t[:1], x, y)


# --------------------------------------------------------------------------- trainer
def test_train_on_features_reproduces_the_reference_loop():
    """train_on_features goes through train.fit; the maths must equal the plain loop it replaced:
    AdamW(eps=1e-4), per-step cosine to 0, one seeded permutation per epoch, uneven last batch."""
    import math

    x, y, t = toy(n_per_class=7)  # 21 samples, batch 8: batches of 8, 8, 5
    torch.manual_seed(0)
    a = CLIPAdapter(t, logit_scale=20.0)
    b = CLIPAdapter(t, logit_scale=20.0)
    b.load_state_dict(a.state_dict())
    losses = train_on_features(a, x, y, epochs=3, lr=1e-2, batch_size=8, seed=5)
    params = [p for p in b.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0, eps=1e-4)
    total = 3 * 3
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    g = torch.Generator().manual_seed(5)
    ref = []
    for _ in range(3):
        perm, tot = torch.randperm(len(y), generator=g), 0.0
        for i in range(3):
            idx = perm[i * 8:(i + 1) * 8]
            loss = F.cross_entropy(b(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        ref.append(tot / len(y))
    assert np.allclose(losses, ref, atol=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_shared_input_errors():
    x, y, t = toy()
    with pytest.raises(ValueError, match="integers in 0..2"):
        check_support(x, torch.full((len(x),), 7), n_classes=K)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train_on_features(CLIPAdapter(t), x, y, epochs=0, lr=1e-3)
    with pytest.raises(ValueError, match="no trainable parameter"):
        train_on_features(TipAdapter(t, x, y), x, y, epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        TextInitProbe(t).fit(x, y, steps=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ClapProbe(t).fit(x, y, steps=0)




def test_tip_search_at_one_shot_uses_paper_defaults_not_the_smallest_alpha():
    """Issue 12: leave-one-out at 1 shot per class removes each sample's only same-class key, so the old
    search always picked the smallest alpha (Tip == zero-shot by construction). Now: paper defaults."""
    x, y, t = toy()
    one = torch.tensor([0, 8, 16])  # one shot per class
    tip = TipAdapter(t, x[one], y[one])
    a, b = tip.search_hparams(x[one], y[one], alphas=(0.1, 1.0, 10.0), betas=(1.0, 5.5), leave_one_out=True)
    assert a != 0.1, "1 shot: leave-one-out picked the smallest alpha (the old, degenerate protocol)"
    from course_lib.methods.clip_fewshot.tip_adapter import PAPER_ALPHA, PAPER_BETA

    assert (a, b) == (PAPER_ALPHA, PAPER_BETA) == (1.0, 5.5)
    assert tip.hparam_source == "paper defaults (1 shot)"
    two = torch.tensor([0, 1, 8, 9, 16, 17])
    tip2 = TipAdapter(t, x[two], y[two])
    tip2.search_hparams(x[two], y[two], alphas=(0.0, 1.0), betas=(1.0,), leave_one_out=True)
    assert tip2.hparam_source == "leave-one-out on the support set"


def test_tip_alpha_grid_contains_zero_so_the_search_can_decline_the_cache():
    from course_lib import runtime
    from course_lib.experiments import fewshot  # noqa: F401  (registers the section)

    for name in ("quick", "full"):
        assert 0.0 in runtime.get_profile(name).section("few_shot").tip_alphas
    # a cache that only hurts (keys carry flipped labels) -> alpha = 0 is chosen on validation data
    x, y, t = toy()
    q, yq, _ = toy(seed=0)
    tip = TipAdapter(t, x, (y + 1) % K)
    a, _ = tip.search_hparams(q, yq, alphas=(0.0, 1.0, 10.0), betas=(5.5,))
    assert a == 0.0 and tip.hparam_source == "validation set"

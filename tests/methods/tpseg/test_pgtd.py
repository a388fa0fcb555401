"""Prototype-guided task decoder (eqs. 4-13): EMA maths (eq. 12-13), unit norm, empty foreground, expert
count checks, similarity map identities, stage switches."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from course_lib.methods.tpseg import PGTDModule, PlainStage, PrototypeGuidedDecoder, ema_prototype_update


def test_ema_follows_eq12_and_stays_on_sphere():
    torch.manual_seed(0)
    P = F.normalize(torch.randn(8), dim=0)
    f = torch.randn(2, 8, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, :2] = 1
    new = ema_prototype_update(P, f, mask, momentum=0.9)
    mean = f[0, :, :2].reshape(8, -1).mean(1)  # eq. 13: masked mean over the 8 foreground pixels
    expect = F.normalize(0.9 * P + 0.1 * F.normalize(mean, dim=0), dim=0)  # eq. 12 + renormalisation
    torch.testing.assert_close(new, expect)
    assert abs(float(new.norm()) - 1) < 1e-6
    # m = 0 replaces the prototype by the normalised region mean
    torch.testing.assert_close(ema_prototype_update(P, f, mask, momentum=0.0), F.normalize(mean, dim=0))


def test_ema_moves_prototype_towards_region_mean():
    torch.manual_seed(1)
    P = F.normalize(torch.randn(8), dim=0)
    f = torch.randn(1, 8, 3, 3)
    mask = torch.ones(1, 1, 3, 3)
    target = F.normalize(f.mean((0, 2, 3)), dim=0)
    cos = [float(P @ target)]
    for _ in range(5):
        P = ema_prototype_update(P, f, mask)
        cos.append(float(P @ target))
    assert all(b > a for a, b in zip(cos, cos[1:]))


def test_empty_region_leaves_prototype_unchanged_no_nan():
    P = F.normalize(torch.ones(8), dim=0)
    out = ema_prototype_update(P, torch.randn(2, 8, 4, 4), torch.zeros(2, 1, 4, 4))
    assert torch.equal(out, P) and not torch.isnan(out).any()


def test_module_update_with_empty_foreground_batch():
    torch.manual_seed(0)
    mod = PGTDModule(8, 8, 16, 2, n_experts=2).train()
    before = mod.prototypes.clone()
    mask = torch.zeros(2, 1, 8, 8)  # no foreground pixel in the batch
    y, s = mod(torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4), 1, mask)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert not torch.isnan(mod.prototypes).any()
    assert torch.equal(mod.prototypes[1, 0], before[1, 0])  # foreground prototype kept
    assert not torch.equal(mod.prototypes[1, 1], before[1, 1])  # background prototype updated
    assert torch.equal(mod.prototypes[0], before[0])  # other task untouched
    torch.testing.assert_close(mod.prototypes.norm(dim=-1), torch.ones(2, 2))


def test_prototypes_frozen_in_eval_and_initialised_on_sphere():
    mod = PGTDModule(8, 8, 16, 3, n_experts=2)
    torch.testing.assert_close(mod.prototypes.norm(dim=-1), torch.ones(3, 2))  # eq. 5 + normalisation
    before = mod.prototypes.clone()
    mod.eval()
    mod(torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4), 0, torch.ones(1, 1, 8, 8))
    assert torch.equal(mod.prototypes, before)
    assert all(not p.requires_grad for p in mod.proto_mlp.parameters())
    assert "prototypes" in dict(mod.named_buffers())


@pytest.mark.parametrize("m", [0, -1, 2.5])
def test_bad_number_of_experts(m):
    with pytest.raises(ValueError, match="experts M"):
        PGTDModule(8, 8, 16, 2, n_experts=m)
    with pytest.raises(ValueError, match="experts M"):
        PrototypeGuidedDecoder([8, 8, 8, 8], 16, 2, n_experts=m)


def test_similarity_map_is_zero_when_prototypes_coincide():
    torch.manual_seed(0)
    mod = PGTDModule(8, 8, 16, 1, n_experts=3).eval()
    with torch.no_grad():
        mod.prototypes[0, 1] = mod.prototypes[0, 0]
    _, s = mod(torch.randn(2, 8, 6, 6), torch.randn(2, 8, 3, 3), 0)
    torch.testing.assert_close(s, torch.zeros_like(s))  # S = sigmoid(0) = 0.5 everywhere (eq. 8)


def test_expert_mixture_equals_sum_of_expert_convs():
    """Eq. 10: mixing the kernels per sample equals sum_m w_m (W_m * f')."""
    torch.manual_seed(0)
    mod = PGTDModule(8, 8, 16, 1, n_experts=3).eval()
    f_low, f_high = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 3, 3)
    captured = {}
    mod.post.register_forward_hook(lambda m, a, o: captured.update(pre=a[0]))
    mod.route.register_forward_hook(lambda m, a, o: captured.update(w=torch.softmax(o, -1)))
    y, s = mod(f_low, f_high, 0)
    from course_lib.methods.tpseg.pgtd import _fuse

    f = _fuse(mod.fuse, f_low, f_high)
    f_mod = f * (1 + 0.5 * torch.sigmoid(s))  # eq. 9 with alpha = 0.5
    ref = sum(captured["w"][:, m, None, None, None] * F.conv2d(f_mod, mod.experts[m], mod.expert_bias[m], padding=1)
              for m in range(3))
    torch.testing.assert_close(captured["pre"], ref, atol=1e-5, rtol=1e-4)


def test_decoder_stage_switches_and_reinforcement():
    dec = PrototypeGuidedDecoder([8, 8, 8, 8], 16, 2, stages=(False, True, False))
    assert list(dec.pgtd_modules()) == ["PGTD2"]
    assert dec.rho is None  # no PGTD1 -> no reinforcement term (eq. 11)
    assert sum(isinstance(m, PlainStage) for m in dec.modules_deep_to_shallow) == 2
    dec = PrototypeGuidedDecoder([8, 8, 8, 8], 16, 2)
    assert list(dec.pgtd_modules()) == ["PGTD3", "PGTD2", "PGTD1"]
    feats = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2), torch.randn(1, 8, 1, 1)]
    dec.eval()
    base = dec(feats, 0)
    with torch.no_grad():
        dec.rho.zero_()
    no_reinf = dec(feats, 0)
    # eq. 11: the difference is lambda_p * rho * tanh(s / temp), with lambda_p = 5, rho = 0.1
    assert not torch.allclose(base, no_reinf)
    assert float((base - no_reinf).detach().abs().max()) <= 5 * 0.1 + 1e-6
    with pytest.raises(ValueError, match="4 encoder levels"):
        PrototypeGuidedDecoder([8, 8, 8], 16, 2)

"""HT adapter (course_lib.methods.ht.ht_adapter): identity at init, eqs. (1)-(5) recomputed by hand, the noise
estimator and the ablation switches, errors."""
import pytest
import torch

from course_lib.methods.ht import recipe as at
from course_lib.methods.ht.filters import GlobalFilter
from course_lib.methods.ht.ht_adapter import VARIANTS, HTAdapter


def test_ht_identity_at_init():
    torch.manual_seed(0)
    z = torch.randn(2, 1 + 16, 32)
    for kind, kw in VARIANTS.items():
        a = HTAdapter(32, 8, grid=(4, 4), **kw)
        assert torch.equal(a(z), z), kind  # Θ = 1 and W_up = 0, b_up = 0


def test_alpha_sums_to_one_and_switches():
    torch.manual_seed(0)
    a = HTAdapter(32, 8)
    f = torch.randn(5, 8, 4, 4)
    alpha = a.alpha(f)
    assert alpha.shape == (5, 3) and torch.allclose(alpha.sum(1), torch.ones(5), atol=1e-6)
    assert (alpha > 0).all()
    off = HTAdapter(32, 8, noise_estimator=False)
    assert off.ne is None and torch.allclose(off.alpha(f), torch.full((5, 3), 1 / 3))
    assert isinstance(HTAdapter(32, 8, filter="none").freq, torch.nn.Identity)
    assert isinstance(HTAdapter(32, 8, filter="global", grid=4).freq, GlobalFilter)
    a(torch.randn(5, 17, 32))
    assert torch.allclose(a.last_alpha.sum(1), torch.ones(5), atol=1e-6)


def test_ht_forward_matches_equations():
    """Recompute eqs. (1)-(5) by hand for the patch tokens and compare."""
    torch.manual_seed(0)
    a = HTAdapter(16, 8, dropout=0.0, gamma_init=0.5).eval()
    torch.nn.init.normal_(a.up.weight)
    with torch.no_grad():
        a.freq.theta.copy_(torch.rand(8) + 0.5)
    z = torch.randn(2, 1 + 9, 16)
    f_in = a.down(a.norm(z) * a.gamma + z * a.gammax)  # (1)
    fmap = f_in[:, 1:].transpose(1, 2).reshape(2, 8, 3, 3)
    f_freq = fmap * a.freq.theta[None, :, None, None]  # (2) == per-channel scaling
    gap = f_freq.mean((2, 3))
    alpha = torch.softmax(a.ne.fc2(torch.relu(a.ne.fc1(gap))), -1)  # (3)
    multi = a.pw(sum(alpha[:, i, None, None, None] * c(f_freq) for i, c in enumerate(a.dwconvs)))  # (4)
    z_out = torch.cat([f_in[:, :1], (f_freq + multi).flatten(2).transpose(1, 2)], 1)
    h = z + a.up(torch.nn.functional.gelu(z_out))  # (5)
    assert torch.allclose(a(z), h, atol=1e-5)


def test_ht_errors():
    with pytest.raises(ValueError, match="unknown filter"):
        HTAdapter(16, 4, filter="fft")
    with pytest.raises(ValueError, match="grid"):
        HTAdapter(16, 4, filter="global")
    with pytest.raises(TypeError, match="VisionTransformer"):
        at.attach_adapters(torch.nn.Linear(2, 2), "ht")



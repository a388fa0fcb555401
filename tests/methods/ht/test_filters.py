"""Frequency filters of HT (course_lib.methods.ht.filters): eq. (2) is a per-channel scaling, identity at init,
the frequency-dependent filter can notch a band, measurement helpers, errors."""
import math

import pytest
import torch

from course_lib.methods.ht.filters import (ChannelFilter, GlobalFilter, band_gain, fit_filter, make_filter,
                                           per_channel_scale, power_spectrum)


def test_channel_filter_is_per_channel_scaling():
    """Eq. (2) with Θ ∈ R^d is exactly a per-channel scaling: the finding, to 1e-5."""
    torch.manual_seed(0)
    f = ChannelFilter(6)
    with torch.no_grad():
        f.theta.copy_(torch.randn(6) * 3)
    x = torch.randn(4, 6, 7, 9)
    assert torch.allclose(f(x), per_channel_scale(x, f.theta), atol=1e-5)
    # ... so its frequency response is flat: every frequency of a channel gets the same gain
    r = f.frequency_response(7, 9)
    assert torch.allclose(r, r[:, :1, :1].expand_as(r))


def test_filters_start_as_identity():
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(ChannelFilter(4)(x), x, atol=1e-5)
    assert torch.allclose(GlobalFilter(4, 8, 8)(x), x, atol=1e-5)
    assert torch.equal(make_filter("none", 4)(x), x)


def _banded_images(n=8, size=32, k0=4, amp=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.nn.functional.avg_pool2d(torch.rand(n, 1, size, size, generator=g), 5, 1, 2)
    rows = torch.arange(size, dtype=torch.float32)
    bands = amp * torch.cos(2 * math.pi * k0 * rows / size)[None, None, :, None].expand(n, 1, size, size)
    return clean, clean + bands


def test_global_filter_attenuates_periodic_pattern_channel_filter_cannot():
    torch.manual_seed(0)
    k0 = 4
    clean, banded = _banded_images(k0=k0)
    g, c = GlobalFilter(1, 32, 32), ChannelFilter(1)
    fit_filter(g, banded, clean, steps=150, lr=0.05)
    fit_filter(c, banded, clean, steps=150, lr=0.05)
    with torch.no_grad():
        rg = band_gain(banded[:, 0], g(banded)[:, 0], ky=k0)
        rc = band_gain(banded[:, 0], c(banded)[:, 0], ky=k0)
    assert rg["notch_db"] < -15  # the band frequency is removed far more than the rest
    assert abs(rc["notch_db"]) < 0.5  # a per-channel scale treats every frequency alike
    # the learned global filter's response has a notch at (±k0, 0)
    resp = g.frequency_response()[0]
    assert resp[k0, 0] < 0.2 * resp.median()


def test_power_spectrum_and_band_gain_inputs():
    _, banded = _banded_images(k0=4)
    p = power_spectrum(banded[:, 0])
    assert p.shape == (32, 32) and int(p.argmax()) // 32 in (16 - 4, 16 + 4)  # peak on the band row
    with pytest.raises(ValueError, match="image"):
        power_spectrum(torch.randn(5))
    with pytest.raises(ValueError, match="same shape"):
        fit_filter(ChannelFilter(1), torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 5))


def test_filter_errors():
    with pytest.raises(ValueError, match="grid"):
        make_filter("global", 4)
    with pytest.raises(ValueError, match="unknown frequency filter"):
        make_filter("wavelet", 4)
    with pytest.raises(ValueError, match="built for a 8x8 grid"):
        GlobalFilter(4, 8, 8)(torch.randn(1, 4, 6, 6))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ChannelFilter(4)(torch.randn(4, 6, 6))
    with pytest.raises(ValueError, match="channels"):
        ChannelFilter(4)(torch.randn(1, 3, 6, 6))




def test_fit_filter_is_adam_mse_on_the_filter_only():
    """fit_filter (through train.fit) equals a hand-written Adam loop on the MSE, step for step."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    a, b = GlobalFilter(1, 8, 8), GlobalFilter(1, 8, 8)
    hist = fit_filter(a, x, y, steps=5, lr=0.05)
    opt = torch.optim.Adam(b.parameters(), lr=0.05)
    ref = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(b(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref.append(float(loss.detach()))
    assert len(hist) == 5 and hist[-1] < hist[0]
    assert torch.allclose(torch.tensor(hist), torch.tensor(ref), atol=1e-6)
    assert torch.allclose(a.weight, b.weight, atol=1e-6)

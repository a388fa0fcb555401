"""HT adapter (eqs. 1-5), its frequency filters, ablation switches, trainable counts, recipe, stage 1."""
import math

import pytest
import torch

from course_lib.methods import adapter_tuning as at
from course_lib.methods.frequency_filters import (ChannelFilter, GlobalFilter, band_gain, fit_filter, make_filter,
                                                  per_channel_scale, power_spectrum)
from course_lib.methods.hybrid_tuning import VARIANTS, HTAdapter


def mona_params(D, m, kernels=(3, 5, 7)):
    return 2 * D + 2 * D + (D * m + m) + (m * D + D) + sum(m * k * k + m for k in kernels) + (m * m + m)


def ht_params(D, m, filter="channel", ne=True, grid=None):
    """Independent count of HTAdapter parameters: Mona frame + Θ + noise estimator (eq. 3)."""
    n = mona_params(D, m)
    if filter == "channel":
        n += m
    elif filter == "global":
        n += m * grid[0] * (grid[1] // 2 + 1) * 2
    if ne:
        h = max(4, m // 4)
        n += (m * h + h) + (h * 3 + 3)
    return n


def heads_params(D, d, n_levels, task, n_classes=2, hidden=None):
    agg = n_levels * ((D * d + d) + 2 * d + (d * d + d))
    head = d * n_classes + n_classes if task == "seg" else (d * hidden + hidden) + (hidden * n_classes + n_classes)
    return agg + head


# ----------------------------------------------------------------------------- filters
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


# ----------------------------------------------------------------------------- adapter
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


# ----------------------------------------------------------------------------- attaching + counts
@pytest.fixture(scope="module")
def tiny_clip():
    from course_lib.models import build_sonoclip_tiny

    return build_sonoclip_tiny(seed=0).eval()


@pytest.fixture(scope="module")
def vitb16_visual():
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16", pretrained=None).visual.eval()


@pytest.mark.parametrize("method", ["ht", "ht_ne", "ht_ff", "ht_global", "mona"])
def test_exact_trainable_counts_tiny(tiny_clip, method):
    vis = tiny_clip.visual
    D, m, d = vis.transformer.width, 8, 16
    grid = tuple(vis.grid_size)
    model = at.build_model(tiny_clip, method, "seg", bottleneck=m, d_red=d)
    used = max(model.blocks) + 1  # adapters only where they run (blocks 0..deepest aggregated)
    if method == "mona":
        per = mona_params(D, m)
    else:
        kw = VARIANTS[method]
        per = ht_params(D, m, kw["filter"], kw["noise_estimator"], grid)
    expected = 2 * used * per + heads_params(D, d, len(model.blocks), "seg")
    assert at.count_trainable(model) == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapters." in n or n.startswith(("agg.", "head.")) for n in trainable)
    assert len(at.adapters_of(tiny_clip.visual)) == 0  # build_model works on a copy


def test_frozen_and_lora_counts_tiny(tiny_clip):
    from course_lib.methods.lora import expected_lora_params

    D, d = tiny_clip.visual.transformer.width, 16
    frozen = at.build_model(tiny_clip, "frozen", "cls", d_red=d, cls_hidden=8)
    heads = heads_params(D, d, 3, "cls", hidden=8)
    assert at.count_trainable(frozen) == heads
    lora = at.build_model(tiny_clip, "lora", "cls", d_red=d, cls_hidden=8, lora_rank=2)
    n_lora = expected_lora_params(tiny_clip.visual, 2, targets=("attn",), blocks=[0, 1, 2])
    assert at.count_trainable(lora) == heads + n_lora


def test_vitb16_identity_and_counts(vitb16_visual):
    """Random-weight ViT-B/16: adapters in blocks 0..8 (aggregation 3/6/9), identity at init, exact counts."""
    m, d = 16, 32
    model = at.build_model(vitb16_visual, "ht", "seg", bottleneck=m, d_red=d)
    assert model.blocks == [2, 5, 8]
    assert at.count_trainable(model) == 2 * 9 * ht_params(768, m) + heads_params(768, d, 3, "seg")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = model.visual.forward_intermediates(x, indices=[8], stop_early=True, intermediates_only=True)
        ref = vitb16_visual.forward_intermediates(x, indices=[8], stop_early=True, intermediates_only=True)
    assert torch.allclose(out["image_intermediates"][0], ref["image_intermediates"][0], atol=1e-5)


def test_fit_updates_only_adapters_and_heads(tiny_clip):
    torch.manual_seed(0)
    model = at.build_model(tiny_clip, "ht", "seg", bottleneck=8, d_red=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    X = torch.randn(4, 3, 64, 64)
    Y = (torch.rand(4, 64, 64) > 0.7).long()
    hist = at.fit(model, X, Y, epochs=2, batch_size=2, lr=1e-2, progress=False)
    assert len(hist["loss"]) == 4 and all(math.isfinite(v) for v in hist["loss"])
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), n
    assert not torch.equal(model.head.conv.weight, before["head.conv.weight"])
    ups = [n for n in before if n.endswith("adapters.attn.up.weight")]
    assert ups and any(not torch.equal(dict(model.named_parameters())[n], before[n]) for n in ups)
    p = at.predict(model, X)
    assert p.shape == (4, 64, 64) and ((p >= 0) & (p <= 1)).all()
    with pytest.raises(ValueError, match="resize the masks"):
        at.fit(model, X, Y[:, :32, :32], epochs=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="must match"):
        at.fit(model, X, Y[:2], epochs=1, batch_size=2, progress=False)


def test_losses_are_monai_dice_ce_and_focal():
    from monai.losses import DiceCELoss, FocalLoss

    assert isinstance(at.seg_loss(), DiceCELoss) and isinstance(at.cls_loss(), FocalLoss)
    logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    y = torch.tensor([[0], [1]])
    assert float(at.cls_loss()(logits, y)) < 1e-3  # confident and right -> ~0 focal loss
    opt, sched = at.make_optimizer(torch.nn.Linear(2, 2), total_steps=10, lr=1e-4)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["weight_decay"] == 1e-2
    with pytest.raises(ValueError, match="no trainable"):
        at.make_optimizer(torch.nn.Linear(2, 2).requires_grad_(False), 10)


def test_build_model_errors(tiny_clip):
    with pytest.raises(ValueError, match="unknown method"):
        at.build_model(tiny_clip, "adapterformer", "seg")
    vis = at.build_model(tiny_clip, "frozen", "seg", d_red=4).visual
    with pytest.raises(ValueError, match="positions"):
        at.attach_adapters(vis, "ht", 4, positions=("ffn",))
    with pytest.raises(ValueError, match="unknown adapter kind"):
        at.attach_adapters(vis, "lora", 4)
    with pytest.raises(ValueError, match="out of range"):
        at.attach_adapters(vis, "ht", 4, blocks=[7])


def test_info_nce_and_stage1(tiny_clip):
    import copy

    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    loss = at.info_nce(img, img, 10.0)
    logits = 10.0 * img @ img.t()
    manual = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(4)) * 2)
    assert torch.allclose(loss, manual)
    clip = copy.deepcopy(tiny_clip)
    text_before = {n: p.clone() for n, p in clip.named_parameters() if not n.startswith("visual.")}
    X = torch.randn(6, 3, 64, 64)
    toks = torch.randint(1, 100, (6, clip.context_length))
    out = at.stage1_image_text(clip, X, toks, steps=2, batch_size=4, bottleneck=4, progress=False)
    n_blocks = len(clip.visual.transformer.resblocks)
    assert out["trainable"] == 2 * n_blocks * ht_params(clip.visual.transformer.width, 4)
    assert at.count_trainable(clip) == out["trainable"]
    for n, p in clip.named_parameters():
        if n in text_before:
            assert torch.equal(p, text_before[n]), n
    probs = at.zero_shot_probs(clip, X, [toks[:2], toks[2:4]])
    assert probs.shape == (6, 2) and torch.allclose(torch.as_tensor(probs).sum(1), torch.ones(6), atol=1e-5)
    with pytest.raises(ValueError, match="image-report pairs"):
        at.stage1_image_text(clip, X[:1], toks[:1], steps=1)


def test_estimate_step_cost_on_meta_device():
    """The full-profile cost is counted on the meta device (no weights allocated); FLOPs scale with batch."""
    from open_clip.transformer import VisionTransformer

    with torch.device("meta"):
        vis = VisionTransformer(image_size=32, patch_size=8, width=16, layers=4, heads=2, mlp_ratio=2.0, output_dim=8)
        model = at.build_model(vis, "ht", "seg", bottleneck=4, d_red=8)
    c1, c2 = at.estimate_step_cost(model, 1), at.estimate_step_cost(model, 2)
    assert c1["flops"] > 0 and c2["flops"] == 2 * c1["flops"]
    assert c2["activation_bytes"] > c1["activation_bytes"] > 0
    assert c1["optimizer_bytes"] == 8 * at.count_trainable(model)


def test_frozen_baseline_feature_cache_is_exact(tiny_clip):
    """fit() caches backbone features when nothing in the ViT trains; the losses equal the uncached loop."""
    X = torch.randn(6, 3, 64, 64)
    Y = torch.tensor([0, 1, 0, 1, 1, 0])
    hists = []
    for unfreeze_unused in (False, True):
        torch.manual_seed(0)
        model = at.build_model(tiny_clip, "frozen", "cls", d_red=8, cls_hidden=8, dropout=0.0)
        if unfreeze_unused:  # a trainable but unused tensor disables the cache, nothing else changes
            model.visual.proj.requires_grad_(True)
        assert model.backbone_is_frozen() is not unfreeze_unused
        hists.append(at.fit(model, X, Y, steps=3, batch_size=4, lr=1e-2, progress=False)["loss"])
    assert len(hists[0]) == 3 and torch.allclose(torch.tensor(hists[0]), torch.tensor(hists[1]), atol=1e-5)

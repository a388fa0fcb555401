"""HT recipe (course_lib.methods.ht.recipe): attaching adapters/LoRA to open_clip ViTs, exact trainable counts,
identity at init on a random ViT-B/16, training through train.fit (same maths as the hand-written loop), stage 1,
the step-cost estimate."""
import math

import pytest
import torch

from course_lib.methods.ht import recipe as at
from course_lib.methods.ht.ht_adapter import VARIANTS
from course_lib.train import count_parameters


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
    assert count_parameters(model, trainable=True) == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapters." in n or n.startswith(("agg.", "head.")) for n in trainable)
    assert len(at.adapters_of(tiny_clip.visual)) == 0  # build_model works on a copy


def test_frozen_and_lora_counts_tiny(tiny_clip):
    from course_lib.methods.peft.lora import expected_lora_params

    D, d = tiny_clip.visual.transformer.width, 16
    frozen = at.build_model(tiny_clip, "frozen", "cls", d_red=d, cls_hidden=8)
    heads = heads_params(D, d, 3, "cls", hidden=8)
    assert count_parameters(frozen, trainable=True) == heads
    lora = at.build_model(tiny_clip, "lora", "cls", d_red=d, cls_hidden=8, lora_rank=2)
    n_lora = expected_lora_params(tiny_clip.visual, 2, targets=("attn",), blocks=[0, 1, 2])
    assert count_parameters(lora, trainable=True) == heads + n_lora


def test_vitb16_identity_and_counts(vitb16_visual):
    """Random-weight ViT-B/16: adapters in blocks 0..8 (aggregation 3/6/9), identity at init, exact counts."""
    m, d = 16, 32
    model = at.build_model(vitb16_visual, "ht", "seg", bottleneck=m, d_red=d)
    assert model.blocks == [2, 5, 8]
    assert count_parameters(model, trainable=True) == 2 * 9 * ht_params(768, m) + heads_params(768, d, 3, "seg")
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
    hist = at.fit_task(model, X, Y, epochs=2, batch_size=2, lr=1e-2, progress=False)
    assert len(hist["loss"]) == 4 and all(math.isfinite(v) for v in hist["loss"])
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), n
    assert not torch.equal(model.head.conv.weight, before["head.conv.weight"])
    ups = [n for n in before if n.endswith("adapters.attn.up.weight")]
    assert ups and any(not torch.equal(dict(model.named_parameters())[n], before[n]) for n in ups)
    p = at.predict_proba(model, X)
    assert p.shape == (4, 64, 64) and ((p >= 0) & (p <= 1)).all()
    with pytest.raises(ValueError, match="resize the masks"):
        at.fit_task(model, X, Y[:, :32, :32], epochs=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="must match"):
        at.fit_task(model, X, Y[:2], epochs=1, batch_size=2, progress=False)


def test_losses_are_monai_dice_ce_and_focal():
    from monai.losses import DiceCELoss, FocalLoss

    assert isinstance(at.seg_loss(), DiceCELoss) and isinstance(at.cls_loss(), FocalLoss)
    logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    y = torch.tensor([[0], [1]])
    assert float(at.cls_loss()(logits, y)) < 1e-3  # confident and right -> ~0 focal loss
    assert isinstance(at.task_loss("seg"), DiceCELoss) and isinstance(at.task_loss("cls"), FocalLoss)
    with pytest.raises(ValueError, match="task"):
        at.task_loss("det")
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


def test_stage1_trains_only_visual_adapters(tiny_clip):
    import copy

    clip = copy.deepcopy(tiny_clip)
    text_before = {n: p.clone() for n, p in clip.named_parameters() if not n.startswith("visual.")}
    X = torch.randn(6, 3, 64, 64)
    toks = torch.randint(1, 100, (6, clip.context_length))
    out = at.stage1_image_text(clip, X, toks, steps=2, batch_size=4, bottleneck=4, progress=False)
    n_blocks = len(clip.visual.transformer.resblocks)
    assert out["trainable"] == 2 * n_blocks * ht_params(clip.visual.transformer.width, 4)
    assert count_parameters(clip, trainable=True) == out["trainable"] and len(out["loss"]) == 2
    for n, p in clip.named_parameters():
        if n in text_before:
            assert torch.equal(p, text_before[n]), n
    probs = at.zero_shot_probs(clip, X, [toks[:2], toks[2:4]])
    assert probs.shape == (6, 2) and torch.allclose(torch.as_tensor(probs).sum(1), torch.ones(6), atol=1e-5)
    with pytest.raises(ValueError, match="image-report pairs"):
        at.stage1_image_text(clip, X[:1], toks[:1], steps=1)
    with pytest.raises(ValueError, match="LoRA \\(V\\+T\\)"):
        at.stage1_image_text(copy.deepcopy(tiny_clip), X, toks, steps=1, text_lora=True)


def test_stage1_lora_vision_and_text(tiny_clip):
    """LoRA (V+T): LoRA on the attention of every vision and text block; only LoRA tensors change."""
    import copy

    from course_lib.methods.peft.lora import expected_lora_params

    clip = copy.deepcopy(tiny_clip)
    before = {n: p.clone() for n, p in clip.named_parameters()}
    X = torch.randn(6, 3, 64, 64)
    toks = torch.randint(1, 100, (6, clip.context_length))
    out = at.stage1_image_text(clip, X, toks, steps=2, batch_size=4, kind="lora", lora_rank=2, text_lora=True,
                               lr=1e-2, progress=False)
    n_vis = expected_lora_params(tiny_clip.visual, 2)
    d_txt, n_txt_blocks = tiny_clip.transformer.width, len(tiny_clip.transformer.resblocks)
    n_txt = n_txt_blocks * (2 * (d_txt + 3 * d_txt) + 2 * (d_txt + d_txt))
    assert out["trainable"] == n_vis + n_txt == count_parameters(clip, trainable=True)
    # every pre-existing weight keeps its value (peft renames a wrapped layer's weights to ...base_layer...; its
    # MultiheadAttention wrapper adds and removes the LoRA delta around each forward, which leaves float round-off)
    params = dict(clip.named_parameters())
    for n, p in before.items():
        m = n if n in params else n.replace(".attn.", ".attn.base_layer.").replace("out_proj.", "out_proj.base_layer.")
        assert not params[m].requires_grad and torch.allclose(params[m], p, atol=1e-6), n
    moved_b = [n for n, p in params.items() if "lora_B" in n and p.abs().sum() > 0]  # B starts at 0
    assert any(n.startswith("transformer.") for n in moved_b) and any(n.startswith("visual.") for n in moved_b)


@pytest.mark.parametrize("kind", ["ht", "lora"])
def test_two_stage_init_loads_stage1_adapters(tiny_clip, kind):
    """Stage 2 starts from the stage-1 tensors exactly (blocks above the deepest aggregated one are dropped)."""
    import copy

    clip = copy.deepcopy(tiny_clip)
    X = torch.randn(6, 3, 64, 64)
    toks = torch.randint(1, 100, (6, clip.context_length))
    at.stage1_image_text(clip, X, toks, steps=2, batch_size=4, kind=kind, bottleneck=4, lora_rank=2, lr=1e-2,
                         progress=False)
    state = at.adapter_state(clip.visual)
    model = at.build_model(tiny_clip, kind, "seg", bottleneck=4, d_red=8, lora_rank=2, init=state)
    own = {n: p for n, p in model.visual.named_parameters() if ".adapters." in n or "lora_" in n}
    assert own and set(own) < set(state)  # stage 1 adapted all 4 blocks, stage 2 uses blocks 0..2
    assert all(torch.equal(p, state[n]) for n, p in own.items())
    assert any(not torch.all(p == 0) for n, p in own.items() if n.endswith(("up.weight", "lora_B.default.weight")))
    fresh = at.build_model(tiny_clip, kind, "seg", bottleneck=4, d_red=8, lora_rank=2)
    assert not all(torch.equal(p, own[n]) for n, p in fresh.visual.named_parameters() if n in own)
    with pytest.raises(ValueError, match="same bottleneck"):
        at.build_model(tiny_clip, kind, "seg", bottleneck=8, d_red=8, lora_rank=4, init=state)
    with pytest.raises(ValueError, match="no stage-1 value"):
        at.build_model(tiny_clip, "ht_global" if kind == "ht" else "ht", "seg", bottleneck=4, d_red=8, init=state)
    with pytest.raises(ValueError, match="frozen"):
        at.build_model(tiny_clip, "frozen", "seg", d_red=8, init=state)
    with pytest.raises(ValueError, match="no adapters"):
        at.adapter_state(tiny_clip.visual)


def test_estimate_step_cost_on_meta_device(tiny_vit):
    """The full-profile cost is counted on the meta device (no weights allocated); FLOPs scale with batch."""
    with torch.device("meta"):
        vis = tiny_vit(layers=4, width=16, heads=2, output_dim=8)
        model = at.build_model(vis, "ht", "seg", bottleneck=4, d_red=8)
    c1, c2 = at.estimate_step_cost(model, 1), at.estimate_step_cost(model, 2)
    assert c1["flops"] > 0 and c2["flops"] == 2 * c1["flops"]
    assert c2["activation_bytes"] > c1["activation_bytes"] > 0
    assert c1["optimizer_bytes"] == 8 * count_parameters(model, trainable=True)


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
        hists.append(at.fit_task(model, X, Y, steps=3, batch_size=4, lr=1e-2, progress=False)["loss"])
    assert len(hists[0]) == 3 and torch.allclose(torch.tensor(hists[0]), torch.tensor(hists[1]), atol=1e-5)


def _hand_written_fit(model, X, Y, total, batch_size, lr, seed):
    """The pre-refactor loop of the recipe (AdamW + CosineAnnealingLR, per-epoch seeded permutation), kept here as
    the reference that fit_task (train.fit with a forward hook) must reproduce."""
    g = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(X) / batch_size)
    opt, sched = at.make_optimizer(model, total, lr)
    loss_fn = at.task_loss(model.task)
    model.train()
    order = torch.randperm(len(X), generator=g)
    hist = []
    for step in range(total):
        k = step % per_epoch
        if k == 0 and step:
            order = torch.randperm(len(X), generator=g)
        idx = order[k * batch_size:(k + 1) * batch_size]
        loss = loss_fn(model(X[idx]).float(), Y[idx].long().unsqueeze(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hist.append(float(loss.detach()))
    return hist


@pytest.mark.parametrize("method", ["ht", "lora"])
def test_fit_task_reproduces_the_hand_written_recipe(tiny_clip, method):
    """Same optimiser, schedule, batches and RNG draws as the old loop: identical losses and weights."""
    X = torch.randn(5, 3, 64, 64)
    Y = (torch.rand(5, 64, 64) > 0.6).long()
    models = []
    for use_fit in (True, False):
        torch.manual_seed(0)
        model = at.build_model(tiny_clip, method, "seg", bottleneck=4, d_red=8, lora_rank=2, dropout=0.0)
        if use_fit:
            hist = at.fit_task(model, X, Y, epochs=2, batch_size=2, lr=1e-2, seed=3, progress=False)["loss"]
        else:
            ref = _hand_written_fit(model, X, Y, total=6, batch_size=2, lr=1e-2, seed=3)
        models.append(model)
    assert len(hist) == 6
    assert torch.allclose(torch.tensor(hist), torch.tensor(ref), atol=1e-6)
    for (n, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_training_keeps_the_frozen_tower_in_eval_mode(tiny_clip):
    model = at.build_model(tiny_clip, "ht", "cls", bottleneck=4, d_red=8, cls_hidden=8)
    model.train()
    assert model.head.training and model.agg.training
    assert not model.visual.training and not model.visual.transformer.resblocks[0].attn.training
    assert all(a.training for a in at.adapters_of(model.visual))
    model.eval()
    assert not any(m.training for m in model.modules())

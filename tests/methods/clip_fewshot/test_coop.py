"""CoOp / CoCoOp: what trains, identity with zero-shot at init, positions, errors, real towers."""
import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from course_lib.methods.clip_fewshot.coop import (
    CoCoOp,
    CoOp,
    PromptLearner,
    nearest_tokens,
    train_prompt_learner,
)
from course_lib.methods.clip_fewshot.checks import single_thread
from course_lib.train import count_parameters

CLASSES = ["benign", "malignant lesion"]
_TOK = open_clip.get_tokenizer("ViT-B-16")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids oversubscription on the shared 2-core CI box."""
    with single_thread():
        yield


def tok32(texts):
    return _TOK(texts)[:, :32]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = open_clip.CLIP(
        embed_dim=24,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, patch_size=8, image_size=32, head_width=16),
        text_cfg=CLIPTextCfg(context_length=32, width=32, heads=2, layers=2),
    )
    return m.eval()


def zs(model, tokenizer, prompts):
    with torch.no_grad():
        return model.encode_text(tokenizer(prompts), normalize=True)


def test_frozen_context_from_prompt_equals_zero_shot(tiny):
    coop = CoOp(tiny, tok32, CLASSES, ctx_init="a photo of a")
    with torch.no_grad():
        t = coop.text_features()
    ref = zs(tiny, tok32, [f"a photo of a {c}." for c in CLASSES])
    assert torch.allclose(t, ref, atol=1e-6)
    f = torch.randn(5, 24)
    logits = coop(f)
    expected = tiny.logit_scale.exp() * torch.nn.functional.normalize(f, dim=-1) @ ref.t()
    assert torch.allclose(logits, expected, atol=1e-4)


@pytest.mark.parametrize(
    "position,template",
    [("middle", "a photo {} of a."), ("front", "{} a photo of a.")],
)
def test_positions_match_the_corresponding_hand_prompt(tiny, position, template):
    coop = CoOp(tiny, tok32, CLASSES, ctx_init="a photo of a", position=position)
    with torch.no_grad():
        t = coop.text_features()
    ref = zs(tiny, tok32, [template.format(c) for c in CLASSES])
    assert torch.allclose(t, ref, atol=1e-5)


def test_exact_trainable_counts(tiny):
    n_before = sum(p.numel() for p in tiny.parameters())
    unified = CoOp(tiny, tok32, CLASSES, ctx_init=None, n_ctx=4)
    assert count_parameters(unified, trainable=True) == 4 * 32
    csc = CoOp(tiny, tok32, CLASSES, ctx_init=None, n_ctx=4, class_specific=True)
    assert count_parameters(csc, trainable=True) == 2 * 4 * 32
    init = CoOp(tiny, tok32, CLASSES, ctx_init="a photo of a")
    assert init.prompt.n_ctx == 4 and count_parameters(init, trainable=True) == 4 * 32
    co = CoCoOp(tiny, tok32, CLASSES, ctx_init=None, n_ctx=2)
    hidden = 24 // 16
    assert count_parameters(co, trainable=True) == 2 * 32 + (24 * hidden + hidden) + (hidden * 32 + 32)
    assert all(not p.requires_grad for p in tiny.parameters())
    assert sum(p.numel() for p in tiny.parameters()) == n_before


def test_training_moves_only_context(tiny):
    torch.manual_seed(0)
    coop = CoOp(tiny, tok32, CLASSES, ctx_init=None, n_ctx=4)
    frozen = {k: v.clone() for k, v in tiny.state_dict().items()}
    ctx0 = coop.prompt.ctx.detach().clone()
    f = torch.randn(16, 24)
    y = (f[:, 0] > 0).long()
    hist = train_prompt_learner(coop, f, y, steps=15, lr=0.05, batch_size=16)
    assert len(hist["loss"]) == 15 and hist["loss"][-1] < hist["loss"][0]
    assert not torch.equal(coop.prompt.ctx.detach(), ctx0)
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, frozen[k]), k


def test_train_prompt_learner_reproduces_the_reference_loop(tiny):
    """The CoOp trainer goes through train.fit; the maths must equal the plain loop it replaced:
    SGD(momentum 0.9, no decay), per-step cosine to 0, a seeded random batch per step."""
    import math

    import torch.nn.functional as F

    torch.manual_seed(0)
    a = CoOp(tiny, tok32, CLASSES, ctx_init=None, n_ctx=2)
    b = CoOp(tiny, tok32, CLASSES, ctx_init=None, n_ctx=2)
    f = torch.randn(10, 24)
    y = (f[:, 0] > 0).long()
    hist = train_prompt_learner(a, f, y, steps=6, lr=0.05, batch_size=4, seed=3)
    opt = torch.optim.SGD([b.prompt.ctx], lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / 6)))
    g = torch.Generator().manual_seed(3)
    ref = []
    for _ in range(6):
        idx = torch.randperm(10, generator=g)[:4]
        loss = F.cross_entropy(b(f[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ref.append(float(loss.detach()))
    assert hist["loss"] == pytest.approx(ref, abs=1e-6)
    assert torch.allclose(a.prompt.ctx, b.prompt.ctx, atol=1e-6)


def test_cocoop_shapes_and_zero_meta_net_is_coop(tiny):
    co = CoCoOp(tiny, tok32, CLASSES, ctx_init="a photo of a")
    f = torch.randn(3, 24)
    assert co(f).shape == (3, 2)
    with torch.no_grad():
        for p in co.meta_net.parameters():
            p.zero_()
        plain = CoOp(tiny, tok32, CLASSES, ctx_init="a photo of a")
        assert torch.allclose(co(f), plain(f), atol=1e-4)


def test_nearest_tokens_recovers_init_words(tiny):
    coop = CoOp(tiny, tok32, CLASSES, ctx_init="a photo of a")
    words = [row[0][0] for row in nearest_tokens(coop, k=2)]
    assert words == ["a", "photo", "of", "a"]


def test_clear_errors(tiny):
    with pytest.raises(ValueError, match="position"):
        CoOp(tiny, tok32, CLASSES, position="left")
    with pytest.raises(ValueError, match="two non-empty class names"):
        CoOp(tiny, tok32, ["benign"])
    with pytest.raises(ValueError, match="n_ctx"):
        CoOp(tiny, tok32, CLASSES, ctx_init=None, n_ctx=0)
    with pytest.raises(TypeError, match="open_clip model"):
        CoOp("ViT-B-16", tok32, CLASSES)
    with pytest.raises(ValueError, match="Hugging Face text towers"):
        CoOp(torch.nn.Linear(2, 2), tok32, CLASSES)
    with pytest.raises(ValueError, match="does not fit"):
        CoOp(tiny, tok32, CLASSES, ctx_init=None, n_ctx=40)
    coop = CoOp(tiny, tok32, CLASSES)
    with pytest.raises(ValueError, match="width"):
        coop(torch.randn(2, 7))
    with pytest.raises(ValueError, match="non-empty support"):
        train_prompt_learner(coop, torch.randn(0, 24), torch.zeros(0), steps=1)
    with pytest.raises(ValueError, match="labels must lie"):
        train_prompt_learner(coop, torch.randn(2, 24), torch.tensor([0, 5]), steps=1)


def test_attaches_to_real_vit_b16_text_tower():
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    coop = CoOp(model, _TOK, CLASSES, ctx_init="a photo of a")
    assert count_parameters(coop, trainable=True) == 4 * 512
    with torch.no_grad():
        t = coop.text_features()
        ref = model.encode_text(_TOK([f"a photo of a {c}." for c in CLASSES]), normalize=True)
    assert torch.allclose(t, ref, atol=1e-5)
    csc = PromptLearner(model, _TOK, CLASSES, n_ctx=16, ctx_init=None, class_specific=True)
    assert csc.ctx.shape == (2, 16, 512)


def test_is_supported(tiny):
    from course_lib.methods.clip_fewshot.coop import is_supported

    assert is_supported(tiny)
    assert not is_supported(torch.nn.Linear(2, 2))
    assert not is_supported("ViT-B-16")


def test_more_clear_errors(tiny):
    with pytest.raises(TypeError, match="LongTensor"):
        CoOp(tiny, lambda texts: [[1, 2, 3]] * len(texts), CLASSES)
    with pytest.raises(ValueError, match="shared context"):
        CoCoOp(tiny, tok32, CLASSES, class_specific=True)
    with pytest.raises(ValueError, match="tokenises to no words"):
        CoOp(tiny, tok32, CLASSES, ctx_init="   ")
    coop = CoOp(tiny, tok32, CLASSES)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_prompt_learner(coop, torch.randn(4, 24), torch.tensor([0, 1, 0, 1]), steps=0)


def test_truncated_prompts_match_full_context(tiny):
    coop = CoOp(tiny, tok32, CLASSES, ctx_init="a photo of a")
    assert coop.prompt.tokens.shape[1] < 32  # padding after [EOS] dropped (causal mask)
    full = tok32([f"a photo of a {c}." for c in CLASSES])
    tower = coop.prompt.tower
    with torch.no_grad():
        ref = tower.encode_embeddings(tower.embed(full), full)
        got = tower.encode_embeddings(coop.prompt.prompt_embeddings(), coop.prompt.tokens)
    assert torch.allclose(got, ref, atol=1e-5)

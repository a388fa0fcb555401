"""Each adaptation strategy trains exactly the parameters it should (exact counts), starts from the
pretrained model's answer, and one optimiser step changes nothing else."""
import pytest
import torch

from course_lib.methods.peft import strategies as pv
from course_lib.models.seg_foundation import SegFoundation

D, H, L = 32, 64, 2  # ViT width, MLP hidden, depth
SKIP, DEC = 8, (16, 16, 8)
CFG = dict(image_size=32, patch_size=8, width=D, layers=L, heads=2, mlp_ratio=2.0, skip=SKIP, dec=DEC)
HEAD = DEC[-1] + 1  # new binary 1x1 head


@pytest.fixture(scope="module")
def fm():
    torch.manual_seed(0)
    m = SegFoundation(4, ("background", "a", "lesion", "b"), **CFG).eval()
    with torch.no_grad():  # non-trivial norms/biases so that identities are meaningful
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return m


def n_decoder():
    c0, c1, c2 = DEC
    conv = lambda i, o: i * o * 9 + o  # noqa: E731
    gn = lambda c: 2 * c  # noqa: E731
    return conv(D, c0) + gn(c0) + conv(c0, c1) + gn(c1) + conv(c1 + SKIP, c2) + gn(c2)


def n_vit_used():
    emb = 3 * 8 * 8 * D + D + (16 + 1) * D + 2 * D  # conv1 (no bias), cls, pos (4x4 grid + cls), ln_pre
    block = 2 * 2 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * H + H) + (H * D + D)
    return emb + L * block


EXPECTED = {
    "linear_probe": HEAD,
    "conv_adapter": 2 * (DEC[-1] * DEC[-1] * 9 + DEC[-1]) + HEAD,
    # biases: per block in_proj 3D, out_proj D, ln_1 D, ln_2 D, c_fc H, c_proj D; ln_pre D; stem conv+GN; decoder conv+GN
    "bitfit": L * (3 * D + D + D + D + H + D) + D + 2 * SKIP + 2 * sum(DEC) + HEAD,
    "affine_ln": L * 4 * D + 2 * D + 2 * SKIP + 2 * sum(DEC) + HEAD,
    "lora": L * 4 * ((D + 3 * D) + (D + D) + (D + H) + (H + D)) + HEAD,
    "arena": L * 16 * ((D + 3 * D + 1) + (2 * D + 1) + (D + H + 1) + (H + D + 1)) + HEAD,
    "adaptformer": L * (D * 8 + 8 + 8 * D + D) + HEAD,
    "decoder_only": n_decoder() + HEAD,
    "full_ft": n_vit_used() + (9 * SKIP + SKIP + 2 * SKIP) + n_decoder() + HEAD,
}
EXPECTED["gradual_unfreezing"] = EXPECTED["full_ft"]
EXPECTED["discriminative_lr"] = EXPECTED["full_ft"]


def test_every_method_is_listed():
    assert set(EXPECTED) == set(pv.METHODS)


@pytest.mark.parametrize("method", pv.METHODS)
def test_trainable_counts_and_only_those_change(fm, method):
    ad = pv.prepare(method, fm, "lesion", rank=4, arena_rank=16, adaptformer_dim=8)
    assert ad.trainable() == EXPECTED[method]
    if method != "gradual_unfreezing":  # that one starts with the head only
        assert sum(p.numel() for p in ad.model.parameters() if p.requires_grad) == EXPECTED[method]
    before = {n: p.detach().clone() for n, p in ad.model.named_parameters()}
    x = torch.rand(2, 32, 32)
    y = (torch.rand(2, 1, 32, 32) > 0.5).float()
    opt = ad.optimizer()
    ad.model.train()
    if ad.on_step:
        ad.on_step(3, 4)  # last stage: everything
    loss = torch.nn.functional.binary_cross_entropy_with_logits(ad.model(x), y)
    loss.backward()
    opt.step()
    changed = sum(p.numel() for n, p in ad.model.named_parameters() if not torch.equal(p, before[n]))
    may_change = sum(p.numel() for g in ad.param_groups for p in g["params"])
    assert 0 < changed <= may_change
    for n, p in ad.model.named_parameters():
        if not any(p is q for g in ad.param_groups for q in g["params"]):
            assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("method", pv.METHODS)
def test_starts_from_pretrained_answer_for_known_structure(fm, method):
    """At init every strategy outputs the pretrained 'lesion vs background' logit."""
    x = torch.rand(2, 32, 32)
    with torch.no_grad():
        full = fm(x)
        ref = full[:, 2:3] - full[:, 0:1]
        out = pv.prepare(method, fm, "lesion").model.eval()(x)
    assert torch.allclose(out, ref, atol=1e-4)


def test_novel_structure_head_is_new(fm):
    ad = pv.prepare("lora", fm, None)
    assert ad.model.head.out_channels == 1 and torch.all(ad.model.head.bias == -2.0)


def test_fm_is_not_modified(fm):
    before = {k: v.clone() for k, v in fm.state_dict().items()}
    pv.prepare("lora", fm, "lesion")
    pv.prepare("adaptformer", fm, "lesion")
    assert set(fm.state_dict()) == set(before)
    assert all(torch.equal(before[k], v) for k, v in fm.state_dict().items())


def test_gradual_unfreezing_stages(fm):
    ad = pv.prepare("gradual_unfreezing", fm, "lesion")
    counts = []
    for step in range(8):
        ad.on_step(step, 8)
        counts.append(sum(p.numel() for p in ad.model.parameters() if p.requires_grad))
    assert counts[0] == counts[1] == HEAD
    assert counts[2] == counts[3] == HEAD + n_decoder()
    assert HEAD + n_decoder() < counts[4] == counts[5] < counts[6] == counts[7] == EXPECTED["full_ft"]


def test_discriminative_lrs_decay_with_depth(fm):
    ad = pv.prepare("discriminative_lr", fm, "lesion", decay=0.5)
    lrs = [g["lr"] for g in ad.param_groups]
    base = pv.DEFAULTS["lr"]["discriminative_lr"]
    assert lrs[0] == base  # head
    assert lrs[1:] == [base * 0.5 ** (i + 1) for i in range(len(lrs) - 1)]
    assert len(lrs) == 1 + 1 + 1 + L  # head, decoder, blocks top->bottom, embeddings


def test_arena_prox_hook_respects_warmup(fm):
    from course_lib.methods.peft import arena

    ad = pv.prepare("arena", fm, "lesion", arena_lam=1e6, arena_rank=4)
    opt = ad.optimizer()
    ad.after_step(opt, 0, 10)  # in warm-up: nothing pruned
    assert set(arena.effective_ranks(ad.model.fm).values()) == {4}
    ad.after_step(opt, 9, 10)  # huge lambda after warm-up: everything pruned
    assert set(arena.effective_ranks(ad.model.fm).values()) == {0}


def test_clear_errors(fm):
    with pytest.raises(ValueError, match="unknown option"):
        pv.prepare("lora", fm, rnk=4)
    with pytest.raises(TypeError, match="SegFoundation"):
        pv.prepare("lora", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="adaptformer dim"):
        pv.apply_adaptformer(fm, dim=0)


# ---------------------------------------------------------------------- the registry
def test_registry_names_every_strategy_once_with_a_family():
    assert tuple(pv.STRATEGIES) == pv.METHODS and set(pv.FAMILIES) == set(pv.METHODS)
    assert set(pv.FAMILIES.values()) == {"black-box", "selective PEFT", "additive PEFT", "fine-tuning", "survey strategy"}
    assert all(callable(f) for f in pv.STRATEGIES.values())


def test_unknown_strategy_error_names_the_known_ones(fm):
    with pytest.raises(ValueError) as e:
        pv.prepare("prompt_tuning", fm)
    msg = str(e.value)
    assert "prompt_tuning" in msg and all(m in msg for m in pv.METHODS)


def test_register_adds_a_strategy_and_refuses_duplicates(fm):
    @pv.register("_test_head_only", "black-box")
    def build(fm_, head, lr, cfg):
        return pv.Build([], black_box=True)

    try:
        ad = pv.prepare("_test_head_only", fm, "lesion", lr={"_test_head_only": 1e-2})
        assert ad.trainable() == HEAD and ad.model.black_box
        with pytest.raises(ValueError, match="registered twice"):
            pv.register("_test_head_only", "black-box")(build)
    finally:
        pv.STRATEGIES.pop("_test_head_only", None)
        pv.FAMILIES.pop("_test_head_only", None)


# ---------------------------------------------------------------------- the decoder as a factor
DEC_BIASES = 2 * sum(DEC)  # conv biases + GroupNorm shifts (both named "bias")
DEC_NORMS = 2 * sum(DEC)  # GroupNorm scale + shift


@pytest.mark.parametrize("method", ["bitfit", "affine_ln", "lora", "arena", "adaptformer"])
def test_decoder_frozen_and_tuned_exact_counts(fm, method):
    default = pv.prepare(method, fm, "lesion").trainable()
    in_decoder = {"bitfit": DEC_BIASES, "affine_ln": DEC_NORMS}.get(method, 0)
    frozen = pv.prepare(method, fm, "lesion", decoder="frozen")
    tuned = pv.prepare(method, fm, "lesion", decoder="tuned")
    assert frozen.trainable() == default - in_decoder
    assert tuned.trainable() == default - in_decoder + n_decoder()
    dec_ids = {id(p) for p in frozen.model.fm.decoder.parameters()}
    assert not any(id(p) in dec_ids for g in frozen.param_groups for p in g["params"])
    assert not any(p.requires_grad for p in frozen.model.fm.decoder.parameters())
    g = [g for g in tuned.param_groups if g["name"] == "decoder"]
    assert len(g) == 1 and g[0]["lr"] == pv.DEFAULTS["lr"]["decoder_only"]
    assert all(p.requires_grad for p in tuned.model.fm.decoder.parameters())
    assert tuned.param_groups[0]["name"] != "decoder"  # ARENA's prox reads the lr of group 0


def test_decoder_choice_errors(fm):
    with pytest.raises(ValueError, match="decoder='half'"):
        pv.prepare("lora", fm, decoder="half")
    with pytest.raises(ValueError, match="applies to the PEFT strategies"):
        pv.prepare("full_ft", fm, decoder="frozen")

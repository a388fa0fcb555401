"""Each adaptation strategy trains exactly the parameters it should (exact counts), starts from the
pretrained model's answer, and one optimiser step changes nothing else."""
import pytest
import torch

from course_lib.methods import peft_variants as pv
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
    from course_lib.methods import arena

    ad = pv.prepare("arena", fm, "lesion", arena_lam=1e6, arena_rank=4)
    opt = ad.optimizer()
    ad.after_step(opt, 0, 10)  # in warm-up: nothing pruned
    assert set(arena.effective_ranks(ad.model.fm).values()) == {4}
    ad.after_step(opt, 9, 10)  # huge lambda after warm-up: everything pruned
    assert set(arena.effective_ranks(ad.model.fm).values()) == {0}


def test_clear_errors(fm):
    with pytest.raises(ValueError, match="unknown adaptation method"):
        pv.prepare("prompt_tuning", fm)
    with pytest.raises(ValueError, match="unknown option"):
        pv.prepare("lora", fm, rnk=4)
    with pytest.raises(TypeError, match="SegFoundation"):
        pv.prepare("lora", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="adaptformer dim"):
        pv.apply_adaptformer(fm, dim=0)


# ---------------------------------------------------------------------- the FSEFT runner
def _toy_task(n=12, size=32):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, size, size, generator=g).numpy()
    y = (torch.rand(n, size, size, generator=g) > 0.7).float().numpy()
    return dict(x_pool=x[:8], y_pool=y[:8], x_test=x[8:], y_test=y[8:], structure="lesion", kind="toy", name="toy")


@pytest.mark.parametrize("method", ["linear_probe", "arena", "gradual_unfreezing"])
def test_run_one_row(fm, method):
    from course_lib.methods import fseft

    row = fseft.run_one(fm, method, _toy_task(), shots=2, seed=0, steps=2, record_v=True)
    assert row["method"] == method and row["shots"] == 2 and 0.0 <= row["dice"] <= 1.0
    assert row["trainable"] == EXPECTED[method] or method == "arena"  # arena: default rank 16 here too
    assert row["memory"].startswith("cpu") or row["memory"].startswith("cuda")
    if method == "arena":
        assert len(row["v_path"]) == 2 and set(row["effective_ranks"]) == set(row["v_path"][0])


def test_support_indices_and_errors():
    from course_lib.methods import fseft

    a = fseft.support_indices(60, 5, seed=1)
    assert len(set(a.tolist())) == 5 and (a == fseft.support_indices(60, 5, seed=1)).all()
    with pytest.raises(ValueError, match="exceeds"):
        fseft.support_indices(4, 5, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        fseft.support_indices(4, 0, seed=0)
    with pytest.raises(ValueError, match="unknown FSEFT task"):
        fseft.load_task("liver@Z")


def test_bce_dice_loss():
    from course_lib.methods import fseft

    y = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert fseft.bce_dice_loss((y * 2 - 1) * 30, y).item() < 1e-3
    assert fseft.bce_dice_loss(-(y * 2 - 1) * 30, y).item() > 10


def test_committed_sweep_matches_current_code():
    """The committed quick-profile sweep must have been produced by the current settings and checkpoint,
    otherwise notebook 05 would silently rebuild it (minutes) in CI."""
    import json

    from course_lib import runtime
    from course_lib.methods import fseft

    P = runtime.get_profile("quick")
    asset = runtime.PACKAGE_DIR / "assets" / "fseft_quick.json"
    if not asset.exists():
        pytest.fail(f"{asset} is missing: run python -m course_lib.methods.fseft --profile quick --out {asset}")
    data = json.loads(asset.read_text())
    assert data["fingerprint"] == fseft.fingerprint(P), "re-run the sweep command (see fseft module docstring)"
    S = P.section("fseft")
    n_tasks = len(S.tasks) - len(data["skipped"])
    assert len(data["rows"]) == n_tasks * len(S.shots) * len(S.seeds) * len(pv.METHODS)
    assert fseft.results(P, verbose=False)["rows"] == data["rows"]  # served from the asset, no rebuild

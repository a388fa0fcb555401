"""The FSEFT experiment runner: one run on a tiny task gives a complete row (exact trainable count,
ARENA's rank path), the loss is the old batch BCE + soft Dice, the tables build from rows, and the
committed quick sweep matches the current code."""
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from course_lib import losses, runtime, train
from course_lib.experiments import fseft
from course_lib.methods.peft import strategies as pv
from course_lib.models.seg_foundation import SegFoundation

D, H, L = 32, 64, 2
SKIP, DEC = 8, (16, 16, 8)
CFG = dict(image_size=32, patch_size=8, width=D, layers=L, heads=2, mlp_ratio=2.0, skip=SKIP, dec=DEC)
HEAD = DEC[-1] + 1
PER_BLOCK_ARENA = (D + 3 * D + 1) + (2 * D + 1) + (D + H + 1) + (H + D + 1)  # qkv, out, c_fc, c_proj (+1: v)


@pytest.fixture(scope="module")
def fm():
    torch.manual_seed(0)
    return SegFoundation(4, ("background", "a", "lesion", "b"), **CFG).eval()


def _toy_task(n=12, size=32):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, size, size, generator=g).numpy()
    y = (torch.rand(n, size, size, generator=g) > 0.7).float().numpy()
    return dict(x_pool=x[:8], y_pool=y[:8], x_test=x[8:], y_test=y[8:], structure="lesion", kind="toy", name="toy")


@pytest.mark.parametrize("method,rank", [("linear_probe", None), ("arena", 16), ("arena", 4), ("gradual_unfreezing", None)])
def test_run_one_row(fm, method, rank):
    over = {"arena_rank": rank} if rank else {}
    row = fseft.run_one(fm, method, _toy_task(), shots=2, seed=0, steps=2, record_v=True, **over)
    assert row["method"] == method and row["shots"] == 2 and 0.0 <= row["dice"] <= 1.0
    expected = pv.prepare(method, fm, "lesion", **over).trainable()
    assert row["trainable"] == expected
    if method == "arena":  # exact count from the architecture, at the requested starting rank
        assert row["trainable"] == L * rank * PER_BLOCK_ARENA + HEAD
        assert len(row["v_path"]) == 2 and set(row["effective_ranks"]) == set(row["v_path"][0])
        assert all(0 <= r <= rank for r in row["effective_ranks"].values())
    assert row["memory"].startswith(("cpu", "cuda")) and np.isfinite(row["final_loss"])


def test_run_one_is_reproducible(fm):
    a = fseft.run_one(fm, "lora", _toy_task(), shots=3, seed=1, steps=3)
    b = fseft.run_one(fm, "lora", _toy_task(), shots=3, seed=1, steps=3)
    assert a["dice"] == b["dice"] and a["final_loss"] == b["final_loss"]


def test_loss_equals_the_old_batch_bce_dice():
    """fseft's former local loss (BCE + 1 - batch soft Dice, smooth 1) == losses.bce_dice_loss(batch=True)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 16, 16, generator=g) * 3
    y = (torch.rand(4, 1, 16, 16, generator=g) > 0.7).float()
    p = torch.sigmoid(logits)
    old = F.binary_cross_entropy_with_logits(logits, y) + 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    assert torch.allclose(losses.bce_dice_loss(logits, y, batch=True), old, atol=1e-6)


def test_support_indices_and_errors():
    a = fseft.support_indices(60, 5, seed=1)
    assert len(set(a.tolist())) == 5 and (a == fseft.support_indices(60, 5, seed=1)).all()
    with pytest.raises(ValueError, match="exceeds"):
        fseft.support_indices(4, 5, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        fseft.support_indices(4, 0, seed=0)
    with pytest.raises(ValueError, match="unknown FSEFT task"):
        fseft.load_task("liver@Z")


def _fake_rows():
    rows = []
    for t in ("known", "novel"):
        for k in (5, 10):
            for s in (0, 1):
                for i, m in enumerate(pv.METHODS):
                    rows.append(dict(method=m, family=pv.FAMILIES[m], task=t, shots=k, seed=s, dice=0.1 + 0.05 * i + 0.01 * s,
                                     trainable=100 * (i + 1), train_s=1.0, peak_mb=2.0))
    return rows


def test_tables_from_rows():
    rows = _fake_rows()
    tab = fseft.summary_table(rows)
    assert len(tab) == 2 * 2 * len(pv.METHODS) and (tab.n_seeds == 2).all()
    r = tab[(tab.method == "lora") & (tab.task == "known") & (tab.shots == 5)].iloc[0]
    i = pv.METHODS.index("lora")
    assert r.dice_mean == pytest.approx(0.1 + 0.05 * i + 0.005) and r.dice == f"{r.dice_mean:.3f} ± {r.dice_std:.3f}"
    table, dice = fseft.fseft_table(tab, ("known", "novel"), (5, 10))
    assert list(dice.index) == list(pv.METHODS) and dice.shape == (len(pv.METHODS), 4)
    assert {"family", "trainable", "train_s", "peak_mb"} <= set(table.columns)
    fam = fseft.family_best(tab)
    assert fam.loc[("known", 10), "additive PEFT"] == max(tab[(tab.task == "known") & (tab.shots == 10) & (tab.family == "additive PEFT")].dice_mean)
    check = fseft.paper_check(tab, ("known", "novel"), (5, 10))
    assert len(check) == 1 + 1 + 2 + 2 and set(check["here?"]) <= {"yes", "no"}
    live = [dict(rows[0], train_s=0.5)]
    cmp_ = fseft.live_vs_cached(live, {"rows": rows})
    assert cmp_.dice_live.iloc[0] == cmp_.dice_cached.iloc[0]
    with pytest.raises(KeyError, match="no run"):
        fseft.live_vs_cached([dict(rows[0], seed=99)], {"rows": rows})


def test_rank_summary_and_layer_ranks():
    rows = []
    for s in (0, 1):
        for r, d in ((1, 0.3), (4, 0.5), (16, 0.2)):
            rows.append(dict(method="lora", task="t", seed=s, rank=r, dice=d + 0.01 * s, trainable=r))
        rows.append(dict(method="arena", task="t", seed=s, dice=0.4, trainable=99,
                         effective_ranks={"visual.transformer.resblocks.0.attn.qkv": 10 + s, "visual.transformer.resblocks.0.attn.out": 4}))
    summ, best = fseft.rank_summary(rows, 16)
    assert best == {"t": 4}
    assert summ.loc[("t", "ARENA (from 16)"), "eff_rank"] == pytest.approx((10 + 4 + 11 + 4) / 4)
    heat = fseft.arena_layer_ranks(rows)
    assert heat.loc["t", "0.attn.qkv"] == 10.5 and heat.loc["t", "0.attn.out"] == 4


def test_committed_sweep_matches_current_code():
    """The committed quick-profile sweep must come from the current settings and checkpoint, otherwise
    notebook 05 would silently rebuild it (minutes) in CI."""
    P = runtime.get_profile("quick")
    asset = runtime.PACKAGE_DIR / "assets" / "fseft_quick.json"
    if not asset.exists():
        pytest.fail(f"{asset} is missing: run python -m course_lib.experiments.fseft --profile quick --out {asset}")
    data = json.loads(asset.read_text())
    assert data["fingerprint"] == fseft.fingerprint(P), "re-run the sweep command (see the fseft module docstring)"
    S = P.section("fseft")
    n_tasks = len(S.tasks) - len(data["skipped"])
    assert len(data["rows"]) == n_tasks * len(S.shots) * len(S.seeds) * len(pv.METHODS)
    assert fseft.results(P, verbose=False)["rows"] == data["rows"]  # served from the asset, no rebuild


def test_committed_controls_match_current_code_and_tables():
    """The committed controls (ARENA over lambda incl. 0, decoder frozen/tuned) come from the current code, and
    the de-confounded tables build from them: equal starting rank means trainable counts that differ only by v."""
    P = runtime.get_profile("quick")
    asset = runtime.PACKAGE_DIR / "assets" / "fseft_controls_quick.json"
    if not asset.exists():
        pytest.fail(f"{asset} is missing: run python -m course_lib.experiments.fseft --profile quick --controls --out {asset}")
    ctrl = json.loads(asset.read_text())
    assert ctrl["fingerprint"] == fseft.controls_fingerprint(P), "re-run the controls command (see fseft.run_controls)"
    C = P.section("fseft_controls")
    assert len(ctrl["lam_rows"]) == len(C.tasks) * len(C.seeds) * len(C.arena_lams)
    n_dec = sum(2 if m in ("bitfit", "affine_ln") else 1 for m in C.decoder_methods)
    assert len(ctrl["decoder_rows"]) == len(C.tasks) * len(C.seeds) * n_dec
    sweep = json.loads((runtime.PACKAGE_DIR / "assets" / "fseft_quick.json").read_text())
    summ, paired = fseft.arena_vs_lora(sweep, ctrl)
    assert (summ.n_seeds == len(C.seeds)).all() and len(paired) == len(C.tasks) * len(C.seeds)
    top = ctrl["arena_rank"]
    for t in C.tasks:
        lo = summ[(summ.task == t) & (summ.config == f"LoRA r={top}")].trainable.iloc[0]
        ar = summ[(summ.task == t) & (summ.config == f"ARENA r={top}, λ=0")].trainable.iloc[0]
        assert ar - lo == top * 4 * 4  # 4 blocks x (qkv, out, c_fc, c_proj): one v of length r each
        lam0 = summ[(summ.task == t) & (summ.config == f"ARENA r={top}, λ=0")].eff_rank.iloc[0]
        assert lam0 == top  # no penalty: nothing is pruned
    rl = fseft.rank_vs_lambda(ctrl)
    for _, d in rl.groupby("task"):
        assert d.sort_values("lam").eff_rank.is_monotonic_decreasing  # a larger penalty never keeps more directions
    dec = fseft.decoder_factor(sweep, ctrl)
    assert set(dec.decoder) == {"frozen", "tuned", "frozen (default)", "partly tuned (default)"}


def _fake_decoder_runs(dice: dict, seeds=(0, 1, 2), noise=(0.0, 0.01, -0.01)):
    """sweep/ctrl dicts with dice[(task, method, arm)] per seed (+ a small seed offset); arm in frozen/tuned/default."""
    sweep, ctrl = {"rows": []}, {"decoder_rows": []}
    base = {"lora": 100, "bitfit": 10}
    for (t, m, arm), v in dice.items():
        for s, e in zip(seeds, noise):
            r = dict(task=t, method=m, shots=10, seed=s, dice=v + e,
                     trainable=base[m] + (1000 if arm == "tuned" else 0) + (5 if arm == "default" and m == "bitfit" else 0))
            if arm == "default":
                sweep["rows"].append(r)
            else:
                ctrl["decoder_rows"].append(dict(r, decoder=arm))
    return sweep, ctrl


def test_decoder_rule_verdicts_ties_and_the_slides_rule():
    """Per task: the rule prescribes frozen for the known task and tuned for the novel one; a gap within the seed
    sd / 0.02 is a tie; LoRA's frozen arm is its default sweep row, BitFit's the explicit control."""
    dice = {("lesion@D", "lora", "default"): 0.50, ("lesion@D", "lora", "tuned"): 0.40,     # frozen better: agrees
            ("lesion@D", "bitfit", "default"): 0.30, ("lesion@D", "bitfit", "frozen"): 0.30,
            ("lesion@D", "bitfit", "tuned"): 0.31,                                          # within 0.02: tie
            ("kidney", "lora", "default"): 0.50, ("kidney", "lora", "tuned"): 0.40,         # frozen better: contradicts
            ("kidney", "bitfit", "default"): 0.20, ("kidney", "bitfit", "frozen"): 0.20,
            ("kidney", "bitfit", "tuned"): 0.35}                                            # tuned better: agrees
    sweep, ctrl = _fake_decoder_runs(dice)
    r = fseft.decoder_rule(sweep, ctrl).set_index(["task", "method"])
    assert r.loc[("lesion@D", "lora"), ["prescribed", "verdict", "agrees"]].tolist() == ["frozen", "frozen better", "yes"]
    assert r.loc[("lesion@D", "bitfit"), ["verdict", "agrees"]].tolist() == ["tie", "tie"]
    assert r.loc[("kidney", "lora"), ["prescribed", "verdict", "agrees"]].tolist() == ["tuned", "frozen better", "no"]
    assert r.loc[("kidney", "bitfit"), ["verdict", "agrees"]].tolist() == ["tuned better", "yes"]
    assert r.loc[("kidney", "bitfit"), "trainable_frozen"] == 10  # the explicit control, not the default (15)
    assert (r.trainable_tuned - r.trainable_frozen == 1000).all()
    assert r.loc[("kidney", "bitfit"), "paired_tuned_ahead"] == "3/3"
    assert abs(r.loc[("kidney", "bitfit"), "tuned_minus_frozen"] - 0.15) < 1e-9
    # a large seed sd turns the same mean gap into a tie
    sweep, ctrl = _fake_decoder_runs(dice, noise=(0.0, 0.2, -0.2))
    assert fseft.decoder_rule(sweep, ctrl).set_index(["task", "method"]).loc[("kidney", "bitfit"), "verdict"] == "tie"


def test_decoder_rule_on_the_committed_controls_adds_exactly_the_decoder():
    """Frozen vs tuned arms of every (task, PEFT strategy) differ by exactly segfm-tiny's decoder parameters."""
    from course_lib.models import seg_foundation as sf

    sweep = json.loads((runtime.PACKAGE_DIR / "assets" / "fseft_quick.json").read_text())
    ctrl = json.loads((runtime.PACKAGE_DIR / "assets" / "fseft_controls_quick.json").read_text())
    rule = fseft.decoder_rule(sweep, ctrl)
    C = runtime.get_profile("quick").section("fseft_controls")
    assert len(rule) == len(C.tasks) * len(C.decoder_methods)
    n_dec = train.count_parameters(sf.load(device="cpu").decoder)
    assert (rule.trainable_tuned - rule.trainable_frozen == n_dec).all()
    assert set(rule[rule.kind.str.startswith("known")].prescribed) == {"frozen"}
    assert set(rule[~rule.kind.str.startswith("known")].prescribed) == {"tuned"}
    assert (rule.paired_tuned_ahead.str.endswith(f"/{len(C.seeds)}")).all()

"""The partial-label study runner (course_lib.experiments.partial_labels): one row per (variant, seed),
first-seed models kept, mean ± sd summary, probability table."""
import numpy as np
import pytest

from course_lib.experiments import partial_labels as xp
from course_lib.methods.segfm import partial_labels as pl


def _samples(n=8, H=16):
    out = []
    for i in range(n):
        lm = np.zeros((H, H), np.uint8)
        lm[:4] = 1
        lm[8:12, :4] = 2
        out.append(dict(image=np.full((H, H), i / n, np.float32), label_map=lm, structures=("background", "liver", "kidney"), id=f"s{i}"))
    return out


def test_compare_losses_runs_every_variant_and_seed_and_summarises():
    K = ("liver", "kidney")
    data = pl.assemble(_samples(), K, {"A": ("kidney",), "C": ("liver",)})
    X, T = data.images[:3], data.full_targets[:3]
    rows, nets, preds = xp.compare_losses(data, X, T, seeds=(0, 1), steps=2, batch_size=2, features=(4, 8), progress=False)
    assert [(r["mode"], r["seed"]) for r in rows] == [("naive", 0), ("naive", 1), ("masked", 0), ("masked", 1)]
    assert set(nets) == set(preds) == {"naive", "masked"} and preds["masked"].shape == (3, 2, 16, 16)
    for r in rows:  # each row is exactly per_structure_dice of that run (checked for the kept seed-0 models)
        if r["seed"] == 0:
            assert {k: r[k] for k in K} == pytest.approx(pl.per_structure_dice(preds[r["mode"]], T, K))
    assert all(len(r["loss_curve"]) == 2 and np.isfinite(r["loss_curve"]).all() for r in rows)
    mean, sd, text = xp.summarize_dice(rows, K)
    sel = [r for r in rows if r["mode"] == "masked"]
    liver = [r["liver"] for r in sel]
    assert mean.loc["(b) masked sigmoid", "liver"] == pytest.approx(np.mean(liver))
    assert sd.loc["(b) masked sigmoid", "liver"] == pytest.approx(np.std(liver, ddof=1))
    assert "±" in text.loc["(a) naive softmax", "mean"]
    probs = xp.mean_probability_inside(nets, X, T, K, {"A": ("kidney",), "C": ("liver",)})
    assert list(probs.index) == list(K) and probs["share of studies labelling it"].tolist() == [0.5, 0.5]
    assert ((probs.iloc[:, 1:] >= 0) & (probs.iloc[:, 1:] <= 1)).all().all()
    with pytest.raises(ValueError, match="at least one seed"):
        xp.compare_losses(data, X, T, seeds=())


def test_busiest_orders_by_number_of_structures():
    T = np.zeros((3, 2, 4, 4))
    T[1, :, 0, 0] = 1
    T[2, 0, 0, 0] = 1
    assert xp.busiest(T, 2).tolist() == [1, 2]


def test_wins_needs_a_margin_larger_than_the_seed_sd():
    import pandas as pd

    mean = pd.DataFrame({"x": [0.8, 0.5], "y": [0.5, 0.48], "z": [0.1, 0.4]}, index=["b", "a"])
    sd = pd.DataFrame({"x": [0.05, 0.05], "y": [0.05, 0.01], "z": [0.01, 0.1]}, index=["b", "a"])
    assert xp.wins(mean, sd, "b", "a", ("x", "y", "z")) == {"better": ["x"], "worse": ["z"], "tie": ["y"]}
    tiny_m = pd.DataFrame({"x": [0.003, 0.0]}, index=["b", "a"])
    tiny_s = pd.DataFrame({"x": [0.003, 0.0]}, index=["b", "a"])
    assert xp.wins(tiny_m, tiny_s, "b", "a", ("x",))["tie"] == ["x"]  # below min_diff: a tie


def test_learning_curves_smooth_average_over_seeds_and_measure_the_tail():
    lin = np.linspace(2.0, 1.0, 41)
    rows = [dict(variant="a", loss_curve=list(lin)), dict(variant="a", loss_curve=list(lin + 0.2)),
            dict(variant="flat", loss_curve=[1.0] * 41), dict(variant="no curve", liver=0.5)]
    curves, flat = xp.learning_curves(rows, window=5, tail=0.25)
    assert set(curves) == {"a", "flat"}
    m, s = curves["a"]
    assert len(m) == 41 - 5 + 1
    assert m[0] == pytest.approx(np.mean(lin[:5]) + 0.1) and s[0] == pytest.approx(np.std([0.0, 0.2], ddof=1))
    i0 = int(round(len(m) * 0.75))
    assert flat["a"] == pytest.approx((m[-1] - m[i0]) / m[i0]) and flat["a"] < 0
    assert flat["flat"] == 0.0

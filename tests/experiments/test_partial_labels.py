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

"""TP-Seg benchmark runner: task table with natural imbalance, mean ± sd maths, results table, bad sizes."""
from __future__ import annotations

import numpy as np
import pytest

from course_lib.experiments import tpseg as X


def test_synthetic_benchmark_sizes_and_table():
    tasks = X.build_benchmark((12, 10, 8, 6, 5, 4, 3), 3, 32, real=False)
    assert len(tasks) == 7
    assert [t.n_train for t in tasks] == [12, 10, 8, 6, 5, 4, 3]
    assert all(t.n_val == 3 for t in tasks)
    for t in tasks:
        assert t.train["image"].shape[1:] == (32, 32) and t.train["mask"].shape == t.train["image"].shape
        assert set(np.unique(t.train["mask"])) <= {0, 1}
    tab = X.task_table(tasks)
    assert list(tab["n_train"]) == [12, 10, 8, 6, 5, 4, 3]
    assert len(set(tab["short"])) == 7
    with pytest.raises(ValueError, match="7 sizes"):
        X.build_benchmark((4, 4), 2, 32, real=False)
    with pytest.raises(ValueError, match="real="):
        X.build_benchmark((4,) * 7, 2, 32, real="yes")


def test_mean_sd_and_frame():
    class T:
        def __init__(self, s):
            self.short = s

    tasks = [T("a"), T("b")]
    runs = [{"a": {"dice": 10, "miou": 50}, "b": {"dice": 30, "miou": 60}},
            {"a": {"dice": 20, "miou": 70}, "b": {"dice": 50, "miou": 80}}]
    ms = X.mean_sd(runs, tasks)
    assert ms["a"][0] == 15 and abs(ms["a"][1] - np.std([10, 20], ddof=1)) < 1e-12
    assert ms["Average"][0] == 27.5  # per-seed averages 20 and 35
    assert abs(ms["Average"][1] - np.std([20, 35], ddof=1)) < 1e-12
    df = X.results_frame({"m": ms}, tasks)
    assert df.loc["m", "a"] == "15.0 ± 7.1"


def test_variants_are_valid_configs():
    from dataclasses import replace

    from course_lib.methods.tpseg import TPSegConfig

    for vid, (desc, changes) in X.VARIANTS.items():
        replace(TPSegConfig(), **changes)
    assert X.VARIANTS["A4"][1] == {}

"""The in-context study runner (course_lib.experiments.in_context): seeds x tasks rows and the mean ± sd summary."""
import numpy as np
import pytest
import torch

from course_lib.data.seg_tasks import Task
from course_lib.experiments import in_context as xp
from course_lib.methods.segfm.universeg import UniverSeg


def _task(name, n=12, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.random((n, 16, 16)).astype(np.float32)
    return Task(name, img, img > 0.5)


def test_support_sweep_rows_per_seed_and_summary():
    torch.manual_seed(0)
    net = UniverSeg((4, 4, 4)).eval()
    tasks = [_task("a"), _task("b", seed=1)]
    rows = xp.run_support_sweep(net, tasks, ["a"], (1, 2), eval_queries=4, real_queries=6, seeds=(0, 1, 2), progress=False)
    assert len(rows) == 2 * 3 * 2
    assert {r["kind"] for r in rows if r["task"] == "b"} == {"real (never seen)"}
    mean, sd, n = xp.seed_summary(rows)
    vals = [r["dice"] for r in rows if r["task"] == "a" and r["S"] == 2]
    assert mean.loc["a", 2] == pytest.approx(np.mean(vals)) and sd.loc["a", 2] == pytest.approx(np.std(vals, ddof=1))
    assert (n.to_numpy() == 3).all()


def test_location_prior_is_the_thresholded_mean_support_label():
    lab = np.zeros((10, 16, 16), np.float32)
    lab[:, 4:8, 4:8] = 1  # the structure is always in the same place: the prior is perfect
    t = Task("fixed", np.random.default_rng(0).random((10, 16, 16)), lab)
    rows = xp.location_prior(t, (1, 4, 50), n_queries=4, seed=0)
    assert [r["S"] for r in rows] == [1, 4] and all(r["dice"] == 1.0 and r["M"] == -1 for r in rows)


def test_contrast_to_noise_separates_visible_from_invisible_structures():
    rng = np.random.default_rng(0)
    lab = np.zeros((3, 16, 16), np.float32)
    lab[:, 5:10, 5:10] = 1
    noise = rng.normal(0.5, 0.05, (3, 16, 16)).clip(0, 1)
    bright = Task("bright", np.where(lab > 0, 0.9, noise), lab)
    hidden = Task("hidden", noise, lab)
    assert xp.contrast_to_noise(bright) > 5 > 1 > xp.contrast_to_noise(hidden)


def test_trend_and_pm_table():
    import pandas as pd

    mean = pd.DataFrame({1: [0.2, 0.5], 8: [0.6, 0.52]}, index=["a", "b"])
    sd = pd.DataFrame({1: [0.05, 0.05], 8: [0.05, 0.05]}, index=["a", "b"])
    assert xp.trend(mean, sd, "a", 1, 8) == "grows" and xp.trend(mean, sd, "b", 1, 8).startswith("is flat")
    assert xp.trend(mean, sd, "a", 8, 1) == "falls"
    assert xp.pm_table(mean, sd, "S=").loc["a", "S=8"] == "0.6 ± 0.05"

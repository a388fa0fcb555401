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

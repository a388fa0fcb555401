"""experiments.tyche: the study's rows (one per task x seed x S x method), the seed summary (mean, sd over seeds),
the comparison wording, errors."""
import numpy as np
import pandas as pd
import pytest
import torch

from course_lib.data.seg_tasks import Task
from course_lib.experiments import tyche as xt
from course_lib.methods.segfm import tyche as T
from course_lib.methods.segfm.universeg import UniverSeg


def _blob_task(name, n=12, H=16, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :H]
    labels = np.stack([(yy - rng.integers(5, 11)) ** 2 + (xx - rng.integers(5, 11)) ** 2 <= 12 for _ in range(n)])
    images = np.clip(0.3 + 0.4 * labels + 0.05 * rng.standard_normal(labels.shape), 0, 1)
    return Task(name, images, labels)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    base = UniverSeg((4, 4)).eval()
    return T.from_universeg(base, candidates=3, noise_init=1.0).eval(), base


def test_study_rows_and_summary(models):
    tyche, base = models
    tasks = [_blob_task("a"), _blob_task("b", seed=1)]
    rows = xt.run_tyche_study(tyche, base, tasks, support_sizes=(1, 4, 100), seeds=(0, 1, 2), k=3, n_annotators=3, n_queries=3)
    df = pd.DataFrame(rows)
    assert len(df) == 2 * 3 * 2 * 3  # S = 100 exceeds the pool and is skipped
    assert set(df[df.method == "UniverSeg"].K) == {1} and set(df[df.method != "UniverSeg"].K) == {3}
    assert df.bc_dice.between(0, 1).all() and (df.ged >= -1e-9).all()
    summ = xt.summary(rows)
    assert set(summ.n_seeds) == {3}
    one = summ[(summ.method == "Tyche") & (summ.S == 4)].iloc[0]
    per_seed = df[(df.method == "Tyche") & (df.S == 4)].groupby("seed").bc_dice.mean()
    assert one.bc_dice_mean == pytest.approx(per_seed.mean()) and one.bc_dice_sd == pytest.approx(per_seed.std(ddof=1))
    tab = xt.table(summ)
    assert list(tab.index) == ["UniverSeg", "TTA", "Tyche"] and ("GED ↓", 4) in tab.columns


def test_deterministic_ged_has_no_sample_diversity_term(models):
    _, base = models
    t = _blob_task("a")
    qi, pi = xt.query_split(t, 2, 0)
    ann = xt.query_annotations(t, 0, qi, 3)
    s_img, s_lab = xt.support_draw(t, pi, 4, 3, 0)
    pred = xt.method_candidates("UniverSeg", None, base, t.images[qi], s_img, s_lab, k=3, seed=0).numpy() > 0.5
    from course_lib import metrics

    d = lambda a, b: 1 - metrics.iou(a, b)
    for p, a in zip(pred, ann):
        dy = np.mean([d(a[i:i + 1], a[j:j + 1]) for i in range(3) for j in range(3)])
        dsy = np.mean([d(p, a[j:j + 1]) for j in range(3)])
        assert T.generalized_energy_distance(p, a) == pytest.approx(2 * dsy - dy)


def test_compare_wording():
    summ = pd.DataFrame([dict(method="Tyche", S=4, bc_dice_mean=0.8, bc_dice_sd=0.01, ged_mean=0.3, ged_sd=0.01),
                         dict(method="TTA", S=4, bc_dice_mean=0.7, bc_dice_sd=0.02, ged_mean=0.29, ged_sd=0.02)])
    assert "better than" in xt.compare(summ, "Tyche", "TTA", "bc_dice", 4)
    assert "within the seed sd" in xt.compare(summ, "Tyche", "TTA", "ged", 4)
    summ.loc[1, "ged_mean"] = 0.1
    assert "worse than" in xt.compare(summ, "Tyche", "TTA", "ged", 4)  # GED: lower is better


def test_errors(models):
    tyche, base = models
    with pytest.raises(ValueError, match="K"):
        xt.run_tyche_study(tyche, base, [_blob_task("a")], support_sizes=(1,), seeds=(0,), k=0, n_annotators=3, n_queries=2)
    with pytest.raises(ValueError, match="n_annotators"):
        xt.run_tyche_study(tyche, base, [_blob_task("a")], support_sizes=(1,), seeds=(0,), k=2, n_annotators=0, n_queries=2)
    with pytest.raises(ValueError, match="unknown method"):
        xt.method_candidates("SAM", tyche, base, None, None, None, k=1, seed=0)
    with pytest.raises(ValueError, match="no rows"):
        xt.summary([])

"""UniverSeg inference and evaluation (course_lib.methods.segfm.evaluation): support-set ensembling,
Dice rows per (S, M), the per-task UNet baseline."""
import numpy as np
import pytest
import torch

from course_lib.methods.segfm import evaluation as ev
from course_lib.methods.segfm.universeg import UniverSeg




def test_predict_ensembling_averages_probabilities(toy_task):
    torch.manual_seed(0)
    net = UniverSeg((4, 4, 4)).eval()
    t = toy_task()
    p1 = ev.predict(net, t.images[:2], t.images[2:], t.labels[2:], support_size=3, ensemble=1, seed=0)
    p4 = ev.predict(net, t.images[:2], t.images[2:], t.labels[2:], support_size=3, ensemble=4, seed=0)
    assert p1.shape == p4.shape == (2, 1, 16, 16)
    assert float(p4.min()) >= 0 and float(p4.max()) <= 1
    # by hand: mean of 4 sigmoid outputs on the same random subsets
    rng = np.random.default_rng(0)
    pool = torch.stack([torch.as_tensor(t.images[2:]), torch.as_tensor(t.labels[2:])], 1)
    q = torch.as_tensor(t.images[:2])[:, None]
    ref = sum(torch.sigmoid(net(q, pool[torch.as_tensor(rng.choice(10, 3, replace=False))][None].expand(2, -1, -1, -1, -1))) for _ in range(4)) / 4
    assert torch.allclose(p4, ref, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        ev.predict(net, t.images[:2], t.images[:0], t.labels[:0])
    with pytest.raises(ValueError, match="ensemble"):
        ev.predict(net, t.images[:2], t.images[2:], t.labels[2:], support_size=2, ensemble=0)




def test_evaluate_task_rows_use_metrics_dice_and_skip_large_s(toy_task):
    torch.manual_seed(0)
    net = UniverSeg((4, 4, 4)).eval()
    t = toy_task(n=12)
    rows = ev.evaluate_task(net, t, (1, 4, 100), ensembles=(1, 2), n_queries=4, seed=0)
    assert [(r["S"], r["M"]) for r in rows] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    qi, pi = ev.query_split(t, 4, 0)
    from course_lib import metrics

    prob = ev.predict(net, t.images[qi], t.images[pi], t.labels[pi], support_size=4, ensemble=2, seed=4)
    assert rows[3]["dice"] == pytest.approx(float(metrics.dice(prob[:, 0].numpy() > 0.5, t.labels[qi] > 0.5).mean()))
    with pytest.raises(ValueError, match="none left"):
        ev.query_split(t, 12)


def test_task_unet_trains_through_fit_and_predicts_probabilities(toy_task):
    t = toy_task(n=10)
    net = ev.train_task_unet(t.images[:4], t.labels[:4], steps=2, batch_size=2, features=(4, 8), device="cpu")
    assert not net.training
    p = ev.unet_predict(net, t.images[4:])
    assert p.shape == (6, 1, 16, 16) and float(p.min()) >= 0 and float(p.max()) <= 1
    rows = ev.evaluate_unet(t, (2, 50), n_queries=4, steps=1)
    assert [r["S"] for r in rows] == [2] and rows[0]["M"] == 0
    with pytest.raises(ValueError, match="no support images"):
        ev.train_task_unet(t.images[:0], t.labels[:0], steps=1)

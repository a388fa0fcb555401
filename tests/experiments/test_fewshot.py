"""The few-shot benchmark runner (experiments.fewshot) on tiny inputs: one row per (method, shots, seed),
trainable-parameter counts, the mean ± sd table, the metrics, and clear errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.experiments.fewshot import (
    default_methods,
    load_task,
    run_benchmark,
    score_predictions,
    summarise,
    text_weights,
)
from course_lib.methods.clip_fewshot.checks import single_thread

D, K = 16, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def toy(n_per_class=8, seed=0, sep=3.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(K, D, generator=g)
    y = torch.arange(K).repeat_interleave(n_per_class)
    x = sep * centers[y] + torch.randn(len(y), D, generator=g)
    text = centers + 0.8 * torch.randn(K, D, generator=g)
    return F.normalize(x, dim=-1), y, F.normalize(text, dim=-1)


def test_run_benchmark_rows_and_summary():
    x, y, t = toy(n_per_class=20)
    q, yq, _ = toy(n_per_class=10, seed=0)
    methods = {k: v for k, v in default_methods().items() if k in ("zero-shot", "linear probe", "Tip-Adapter-F")}
    df = run_benchmark(x, y.numpy(), q, yq.numpy(), t, shots=(1, 2), seeds=(0, 1), methods=methods, progress=False)
    assert len(df) == 2 * 2 * len(methods)
    assert set(df["method"]) == set(methods)
    assert ((df.accuracy >= 0) & (df.accuracy <= 1)).all()
    p = df[(df.method == "Tip-Adapter-F") & (df.shots == 2)]["params"]
    assert (p == 2 * K * D).all()
    table = summarise(df)
    assert table.shape == (len(methods), 2) and "±" in table.iloc[0, 0]




def test_every_default_method_runs_on_a_tiny_task():
    x, y, t = toy(n_per_class=6)
    q, yq, _ = toy(n_per_class=5, seed=1)
    df = run_benchmark(x, y.numpy(), q, yq.numpy(), t, shots=(2,), seeds=(0,), progress=False)
    methods = default_methods()
    assert list(df["method"]) == list(methods)
    counts = dict(zip(df["method"], df["params"]))
    assert counts["zero-shot"] == 0 and counts["Tip-Adapter"] == 0
    assert counts["Tip-Adapter-F"] == 2 * K * D  # one trainable key per support sample
    assert counts["LP++-style"] == K * D + K and counts["CLAP-style LP"] == K * D
    assert ((df.auc >= 0) & (df.auc <= 1)).all()


def test_score_predictions_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    prob = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    m = score_predictions(y, prob)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # AUC: positives' scores 0.7, 0.8, 0.4 vs negatives' 0.1, 0.6 -> 5 of 6 pairs ordered
    assert m["auc"] == pytest.approx(5 / 6)


def test_runner_errors():
    x, y, t = toy()
    with pytest.raises(ValueError, match="same backbone"):
        run_benchmark(x, y.numpy(), torch.randn(4, D + 1), np.zeros(4), t, shots=(1,), seeds=(0,), progress=False)
    with pytest.raises(ValueError, match="unknown few-shot source"):
        load_task("imagenet", bb=None)


def test_load_task_on_real_busi(tmp_path, monkeypatch):
    from course_lib import runtime
    from course_lib.models import load_backbone

    if runtime.find_data_dir("busi_256") is None:
        msg = "busi_256 not found (set COURSE_DATA_DIR)"
        pytest.fail(msg) if runtime.real_data_required() else pytest.skip(msg)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    bb = load_backbone("sonoclip-tiny", pretrained=None, device="cpu", verbose=False)
    P = runtime.get_profile("quick").with_(max_real=6)
    task = load_task("busi", bb, P)
    assert task["pool_x"].shape == (6, bb.embed_dim) and task["test_x"].shape == (6, bb.embed_dim)
    assert np.bincount(task["pool_y"]).tolist() == [3, 3]
    assert torch.allclose(task["pool_x"].norm(dim=-1), torch.ones(6), atol=1e-4)
    assert text_weights(bb, "single").shape == (2, bb.embed_dim)
    again = load_task("busi", bb, P)  # second call: served by the feature cache
    assert torch.equal(again["test_x"], task["test_x"])

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


# --------------------------------------------------------------------------- issue 12: baselines and uncertainty
def test_wilson_interval_by_hand_and_auc_interval_brackets_the_auc():
    from course_lib.experiments.fewshot import wilson_interval
    from course_lib.metrics import auc_interval

    lo, hi = wilson_interval(8, 10)  # textbook value: (0.490, 0.943)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = y + rng.normal(0, 1.0, 300)
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(y, s)
    lo, hi = auc_interval(y, s, n_boot=200)
    assert lo < auc < hi and hi - lo < 0.2


def test_score_predictions_reports_majority_rate_and_intervals():
    y = np.array([0, 0, 0, 1])
    prob = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])  # always "benign"
    m = score_predictions(y, prob)
    assert m["majority_rate"] == 0.75 and m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.5
    assert m["accuracy_lo"] < 0.75 < m["accuracy_hi"]


def test_headline_table_calls_ties_and_flags_the_majority_rate():
    import pandas as pd

    from course_lib.experiments.fewshot import headline_table

    rows = []
    for seed in range(3):
        for method, acc in (("zs", 0.70), ("tie", 0.72), ("better", 0.90), ("worse", 0.50)):
            rows.append(dict(dataset="d", method=method, shots=16, seed=seed, accuracy=acc, accuracy_lo=acc - 0.05,
                             accuracy_hi=acc + 0.05, majority_rate=0.55))
    tab = headline_table(pd.DataFrame(rows), 16, baseline="zs")
    verdict = tab["vs zs"].droplevel(0).to_dict()
    assert verdict == {"zs": "baseline", "tie": "tie", "better": "better", "worse": "worse"}
    assert tab["below majority rate"].droplevel(0).to_dict()["worse"] is True
    with pytest.raises(ValueError, match="baseline"):
        headline_table(pd.DataFrame(rows), 16, baseline="nope")


def test_description_zero_shot_is_the_average_similarity_classifier():
    from course_lib.experiments.fewshot import description_zero_shot

    g = torch.Generator().manual_seed(0)
    desc = [F.normalize(torch.randn(4, D, generator=g), dim=-1) for _ in range(2)]
    xq = F.normalize(torch.randn(6, D, generator=g), dim=-1)
    p, n = description_zero_shot(desc, 50.0)(None, None, xq, None, 0)
    s = torch.stack([(xq @ d.T).mean(1) for d in desc], 1)
    assert n == 0 and torch.allclose(p, (50.0 * s).softmax(-1), atol=1e-6)


def test_train_prompt_predictor_budget_override():
    """The same-budget comparison of notebook 03: explicit steps/batch_size replace the profile's sizes."""
    from types import SimpleNamespace

    from course_lib.experiments.fewshot import train_prompt_predictor
    from course_lib.models import load_backbone

    bb = load_backbone("sonoclip-tiny", pretrained=None, device="cpu", verbose=False)
    g = torch.Generator().manual_seed(0)
    xs, ys = F.normalize(torch.randn(8, bb.embed_dim, generator=g), dim=-1), torch.tensor([0, 1] * 4)
    C = SimpleNamespace(steps=3, batch_size=4, cocoop_steps=1, cocoop_batch_size=2, lr=0.05)
    p_prof = train_prompt_predictor(bb, xs, ys, seed=0, C=C)(xs)
    p_same = train_prompt_predictor(bb, xs, ys, seed=0, C=C, steps=3, batch_size=4)(xs)
    p_cheap = train_prompt_predictor(bb, xs, ys, seed=0, C=C, steps=1, batch_size=2)(xs)
    assert torch.allclose(p_prof.sum(1), torch.ones(8), atol=1e-5)
    assert torch.allclose(p_prof, p_same) and not torch.allclose(p_prof, p_cheap)


def test_random_init_coop_gets_the_template_inits_number_of_context_vectors():
    """Issue 12 defect 6: notebook 03 compared CoOp initialised from the template (M = its token count, 5)
    with a random-init CoOp at the old default M = 4, so the two differed in M as well as in the init.
    By default the random-init runner method now uses the template's M: same trainable count exactly."""
    from course_lib.experiments import fewshot as fs
    from course_lib.methods.clip_fewshot import coop
    from course_lib.models import load_backbone

    bb = load_backbone("sonoclip-tiny", pretrained=None, device="cpu", verbose=False)
    M = coop.CoOp.from_backbone(bb, fs.PROMPT_CLASSNAMES, ctx_init=fs.COOP_CTX_INIT).prompt.n_ctx
    g = torch.Generator().manual_seed(0)
    xs, ys = F.normalize(torch.randn(4, bb.embed_dim, generator=g), dim=-1), torch.tensor([0, 1, 0, 1])
    counts = {}
    for name, init in (("template", fs.COOP_CTX_INIT), ("random", None)):
        kept = []
        _, counts[name] = fs.coop_method(bb, steps=1, batch_size=4, ctx_init=init, keep=kept)(xs, ys, xs, None, 0)
        assert kept[0].prompt.n_ctx == M, name
    assert counts["template"] == counts["random"] == M * kept[0].prompt.tower.width
    # an explicit M still wins for the random init
    kept = []
    fs.coop_method(bb, steps=1, batch_size=4, ctx_init=None, n_ctx=2, keep=kept)(xs, ys, xs, None, 0)
    assert kept[0].prompt.n_ctx == 2


def test_tip_adapter_f_with_augmented_views_and_search_after_training():
    """Issue 12 defect 3: keys from augmented views, training on random views, alpha/beta searched again after
    fine-tuning; the runner hands Tip-F the support indices when pool views are given."""
    from course_lib import runtime
    from course_lib.experiments.fewshot import fit_tip_adapter_f

    P = runtime.get_profile("quick")
    x, y, t = toy(n_per_class=4)
    g = torch.Generator().manual_seed(1)
    views = F.normalize(x[None] + 0.3 * torch.randn(5, *x.shape, generator=g), dim=-1)  # 5 views per sample
    m_views = fit_tip_adapter_f(t, x, y, views=views, logit_scale=20.0, seed=0, P=P)
    m_plain = fit_tip_adapter_f(t, x, y, logit_scale=20.0, seed=0, P=P)
    assert len(m_views.hparam_history) == 2 and m_views.hparam_source == "leave-one-out on the support set"
    assert not torch.allclose(m_views.keys, m_plain.keys)
    assert m_views.keys.requires_grad and m_views.keys.shape == x.shape
    one = torch.tensor([0, 4, 8])
    m1 = fit_tip_adapter_f(t, x[one], y[one], views=views[:, one], logit_scale=20.0, seed=0, P=P)
    assert m1.hparam_history == [(1.0, 5.5), (1.0, 5.5)]
    # the runner passes the support indices to Tip-F when pool views are given
    pool_views = F.normalize(x[None].repeat(3, 1, 1), dim=-1)
    methods = {k: v for k, v in default_methods(P, logit_scale=20.0, pool_views=pool_views).items() if k == "Tip-Adapter-F"}
    q, yq, _ = toy(n_per_class=3, seed=2)
    df = run_benchmark(x, y.numpy(), q, yq.numpy(), t, shots=(2,), seeds=(0,), methods=methods, progress=False)
    assert df["params"].tolist() == [2 * K * D]

"""course_lib.metrics on hand-computed cases, including the empty-mask conventions."""
import math

import numpy as np
import pytest
import torch

from course_lib import metrics


def square(h=20, w=20, y0=5, x0=5, s=5):
    m = np.zeros((h, w), np.uint8)
    m[y0 : y0 + s, x0 : x0 + s] = 1
    return m


# --------------------------------------------------------------------------- Dice / IoU
def test_dice_iou_hand_computed():
    a = square(x0=5)  # 25 px
    b = square(x0=8)  # overlap 5 rows x 2 cols = 10 px
    assert metrics.dice(a, b) == pytest.approx([2 * 10 / 50])
    assert metrics.iou(a, b) == pytest.approx([10 / 40])
    assert metrics.dice(a, a) == pytest.approx([1.0])
    assert metrics.iou(a, 1 - a) == pytest.approx([0.0])


def test_batch_torch_and_bool_inputs_give_per_sample_arrays():
    a, b = square(x0=5), square(x0=8)
    batch_p = torch.from_numpy(np.stack([a, a, b]))
    batch_t = torch.from_numpy(np.stack([a, b, b])).bool()
    d = metrics.dice(batch_p, batch_t)
    assert isinstance(d, np.ndarray) and d.shape == (3,) and d.dtype == np.float64
    np.testing.assert_allclose(d, [1.0, 0.4, 1.0])
    assert metrics.iou(batch_p, batch_t).shape == (3,)


def test_empty_mask_conventions_overlap():
    e, a = np.zeros((10, 10)), square(10, 10, 2, 2, 3)
    assert metrics.dice(e, e) == pytest.approx([1.0])
    assert metrics.iou(e, e) == pytest.approx([1.0])
    assert metrics.dice(a, e) == pytest.approx([0.0])
    assert metrics.dice(e, a) == pytest.approx([0.0])
    assert metrics.iou(e, a) == pytest.approx([0.0])


def test_dice_iou_match_a_hand_computation_on_random_batches():
    # the counting definition, written out independently of MONAI, on random masks of odd sizes
    # with empty predictions, empty targets and both empty mixed in: equal to the last bit
    rng = np.random.default_rng(0)
    p = rng.random((40, 9, 13)) < 0.3
    t = rng.random((40, 9, 13)) < 0.3
    p[:4] = False
    t[2:6] = False
    d, j = metrics.dice(p, t), metrics.iou(p, t)
    for k in range(len(p)):
        tp = int(np.sum(p[k] & t[k]))
        fp, fn = int(np.sum(p[k] & ~t[k])), int(np.sum(~p[k] & t[k]))
        if tp + fp + fn == 0:
            want_d = want_j = 1.0  # both empty
        else:
            want_d, want_j = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
        assert d[k] == want_d and j[k] == want_j, k
    assert d[2] == d[3] == 1.0 and d[0] == d[1] == d[4] == d[5] == 0.0  # both empty / one empty


def test_dice_iou_refuse_probabilities_and_logits():
    # binary inputs only: no hidden threshold (issue 19); the error says how to binarise
    probs = np.full((4, 4), 0.7)
    with pytest.raises(ValueError, match="probs > 0.5 or logits > 0"):
        metrics.dice(probs, probs > 0.5)
    with pytest.raises(ValueError, match="values other than 0/1"):
        metrics.iou(torch.randn(2, 4, 4), torch.zeros(2, 4, 4))
    assert metrics.dice(probs > 0.5, probs > 0.5) == pytest.approx([1.0])


# --------------------------------------------------------------------------- surface distances
def test_hd95_asd_single_pixels():
    # one pixel each, 3 rows and 4 columns apart: every surface distance is 5
    a = np.zeros((12, 12), np.uint8)
    b = np.zeros((12, 12), np.uint8)
    a[2, 2] = 1
    b[5, 6] = 1
    assert metrics.hd95(a, b) == pytest.approx([5.0])
    assert metrics.asd(a, b) == pytest.approx([5.0])


def test_hd95_shifted_square_and_spacing():
    a, b = square(x0=5), square(x0=8)  # shifted 3 columns
    assert metrics.hd95(a, b) == pytest.approx([3.0])
    assert metrics.hd95(a, a) == pytest.approx([0.0])
    assert metrics.asd(a, a) == pytest.approx([0.0])
    # spacing = (row_mm, col_mm): a column shift scales with the column spacing only
    assert metrics.hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx([3.0])
    assert metrics.hd95(a, b, spacing=(1.0, 2.0)) == pytest.approx([6.0])
    assert metrics.hd95(a, b, spacing=0.5) == pytest.approx([1.5])


def test_asd_hand_computed_lines():
    # two vertical 1-px lines of length 4, 2 columns apart: every boundary pixel is 2 away
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[3:7, 2] = 1
    b[3:7, 4] = 1
    assert metrics.asd(a, b) == pytest.approx([2.0])
    assert metrics.hd95(a, b) == pytest.approx([2.0])


def test_empty_mask_conventions_distances():
    e, a = np.zeros((30, 40)), square(30, 40, 2, 2, 3)
    diag = math.hypot(30, 40)  # 50
    assert metrics.hd95(e, e) == pytest.approx([0.0])
    assert metrics.asd(e, e) == pytest.approx([0.0])
    assert metrics.hd95(a, e) == pytest.approx([diag])
    assert metrics.asd(e, a) == pytest.approx([diag])
    assert metrics.hd95(a, e, spacing=(2.0, 1.0)) == pytest.approx([math.hypot(60, 40)])
    assert np.isnan(metrics.hd95(a, e, one_empty="nan")[0])


def test_segmentation_means_and_nan_policy():
    a, b, e = square(x0=5), square(x0=8), np.zeros((20, 20))
    res = metrics.segmentation(np.stack([a, a]), np.stack([b, e]))
    assert set(res) == {"dice", "iou", "hd95", "asd"}
    assert res["dice"] == pytest.approx(0.2)  # (0.4 + 0) / 2
    assert res["hd95"] == pytest.approx((3 + math.hypot(20, 20)) / 2)
    res_nan = metrics.segmentation(np.stack([a, a]), np.stack([b, e]), one_empty="nan")
    assert res_nan["hd95"] == pytest.approx(3.0)  # the NaN is ignored
    assert all(isinstance(v, float) for v in res.values())


def test_segmentation_bad_inputs():
    a = square()
    with pytest.raises(ValueError, match="values other than 0/1.*probs > 0.5"):
        metrics.dice(a * 0.7, a)
    with pytest.raises(ValueError, match="shapes differ.*resize"):
        metrics.dice(a, a[:10])
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) use x\[:, 0\]"):
        metrics.dice(a[None, None], a[None, None])
    with pytest.raises(ValueError, match="one_empty"):
        metrics.hd95(a, a, one_empty="inf")
    with pytest.raises(ValueError, match="spacing must be positive"):
        metrics.hd95(a, a, spacing=(0, 1))


# --------------------------------------------------------------------------- classification
def test_classification_binary_hand_computed():
    y = [0, 0, 1, 1]
    s = [0.1, 0.6, 0.4, 0.9]  # preds at 0.5: 0 1 0 1 -> TP=1 FP=1 FN=1 TN=1
    r = metrics.classification(y, s)
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(0.5)
    assert r["mcc"] == pytest.approx(0.0)
    assert r["auc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ranked right
    r2 = metrics.classification(y, s, threshold=0.3)  # preds 0 1 1 1
    assert r2["recall"] == pytest.approx(1.0) and r2["precision"] == pytest.approx(2 / 3)
    # (N, 2) probabilities are treated as binary on column 1
    two = np.stack([1 - np.asarray(s), s], 1)
    assert metrics.classification(y, two) == pytest.approx(r)


def test_classification_multiclass_and_single_class_auc():
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    r = metrics.classification(y, torch.from_numpy(p))
    assert r["accuracy"] == pytest.approx(0.75)
    # per-class recall 1, 1, 0.5 -> macro 5/6; precision 0.5, 1, 1 -> 5/6
    assert r["recall"] == pytest.approx(5 / 6)
    assert r["precision"] == pytest.approx(5 / 6)
    # one-vs-rest AUC by hand: classes 0 and 1 ranked perfectly; class 2: 2 wins + 2 ties of 4 pairs
    assert r["auc"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert math.isnan(metrics.classification([1, 1], [0.2, 0.9])["auc"])


def test_classification_bad_inputs():
    with pytest.raises(ValueError, match="probabilities.*sigmoid"):
        metrics.classification([0, 1], [-2.0, 3.0])
    with pytest.raises(ValueError, match="N = len"):
        metrics.classification([0, 1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match=r"labels in \{0, 1\}"):
        metrics.classification([0, 2], [0.2, 0.3])


def test_classification_refuses_non_integer_float_labels():
    # issue 19: float labels were cast silently (0.7 -> 0); now non-integer floats raise
    with pytest.raises(ValueError, match="non-integer values.*not probabilities"):
        metrics.classification([0.0, 0.7, 1.0], [0.2, 0.6, 0.9])
    with pytest.raises(ValueError, match="non-integer values.*class ids"):
        metrics.classification(np.array([0.0, 2.5, 1.0]), np.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.classification([0.0, float("nan")], [0.2, 0.6])
    # integer-valued floats and bools are labels, and give the same numbers as ints
    ref = metrics.classification([0, 1, 1, 0], [0.2, 0.6, 0.9, 0.4])
    assert metrics.classification(np.array([0.0, 1.0, 1.0, 0.0]), [0.2, 0.6, 0.9, 0.4]) == ref
    assert metrics.classification(torch.tensor([False, True, True, False]), [0.2, 0.6, 0.9, 0.4]) == ref


def test_classification_detects_swapped_arguments():
    y, s = [0, 1, 1, 0], [0.2, 0.6, 0.9, 0.4]
    with pytest.raises(ValueError, match=r"arguments look swapped.*classification\(y_true=labels, y_score=probabilities\)"):
        metrics.classification(s, y)
    with pytest.raises(ValueError, match="arguments look swapped"):
        metrics.classification(torch.tensor(s), torch.tensor(y))


def test_classification_refuses_string_labels_and_out_of_range_ids():
    with pytest.raises(TypeError, match=r"strings.*'benign'.*class_names.index"):
        metrics.classification(["benign", "malignant"], [0.2, 0.8])
    with pytest.raises(TypeError, match="strings"):
        metrics.classification(np.array(["0", "1"], dtype=object), [0.2, 0.8])
    with pytest.raises(TypeError, match="y_score must hold numbers"):
        metrics.classification([0, 1], ["low", "high"])
    with pytest.raises(ValueError, match=r"labels \[0, 3\] but y_score has 3 columns.*0..2"):
        metrics.classification([0, 3], np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"labels \[-1, 0\]"):
        metrics.classification([-1, 0], np.full((2, 3), 1 / 3))


# --------------------------------------------------------------------------- boxes / measurements
def test_box_iou_hand_computed():
    a = [0, 0, 10, 10]
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float32)
    out = metrics.box_iou(a, torch.from_numpy(b))
    assert out.shape == (1, 3)
    np.testing.assert_allclose(out[0], [50 / 150, 1.0, 0.0])
    nan_box = np.full(4, np.nan)
    assert np.isnan(metrics.box_iou(nan_box, a)).all()
    with pytest.raises(ValueError, match="x1 < x0"):
        metrics.box_iou([10, 0, 0, 10], a)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        metrics.box_iou([0, 0, 1], a)


def test_mean_relative_error():
    assert metrics.mean_relative_error([110, 90], [100, 100]) == pytest.approx(0.1)
    assert metrics.mean_relative_error(torch.tensor([1.0]), np.array([2.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="zeros"):
        metrics.mean_relative_error([1.0], [0.0])
    with pytest.raises(ValueError, match="equal length"):
        metrics.mean_relative_error([1.0, 2.0], [1.0])


def test_summarize():
    assert metrics.summarize([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2)))
    assert metrics.summarize([4.0]) == (4.0, 0.0)


def test_auc_interval_matches_a_loop_over_resamples_with_sklearn():
    """The one AUC interval (notebooks 04 and 09): the vectorised rank statistic gives exactly what a loop of
    roc_auc_score over the same resamples gives, single-class resamples skipped."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y, s = rng.integers(0, 2, 25), np.round(rng.random(25), 1)  # rounded: ties in the scores
    r = np.random.default_rng(0)
    vals = []
    for _ in range(300):
        i = r.integers(0, 25, 25)
        if len(np.unique(y[i])) == 2:
            vals.append(roc_auc_score(y[i], s[i]))
    want = np.quantile(vals, [0.025, 0.975])
    assert np.allclose(metrics.auc_interval(y, s, n_boot=300), want, atol=1e-12)
    lo, hi = metrics.auc_interval(y, s)
    assert lo <= roc_auc_score(y, s) <= hi


def test_bootstrap_interval_of_a_mean():
    v = np.random.default_rng(1).random(40)
    lo, hi = metrics.bootstrap_interval(v)
    assert lo < v.mean() < hi and metrics.bootstrap_interval([0.3]) == (0.3, 0.3)
    r = np.random.default_rng(0)
    assert np.allclose((lo, hi), np.quantile(v[r.integers(0, 40, (1000, 40))].mean(1), [0.025, 0.975]))


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.auc_interval([0, 1, 2], [0.1, 0.2, 0.3]), "binary"),
    (lambda: metrics.auc_interval([0, 1], [0.1, 0.2, 0.3]), "same length"),
    (lambda: metrics.auc_interval([1, 1, 1], [0.1, 0.2, 0.3]), "single class"),
    (lambda: metrics.bootstrap_interval([]), "no values"),
    (lambda: metrics.bootstrap_interval([0.5, np.nan]), "NaN"),
    (lambda: metrics.bootstrap_interval([0.5], level=95), "level"),
])
def test_interval_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()

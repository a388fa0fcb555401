"""course_lib.experiments.external: external validation of a trained segmentation model on folders the tests build
(written with course_lib.data.folders.save, read back with folders.load)."""
import numpy as np
import pytest

from course_lib import metrics
from course_lib.data import folders
from course_lib.experiments import external as ext


def _data(n=12, size=16, seed=0):
    """Images whose bright square is exactly the mask (so ``image > 0.5`` is a perfect predictor) and an
    imperfect predictor's target: a square shifted by a random offset per image."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.05, 0.35, (n, size, size))
    msk = np.zeros((n, size, size), bool)
    for i in range(n):
        y, x, s = rng.integers(0, size // 2, 2).tolist() + [int(rng.integers(3, size // 2))]
        msk[i, y:y + s, x:x + s] = True
    img[msk] += 0.5
    return img, msk


def _folder(tmp_path, name, **kw):
    img, msk = _data(**kw)
    return folders.save(img, msk, tmp_path / name)


def perfect(images):
    return images > 0.5


def shifted(images):  # an imperfect model: the perfect mask moved two pixels right, plus one empty prediction
    out = np.roll(images > 0.5, 2, axis=2)
    out[0] = False
    return out


def test_numbers_equal_a_direct_dice_computation(tmp_path):
    samples = folders.load(*_folder(tmp_path, "ext", seed=1))
    rep = ext.evaluate(shifted, samples)
    imgs = np.stack([s["image"] for s in samples])
    masks = np.stack([s["mask"] for s in samples]).astype(bool)
    want = metrics.dice(shifted(imgs), masks)
    np.testing.assert_array_equal(rep["dice"], want)
    assert rep["mean"] == pytest.approx(want.mean()) and rep["n"] == len(samples) == 12
    assert rep["lo"] <= rep["mean"] <= rep["hi"] and rep["lo"] < rep["hi"]
    assert rep["empty"] == 1  # image 0: empty prediction, non-empty mask
    assert rep["ids"][0] == "folders:case_000"
    # an interval is the bootstrap of the same per-image values: recomputing it gives the same numbers
    assert (rep["lo"], rep["hi"]) == ext.bootstrap_interval(want)


def test_a_perfect_model_scores_one_in_and_out_of_domain(tmp_path):
    res = ext.external_validation(perfect, _data(seed=2), folders.load(*_folder(tmp_path, "ext", seed=3)))
    for d in ("in-domain", "external"):
        assert res[d]["mean"] == 1.0 and res[d]["lo"] == res[d]["hi"] == 1.0 and res[d]["empty"] == 0
        assert (res[d]["dice"] == 1.0).all()


def test_external_validation_uses_the_same_metric_on_both_sets(tmp_path):
    in_dom = _data(seed=4)
    res = ext.external_validation(shifted, in_dom, folders.load(*_folder(tmp_path, "ext", seed=5)))
    np.testing.assert_array_equal(res["in-domain"]["dice"], metrics.dice(shifted(in_dom[0]), in_dom[1]))
    assert res["in-domain"]["n"] == res["external"]["n"] == 12


def test_size_mismatches_raise_clear_errors(tmp_path):
    img, msk = _data()
    with pytest.raises(ValueError, match=r"predict returned shape \(12, 8, 8\).*one binary mask"):
        ext.evaluate(lambda x: x[:, :8, :8] > 0.5, (img, msk))
    with pytest.raises(ValueError, match="masks .* and images .* differ in shape"):
        ext.evaluate(perfect, (img, msk[:, :8]))
    mixed = folders.load(*_folder(tmp_path, "a", size=16)) + folders.load(*_folder(tmp_path, "b", size=20))
    with pytest.raises(ValueError, match=r"different sizes.*image_size="):
        ext.evaluate(perfect, mixed)
    # a mask whose file size differs from its image: the folder loader refuses it, naming both files
    from PIL import Image
    i_dir, m_dir = _folder(tmp_path, "c")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(m_dir / "case_003.png")
    with pytest.raises(ValueError, match=r"mask case_003.png is 8x8 .* image case_003.png is 16x16"):
        folders.load(i_dir, m_dir)


def test_unmatched_names_raise(tmp_path):
    i_dir, m_dir = _folder(tmp_path, "d")
    (m_dir / "case_005.png").rename(m_dir / "case_5.png")
    with pytest.raises(ValueError, match=r"1 image\(s\) without a mask.*case_005.*1 mask\(s\) without an image.*case_5"):
        folders.load(i_dir, m_dir)


def test_bad_predictions_and_inputs_raise():
    img, msk = _data()
    with pytest.raises(ValueError, match="binarise"):
        ext.evaluate(lambda x: x, (img, msk))  # probabilities, not masks
    with pytest.raises(TypeError, match="list of course samples"):
        ext.evaluate(perfect, [])
    with pytest.raises(ValueError, match="NaN"):
        ext.bootstrap_interval([0.5, np.nan])
    with pytest.raises(ValueError, match="no values"):
        ext.bootstrap_interval([])
    assert ext.bootstrap_interval([0.3]) == (0.3, 0.3)


def test_seed_summary_calls_overlapping_intervals_a_tie():
    def rep(mean, lo, hi, empty=0):
        return {"mean": mean, "lo": lo, "hi": hi, "n": 10, "empty": empty}

    apart = {s: {"in-domain": rep(0.8, 0.75, 0.85), "external": rep(0.2 + s / 100, 0.1, 0.3, 4)} for s in (0, 1, 2)}
    per_seed, summary = ext.seed_summary(apart)
    assert len(per_seed) == 6 and set(per_seed.verdict) == {"gap"} and set(summary.verdict) == {"gap"}
    assert summary.loc["external", "dice mean"] == pytest.approx(0.21)
    assert summary.loc["external", "dice sd"] == pytest.approx(0.01)
    assert summary.loc["external", "empty (mean)"] == 4 and summary.loc["in-domain", "seeds"] == 3
    close = {s: {"in-domain": rep(0.5, 0.4, 0.6), "external": rep(0.45, 0.35, 0.55)} for s in (0, 1, 2)}
    assert set(ext.seed_summary(close)[1].verdict) == {"tie"}
    mixed = {0: apart[0], 1: close[1], 2: close[2]}
    assert set(ext.seed_summary(mixed)[1].verdict) == {"mixed"} and ext.seed_summary(mixed)[1]["seeds apart"].iloc[0] == 1
    assert summary["seeds apart"].iloc[0] == 3
    with pytest.raises(ValueError, match="no report for"):
        ext.seed_summary({0: {"in-domain": rep(0.5, 0.4, 0.6)}})

"""Real-data loaders (BUSI, HC18, TotalSegmentator) on ../shared/data and on tmp folders with bad input.

Tests that need ../shared/data use the ``real_data_dir`` fixture: skipped when the data is
absent, *failed* when COURSE_REQUIRE_REAL_DATA=1 (CI). Bad-input tests build tiny folders in
``tmp_path`` in the published layouts, so they run everywhere.
"""
import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from course_lib import runtime
from course_lib.data import busi, hc18, totalseg
from course_lib.data.common import SAMPLE_KEYS


def check_schema(s, source):
    assert tuple(s) == SAMPLE_KEYS
    h, w = s["image"].shape
    assert s["image"].dtype == np.float32 and 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["mask"].dtype == np.uint8 and s["mask"].shape == (h, w) and set(np.unique(s["mask"])) <= {0, 1}
    assert s["label_map"].dtype == np.uint8 and s["label_map"].shape == (h, w)
    assert s["label_map"].max() < len(s["structures"]) and s["structures"][0] == "background"
    assert s["box"].dtype == np.float32 and s["box"].shape == (4,)
    assert 0 <= s["label"] < len(s["class_names"])
    assert isinstance(s["attributes"], dict) and isinstance(s["report"], str)
    assert isinstance(s["measurement"], float) and isinstance(s["pixel_spacing_mm"], float)
    assert s["source"] == source and s["id"]
    if s["mask"].any():
        x0, y0, x1, y1 = s["box"]
        ys, xs = np.nonzero(s["mask"])
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    else:
        assert np.isnan(s["box"]).all()


# =========================================================================== BUSI on real data
@pytest.fixture(scope="module")
def busi_gt_small():
    found = runtime.find_data_dir("busi_gt")
    if found is None:
        return None
    return busi.load("gt", path=found, image_size=32)


def test_busi_gt_counts_and_schema(real_data_dir, busi_gt_small):
    real_data_dir("busi_gt")
    samples = busi_gt_small
    counts = {c: sum(s["class_names"][s["label"]] == c for s in samples) for c in busi.CLASS_NAMES}
    assert counts == {"benign": 49, "malignant": 50, "normal": 50}
    for s in samples:
        check_schema(s, "busi_gt")
        assert s["image"].shape == (32, 32) and s["class_names"] == busi.CLASS_NAMES
        assert math.isnan(s["pixel_spacing_mm"]) and math.isnan(s["measurement"])
        # normal masks are empty; every lesion image has a lesion
        assert s["mask"].any() == (s["class_names"][s["label"]] != "normal")


def test_busi_mask_union_and_rgb_conversion(real_data_dir):
    root = real_data_dir("busi_gt")
    (s,) = [x for x in busi.load("gt", path=root, classes=("benign",), limit=49) if x["id"] == "benign (25)"]
    m0 = busi.read_binary(root / "benign" / "benign (25)_mask.png")
    m1 = busi.read_binary(root / "benign" / "benign (25)_mask_1.png")
    assert s["attributes"]["n_masks"] == 2.0
    np.testing.assert_array_equal(s["mask"], m0 | m1)
    assert s["mask"].sum() > max(m0.sum(), m1.sum())  # the second mask adds a region
    # the image file is RGB: it comes back as a grey float image of the file's size
    assert Image.open(root / "benign" / "benign (25).png").mode == "RGB"
    assert s["image"].shape == m0.shape == (583, 770)


def test_busi_published_size_mismatch_is_skipped_or_raised(real_data_dir):
    root = real_data_dir("busi_gt")
    # benign (4)_mask_1.png is 555x465 while its image is 416x416
    s = busi.load("gt", path=root, classes=("benign",), limit=49)
    (b4,) = [x for x in s if x["id"] == "benign (4)"]
    assert b4["attributes"]["skipped_masks"] == "benign (4)_mask_1.png"
    np.testing.assert_array_equal(b4["mask"], busi.read_binary(root / "benign" / "benign (4)_mask.png"))
    with pytest.raises(ValueError, match=r"benign \(4\)_mask_1\.png is 555x465.*on_mismatch='skip'"):
        busi.load("gt", path=root, classes=("benign",), on_mismatch="error")


def test_busi_limit_is_seeded_and_classes_relabel(real_data_dir):
    root = real_data_dir("busi_gt")
    a = busi.load("gt", path=root, classes=("malignant", "benign"), limit=3, seed=1, image_size=16)
    b = busi.load("gt", path=root, classes=("malignant", "benign"), limit=3, seed=1, image_size=16)
    c = busi.load("gt", path=root, classes=("malignant", "benign"), limit=3, seed=2, image_size=16)
    assert [s["id"] for s in a] == [s["id"] for s in b] != [s["id"] for s in c]
    assert [s["label"] for s in a] == [0, 0, 0, 1, 1, 1]
    assert a[0]["class_names"] == ("malignant", "benign") and a[0]["id"].startswith("malignant")


def test_busi_256_counts_no_masks(real_data_dir):
    root = real_data_dir("busi_256")
    assert {c: len(v) for c, v in busi.list_images("256", path=root).items()} == {
        "benign": 437, "malignant": 210, "normal": 133}
    samples = busi.load("256", path=root, limit=2)
    assert len(samples) == 6
    for s in samples:
        check_schema(s, "busi_256")
        assert s["image"].shape == (256, 256) and not s["mask"].any() and s["attributes"]["has_mask"] == 0.0


# =========================================================================== HC18 on real data
def test_hc18_join_spacing_and_filled_mask(real_data_dir):
    root = real_data_dir("hc18")
    with open(root / hc18.CSV_NAME) as f:
        table = {r[0]: (float(r[1]), float(r[2])) for r in list(csv.reader(f))[1:]}
    samples = hc18.load(path=root, image_size=64, limit=6, seed=0)
    assert len(samples) == 6
    for s in samples:
        check_schema(s, "hc18")
        ps, hc = table[s["id"] + ".png"]
        assert s["measurement"] == pytest.approx(hc)
        # zero-padded to square then resized: spacing scales by max(H, W) / 64
        assert s["pixel_spacing_mm"] == pytest.approx(ps * s["attributes"]["orig_w"] / 64)
        assert s["class_names"] == ("fetal_head",) and s["label"] == 0
        a = s["attributes"]
        # the mask is the filled head: its centre is inside
        assert s["mask"][int(round(a["ellipse_cy"])), int(round(a["ellipse_cx"]))] == 1
        # the ellipse fitted on the full-resolution mask reproduces the reference HC (within 3 %)
        assert a["hc_fit_mm"] == pytest.approx(hc, rel=0.03)
        # and the ellipse at the returned size, in mm, agrees with it
        assert hc18.ellipse_circumference(a["ellipse_a"], a["ellipse_b"]) * s["pixel_spacing_mm"] == pytest.approx(
            a["hc_fit_mm"], rel=1e-6)


def test_hc18_native_size_and_subjects(real_data_dir):
    root = real_data_dir("hc18")
    files = sorted(p.name for p in (root / "training_set").glob("010_*HC.png"))
    assert files == ["010_2HC.png", "010_HC.png"]
    s = hc18.load(path=root, limit=1, seed=3)[0]
    assert s["image"].shape == (s["attributes"]["orig_h"], s["attributes"]["orig_w"])
    stretched = hc18.load(path=root, limit=1, seed=3, image_size=32, keep_aspect=False)[0]
    assert stretched["pixel_spacing_mm"] == pytest.approx(s["pixel_spacing_mm"] * s["image"].shape[1] / 32)
    assert stretched["attributes"]["pixel_spacing_y_mm"] == pytest.approx(
        s["pixel_spacing_mm"] * s["image"].shape[0] / 32)
    assert s["attributes"]["subject"] == s["id"][:3]


# =========================================================================== TotalSegmentator on real data
def test_totalseg_label_names_and_slices(real_data_dir):
    root = real_data_dir("totalseg")
    names = totalseg.label_names(root)
    assert names[1] == "spleen" and names[5] == "liver" and names[2] == "kidney_right"
    samples = totalseg.load_slices(root, structures=("liver", "spleen"), image_size=64)
    assert len(samples) > 5
    seg = __import__("nibabel").load(str(root / "example_seg.nii.gz"))
    n_liver = int((np.asarray(seg.dataobj) == 5).any((0, 1)).sum())
    for s in samples:
        check_schema(s, "totalseg")
        assert s["structures"] == ("background", "liver", "spleen")
        assert s["class_names"] == ("liver", "spleen")
        assert set(np.unique(s["label_map"])) <= {0, 1, 2}
        assert s["pixel_spacing_mm"] == pytest.approx(3.0 * 122 / 64)
    assert len(samples) <= n_liver + 30
    # the liver is the largest organ on a mid-abdominal slice, and lies on the image's left
    mid = max(samples, key=lambda s: s["attributes"]["pixels_liver"])
    assert mid["label"] == 0
    ys, xs = np.nonzero(mid["label_map"] == 1)
    assert xs.mean() < 32  # radiological convention: patient's right on the left


def test_totalseg_native_window_and_bad_inputs(real_data_dir):
    root = real_data_dir("totalseg")
    s = totalseg.load_slices(root, structures=("kidney_left",), min_pixels=50)
    assert all(x["attributes"]["pixels_kidney_left"] >= 50 for x in s)
    assert s[0]["image"].shape == (101, 122) and s[0]["pixel_spacing_mm"] == 3.0
    with pytest.raises(ValueError, match="unknown TotalSegmentator structure.*liverr"):
        totalseg.load_slices(root, structures=("liverr",))
    with pytest.raises(ValueError, match="size mismatch.*example_ct_sm"):
        totalseg.load_slices(root, volume="example_ct")
    with pytest.raises(ValueError, match="window"):
        totalseg.load_slices(root, window=(100, -100))
    with pytest.raises(ValueError, match="axis"):
        totalseg.load_slices(root, axis=3)


# =========================================================================== bad input, tmp folders
def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


@pytest.fixture
def tiny_busi(tmp_path):
    """busi_gt/ in the published layout: RGB images, a 1-bit mask, an RGB second mask, empty normal masks."""
    root = tmp_path / "busi_gt"
    rng = np.random.default_rng(0)
    for c in busi.CLASS_NAMES:
        for i in (1, 2):
            img = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
            _png(root / c / f"{c} ({i}).png", img)
            m = np.zeros((12, 16), bool)
            if c != "normal":
                m[2:5, 3:7] = True
            Image.fromarray(m).convert("1").save(root / c / f"{c} ({i})_mask.png")
    m1 = np.zeros((12, 16, 3), np.uint8)
    m1[8:10, 10:14] = 255
    _png(root / "benign" / "benign (2)_mask_1.png", m1)
    (root / "benign" / "test.txt").write_text("\n")  # stray file, as published
    return root


def test_tiny_busi_layout_union_and_resize(tiny_busi):
    s = busi.load("gt", path=tiny_busi)
    assert len(s) == 6
    b2 = [x for x in s if x["id"] == "benign (2)"][0]
    assert b2["mask"].sum() == 12 + 8 and b2["attributes"]["n_masks"] == 2.0
    np.testing.assert_array_equal(b2["box"], [3, 2, 14, 10])
    r = busi.load("gt", path=tiny_busi.parent, image_size=8, keep_aspect=True)  # a root containing busi_gt/
    assert r[0]["image"].shape == (8, 8) and r[0]["mask"][:1].sum() == 0  # padded rows stay empty


def test_missing_folder_names_dataset_place_and_url(tmp_path):
    for call, name in (
        (lambda: busi.load("gt", path=tmp_path / "nowhere"), "BUSI"),
        (lambda: hc18.load(path=tmp_path / "nowhere"), "HC18"),
        (lambda: totalseg.load_slices(tmp_path / "nowhere"), "TotalSegmentator"),
    ):
        with pytest.raises(runtime.DatasetNotFoundError) as e:
            call()
        msg = str(e.value)
        assert name in msg and "nowhere" in msg and "https://" in msg and "COURSE_DATA_DIR" in msg


def test_empty_folders(tmp_path):
    (tmp_path / "busi_gt").mkdir()
    with pytest.raises(runtime.DatasetNotFoundError, match="is empty.*Download"):
        busi.load("gt", path=tmp_path)
    for c in busi.CLASS_NAMES:
        (tmp_path / "busi_gt" / c).mkdir()
    with pytest.raises(runtime.DatasetNotFoundError, match=r"no images \(\*\.png\) in .*benign.*Re-download"):
        busi.load("gt", path=tmp_path)
    (tmp_path / "hc18" / "training_set").mkdir(parents=True)
    (tmp_path / "hc18" / hc18.CSV_NAME).write_text("filename,pixel size(mm),head circumference (mm)\n")
    with pytest.raises(runtime.DatasetNotFoundError, match="no NNN_HC.png images"):
        hc18.load(path=tmp_path)


def test_corrupted_and_truncated_images(tiny_busi):
    bad = tiny_busi / "malignant" / "malignant (1).png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"corrupted or unreadable image file .*malignant \(1\)\.png.*re-download"):
        busi.load("gt", path=tiny_busi, classes=("malignant",))
    good = (tiny_busi / "normal" / "normal (1).png").read_bytes()
    (tiny_busi / "normal" / "normal (1).png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"corrupted or unreadable image file .*normal \(1\)\.png"):
        busi.load("gt", path=tiny_busi, classes=("normal",))


def test_busi_mask_size_mismatch_and_missing_mask(tiny_busi):
    _png(tiny_busi / "malignant" / "malignant (2)_mask.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"mask/image size mismatch: .*malignant \(2\)_mask\.png is 5x5.*16x12"):
        busi.load("gt", path=tiny_busi, on_mismatch="error")
    (tiny_busi / "malignant" / "malignant (2)_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no mask file.*malignant \(2\)_mask\.png.*variant='256'"):
        busi.load("gt", path=tiny_busi)


def test_busi_bad_arguments(tiny_busi):
    with pytest.raises(ValueError, match="unknown BUSI variant"):
        busi.load("512", path=tiny_busi)
    with pytest.raises(ValueError, match="classes=.*benign"):
        busi.load("gt", path=tiny_busi, classes=("cyst",))
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        busi.load("gt", path=tiny_busi, limit=0)
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        busi.load("gt", path=tiny_busi, image_size=-8)
    with pytest.raises(ValueError, match="on_mismatch"):
        busi.load("gt", path=tiny_busi, on_mismatch="resize")


@pytest.fixture
def tiny_hc18(tmp_path):
    """hc18/ with an *outline* ellipse annotation (as in the original challenge release)."""
    root = tmp_path / "hc18"
    yy, xx = np.mgrid[0:60, 0:80]
    r = ((xx - 40) / 30.0) ** 2 + ((yy - 30) / 20.0) ** 2
    outline = (np.abs(np.sqrt(r) - 1) < 0.04).astype(np.uint8) * 255
    _png(root / "training_set" / "001_HC.png", (np.random.default_rng(0).random((60, 80)) * 255).astype(np.uint8))
    _png(root / "training_set" / "001_HC_Annotation.png", np.stack([outline] * 3, -1))
    (root / hc18.CSV_NAME).write_text("filename,pixel size(mm),head circumference (mm)\n001_HC.png,0.5,79.3\n")
    return root


def test_hc18_outline_is_filled_and_ellipse_recovered(tiny_hc18):
    (s,) = hc18.load(path=tiny_hc18)
    a = s["attributes"]
    assert s["mask"][30, 40] == 1 and s["mask"].sum() > 0.9 * math.pi * 30 * 20
    assert a["ellipse_cx"] == pytest.approx(40, abs=0.5) and a["ellipse_cy"] == pytest.approx(30, abs=0.5)
    assert a["ellipse_a"] == pytest.approx(30, rel=0.05) and a["ellipse_b"] == pytest.approx(20, rel=0.05)
    assert a["ellipse_angle_deg"] % 180 == pytest.approx(0, abs=1) or a["ellipse_angle_deg"] == pytest.approx(180, abs=1)
    # circumference of a 30 x 20 px ellipse at 0.5 mm/px ~ 79.3 mm
    assert a["hc_fit_mm"] == pytest.approx(79.3, rel=0.05) and s["measurement"] == pytest.approx(79.3)


def test_hc18_bad_inputs(tiny_hc18):
    ann = tiny_hc18 / "training_set" / "001_HC_Annotation.png"
    _png(ann, np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"mask/image size mismatch: .*001_HC_Annotation\.png is 10x10.*80x60"):
        hc18.load(path=tiny_hc18)
    ann.unlink()
    with pytest.raises(FileNotFoundError, match="001_HC_Annotation.png is missing"):
        hc18.load(path=tiny_hc18)
    (tiny_hc18 / "training_set" / "001_HC.png").write_bytes(b"\x89PNG broken")
    _png(ann, np.zeros((60, 80), np.uint8))
    with pytest.raises(ValueError, match=r"corrupted or unreadable image file .*001_HC\.png"):
        hc18.load(path=tiny_hc18)
    (tiny_hc18 / hc18.CSV_NAME).write_text("name;size\n")
    with pytest.raises(ValueError, match="does not look like HC18's CSV"):
        hc18.load(path=tiny_hc18)
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        hc18.load(path=tiny_hc18, limit=-1)


def test_totalseg_corrupted_nifti(tmp_path):
    root = tmp_path / "totalseg"
    root.mkdir()
    (root / "labels.json").write_text(json.dumps({"1": "spleen", "5": "liver"}))
    (root / "example_ct_sm.nii.gz").write_bytes(b"not a nifti")
    (root / "example_seg.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="corrupted or unreadable NIfTI file .*example_ct_sm.nii.gz"):
        totalseg.load_slices(root, structures=("liver",))
    with pytest.raises(ValueError, match="unknown TotalSegmentator structure"):
        totalseg.load_slices(root, structures=("kidney",))


def test_near_duplicates_and_hf_round_trip(tiny_busi):
    from course_lib.data.common import from_hf_row, to_hf_dataset

    s = busi.load("gt", path=tiny_busi, image_size=8)
    assert busi.near_duplicates(s) == []  # independent random images
    copy = dict(s[1], id="copy")
    pairs = busi.near_duplicates([*s, copy])
    assert [(a, b) for a, b, _ in pairs] == [(s[1]["id"], "copy")] and pairs[0][2] == pytest.approx(1.0)
    ds = to_hf_dataset(s)
    row = from_hf_row(ds[2])
    assert row["id"] == s[2]["id"] and row["attributes"] == s[2]["attributes"]
    np.testing.assert_array_equal(row["mask"], s[2]["mask"])


def test_real_duplicate_across_classes(real_data_dir):
    # a documented BUSI quirk (data_cards/busi.md): the same image filed as benign and as malignant
    root = real_data_dir("busi_256")
    a = busi.read_grey(root / "benign" / "benign (433).png")
    b = busi.read_grey(root / "malignant" / "malignant (145).png")
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


def test_missing_real_data_fails_under_ci(real_data_dir, monkeypatch):
    monkeypatch.setattr(runtime, "find_data_dir", lambda *a, **k: None)
    monkeypatch.setenv("COURSE_REQUIRE_REAL_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="COURSE_REQUIRE_REAL_DATA=1"):
        real_data_dir("busi_gt")
    monkeypatch.setenv("COURSE_REQUIRE_REAL_DATA", "0")
    with pytest.raises(pytest.skip.Exception):
        real_data_dir("busi_gt")


def test_fit_ellipse_rotated():
    yy, xx = np.mgrid[0:120, 0:120].astype(float)
    t = math.radians(30)  # major axis 30 deg from +x towards +y (down the image)
    u = (xx - 60) * math.cos(t) + (yy - 50) * math.sin(t)
    v = -(xx - 60) * math.sin(t) + (yy - 50) * math.cos(t)
    mask = ((u / 40) ** 2 + (v / 15) ** 2 <= 1).astype(np.uint8)
    e = hc18.fit_ellipse(mask)
    assert e["cx"] == pytest.approx(60, abs=0.1) and e["cy"] == pytest.approx(50, abs=0.1)
    assert e["a"] == pytest.approx(40, rel=0.02) and e["b"] == pytest.approx(15, rel=0.03)
    assert e["angle_deg"] == pytest.approx(30, abs=0.5)
    assert hc18.ellipse_circumference(10, 10) == pytest.approx(2 * math.pi * 10)
    assert math.isnan(hc18.fit_ellipse(np.zeros((5, 5)))["a"])

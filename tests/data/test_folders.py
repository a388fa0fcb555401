"""course_lib.data.folders: bring-your-own image/mask folders, on folders the tests build."""
import numpy as np
import pytest
from PIL import Image

from course_lib.data import common, folders


def _img(h=20, w=24, seed=0):
    return (np.random.default_rng(seed).random((h, w)) * 255).astype(np.uint8)


def _square(h=20, w=24, y0=4, x0=6, s=8, value=255):
    m = np.zeros((h, w), np.uint8)
    m[y0:y0 + s, x0:x0 + s] = value
    return m


def _save(arr, path, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


@pytest.fixture
def pairs(tmp_path):
    """Three images in three formats, binary 0/255 PNG masks with the same stems."""
    img, msk = tmp_path / "images", tmp_path / "masks"
    for k, ext in enumerate((".png", ".jpg", ".bmp")):
        _save(_img(seed=k), img / f"case_{k + 1}{ext}")
        _save(_square(x0=4 + 3 * k), msk / f"case_{k + 1}.png")
    return img, msk


def test_binary_masks_give_schema_samples(pairs):
    s = folders.load(*pairs, source="mine", anatomy="breast")
    assert [x["id"] for x in s] == ["mine:case_1", "mine:case_2", "mine:case_3"]
    for k, x in enumerate(s):
        assert set(common.SAMPLE_KEYS) == set(x)
        assert x["image"].dtype == np.float32 and x["image"].shape == (20, 24)
        assert 0 <= x["image"].min() and x["image"].max() <= 1
        want = (_square(x0=4 + 3 * k) > 0).astype(np.uint8)
        np.testing.assert_array_equal(x["mask"], want)
        np.testing.assert_array_equal(x["label_map"], want)
        assert x["structures"] == ("background", "foreground")
        np.testing.assert_array_equal(x["box"], [4 + 3 * k, 4, 12 + 3 * k, 12])
        assert x["anatomy"] == "breast" and x["source"] == "mine" and x["attributes"]["mask_file"] == f"case_{k + 1}.png"
        assert np.isnan(x["pixel_spacing_mm"])
    # the PNG image is read exactly (grey / 255)
    np.testing.assert_allclose(s[0]["image"], _img(seed=0) / 255.0, atol=1e-7)
    # samples go through the Hugging Face conversion like every other source
    ds = common.to_hf_dataset(s)
    assert len(ds) == 3 and common.from_hf_row(ds[0])["id"] == "mine:case_1"


def test_resize_spacing_limit_and_0_1_masks(tmp_path):
    img, msk = tmp_path / "im", tmp_path / "gt"
    for k in range(5):
        _save(_img(40, 40, seed=k), img / f"{k:02d}.tif")
        _save(_square(40, 40, 8, 8, 16, value=1), msk / f"{k:02d}_mask.png")
    s = folders.load(img, msk, mask_suffix="_mask", image_size=20, pixel_spacing_mm=0.1, limit=3, seed=1)
    assert len(s) == 3 and all(x["image"].shape == (20, 20) for x in s)
    assert all(x["mask"].sum() == 64 for x in s)  # 16x16 square at half size
    assert s[0]["pixel_spacing_mm"] == pytest.approx(0.2)
    again = folders.load(img, msk, mask_suffix="_mask", image_size=20, limit=3, seed=1)
    assert [x["id"] for x in again] == [x["id"] for x in s]  # seeded choice


def test_label_map_masks_keep_ids_and_names(tmp_path):
    img, msk = tmp_path / "images", tmp_path / "masks"
    lab = np.zeros((20, 24), np.uint8)
    lab[2:8, 2:8] = 1
    lab[10:18, 12:20] = 3
    _save(_img(), img / "a.png")
    _save(lab, msk / "a.png")
    s = folders.load(img, msk)[0]
    np.testing.assert_array_equal(s["label_map"], lab)
    np.testing.assert_array_equal(s["mask"], (lab > 0).astype(np.uint8))
    assert s["structures"] == ("background", "label_1", "label_2", "label_3")
    named = folders.load(img, msk, structures=("background", "liver", "spleen", "kidney"))[0]
    assert named["structures"][3] == "kidney"
    with pytest.raises(ValueError, match="ids up to 3"):
        folders.load(img, msk, structures=("background", "liver"))
    with pytest.raises(ValueError, match="looks like label ids|look like label ids.*mask_kind='labels'"):
        folders.load(img, msk, mask_kind="binary")


def test_lossy_jpeg_masks_need_binary_kind(tmp_path):
    img, msk = tmp_path / "images", tmp_path / "masks"
    _save(_img(64, 64), img / "a.png")
    noisy = _square(64, 64, 10, 10, 30).astype(np.int16) + np.random.default_rng(0).integers(-40, 40, (64, 64))
    _save(np.clip(noisy, 0, 255).astype(np.uint8), msk / "a.png")
    with pytest.raises(ValueError, match="too many for a label map.*mask_kind='binary'"):
        folders.load(img, msk)
    s = folders.load(img, msk, mask_kind="binary")[0]
    np.testing.assert_array_equal(s["mask"], (_square(64, 64, 10, 10, 30) > 0).astype(np.uint8))


def test_unmatched_names_raise_or_are_skipped(pairs, tmp_path):
    img, msk = pairs
    _save(_img(), img / "extra.png")
    _save(_square(), msk / "orphan.png")
    with pytest.raises(ValueError, match=r"1 image\(s\) without a mask.*extra.png.*1 mask\(s\) without an image.*orphan.png.*on_unmatched='skip'"):
        folders.load(img, msk)
    s = folders.load(img, msk, on_unmatched="skip")
    assert len(s) == 3 and s[0]["attributes"]["skipped_files"] == ["extra.png", "orphan.png"]
    assert [p.name for p, _ in folders.list_pairs(img, msk, on_unmatched="skip")] == ["case_1.png", "case_2.jpg", "case_3.bmp"]
    with pytest.raises(ValueError, match="on_unmatched"):
        folders.load(img, msk, on_unmatched="ignore")


def test_suffix_hint_and_wrong_suffix(tmp_path):
    img, msk = tmp_path / "images", tmp_path / "masks"
    _save(_img(), img / "a.png")
    _save(_square(), msk / "a_mask.png")
    with pytest.raises(ValueError, match="mask_suffix='_mask'"):
        folders.load(img, msk)
    with pytest.raises(ValueError, match="does not end with mask_suffix='_seg'"):
        folders.load(img, msk, mask_suffix="_seg")
    assert len(folders.load(img, msk, mask_suffix="_mask")) == 1


def test_images_and_masks_in_one_folder(tmp_path):
    one = tmp_path / "busi_like"
    for k in range(2):
        _save(_img(seed=k), one / f"benign ({k + 1}).png")
        _save(_square(x0=2 + k), one / f"benign ({k + 1})_mask.png")
    s = folders.load(one, one, mask_suffix="_mask")
    assert [x["id"] for x in s] == ["folders:benign (1)", "folders:benign (2)"]
    assert s[1]["mask"][4, 3] == 1 and s[1]["mask"][4, 2] == 0
    with pytest.raises(ValueError, match="same folder.*mask_suffix='_mask'"):
        folders.load(one, one)


def test_size_mismatch_names_both_files(tmp_path):
    img, msk = tmp_path / "images", tmp_path / "masks"
    _save(_img(20, 24), img / "a.png")
    _save(_square(10, 12, 1, 1, 4), msk / "a.png")
    with pytest.raises(ValueError, match=r"mask a.png is 12x10 .* image a.png is 24x20.*nearest"):
        folders.load(img, msk)


def test_empty_missing_and_duplicate_folders(tmp_path, pairs):
    img, msk = pairs
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="masks folder .*empty.* no image files.*it is empty"):
        folders.load(img, empty)
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no image files.*notes.txt"):
        folders.load(empty, msk)
    with pytest.raises(FileNotFoundError, match="images folder .*nowhere does not exist"):
        folders.load(tmp_path / "nowhere", msk)
    with pytest.raises(NotADirectoryError, match="is a file"):
        folders.load(img / "case_1.png", msk)
    _save(_img(), img / "case_1.tif")
    with pytest.raises(ValueError, match="two images files share the name 'case_1'"):
        folders.load(img, msk)


def test_unreadable_and_colour_files(tmp_path):
    img, msk = tmp_path / "images", tmp_path / "masks"
    _save(_img(), img / "a.png")
    (img / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _save(_square(), msk / "a.png")
    _save(_square(), msk / "b.png")
    with pytest.raises(ValueError, match=r"corrupted or unreadable image file .*b.png"):
        folders.load(img, msk)
    (img / "b.png").unlink()
    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[2:6, 2:6] = (255, 0, 0)
    _save(rgb, msk / "a.png")
    (msk / "b.png").unlink()
    with pytest.raises(ValueError, match="colour image.*one class id per pixel"):
        folders.load(img, msk)


def test_bad_arguments(pairs):
    with pytest.raises(ValueError, match="mask_kind"):
        folders.load(*pairs, mask_kind="soft")
    with pytest.raises(ValueError, match="positive integer"):
        folders.load(*pairs, image_size=0)
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        folders.load(*pairs, pixel_spacing_mm=-1)
    with pytest.raises(TypeError, match="masks folder is None"):
        folders.load(pairs[0], None)


def test_save_writes_the_layout_load_reads(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((3, 12, 10)).astype(np.float32)
    msk = rng.random((3, 12, 10)) > 0.6
    i_dir, m_dir = folders.save(img, msk, tmp_path / "export", names=["a", "b", "c"])
    assert sorted(p.name for p in i_dir.iterdir()) == sorted(p.name for p in m_dir.iterdir()) == ["a.png", "b.png", "c.png"]
    s = folders.load(i_dir, m_dir)
    np.testing.assert_allclose(np.stack([x["image"] for x in s]), np.round(img * 255) / 255, atol=1e-6)
    np.testing.assert_array_equal(np.stack([x["mask"] for x in s]), msk.astype(np.uint8))
    with pytest.raises(ValueError, match="differ"):
        folders.save(img, msk[:, :5], tmp_path / "x")
    with pytest.raises(ValueError, match=r"floats in \[0, 1\]"):
        folders.save(img * 2, msk, tmp_path / "x")
    with pytest.raises(ValueError, match="binary"):
        folders.save(img, msk * 0.5, tmp_path / "x")
    with pytest.raises(ValueError, match="distinct file stems"):
        folders.save(img, msk, tmp_path / "x", names=["a", "a", "b"])

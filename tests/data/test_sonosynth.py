"""SonoSynth: determinism, schema, geometry, rule, label noise, reports, centers, probes, errors."""
import math

import numpy as np
import pytest

from course_lib.data import common
from course_lib.data import sonosynth as ss
from course_lib.data.sonosynth import rng
from course_lib.data.sonosynth.geometry import _probe_geometry


@pytest.fixture(scope="module")
def mixed():
    return ss.generate(48, seed=7, image_size=32, p_lesion=0.8)


# ----------------------------------------------------------------------------- determinism
def test_sample_is_pure_function_of_seed_and_index():
    big = ss.generate_batch(24, seed=3, image_size=32)
    part = ss.generate_batch(5, seed=3, start=10, image_size=32)
    one = ss.generate(1, seed=3, start=12, image_size=32)[0]
    for k in range(5):
        np.testing.assert_array_equal(big["image"][10 + k], part["image"][k])
        np.testing.assert_array_equal(big["label_map"][10 + k], part["label_map"][k])
        assert big["report"][10 + k] == part["report"][k]
        assert big["attributes"][10 + k] == part["attributes"][k]
    np.testing.assert_array_equal(one["image"], big["image"][12])
    np.testing.assert_array_equal(one["mask"], big["mask"][12])
    assert one["id"] == "sonosynth:3:12"
    other = ss.generate_batch(5, seed=4, start=10, image_size=32)
    assert not np.array_equal(other["image"], part["image"])


def test_threaded_batches_match_single_samples():
    big = ss.generate_batch(300, seed=9, image_size=32)  # large enough to be split across threads
    for i in (0, 149, 150, 299):
        one = ss.generate_batch(1, seed=9, start=i, image_size=32)
        np.testing.assert_array_equal(one["image"][0], big["image"][i])
        assert one["report"][0] == big["report"][i] and one["id"][0] == big["id"][i]


def test_attributes_and_reports_do_not_depend_on_image_size():
    a = ss.generate_batch(6, seed=1, image_size=32)
    b = ss.generate_batch(6, seed=1, image_size=64)
    assert a["attributes"] == b["attributes"] and a["report"] == b["report"]
    assert a["anatomy"] == b["anatomy"] and a["center"] == b["center"]
    np.testing.assert_array_equal(a["label"], b["label"])


# ----------------------------------------------------------------------------- schema
def test_schema_complete_with_dtypes(mixed):
    for s in mixed:
        assert set(common.SAMPLE_KEYS) <= set(s)
        assert s["image"].dtype == np.float32 and s["image"].shape == (32, 32)
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
        assert s["mask"].dtype == np.uint8 and set(np.unique(s["mask"])) <= {0, 1}
        assert s["label_map"].dtype == np.uint8 and s["label_map"].max() < len(ss.STRUCTURES)
        assert s["structures"] == ss.STRUCTURES and s["structures"][0] == "background"
        assert s["box"].dtype == np.float32 and s["box"].shape == (4,)
        assert isinstance(s["measurement"], float) and isinstance(s["label"], int)
        assert s["class_names"] == ("benign", "malignant", "normal")
        assert isinstance(s["attributes"], dict) and isinstance(s["report"], str) and s["report"]
        assert s["anatomy"] in ss.ANATOMIES and s["center"] in ss.CENTERS
        assert s["source"] == "sonosynth" and s["id"].startswith("sonosynth:7:")
        assert s["pixel_spacing_mm"] == pytest.approx(ss.ANATOMY_INFO[s["anatomy"]]["depth_mm"] / 32)
    assert {s["anatomy"] for s in mixed} == set(ss.ANATOMIES)


def test_generate_batch_stacks_arrays():
    b = ss.generate_batch(10, seed=0, image_size=32)
    assert set(common.SAMPLE_KEYS) <= set(b)
    assert b["image"].shape == (10, 32, 32) and b["box"].shape == (10, 4) and b["label"].dtype == np.int64
    assert len(b["report"]) == len(b["attributes"]) == len(b["id"]) == 10


def test_required_structures_present():
    for name in ("lesion", "liver", "kidney", "spleen", "gallbladder", "vessel", "thyroid", "node_cortex",
                 "node_hilum", "fat", "fibroglandular", "muscle", "skin"):
        assert ss.STRUCTURES[ss.structure_id(name)] == name
    with pytest.raises(ValueError, match="valid names"):
        ss.structure_id("pancreas")


# ----------------------------------------------------------------------------- geometry
def test_mask_box_measurement_consistent(mixed):
    for s in mixed:
        m = s["mask"]
        if s["label"] == 2:
            assert m.sum() == 0 and np.isnan(s["box"]).all() and math.isnan(s["measurement"])
            assert s["attributes"] == {}
            continue
        assert m.sum() > 0
        np.testing.assert_array_equal(s["box"], common.box_from_mask(m))
        x0, y0, x1, y1 = s["box"]
        sp = s["pixel_spacing_mm"]
        assert max(x1 - x0, y1 - y0) * sp - 1e-4 <= s["measurement"] <= math.hypot(x1 - x0, y1 - y0) * sp + 1e-4
        lesion_ids = [ss.structure_id("node_cortex"), ss.structure_id("node_hilum")] if s["anatomy"] == "lymph_node" \
            else [ss.structure_id("lesion")]
        np.testing.assert_array_equal(np.isin(s["label_map"], lesion_ids), m.astype(bool))


def test_measurement_tracks_size_attribute():
    b = ss.generate_batch(40, seed=2, image_size=64, anatomies=["breast", "thyroid"])
    size = np.array([a["size_mm"] for a in b["attributes"]])
    ratio = b["measurement"] / size
    assert 0.8 < np.median(ratio) < 1.2


def test_sector_probe_is_zero_outside_fan():
    b = ss.generate_batch(6, seed=0, image_size=32, anatomies=["abdomen"])
    assert set(b["probe"]) == {"sector"}
    inside = _probe_geometry("sector", 32)["conv"]["inside"].reshape(32, 32)
    assert (~inside).sum() > 50
    assert (b["image"][:, ~inside] == 0).all() and (b["label_map"][:, ~inside] == 0).all()
    assert (b["image"][:, inside] > 0).mean() > 0.9
    lin = ss.generate_batch(2, seed=0, image_size=32, anatomies=["abdomen"], probe="linear")
    assert (lin["image"][:, ~inside] > 0).mean() > 0.5
    sec = ss.generate_batch(2, seed=0, image_size=32, anatomies=["breast"], probe="sector")
    assert (sec["image"][:, ~inside] == 0).all()


def test_anatomies_have_their_structures():
    want = {"breast": {"skin", "fat", "fibroglandular", "muscle"}, "thyroid": {"thyroid", "trachea", "vessel"},
            "lymph_node": {"node_cortex", "fat"}, "abdomen": {"liver", "spleen", "kidney"}}
    for anatomy, names in want.items():
        b = ss.generate_batch(12, seed=0, image_size=32, anatomies=[anatomy])
        present = {ss.STRUCTURES[i] for i in np.unique(b["label_map"])}
        assert names <= present, (anatomy, present)


# ----------------------------------------------------------------------------- rule and labels
def test_malignancy_rule_on_hand_built_attributes():
    cyst = dict(shape="oval", margin="circumscribed", echogenicity="anechoic", posterior="enhancement",
                calcifications="none", orientation="parallel", size_mm=8.0)
    assert ss.malignancy_rule(cyst) == (0, 0)
    cancer = dict(shape="irregular", margin="spiculated", echogenicity="hypoechoic", posterior="shadowing",
                  calcifications="micro", orientation="taller_than_wide", size_mm=25.0)
    assert ss.malignancy_rule(cancer) == (2 + 3 + 2 + 2 + 3 + 3 + 1, 1)
    four = dict(cyst, echogenicity="hypoechoic", margin="microlobulated")  # 2 + 2 = 4 -> benign
    assert ss.malignancy_rule(four) == (4, 0)
    assert ss.malignancy_rule(dict(four, size_mm=20.0)) == (5, 1)  # the size point tips it
    assert ss.malignancy_rule(dict(cyst, orientation="taller_than_wide", shape="irregular")) == (5, 1)
    with pytest.raises(ValueError, match="valid values"):
        ss.malignancy_rule(dict(cyst, margin="fuzzy"))
    with pytest.raises(ValueError, match="missing"):
        ss.malignancy_rule({"shape": "oval"})


def test_labels_follow_rule_without_noise(mixed):
    for s in mixed:
        if s["label"] != 2:
            assert s["label"] == ss.malignancy_rule(s["attributes"])[1]
            assert s["attributes"]["rule_label"] == s["class_names"][s["label"]]
    labels = [s["label"] for s in mixed]
    assert {0, 1, 2} <= set(labels)


def test_label_noise_rate_roughly_honoured():
    b = ss.generate_batch(400, seed=5, image_size=32, label_noise=0.2)
    rule = np.array([ss.CLASS_NAMES.index(a["rule_label"]) for a in b["attributes"]])
    flipped = (rule != b["label"]).mean()
    assert 0.13 < flipped < 0.27
    assert set(np.unique(b["label"])) == {0, 1}


def test_imposed_attributes_drive_appearance_and_label():
    kw = dict(seed=2, image_size=32, anatomies=["breast"], centers=["A"])
    b = ss.generate_batch(6, attributes={"margin": "spiculated", "calcifications": "micro", "size_mm": 15}, **kw)
    assert all(a["margin"] == "spiculated" and a["calcifications"] == "micro" and a["size_mm"] == 15.0
               for a in b["attributes"])
    assert (b["label"] == 1).all()  # 3 + 3 points: malignant whatever the rest
    dark = ss.generate_batch(6, attributes={"echogenicity": "anechoic"}, **kw)
    bright = ss.generate_batch(6, attributes={"echogenicity": "hyperechoic"}, **kw)
    m = dark["mask"].astype(bool)
    assert dark["image"][m].mean() < bright["image"][bright["mask"].astype(bool)].mean() - 0.3
    tiny = ss.generate_batch(8, seed=0, image_size=32, anatomies=["abdomen"], attributes={"size_mm": 5.0})
    assert (tiny["mask"].sum((1, 2)) >= 1).all() and not np.isnan(tiny["measurement"]).any()  # sub-pixel lesions
    with pytest.raises(ValueError, match="valid attributes"):
        ss.generate_batch(2, attributes={"colour": "red"})
    with pytest.raises(ValueError, match="valid values"):
        ss.generate_batch(2, attributes={"margin": "fuzzy"})


def test_p_lesion_zero_gives_normal_images():
    b = ss.generate_batch(8, seed=0, image_size=32, p_lesion=0.0)
    assert (b["label"] == 2).all() and b["mask"].sum() == 0 and np.isnan(b["measurement"]).all()


# ----------------------------------------------------------------------------- reports
def test_report_concepts_parse_handwritten_text():
    r = ("Thyroid ultrasound. A nodule is seen in the left lobe. It measures 14 mm. The nodule is hypoechoic. "
         "Margins are spiculated. The nodule is taller than wide. Microcalcifications are present. "
         "There are no posterior features. Impression: suspicious for malignancy.")
    c = ss.report_concepts(r)
    assert c == {"size": 14.0, "echogenicity": "hypoechoic", "margin": "spiculated", "orientation": "taller_than_wide",
                 "calcifications": "micro", "posterior": "none", "impression": "malignant", "location": "left lobe"}


def test_reports_are_parsed_back_to_attributes_when_every_concept_is_on():
    freq = {c: 1.0 for c in ss.CONCEPTS}
    b = ss.generate_batch(60, seed=11, image_size=32, concept_freq=freq)
    wordings = set()
    for rep, a in zip(b["report"], b["attributes"]):
        c = ss.report_concepts(rep)
        for k in ("shape", "margin", "echogenicity", "posterior", "calcifications", "orientation"):
            assert c[k] == a[k], (k, rep)
        assert abs(c["size"] - a["size_mm"]) <= 0.6 and "location" in c
        assert c["impression"] == a["rule_label"]
        wordings.add(rep.split(".")[1])
    assert len(set(b["report"])) == 60 and len(wordings) > 10


def test_concept_freq_controls_mentions():
    b = ss.generate_batch(200, seed=0, image_size=32, concept_freq={"calcifications": 0.0, "margin": 0.5})
    found = [ss.report_concepts(r) for r in b["report"]]
    assert not any("calcifications" in c for c in found)
    rate = np.mean(["margin" in c for c in found])
    assert 0.38 < rate < 0.62
    with pytest.raises(ValueError, match="valid concepts"):
        ss.generate_batch(2, concept_freq={"colour": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ss.generate_batch(2, concept_freq={"margin": 1.5})


# ----------------------------------------------------------------------------- centers and artifacts
def _stats(center):
    b = ss.generate_batch(24, seed=0, image_size=64, anatomies=["lymph_node"], centers=[center], p_lesion=0.0)
    im = b["image"][:, 4:24, 8:56]  # subcutaneous fat: homogeneous speckle region
    grad = np.abs(np.diff(im, axis=2)).mean()
    return im.mean(), im.std(), grad


def test_centers_differ_measurably():
    a, c, d = _stats("A"), _stats("C"), _stats("D")
    assert c[1] > 1.2 * a[1]  # C: fully developed speckle -> larger grey-level spread
    assert d[2] < 0.8 * a[2]  # D: low resolution -> smaller pixel-to-pixel differences
    assert d[0] < a[0] - 0.05  # D: gain shift
    assert ss.CENTERS["D"].resolution[1] > ss.CENTERS["A"].resolution[1]


def test_reverberation_bands_are_periodic():
    cen = ss.CENTERS["C"]
    kw = dict(seed=0, image_size=64, anatomies=["lymph_node"], centers=["C"], p_lesion=0.0)
    on = ss.generate_batch(16, **kw)["image"]
    off = ss.generate_batch(16, artifacts=False, **kw)["image"]
    prof = (on - off).mean(axis=(0, 2))
    spec = np.abs(np.fft.rfft(prof - prof.mean()))
    expected = round(1 / cen.reverb_spacing)  # cycles per image height
    assert int(np.argmax(spec[3:])) + 3 == expected


def test_shadowing_darkens_below_lesion():
    b = ss.generate_batch(64, seed=3, image_size=64, anatomies=["breast"], centers=["A"])
    below = {"shadowing": [], "enhancement": []}
    for k, a in enumerate(b["attributes"]):
        if a["posterior"] in below:
            x0, _, x1, y1 = b["box"][k].astype(int)
            if y1 + 6 < 64:
                below[a["posterior"]].append(b["image"][k, y1 + 1:y1 + 6, x0:x1].mean() - b["image"][k, y1 + 1:y1 + 6].mean())
    assert np.mean(below["shadowing"]) < np.mean(below["enhancement"]) - 0.05


# ----------------------------------------------------------------------------- dataset and errors
def test_make_dataset_torch_format_and_disjoint_splits():
    import datasets
    import torch

    tr = ss.make_dataset(6, split="train", seed=0, image_size=32)
    te = ss.make_dataset(4, split="test", seed=0, image_size=32)
    assert isinstance(tr, datasets.Dataset) and len(tr) == 6
    assert not set(tr["id"]) & set(te["id"])
    row = tr.with_format("torch")[0]
    assert isinstance(row["image"], torch.Tensor) and row["image"].shape == (32, 32)
    back = common.from_hf_row(tr[0])
    assert back["attributes"] == ss.generate(1, seed=0, image_size=32)[0]["attributes"]
    with pytest.raises(ValueError, match="valid splits"):
        ss.make_dataset(2, split="holdout")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(anatomies=["brain"]), "valid anatomies: breast, thyroid, lymph_node, abdomen"),
        (dict(centers=["Z"]), "valid centers: A, B, C, D"),
        (dict(image_size=60), "multiple of 8"),
        (dict(image_size=16), "e.g. 32, 64"),
        (dict(probe="convex"), "valid probes: linear, sector"),
        (dict(label_noise=-0.1), "label_noise"),
        (dict(p_lesion=2), "p_lesion"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ss.generate_batch(2, **kwargs)


@pytest.mark.parametrize("n", [0, -3])
def test_non_positive_counts_raise(n):
    with pytest.raises(ValueError, match="positive integer"):
        ss.generate(n)
    with pytest.raises(ValueError, match="positive integer"):
        ss.make_dataset(n)


# ----------------------------------------------------------------------------- named column layout
def test_named_columns_fit_the_layout_and_do_not_collide():
    shared = {int(c) for c in rng.Col}
    assert shared == set(range(rng.N_SHARED))  # every shared column 0..27 has a name
    # the two documented re-uses are aliases of the same draw, not separate columns
    assert rng.Col.IRREGULAR_AMPLITUDE is rng.Col.PHASE_3 and rng.Col.ANGULAR_OFFSET is rng.Col.PHASE_4
    calc = set(range(rng.CALC_RADIUS.start, rng.CALC_ANGLE.stop))
    assert rng.CALC_RADIUS.stop == rng.CALC_ANGLE.start and rng.MAX_CALCIFICATIONS == 12
    for anatomy, cols in rng.SCENE_COLUMNS.items():
        values = [int(c) for c in cols]
        assert len(values) == len(set(values)), f"{anatomy}: two names share a column"
        assert min(values) >= rng.N_SHARED and max(values) < rng.N_SCENE, anatomy
        assert not set(values) & calc, f"{anatomy}: scene column inside the calcification block"
    assert set(rng.SCENE_COLUMNS) == set(ss.ANATOMIES)
    assert list(rng.ATTRIBUTE_COLUMNS) == [k for k in ss.ATTRIBUTES if k != "size_mm"]
    assert rng.TEXTURE.stop == rng.N_UNIFORMS < rng.NOISE_SLOT


def test_named_columns_drive_what_they_name():
    # Breast.HAS_RIB: a rib (label "rib") is present iff the column's uniform is < 0.5
    key = rng.sample_key(0)
    idx = np.arange(40, dtype=np.uint64)
    P = rng.uniforms(key, idx, rng.N_UNIFORMS, 0)[:, rng.SCENE]
    b = ss.generate_batch(40, seed=0, image_size=64, anatomies=["breast"])
    has_rib = np.array([(lm == ss.structure_id("rib")).any() for lm in b["label_map"]])
    np.testing.assert_array_equal(has_rib, P[:, rng.Breast.HAS_RIB] < 0.5)
    # Col.LABEL_NOISE: with label_noise=0.5 exactly the samples whose column is < 0.5 are flipped
    noisy = ss.generate_batch(40, seed=0, image_size=32, anatomies=["breast"], label_noise=0.5)
    rule = np.array([ss.CLASS_NAMES.index(a["rule_label"]) for a in noisy["attributes"]])
    np.testing.assert_array_equal(noisy["label"] != rule, P[:, rng.Col.LABEL_NOISE] < 0.5)


def test_num_threads_setting_does_not_change_output(monkeypatch):
    monkeypatch.delenv("SONOSYNTH_THREADS", raising=False)
    monkeypatch.setattr(ss, "NUM_THREADS", 1)
    assert ss.num_threads() == 1
    one = ss.generate_batch(260, seed=4, image_size=32)
    monkeypatch.setattr(ss, "NUM_THREADS", 2)
    assert ss.num_threads() == 2
    two = ss.generate_batch(260, seed=4, image_size=32)
    np.testing.assert_array_equal(one["image"], two["image"])
    monkeypatch.setenv("SONOSYNTH_THREADS", "two")
    with pytest.raises(ValueError, match="SONOSYNTH_THREADS"):
        ss.num_threads()

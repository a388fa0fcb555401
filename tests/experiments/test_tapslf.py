"""TAP-SLF experiment runner: task data layout, run sharing between tables, tables, paper numbers."""
import numpy as np
import pandas as pd
import pytest
import torch

from course_lib.experiments import tapslf as X
from course_lib.methods.tapslf import tapslf as ts


def test_make_task_data_layout_and_disjoint_images():
    d = X.make_task_data(4, split="train", image_size=32)
    assert set(d) == set(ts.TASKS)
    assert d["seg"]["x"].shape == (4, 3, 32, 32) and d["seg"]["y"].shape == (4, 1, 32, 32)
    assert set(d["cls"]["y"].tolist()) <= {0, 1}  # every image has a lesion: benign or malignant
    assert d["det"]["y"].shape == (4, 4) and 0 <= d["det"]["y"].min() and d["det"]["y"].max() <= 1
    assert (d["reg"]["y"] > 0).all()
    assert not torch.equal(d["seg"]["x"], d["cls"]["x"])  # each task has its own images
    te = X.make_task_data(4, split="test", image_size=32)
    assert not torch.equal(d["seg"]["x"], te["seg"]["x"])
    with pytest.raises(ValueError, match="split must be"):
        X.make_task_data(4, split="val", image_size=32)


def test_variant_key_shares_equal_runs():
    k = {r: X.variant_key(ts.replace(ts.VARIANTS["tap_slf"], frozen_ratio=r), 4) for r in (0.5, 0.6, 0.7, 0.8)}
    assert k[0.5] == k[0.6] != k[0.7] == k[0.8]
    assert X.variant_key(ts.VARIANTS["tap_slf"], 4) == k[0.7]
    assert X.variant_key(ts.VARIANTS["tap_slf_det_prompts"], 4) != k[0.7]


def test_run_grid_runs_each_distinct_configuration_once(tiny_vit):
    vit = tiny_vit(layers=4, width=32, heads=4, image_size=32, patch_size=8)
    tr = X.make_task_data(4, split="train", image_size=32)
    te = X.make_task_data(4, split="test", image_size=32)
    cfgs = {"tap_slf": ts.VARIANTS["tap_slf"], "frozen 80 %": ts.replace(ts.VARIANTS["tap_slf"], frozen_ratio=0.8),
            "heads_only": ts.VARIANTS["heads_only"]}
    df = X.run_grid(vit, cfgs, tr, te, seeds=(0,), steps=4, warm_steps=4, lr=1e-3, batch_size=2, fpn_dim=8)
    assert list(df["variant"]) == ["tap_slf", "frozen 80 %", "heads_only"]
    a, b = df.iloc[0], df.iloc[1]
    assert a["seconds"] == b["seconds"] and a["dsc"] == b["dsc"]  # one run, reused
    assert df.iloc[2]["trainable"] < a["trainable"]
    mean, sd = X.summary(df, ["heads_only", "tap_slf"])
    assert list(mean.index) == ["heads_only", "tap_slf"] and sd.isna().all().all()  # one seed: no sd
    t = X.format_table(mean, sd.fillna(0.0))
    assert t.loc["tap_slf", "DSC"].count("±") == 1


def test_paper_tables():
    t3 = X.paper_table("table3")
    assert t3.loc["TAP-SLF", "DSC"] == 0.9423 and t3.loc["TAP-SLF", "MIOU"] == 0.6867
    assert X.paper_table("table4").loc["70 %", "AUC"] == 0.9038
    assert X.PAPER["table3"]["TAP-SLF"]["mre"] == pytest.approx(22.98, abs=0.01)
    with pytest.raises(ValueError, match="table3"):
        X.paper_table("table2")


def test_florence2_base_breakdown_from_config():
    pb = X.florence2_base_breakdown("tap_slf", fpn_dim=32)
    assert pb["lora"] == 245_760 and pb["prompts"] == 30_720
    assert 0 < pb["percent"] < 1

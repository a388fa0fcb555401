"""The concept-frequency experiment runner: summary and log-linear fit, result cache, the committed
quick-profile asset and its fingerprint (the frozen image tower is identified by its weights)."""
import json

import numpy as np
import pytest


def test_concept_frequency_summary_and_log_linear_fit():
    from course_lib.experiments import concept_frequency as cf

    res = {"points": [{"freq": f, "seed": s, "mentions": 10 * f, "balanced_acc": 0.5 + 0.1 * np.log10(f) + 0.3 + 0.01 * s}
                      for f in (0.01, 0.1, 1.0) for s in (0, 1)]}
    rows = cf.summarize(res)
    assert [r["freq"] for r in rows] == [0.01, 0.1, 1.0] and all(r["n_seeds"] == 2 for r in rows)
    a, b = cf.log_linear_fit(rows)
    assert a == pytest.approx(0.805) and b == pytest.approx(0.1)
    with pytest.raises(ValueError, match="two non-zero"):
        cf.log_linear_fit([{"freq": 0.0, "balanced_acc": 0.5}, {"freq": 1.0, "balanced_acc": 0.9}])


def test_concept_frequency_cache_is_rebuilt_when_missing_and_reused(monkeypatch, tmp_path):
    from course_lib import runtime
    from course_lib.experiments import concept_frequency as cf

    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setattr(cf, "ASSET", tmp_path / "no_asset.json")
    P = runtime.get_profile("quick")
    calls = []

    def fake_sweep(profile=None, progress=True):
        calls.append(1)
        s = cf.settings(profile)
        return {"settings": s, "hash": cf.settings_hash(s), "points": [{"freq": 0.0, "seed": 0, "balanced_acc": 0.5}]}

    monkeypatch.setattr(cf, "run_sweep", fake_sweep)
    r1 = cf.frequency_curve(P)
    r2 = cf.frequency_curve(P)
    assert len(calls) == 1 and r1["loaded_from"] == "computed now" and r2["loaded_from"].endswith(".json")
    # different settings (full profile) -> a different key -> recomputed
    cf.frequency_curve(runtime.get_profile("full"))
    assert len(calls) == 2


def test_committed_concept_frequency_asset_matches_the_quick_settings():
    from course_lib import runtime
    from course_lib.experiments import concept_frequency as cf

    if not cf.ASSET.exists():
        pytest.skip("concept-frequency asset not built yet")
    res = json.loads(cf.ASSET.read_text())
    assert res["hash"] == cf.settings_hash(cf.settings(runtime.get_profile("quick")))
    assert sorted({p["freq"] for p in res["points"]}) == sorted(runtime.get_profile("quick").section("concept_frequency").freqs)


def test_fingerprint_names_the_weights_of_the_committed_checkpoint():
    """The asset is keyed by a digest of sonoclip-tiny's tensors, so it stays valid when the same
    weights are re-saved with a new header, and goes stale when the weights change."""
    from course_lib import checkpoints, runtime
    from course_lib.experiments import concept_frequency as cf
    from course_lib.models import backbones as B

    s = cf.settings(runtime.get_profile("quick"))
    tensors, _ = checkpoints.load_state(B.SONOCLIP_TINY_FILE)
    assert B.state_digest(tensors) in s["image_model"]
    tensors["logit_scale"] = tensors["logit_scale"] + 1
    assert B.state_digest(tensors) != B.SONOCLIP_TINY_WEIGHTS_SHA256


def test_eval_feature_cache_key_depends_on_the_concept(monkeypatch):
    """A defect found in review: the evaluation set is chosen by the concept's values, but its cache key did not
    name the concept, so changing cf.CONCEPT could silently reuse another concept's features."""
    import torch

    from course_lib.experiments import concept_frequency as cf
    from course_lib.models import feature_cache as fc

    seen = []
    monkeypatch.setattr(fc.FeatureCache, "get_or_compute", lambda self, key, fn: seen.append(key) or torch.zeros(1, 2))
    cf._features("eval", 0, 8, lambda: None)
    monkeypatch.setattr(cf, "CONCEPT", "calcifications")
    cf._features("eval", 0, 8, lambda: None)
    assert seen[0] != seen[1]

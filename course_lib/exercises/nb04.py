"""Checkers for notebook 04 (linear probes, adapters and transduction for few-shot CLIP), registered with
course_lib.exercises: CLIP-Adapter's residual ratio, Tip-Adapter-F's parameter count, a class prior for
TransCLIP, the feature-cache speed-up of a large encoder."""
from __future__ import annotations

import math

from course_lib.exercises import Result, exercise, same_choice
from course_lib.experiments.fewshot import wilson_interval

_VERDICTS = ("better", "tie", "worse")


@exercise("04.1", title="CLIP-Adapter with ratio 0.6",
          right=(0.70, "tie"), right_context={"reference": 0.67, "n_test": 160},
          wrong=(0.70, "better"), wrong_context={"reference": 0.67, "n_test": 160},
          hint="train CLIP-Adapter with ratio=0.6 on the same shots and seeds as the benchmark, average the test "
               "accuracy over the seeds; 'better'/'worse' only when your mean lies outside the 95 % Wilson interval "
               "of the reference (ratio 0.2) accuracy on n_test images, else 'tie'")
def _ratio(accuracy, verdict, *, reference, n_test):
    acc = float(accuracy)
    if not (0.5 <= acc <= 1.0):
        # an adapter whose residual keeps part of the zero-shot feature should not fall below chance (2 classes)
        return Result(False, f"accuracy {acc:.3f} is outside [0.5, 1]: pass a fraction (0-1), mean over seeds; a "
                             "two-class adapter that keeps part of the zero-shot feature should beat chance")
    lo, hi = wilson_interval(int(round(float(reference) * int(n_test))), int(n_test))
    want = "better" if acc > hi else "worse" if acc < lo else "tie"
    res = same_choice(str(verdict), want, "your verdict", options=_VERDICTS)
    return Result(res.ok, f"ratio 0.6: {acc:.3f} vs ratio 0.2: {float(reference):.3f} (95 % interval {lo:.3f}–{hi:.3f} "
                          f"on {int(n_test)} test images) -> '{want}'; you said {verdict!r}")


@exercise("04.2", title="Tip-Adapter-F with learnable values: parameters",
          right=((16 * 2 * 96, 16 * 2 * 2),), right_context={"shots": 16, "n_classes": 2, "dim": 96},
          wrong=((16 * 2 * 96, 96 * 2),), wrong_context={"shots": 16, "n_classes": 2, "dim": 96},
          hint="the cache has N·K rows (N shots of each of K classes); a key row has D numbers (a feature), a value "
               "row has K numbers (a one-hot label)")
def _values(counts, *, shots, n_classes, dim):
    keys, values = (int(c) for c in counts)
    rows = int(shots) * int(n_classes)
    want = (rows * int(dim), rows * int(n_classes))
    ok = (keys, values) == want
    return Result(ok, f"N·K = {rows} cache rows: keys N·K·D = {want[0]}, values N·K·K = {want[1]}; "
                      f"you counted keys {keys}, values {values}")


@exercise("04.3", title="a class prior in the TransCLIP z-update",
          right=(0.20, "yes"), right_context={"true_share": 0.10, "share_without": 0.38},
          wrong=(0.20, "no"), wrong_context={"true_share": 0.10, "share_without": 0.38},
          hint="with the prior, z ∝ π_k ŷ^λ exp(...), π_k = mean of z[:, k] from the previous iteration; compare the "
               "share of the batch predicted malignant with and without the prior against the true share")
def _prior(share_with_prior, fixes, *, true_share, share_without):
    s = float(share_with_prior)
    if not (0.0 <= s <= 1.0) or not math.isfinite(s):
        return Result(False, f"the predicted malignant share must be a fraction in [0, 1], got {s}")
    closer = abs(s - float(true_share)) < abs(float(share_without) - float(true_share))
    want = "yes" if closer else "no"
    res = same_choice(str(fixes), want, "does the prior move the prediction toward the true share", ["yes", "no"])
    return Result(res.ok, f"predicted malignant {s:.3f} with the prior vs {float(share_without):.3f} without; true "
                          f"{float(true_share):.3f} -> closer: {closer}, so '{want}'; you said {fixes!r}")


@exercise("04.4", title="feature-cache speed-up of a large encoder",
          right=(150.0,), right_context={"tiny_ratio": 25.0},
          wrong=(10.0,), wrong_context={"tiny_ratio": 25.0},
          hint="per_epoch_ratio of measure_feature_cache_speedup (or the benchmark's 'speed-up per epoch'); a larger "
               "encoder costs more per re-encoded image, while training on cached features costs about the same")
def _speed(ratio, *, tiny_ratio):
    r = float(ratio)
    ok = math.isfinite(r) and r > float(tiny_ratio)
    # the cached side trains the same small adapter; only the re-encoding side grows with the encoder's cost
    return Result(ok, f"per-epoch speed-up {r:.1f}x vs {float(tiny_ratio):.1f}x for the tiny model: expected larger, "
                      "since re-encoding pays the big encoder's forward pass every epoch and cached training does not")

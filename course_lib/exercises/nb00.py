"""Checkers for notebook 00 (welcome and setup: profiles, SonoSynth, the real-data tour), registered with
course_lib.exercises."""
from __future__ import annotations

import math

import numpy as np

from course_lib.exercises import Result, close, exercise, within

_TUMOUR = {"shape": "irregular", "margin": "spiculated", "echogenicity": "hypoechoic", "posterior": "shadowing",
           "calcifications": "none", "orientation": "parallel", "size_mm": 23.0}


@exercise("00.1", title="how many more pixels per image in the full profile",
          right=(12.25,), right_context={"quick_size": 64, "full_size": 224},
          wrong=(3.5,), wrong_context={"quick_size": 64, "full_size": 224},
          hint="an image has image_size x image_size pixels: square the ratio of the two profiles' image_size")
def _pixels(ratio, *, quick_size=None, full_size=None):
    if quick_size is None or full_size is None:
        from course_lib import runtime

        quick_size, full_size = runtime.get_profile("quick").image_size, runtime.get_profile("full").image_size
    want = (full_size / quick_size) ** 2
    return close(ratio, want, 1e-6 * want, f"pixels per image, full ({full_size}²) / quick ({quick_size}²)")


@exercise("00.2", title="a lesion's malignancy points by hand",
          right=((10, 1),), right_context={"attributes": _TUMOUR},
          wrong=((9, 1),), wrong_context={"attributes": _TUMOUR},
          hint="add RULE_POINTS[attribute][value] over the six attributes, plus 1 if size_mm >= RULE_SIZE_MM; "
               "malignant (1) iff the total >= RULE_THRESHOLD")
def _points(answer, *, attributes):
    from course_lib.data import sonosynth as ss

    score, label = answer
    want = ss.malignancy_rule(attributes)
    ok = (int(score), int(label)) == tuple(want)
    return Result(ok, f"the library's rule gives (score, label) = {tuple(want)}; you computed {(score, label)}")


@exercise("00.3", title="how often a noisy label disagrees with the rule",
          right=(0.104,), right_context={"n": 1000, "label_noise": 0.1},
          wrong=(0.2,), wrong_context={"n": 1000, "label_noise": 0.1},
          hint="compare s['label'] with ss.malignancy_rule(s['attributes'])[1] for every sample and take the mean")
def _noise(rate, *, n, label_noise):
    # each label is flipped independently with probability p: the disagreement rate is Binomial(n, p) / n
    sd = math.sqrt(label_noise * (1 - label_noise) / n)
    r = within(rate, max(0.0, label_noise - 3 * sd), label_noise + 3 * sd,
               f"disagreement rate over {n} samples")
    r.message += f" (label_noise ± 3 binomial standard deviations: each label flips with probability {label_noise})"
    return r


def single_attribute_accuracy(df) -> dict:
    """Accuracy of the best rule that uses one attribute only (predict each value's majority label), per attribute."""
    from course_lib.data import sonosynth as ss

    out = {}
    for a in ss.RULE_POINTS:
        counts = df.groupby(a)["label"].agg(["sum", "count"])
        out[a] = float(np.maximum(counts["sum"], counts["count"] - counts["sum"]).sum() / len(df))
    return out


def _toy_table():
    import pandas as pd
    from course_lib.data import sonosynth as ss

    rng = np.random.default_rng(0)
    cols = {a: rng.choice(list(v), 200) for a, v in ss.RULE_POINTS.items()}
    df = pd.DataFrame(cols)
    df["label"] = (df["margin"] == "spiculated").astype(int)  # margin decides everything in this toy table
    return df


_TOY = _toy_table()


@exercise("00.4", title="which attribute alone predicts malignancy best",
          right=("margin",), right_context={"table": _TOY}, wrong=("shape",), wrong_context={"table": _TOY},
          hint="for each attribute, predict the majority label of each of its values (groupby(attribute).label.mean() "
               "> 0.5) and compute the accuracy; pick the attribute with the highest accuracy")
def _best_attribute(name, *, table):
    acc = single_attribute_accuracy(table)
    if name not in acc:
        return Result(False, f"{name!r} is not one of the attributes {list(acc)}")
    best = max(acc, key=acc.get)
    ok = acc[name] >= acc[best] - 1e-9
    return Result(ok, f"single-attribute accuracy of {name}: {acc[name]:.3f}; best: {best} {acc[best]:.3f}")


@exercise("00.5", title="spacing of center C's reverberation bands",
          right=(0.0625,), wrong=(0.125,),
          hint="np.fft.rfft of the mean row profile (mean-subtracted); the peak at index k (cycles per image height) "
               "means bands every 1/k of the depth")
def _reverb(spacing):
    from course_lib.data import sonosynth as ss

    want = ss.CENTERS["C"].reverb_spacing
    r = close(spacing, want, 0.1 * want, "band spacing as a fraction of the image depth")
    r.message += " (center C's generator setting; within 10% because the FFT peak is a whole number of cycles)"
    return r


@exercise("00.6", title="HC18 head circumference from the mask",
          right=(96.8,), right_context={"reference": 95.71}, wrong=(30.5,), wrong_context={"reference": 95.71},
          hint="fit an ellipse by the mask's second moments (semi-axes 2·sqrt(eigenvalues of the pixel-coordinate "
               "covariance)), take Ramanujan's perimeter, multiply by pixel_spacing_mm")
def _hc(hc_mm, *, reference):
    r = within(hc_mm, 0.95 * reference, 1.05 * reference, "your head circumference (mm)")
    r.message += (f"; the annotated HC is {reference:.1f} mm (±5%: the mask is rasterised at a low resolution and "
                  "the head is not an exact ellipse)")
    return r

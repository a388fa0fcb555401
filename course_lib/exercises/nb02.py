"""Checkers for notebook 02 (CLIP zero-shot), registered with course_lib.exercises.
Each checker takes the learner's computed numbers and the notebook's reference values as context (no training inside)."""
from __future__ import annotations

import math

import numpy as np

from course_lib.exercises import Result, close, exercise

_TOL_OWN = 0.05  # own descriptions may word things differently: within 0.05 AUC of the built-in ones counts as good


def _auc(v, what: str) -> float:
    v = float(v)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{what} must be an AUC in [0, 1], got {v}")
    return v


_MINE = {"benign": ["an oval circumscribed mass.", "a simple cyst.", "a smooth nodule."],
         "malignant": ["an irregular spiculated mass.", "a shadowing lesion.", "an ill-defined mass."]}


@exercise("02.1", title="your own descriptions vs the built-in ones",
          right=(_MINE, 0.80), right_context={"reference": 0.82},
          wrong=(_MINE, 0.60), wrong_context={"reference": 0.82},
          hint="describe what the reports of each class say (shape, margins, echogenicity, posterior features, "
               "calcifications) in words the model has read; at least three sentences per class")
def _own(prompts, auc, *, reference):
    from course_lib.models.zero_shot import CLASS_NAMES, CLINICAL_DESCRIPTIONS

    prompts = dict(prompts)
    if sorted(prompts) != sorted(CLASS_NAMES):
        return Result(False, f"prompts must have exactly the classes {list(CLASS_NAMES)}, got {sorted(prompts)}")
    few = [c for c in CLASS_NAMES if len(prompts[c]) < 3]
    if few:
        return Result(False, f"write at least three descriptions for {few}")
    copied = [c for c in CLASS_NAMES if set(prompts[c]) <= set(CLINICAL_DESCRIPTIONS[c])]
    if copied:
        return Result(False, f"the descriptions of {copied} are copies of the built-in ones; write your own")
    auc, reference = _auc(auc, "your AUC"), _auc(reference, "the reference AUC")
    ok = auc >= reference - _TOL_OWN
    verdict = "beat" if auc > reference else ("match" if ok else "fall short of")
    return Result(ok, f"your descriptions reach AUC {auc:.3f}; they {verdict} the built-in descriptions ({reference:.3f}; "
                      f"within {_TOL_OWN} counts, since wording differs)")


_S_EMB = np.array([[0.30, 0.20], [0.10, 0.25], [0.22, 0.20]])
_NORMS = {"benign": 0.9, "malignant": 0.6}
_S_SIM = _S_EMB * np.array([_NORMS["benign"], _NORMS["malignant"]])


@exercise("02.2", title="embedding vs similarity mode",
          right=(0.0, "benign"), right_context={"scores_embedding": _S_EMB, "scores_similarity": _S_SIM, "norms": _NORMS},
          wrong=(0.5, "malignant"), wrong_context={"scores_embedding": _S_EMB, "scores_similarity": _S_SIM, "norms": _NORMS},
          hint="disagreement = mean(argmax of one score matrix != argmax of the other); the norm of class c's mean "
               "text embedding scales its similarity-mode scores, so the larger norm wins the close calls")
def _modes(frac, larger, *, scores_embedding, scores_similarity, norms):
    from course_lib.models.zero_shot import CLASS_NAMES

    a = np.asarray(scores_embedding).argmax(1)
    b = np.asarray(scores_similarity).argmax(1)
    want = float((a != b).mean())
    big = max(CLASS_NAMES, key=lambda c: float(dict(norms)[c]))
    r = close(frac, want, 1e-6, "fraction of images whose predicted class differs between the modes")
    ok = r.ok and str(larger) == big
    return Result(ok, f"{r.message}; the class with the larger mean-embedding norm is {big} (you said {larger}), so "
                      f"similarity mode favours it wherever cosines are positive")


@exercise("02.3", title="a different concept: calcifications",
          right=({0.0: 0.50, 1.0: 0.70},), wrong=({0.0: 0.85, 1.0: 0.70},),
          hint="at f = 0 the concept's words were never paired with an image, so balanced accuracy must sit at chance; "
               "check that you changed cf.CONCEPT, cf.POSITIVE, cf.NEGATIVE and cf.PROMPTS together")
def _concept(rows):
    rows = {float(k): float(v) for k, v in dict(rows).items()}
    if 0.0 not in rows or 1.0 not in rows:
        raise ValueError(f"pass balanced accuracies at f = 0 and f = 1, got frequencies {sorted(rows)}")
    # near chance, with room for noise: one seed, and the prompts share words other than the concept with the
    # reports, which gives a systematic but meaningless preference (see the posterior-features curve at small f)
    lo, hi = 0.35, 0.65
    at0 = rows[0.0]
    ok = lo <= at0 <= hi
    return Result(ok, f"at f = 0 balanced accuracy is {at0:.3f} (expected near chance, [{lo}, {hi}]: a word never seen "
                      f"with an image cannot be recognised); at f = 1 it is {rows[1.0]:.3f} "
                      f"({rows[1.0] - at0:+.3f}: what the mentions taught, at your training budget)")


@exercise("02.4", title="zero-shot on BUSI with your backbone",
          right=(0.71,), right_context={"reference": 0.71, "backbone": "sonoclip-tiny"},
          wrong=(0.93,), wrong_context={"reference": 0.71, "backbone": "sonoclip-tiny"},
          hint="read the BUSI row with the descriptions from the table of section 3 (results[('BUSI', 'descriptions')])")
def _busi(auc, *, reference, backbone):
    r = close(_auc(auc, "your AUC"), _auc(reference, "the run's AUC"), 1e-3, f"BUSI zero-shot AUC of {backbone}")
    extra = (". This is the course's tiny synthetic-data CLIP; with COURSE_PROFILE=full and a GPU the same cell "
             "reports a real CLIP (BiomedCLIP when available)." if "sonoclip" in str(backbone) else "")
    return Result(r.ok, r.message + extra)


@exercise("02.5", title="is the BUSI signal just brightness?",
          right=(0.25, True), right_context={"images": np.array([[[0.5]], [[0.6]], [[0.1]], [[0.55]]]),
                                            "labels": np.array([0, 0, 1, 1]), "zero_shot_auc": 0.9},
          wrong=(0.80, False), wrong_context={"images": np.array([[[0.5]], [[0.6]], [[0.1]], [[0.55]]]),
                                             "labels": np.array([0, 0, 1, 1]), "zero_shot_auc": 0.9},
          hint="score = x_bu.mean((1, 2)); AUC = sklearn.metrics.roc_auc_score(y_bu, score) (malignant = 1); "
               "then compare max(AUC, 1 - AUC) with the zero-shot AUC")
def _brightness(auc, zero_shot_wins, *, images, labels, zero_shot_auc):
    from sklearn.metrics import roc_auc_score

    ref = float(roc_auc_score(np.asarray(labels), np.asarray(images, dtype=np.float64).mean((1, 2))))
    auc = _auc(auc, "your brightness AUC")
    flipped = abs(auc - (1 - ref)) <= 5e-3 and abs(auc - ref) > 5e-3
    value_ok = abs(auc - ref) <= 5e-3 or flipped
    best = max(ref, 1 - ref)
    want = float(zero_shot_auc) > best
    ok = value_ok and bool(zero_shot_wins) == want
    msg = (f"brightness AUC (mean intensity as the malignancy score) = {ref:.3f}"
           + (" (you computed it with the sign flipped; fine)" if flipped else "")
           + ("" if value_ok else f", you gave {auc:.3f}")
           + f"; in the best orientation {best:.3f} vs zero-shot {float(zero_shot_auc):.3f}: zero-shot "
           + ("beats" if want else "does not beat") + f" brightness (you said {'it does' if zero_shot_wins else 'it does not'})")
    return Result(ok, msg)

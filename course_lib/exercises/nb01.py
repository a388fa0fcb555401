"""Checkers for notebook 01 (contrastive image-text pretraining), registered with course_lib.exercises.
Each checker takes the learner's measured numbers (no training inside a checker) and checks the measurable part."""
from __future__ import annotations

import math

import numpy as np

from course_lib.exercises import Result, exercise

_TAUS = (1.0, 0.07)


def _valid_recall(r, what: str) -> None:
    r = float(r)
    if not (math.isfinite(r) and 0.0 <= r <= 1.0):
        raise ValueError(f"{what} must be a recall in [0, 1], got {r}")


def _verdict(a: float, b: float, n_eval: int, names: tuple[str, str]) -> str:
    """Which of two recalls is higher, with a tie when they differ by less than one held-out image."""
    if abs(a - b) < 1.0 / n_eval:
        return "same"
    return names[0] if a > b else names[1]


@exercise("01.1", title="a frozen temperature: 1.0 versus 0.07",
          right=(0.07,), right_context={"r1": {1.0: 0.02, 0.07: 0.09}, "n_eval": 64},
          wrong=(1.0,), wrong_context={"r1": {1.0: 0.02, 0.07: 0.09}, "n_eval": 64},
          hint="compare the held-out image->text R@1 of the two runs; with tau = 1 the logits live in [-1, 1] and the "
               "softmax cannot become confident (section 2); answer 'same' if they differ by less than one image")
def _temperature(faster, *, r1, n_eval):
    r1 = {float(k): float(v) for k, v in dict(r1).items()}
    if set(r1) != set(_TAUS):
        raise ValueError(f"pass r1={{1.0: R@1 at tau=1, 0.07: R@1 at tau=0.07}}, got keys {sorted(r1)}")
    for t, v in r1.items():
        _valid_recall(v, f"R@1 at tau={t}")
    want = _verdict(r1[0.07], r1[1.0], int(n_eval), ("0.07", "1.0"))
    got = "same" if isinstance(faster, str) and faster.strip().lower() == "same" else f"{float(faster):g}"
    ok = got == want
    return Result(ok, f"your runs: R@1 {r1[1.0]:.3f} at tau = 1.0, {r1[0.07]:.3f} at tau = 0.07 "
                      f"({n_eval} held-out pairs): the faster one is {want}; you answered {got}. "
                      "Expected from the maths: 0.07, once the budget is long enough to leave chance.")


@exercise("01.2", title="twice the batch, the same number of seen pairs",
          right=((40, 32, 0.05), (20, 64, 0.08)), right_context={"n_eval": 128},
          wrong=((40, 32, 0.05), (40, 64, 0.08)), wrong_context={"n_eval": 128},
          hint="keep steps x batch_size equal: double the batch and halve the steps; then compare held-out R@1")
def _batch(small, large, *, n_eval):
    (s1, b1, r1), (s2, b2, r2) = small, large
    _valid_recall(r1, "R@1 of the small-batch run")
    _valid_recall(r2, "R@1 of the large-batch run")
    problems = []
    if int(b2) != 2 * int(b1):
        problems.append(f"the large batch ({b2}) is not twice the small one ({b1})")
    if int(s1) * int(b1) != int(s2) * int(b2):
        problems.append(f"seen pairs differ: {s1} x {b1} = {int(s1) * int(b1)} vs {s2} x {b2} = {int(s2) * int(b2)}")
    if problems:
        return Result(False, "; ".join(problems))
    diff = float(r2) - float(r1)
    return Result(True, f"same budget ({int(s1) * int(b1)} pairs), batch {b1} -> {b2}: R@1 {float(r1):.3f} -> {float(r2):.3f} "
                        f"({diff:+.3f}, one held-out image is {1 / n_eval:.3f}); more negatives per step sharpen the "
                        "contrast but halve the number of updates, so at a short budget either can win.")


def neighbour_agreement(X, labels, k: int = 5) -> float:
    """How much an attribute organises an embedding space: the fraction of each point's ``k`` nearest
    neighbours (cosine) that share its value, minus the fraction expected by chance (sum of squared class
    frequencies). 0: not organised; up to ``1 - chance``: perfectly clustered."""
    X = np.asarray(X, dtype=np.float64)
    X = X / np.linalg.norm(X, axis=1, keepdims=True).clip(1e-12)
    lab = np.asarray(labels)
    if len(lab) != len(X):
        raise ValueError(f"{len(lab)} labels for {len(X)} embeddings")
    sim = X @ X.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :k]
    agree = float((lab[nn] == lab[:, None]).mean())
    _, counts = np.unique(lab, return_counts=True)
    return agree - float(((counts / counts.sum()) ** 2).sum())


def _toy_embedding(seed: int = 0):
    rng = np.random.default_rng(seed)
    a = np.repeat([0, 1, 2, 3], 20)
    centres = rng.normal(size=(4, 8)) * 3
    X = centres[a] + rng.normal(size=(80, 8))
    return X, {"anatomy": a, "center": rng.integers(0, 3, 80)}


_X, _L = _toy_embedding()


@exercise("01.3", title="which attributes organise the embedding space",
          right=("anatomy", "center"), right_context={"X": _X, "labels": _L},
          wrong=("center", "anatomy"), wrong_context={"X": _X, "labels": _L},
          hint="for each attribute compute the neighbour agreement above chance "
               "(course_lib.exercises.nb01.neighbour_agreement, or your own k-NN); name the highest and the lowest")
def _organised(most, least, *, X, labels):
    scores = {name: neighbour_agreement(X, lab) for name, lab in dict(labels).items()}
    hi, lo = max(scores, key=scores.get), min(scores, key=scores.get)
    ok = str(most) == hi and str(least) == lo
    table = ", ".join(f"{n} {v:+.2f}" for n, v in sorted(scores.items(), key=lambda kv: -kv[1]))
    return Result(ok, f"5-NN agreement above chance: {table}; most organised {hi}, least {lo} "
                      f"(you answered {most}, {least})")


@exercise("01.4", title="train on breast, test on thyroid",
          right=(0.12, 0.03, "breast"), right_context={"n_eval": 64},
          wrong=(0.12, 0.03, "thyroid"), wrong_context={"n_eval": 64},
          hint="evaluate the breast-only model on held-out breast pairs and on held-out thyroid pairs (same number "
               "of pairs), and say which retrieves better: 'breast', 'thyroid' or 'same' (less than one image apart)")
def _transfer(r1_breast, r1_thyroid, better, *, n_eval):
    _valid_recall(r1_breast, "R@1 on breast")
    _valid_recall(r1_thyroid, "R@1 on thyroid")
    want = _verdict(float(r1_breast), float(r1_thyroid), int(n_eval), ("breast", "thyroid"))
    ok = str(better).strip().lower() == want
    return Result(ok, f"R@1 breast {float(r1_breast):.3f} vs thyroid {float(r1_thyroid):.3f} ({n_eval} pairs each, chance "
                      f"{1 / n_eval:.3f}): the better one is {want}; you answered {better}. What transfers is what the "
                      "two anatomies' reports share (lesion words); the organ words were never seen.")

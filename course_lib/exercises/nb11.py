"""Checkers for notebook 11 (TP-Seg: split gate, EMA prototypes, task-balanced sampler, cost per task, the
Table 2 reading), registered with course_lib.exercises."""
from __future__ import annotations

import math

import numpy as np

from course_lib.exercises import Result, close, exercise


def gate_weights(logits, temperature: float) -> np.ndarray:
    """The split gate of eq. 3 as the course implements it (``tpseg.SplitGate``), in NumPy for one task:
    ``g(b) = sigmoid((sum_{i<=b} softplus(L[i]) - (B + 1) / 2) / temperature)``."""
    L = np.asarray(logits, dtype=np.float64)
    c = np.cumsum(np.log1p(np.exp(L)))
    return 1.0 / (1.0 + np.exp(-(c - (len(L) + 1) / 2) / temperature))


def split_depth(logits, temperature: float = 0.3) -> int:
    """``b_t``: the first block (1-based) with ``g >= 0.5``; ``B + 1`` when no block reaches it."""
    g = gate_weights(logits, temperature)
    above = np.nonzero(g >= 0.5)[0]
    return int(above[0]) + 1 if len(above) else len(g) + 1


_L = [0.0, 5.0, 0.0, 0.0]


@exercise("11.1", title="the split gate by hand",
          right=(2, gate_weights(_L, 1.0), gate_weights(_L, 0.3)), right_context={"logits": _L},
          wrong=(3, gate_weights(_L, 1.0), gate_weights(_L, 0.3)), wrong_context={"logits": _L},
          hint="c(b) = cumulative sum of softplus(L) up to block b; g(b) = sigmoid((c(b) - (B+1)/2) / temperature); "
               "b_t is the first block (counting from 1) with g >= 0.5")
def _gate(depth, g_warm, g_cold, *, logits):
    w, c = gate_weights(logits, 1.0), gate_weights(logits, 0.3)
    g_ok = (np.allclose(np.asarray(g_warm, float), w, atol=1e-4) and np.allclose(np.asarray(g_cold, float), c, atol=1e-4))
    want = split_depth(logits)
    ok = g_ok and int(depth) == want
    return Result(ok, f"g at temperature 1.0 {np.round(w, 3).tolist()}, at 0.3 {np.round(c, 3).tolist()} "
                      f"({'your g match' if g_ok else 'your g differ'}); split depth {want}, you answered {depth}")


def ema_without_renorm(proto, feats, mask, momentum: float = 0.9) -> np.ndarray:
    """Eqs. 12-13 without the outer normalisation: ``m P + (1 - m) normalize(sum M f / sum M)``."""
    f, m = np.asarray(feats, np.float64), np.asarray(mask, np.float64)
    mean = (f * m).sum(axis=(0, 2, 3)) / m.sum()
    return momentum * np.asarray(proto, np.float64) + (1 - momentum) * mean / np.linalg.norm(mean)


_P, _F, _M = [1.0, 0.0], np.array([0.0, 1.0]).reshape(1, 2, 1, 1), np.ones((1, 1, 1, 1))


@exercise("11.2", title="the EMA update without renormalisation",
          right=(float(np.linalg.norm(ema_without_renorm(_P, _F, _M))),),
          right_context={"proto": _P, "feats": _F, "mask": _M},
          wrong=(1.0,), wrong_context={"proto": _P, "feats": _F, "mask": _M},
          hint="compute m·P + (1 - m)·u, with u the normalised masked mean of the features (eq. 13), and take its "
               "norm without normalising again; it is below 1 whenever u and P point in different directions")
def _ema(norm, *, proto, feats, mask, momentum: float = 0.9):
    want = float(np.linalg.norm(ema_without_renorm(proto, feats, mask, momentum)))
    r = close(norm, want, 1e-4, "norm of the prototype after one update without renormalisation")
    r.message += " (the library renormalises, so its prototypes always have norm 1)"
    return r


@exercise("11.3", title="how often the smallest task is drawn",
          right=((1 / 3, 10 / 160),), right_context={"sizes": [100, 50, 10]},
          wrong=((10 / 160, 1 / 3),), wrong_context={"sizes": [100, 50, 10]},
          hint="balanced: every sample of task t has weight 1/N_t, so each task has total weight 1 (P = 1/T); "
               "off: weight 1 per sample, so P(t) = N_t / sum N")
def _sampler(probs, *, sizes):
    p_on, p_off = (float(p) for p in probs)
    sizes = [int(n) for n in sizes]
    w_on, w_off = 1 / len(sizes), min(sizes) / sum(sizes)
    ok = abs(p_on - w_on) < 1e-6 and abs(p_off - w_off) < 1e-6
    return Result(ok, f"P(smallest task per batch): sampler on {w_on:.4f}, off {w_off:.4f}; "
                      f"you gave ({p_on:.4f}, {p_off:.4f})")


def router_parameters(dim: int, hidden: int) -> int:
    """One router of eqs. 1-2: GroupNorm(dim) affine + Conv3x3(dim -> hidden) + Conv1x1(hidden -> dim)."""
    return 2 * dim + (9 * dim * hidden + hidden) + (hidden * dim + dim)


@exercise("11.4", title="TCA parameters added by one more task",
          right=(16532,), right_context={"dims": [96] * 4, "hidden": 4},
          wrong=(16528,), wrong_context={"dims": [96] * 4, "hidden": 4},
          hint="a new task adds one task router before every block (GN + 3x3 conv + 1x1 conv, with biases) and one "
               "gate entry per block; the shared routers do not grow")
def _growth(n, *, dims, hidden):
    want = sum(router_parameters(int(d), int(hidden)) for d in dims) + len(dims)
    return Result(int(n) == want, f"{len(dims)} blocks: sum of router parameters + {len(dims)} gate entries = {want}; "
                                  f"you counted {n}")


_LT = np.array([[0.5413] * 4, [0.5413, 3.0, 0.5413, 0.5413]])


@exercise("11.5", title="the split depths the model learned",
          right=({"a": 3, "b": 2},), right_context={"logits": _LT, "task_names": ["a", "b"]},
          wrong=({"a": 3, "b": 3},), wrong_context={"logits": _LT, "task_names": ["a", "b"]},
          hint="read model.encoder.gate.split_depth(t) for every task t, or apply the gate formula to "
               "model.encoder.gate.logits[t] at the final temperature")
def _depths(depths, *, logits, task_names, temperature: float = 0.3):
    want = {n: split_depth(np.asarray(logits)[t], temperature) for t, n in enumerate(task_names)}
    got = {n: int(depths[n]) for n in task_names}
    wrong = [n for n in task_names if got[n] != want[n]]
    return Result(not wrong, f"split depths from the gate logits: {want}" +
                  (f"; yours differ for {wrong}" if wrong else ""))


@exercise("11.6", title="is TP-Seg better than the shared baseline here?",
          right=(False,), right_context={"tpseg": (30.0, 4.0), "baseline": (26.0, 3.0)},
          wrong=(True,), wrong_context={"tpseg": (30.0, 4.0), "baseline": (26.0, 3.0)},
          hint="call a difference real only if it exceeds the sum of the two seed standard deviations "
               "(the rule the notebook's verdict() uses)")
def _table2(beats, *, tpseg, baseline):
    if not isinstance(beats, (bool, np.bool_)):
        raise TypeError(f"answer True or False, got {beats!r}")
    diff, noise = tpseg[0] - baseline[0], tpseg[1] + baseline[1]
    want = bool(diff > noise)
    if not (math.isfinite(diff) and math.isfinite(noise)):
        return Result(False, "the averages are not finite numbers")
    return Result(bool(beats) == want, f"difference {diff:+.1f} Dice points vs seed noise {noise:.1f}: "
                                       f"{'beyond' if want else 'within'} the noise, so the answer is {want}")

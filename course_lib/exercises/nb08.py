"""Checkers for notebook 08 (partial labels: masked loss, naive target, normalisation weights, empty Dice,
zero-shot prompt codes), registered with course_lib.exercises; also the notebook's mechanism diagram."""
from __future__ import annotations

import numpy as np

from course_lib.exercises import Result, close, exercise, same_choice


@exercise("08.1", title="all w = 1: the masked loss is the plain loss",
          right=((1.2345, 1.2345),), wrong=((1.4213, 1.3996),),
          hint="set w = torch.ones_like(w) and compare ml.masked_bce_dice(logits, target, w) with "
               "ml.plain_bce_dice(logits, target); every structure must be present in every image (empty_dice='skip')")
def _all_labelled(values):
    masked, plain = (float(v) for v in values)
    return close(masked - plain, 0.0, 1e-5, f"masked {masked:.6f} - plain {plain:.6f}")


def naive_background_share(full_targets, w) -> np.ndarray:
    """``(K,)``: share of each structure's foreground pixels that the naive target writes as background."""
    t = np.asarray(full_targets, dtype=np.float64) > 0.5
    keep = np.asarray(w, dtype=np.float64)[:, :, None, None] > 0.5
    fg = t.reshape(t.shape[0], t.shape[1], -1).sum((0, 2))
    lost = (t & ~keep).reshape(t.shape[0], t.shape[1], -1).sum((0, 2))
    return lost / np.maximum(fg, 1)


_T2 = np.zeros((2, 2, 2, 2)); _T2[:, 0, 0, 0] = 1; _T2[:, 1, 1, :] = 1
_W2 = np.array([[1.0, 0.0], [0.0, 1.0]])


@exercise("08.2", title="how much of each structure the naive target calls background",
          right=(np.array([0.5, 0.5]),), right_context={"full_targets": _T2, "w": _W2},
          wrong=(np.array([0.0, 0.0]),), wrong_context={"full_targets": _T2, "w": _W2},
          hint="count, per structure k, the foreground pixels of samples with w_nk = 0 (they become class 0 in "
               "ml.partial_to_softmax_target) and divide by all foreground pixels of k")
def _naive_share(share, *, full_targets, w, tol=0.01):
    want = naive_background_share(full_targets, w)
    got = np.asarray(share, dtype=np.float64).ravel()
    if got.shape != want.shape:
        return Result(False, f"give one share per structure ({want.size} values), got {got.size}")
    ok = bool(np.all(np.abs(got - want) <= tol))
    return Result(ok, f"shares written as background {np.round(want, 3).tolist()}; you gave {np.round(got, 3).tolist()}")


def normalisation_weights(w, normalize: str = "sample") -> np.ndarray:
    """``(B, K)``: the weight each per-(sample, structure) loss l_nk gets in the masked mean."""
    w = np.asarray(w, dtype=np.float64)
    if normalize == "batch":
        return w / max(w.sum(), 1e-12)
    wn = w.sum(1, keepdims=True)
    has = (wn > 0).sum()
    return np.where(wn > 0, w / np.maximum(wn, 1e-12), 0.0) / max(has, 1)


_W4 = [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]


@exercise("08.3", title="per-sample normalisation weights",
          right=(np.array([[0.25, 0, 0.25], [0, 0, 0.5]]),), right_context={"w": _W4, "normalize": "sample"},
          wrong=(np.array([[1 / 3, 0, 1 / 3], [0, 0, 1 / 3]]),), wrong_context={"w": _W4, "normalize": "sample"},
          hint="L = mean over samples with sum_k w_nk > 0 of sum_k w_nk l_nk / sum_k w_nk, so d L / d l_nk = "
               "w_nk / (sum_k w_nk * number of such samples); with normalize='batch' it is w_nk / sum_{n,k} w_nk. "
               "Autograd gives it: l = torch.zeros(B, K, requires_grad=True); ml.masked_mean(l, w).backward(); l.grad")
def _weights(weights, *, w, normalize="sample"):
    want = normalisation_weights(w, normalize)
    got = np.asarray(weights, dtype=np.float64)
    if got.shape != want.shape:
        return Result(False, f"weights must have the shape of w {want.shape}, got {got.shape}")
    ok = bool(np.allclose(got, want, atol=1e-6))
    return Result(ok, f"normalize={normalize!r}: weights {np.round(want, 4).tolist()}; you gave {np.round(got, 4).tolist()}")


@exercise("08.4", title="why no Dice term on an annotated but absent structure",
          right=((0.9966, 1.0, 4.5e-5, 0.1563),), right_context={"size": 8},
          wrong=((0.5, 1.0, 4.5e-5, 0.1563),), wrong_context={"size": 8},
          hint="empty target (size x size); logits -10 everywhere ('predicts nothing') vs the same with one pixel at +10 "
               "('one false positive'); ml.per_channel_dice and ml.per_channel_bce on both")
def _empty_dice(values, *, size=8):
    import torch

    from course_lib import losses as ml

    t = torch.zeros(1, 1, size, size)
    none = torch.full((1, 1, size, size), -10.0)
    one = none.clone(); one[0, 0, 0, 0] = 10.0
    want = [float(ml.per_channel_dice(none, t)), float(ml.per_channel_dice(one, t)),
            float(ml.per_channel_bce(none, t)), float(ml.per_channel_bce(one, t))]
    got = [float(v) for v in values]
    if len(got) != 4:
        return Result(False, "give (dice_nothing, dice_one_fp, bce_nothing, bce_one_fp)")
    ok = all(abs(g - v) <= max(1e-3, 0.01 * abs(v)) for g, v in zip(got, want))
    return Result(ok, f"Dice {want[0]:.4f} -> {want[1]:.4f} (flat: already ~1 for an empty prediction), BCE {want[2]:.2e} -> "
                      f"{want[3]:.4f}; you gave {[round(g, 4) for g in got]}")


@exercise("08.5", title="a zero-shot prompt: which trained head does it resemble",
          right=("kidney",), right_context={"names": ["liver", "kidney", "spleen"], "codes": np.eye(3),
                                            "query": np.array([0.1, 0.9, 0.2])},
          wrong=("liver",), wrong_context={"names": ["liver", "kidney", "spleen"], "codes": np.eye(3),
                                           "query": np.array([0.1, 0.9, 0.2])},
          hint="the controller only sees the code: cosine of the new structure's embedding with each trained one "
               "(embeddings are unit vectors, so a dot product); the nearest code gets a head like that structure's")
def _zero_shot(name, *, names, codes, query):
    c = np.asarray(codes, dtype=np.float64)
    q = np.asarray(query, dtype=np.float64)
    cos = c @ q / (np.linalg.norm(c, axis=1) * np.linalg.norm(q) + 1e-12)
    want = list(names)[int(np.argmax(cos))]
    return same_choice(name, want, f"nearest trained code (cosine {float(cos.max()):.2f})", options=list(names))


def draw_partial_labels_diagram():
    """Mechanism diagram of notebook 08: the naive softmax target vs the masked sigmoid loss, and the
    universal model's controller (text embedding -> MLP -> dynamic 1x1-conv weights per structure)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    cols = {"liver": "#d62728", "kidney": "#1f77b4", "spleen": "#2ca02c"}

    def box(ax, x, y, w, h, text, fc="#f2f2f2", fs=8.5):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=fc, ec="0.3"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fs)

    def arrow(ax, a, b):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="->", mutation_scale=12, color="0.25"))

    ax = axes[0]
    ax.set_title("a kidney-study image (w = [liver 0, kidney 1, spleen 0])", fontsize=10)
    box(ax, 0.0, 0.42, 0.2, 0.2, "image\nliver, kidney,\nspleen visible")
    box(ax, 0.3, 0.68, 0.32, 0.28, "(a) naive softmax target\nbg | liver | kidney | spleen\n"
        "liver pixels -> bg\nspleen pixels -> bg\n(told: 'not an organ')", fc="#fde0dd")
    box(ax, 0.26, 0.04, 0.4, 0.32, "(b) K sigmoid channels\nloss_k x w_nk:\nliver x 0, kidney x 1, spleen x 0\n"
        "/ sum_k w_nk = 1\n(no signal on unlabelled)", fc="#e5f5e0")
    arrow(ax, (0.2, 0.56), (0.3, 0.8)); arrow(ax, (0.2, 0.48), (0.26, 0.2))
    for i, (k, c) in enumerate(cols.items()):
        y = 0.84 - 0.09 * i
        ax.add_patch(plt.Rectangle((0.7, y), 0.12, 0.07, fc="0.85" if k != "kidney" else c, ec="0.3"))
        ax.text(0.84, y + 0.035, f"{k}: {'target' if k == 'kidney' else 'background'}", va="center", fontsize=8)
        y = 0.26 - 0.09 * i
        ax.add_patch(plt.Rectangle((0.7, y), 0.12, 0.07, fc=c, ec="0.3", alpha=1.0 if k == "kidney" else 0.15, hatch=None if k == "kidney" else "//"))
        ax.text(0.84, y + 0.035, f"{k}: {'w=1, trained' if k == 'kidney' else 'w=0, masked'}", va="center", fontsize=8)

    ax = axes[1]
    ax.set_title("(c) universal model: one generated head per structure", fontsize=10)
    box(ax, 0.0, 0.72, 0.22, 0.2, "prompt 'an ultrasound\nimage of the kidney'\n-> CLIP text enc.\n-> omega_k")
    box(ax, 0.0, 0.12, 0.22, 0.2, "image -> UNet\n-> features F\n(B, C, H, W)")
    box(ax, 0.3, 0.45, 0.16, 0.14, "GAP(F) = f")
    box(ax, 0.52, 0.68, 0.2, 0.22, "controller MLP\n[proj(omega_k), f]\n-> theta_k", fc="#deebf7")
    box(ax, 0.52, 0.1, 0.2, 0.3, "dynamic head k\n3 x (1x1 conv)\nweights theta_k\n-> sigmoid P_k", fc="#deebf7")
    box(ax, 0.8, 0.18, 0.19, 0.16, "masked loss\n(w_nk)", fc="#e5f5e0")
    arrow(ax, (0.22, 0.82), (0.52, 0.8)); arrow(ax, (0.22, 0.22), (0.52, 0.24))
    arrow(ax, (0.12, 0.32), (0.36, 0.45)); arrow(ax, (0.4, 0.59), (0.55, 0.68))
    arrow(ax, (0.62, 0.68), (0.62, 0.4)); arrow(ax, (0.72, 0.26), (0.8, 0.26))
    ax.text(0.75, 0.55, "K structures ->\nK heads from one\ncontroller", fontsize=8, style="italic")
    for a in axes:
        a.set_xlim(-0.04, 1.2); a.set_ylim(0, 1); a.axis("off")
    fig.tight_layout()
    return fig

"""Checkers and the CrossBlock diagram for notebook 06 (in-context segmentation: UniverSeg and Tyche),
registered with course_lib.exercises; used by notebooks/06_in_context_segmentation.ipynb."""
from __future__ import annotations

import numpy as np

from course_lib.exercises import Result, exercise, same_choice, within
from course_lib.methods.segfm.tyche import generalized_energy_distance


@exercise("06.1", title="order invariance of the query stream",
          right=(3e-7,), right_context={"scale": 4.0}, wrong=(0.2,), wrong_context={"scale": 4.0},
          hint="permute the support entries with torch.randperm along dim 1 and compare model(q, s) with "
               "model(q, s[:, perm]); pass the max absolute difference of the logits")
def _perm(diff, *, scale):
    # the mean over i is exactly symmetric; float32 summation order only changes the last bits
    return within(float(diff), 0.0, 1e-5 * max(1.0, float(scale)),
                  f"max |f(q, S) - f(q, perm(S))| (logits of size up to {float(scale):.2f})")


@exercise("06.2", title="which structures did meta-training never see?",
          right=(["kidney"],), right_context={"train_tasks": ["abdomen/liver/A", "thyroid/thyroid/B"],
                                               "eval_tasks": ["abdomen/kidney/A", "abdomen/liver/C"]},
          wrong=(["kidney", "liver"],), wrong_context={"train_tasks": ["abdomen/liver/A", "thyroid/thyroid/B"],
                                                        "eval_tasks": ["abdomen/kidney/A", "abdomen/liver/C"]},
          hint="task names are 'anatomy/structure/center': compare the structure part of `held_names` with the "
               "structure part of `meta['train_tasks']`")
def _held(answer, *, train_tasks, eval_tasks):
    seen = {n.split("/")[1] for n in train_tasks}
    want = sorted({n.split("/")[1] for n in eval_tasks} - seen)
    got = sorted(set(answer))
    return Result(got == want, f"structures of the evaluation tasks absent from the {len(train_tasks)} training tasks: "
                               f"{want}; you answered {got}")


@exercise("06.3", title="max instead of mean over the support set",
          right=(("yes", 2e-7),), right_context={}, wrong=(("no", 2e-7),), wrong_context={},
          hint="a max over i, like a mean, does not care about the order of its arguments; measure it with the "
               "CrossBlock of the first encoder level, replacing z.mean(dim=1) by z.amax(dim=1)")
def _max(answer, **_):
    verdict, diff = answer
    res = same_choice(verdict, "yes", "is the max-pooled CrossBlock order invariant", options=["yes", "no"])
    if not res:
        return res
    num = within(float(diff), 0.0, 1e-5, "max |u'(S) - u'(perm(S))| of the max-pooled block")
    return Result(num.ok, res.message + "; " + num.message)


def _gain_winner(mean_s: dict, mean_m: dict, task: str, s_ens: int, m: int) -> str:
    g_m = mean_m[task][m] - mean_m[task][1]
    g_s = mean_s[task][m * s_ens] - mean_s[task][s_ens]
    return "ensemble" if g_m > g_s else "support"


_EX4 = {"mean_s": {"A": {2: 0.5, 4: 0.6}, "B": {2: 0.3, 4: 0.31}},
        "mean_m": {"A": {1: 0.5, 2: 0.52}, "B": {1: 0.3, 2: 0.36}}, "s_ens": 2, "m": 2}


@exercise("06.4", title="same labelled images: a larger S or an ensemble?",
          right=({"A": "support", "B": "ensemble"},), right_context=_EX4,
          wrong=({"A": "ensemble", "B": "ensemble"},), wrong_context=_EX4,
          hint="M = 2 sets of S = S_ens images use as many labelled images as one set of S = 2 S_ens: compare "
               "mean_m[M=2] - mean_m[M=1] with mean_s[S=2 S_ens] - mean_s[S=S_ens] for each task")
def _ens(answer, *, mean_s, mean_m, s_ens, m):
    want = {t: _gain_winner(mean_s, mean_m, t, int(s_ens), int(m)) for t in answer}
    wrong = [t for t in want if answer[t] != want[t]]
    missing = sorted(set(mean_m) - set(answer))
    ok = not wrong and not missing
    msg = "; ".join(f"{t}: {want[t]} helps more" for t in want)
    if missing:
        msg += f"; missing tasks: {missing}"
    return Result(ok, msg + (f" (you got {wrong} the other way round; mean differences, within the seed sd "
                             f"they are a coin flip)" if wrong else " (differences of means: check them against the seed sds)"))


def _merge(p1, p2, thr=0.5):
    stack = np.stack([np.full_like(np.asarray(p1, float), thr), np.asarray(p1, float), np.asarray(p2, float)])
    return stack.argmax(0)


_P1 = np.array([[0.9, 0.8, 0.2], [0.1, 0.7, 0.3]])
_P2 = np.array([[0.1, 0.9, 0.6], [0.2, 0.6, 0.1]])


@exercise("06.5", title="two binary outputs into one label map",
          right=(_merge(_P1, _P2),), right_context={"p_first": _P1, "p_second": _P2},
          wrong=(np.where(_P2 > 0.5, 2, np.where(_P1 > 0.5, 1, 0)),), wrong_context={"p_first": _P1, "p_second": _P2},
          hint="each run gives a probability per pixel; a pixel is background if both are below 0.5, else it gets "
               "the structure with the higher probability: argmax over [0.5, p_liver, p_kidney]")
def _merge_check(labels, *, p_first, p_second):
    want = _merge(p_first, p_second)
    labels = np.asarray(labels)
    if labels.shape != want.shape:
        return Result(False, f"the label map must have the image shape {want.shape}, got {labels.shape}")
    both = (np.asarray(p_first) > 0.5) & (np.asarray(p_second) > 0.5)
    bad = int((labels != want).sum())
    return Result(bad == 0, f"{bad} of {want.size} pixels differ from argmax[0.5, p_1, p_2]; {int(both.sum())} pixels "
                            f"are claimed by both runs and must go to the more confident one")


@exercise("06.6", title="which metric always grows with K?",
          right=(("best-candidate Dice", 0.41, 0.47),), right_context={},
          wrong=(("GED", 0.41, 0.47),), wrong_context={},
          hint="take the 2K candidates of one call; score the first k of them and all of them. Adding a candidate can "
               "only raise a max over candidates; GED also pays for diversity and distance")
def _k(answer, **_):
    metric, small, large = answer
    res = same_choice(metric, "best-candidate Dice", "the metric that cannot drop when candidates are added",
                      options=["best-candidate Dice", "GED"])
    if not res:
        return res
    if float(large) < float(small) - 1e-9:
        return Result(False, f"on nested sets best-candidate Dice cannot fall ({small:.3f} -> {large:.3f}): score the "
                             f"first k candidates and all 2k of the SAME call")
    return Result(True, res.message + f"; on nested candidate sets {float(small):.3f} -> {float(large):.3f}")


_S = np.zeros((2, 2, 2), bool); _S[0, 0, 0] = True; _S[1, 0, :] = True
_Y = np.zeros((2, 2, 2), bool); _Y[0, 0, 0] = True; _Y[1, :, 0] = True


@exercise("06.7", title="GED of two small mask sets by hand",
          right=(generalized_energy_distance(_S, _Y),), right_context={"samples": _S, "annotations": _Y},
          wrong=(2 * 0.5,), wrong_context={"samples": _S, "annotations": _Y},
          hint="d = 1 - IoU; average d over ALL pairs (k, a), (k, k') and (a, a') including equal pairs (d = 0); "
               "GED^2 = 2 E d(S, Y) - E d(S, S') - E d(Y, Y')")
def _ged(value, *, samples, annotations):
    want = generalized_energy_distance(np.asarray(samples), np.asarray(annotations))
    res = within(float(value), want - 1e-6, want + 1e-6, "your GED^2")
    res.message += f" (the library's generalized_energy_distance gives {want:.4f})"
    return res


def saturation_support(mean: dict, sd: dict) -> int:
    """Smallest S after which no larger S improves the mean Dice by more than the larger of the two seed sds."""
    sizes = sorted(int(s) for s in mean if np.isfinite(mean[s]))
    for s in sizes:
        if all(mean[b] - mean[s] <= max(sd[b], sd[s]) for b in sizes if b > s):
            return s
    return sizes[-1]


_M8 = {1: 0.40, 2: 0.45, 4: 0.60, 8: 0.62, 16: 0.63}
_SD8 = {1: 0.03, 2: 0.03, 4: 0.04, 8: 0.04, 16: 0.05}


@exercise("06.8", title="where does more support stop helping?",
          right=(4,), right_context={"mean": _M8, "sd": _SD8}, wrong=(16,), wrong_context={"mean": _M8, "sd": _SD8},
          hint="walk S upwards: the answer is the first S from which no larger S gains more than the larger of the two "
               "seed sds (read one row of mean_s and sd_s)")
def _sat(s, *, mean, sd):
    mean = {int(k): float(v) for k, v in mean.items()}
    sd = {int(k): float(v) for k, v in sd.items()}
    want = saturation_support(mean, sd)
    return Result(int(s) == want, f"Dice stops improving beyond the seed spread at S = {want}; you answered {s}")


def draw_crossblock_diagram():
    """Mechanism diagram of notebook 06: UniverSeg's CrossBlock (paper eq. 2). One shared conv sees each
    (query, support_i) pair; the outputs z_i are averaged into the new query u' and each becomes a new v_i'."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(11, 4.4))

    def box(x, y, w, h, text, fc="#f2f2f2", fs=9):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=fc, ec="0.3"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fs)

    def arrow(a, b, color="0.25"):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="->", mutation_scale=12, color=color))

    ys = [0.72, 0.42, 0.12]
    box(0.0, 0.86, 0.14, 0.1, "query u", fc="#deebf7")
    for i, y in enumerate(ys):
        lab = "n" if i == 2 else str(i + 1)
        box(0.0, y - 0.04, 0.14, 0.1, f"support v_{lab}", fc="#fee6ce")
        box(0.22, y - 0.05, 0.14, 0.12, f"[u || v_{lab}]")
        box(0.44, y - 0.05, 0.18, 0.12, "CrossConv\n(shared weights)", fc="#e5f5e0")
        box(0.69, y - 0.04, 0.1, 0.1, f"z_{lab}")
        box(0.86, y - 0.04, 0.14, 0.1, f"v_{lab}' = A(Conv z_{lab})", fc="#fee6ce", fs=8)
        arrow((0.14, y + 0.01), (0.22, y + 0.01)); arrow((0.07, 0.86), (0.25, y + 0.07), "#3182bd")
        arrow((0.36, y + 0.01), (0.44, y + 0.01)); arrow((0.62, y + 0.01), (0.69, y + 0.01))
        arrow((0.79, y + 0.01), (0.86, y + 0.01))
        arrow((0.74, y + 0.06), (0.74 if i == 0 else 0.7, 0.86), "#3182bd")
    ax.text(0.07, 0.3, "...", fontsize=16, ha="center")
    box(0.62, 0.86, 0.26, 0.1, "u' = (1/n) sum_i z_i   (mean: order invariant)", fc="#deebf7", fs=8.5)
    ax.text(0.4, 0.99, "one convolution theta_z for every pair; n can be any size", ha="center", fontsize=9, style="italic")
    ax.set_xlim(-0.02, 1.03); ax.set_ylim(0, 1.02); ax.axis("off")
    ax.set_title("UniverSeg CrossBlock (Butoi et al. 2023, eq. 2): query and support interact pair by pair", fontsize=10)
    fig.tight_layout()
    return fig

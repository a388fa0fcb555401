"""Checkers for notebook 05 (LoRA, ARENA and PEFT for few-shot segmentation), registered with
course_lib.exercises; used by notebooks/05_lora_arena_peft.ipynb."""
from __future__ import annotations

import numpy as np

from course_lib.exercises import Result, exercise, same_choice


def _lora_attn_block(rank: int, width: int) -> int:
    # fused q/k/v (D -> 3D): A r x D, B 3D x r; out_proj (D -> D): A r x D, B D x r  (Hu et al., Eq. 3)
    return rank * (width + 3 * width) + rank * (width + width)


@exercise("05.1", title="LoRA parameters in one attention block",
          right=(1536,), right_context={"rank": 4, "width": 64, "reference": 1536},
          wrong=(1024,), wrong_context={"rank": 4, "width": 64, "reference": 1536},
          hint="an adapted D_in -> D_out matrix gets A (r x D_in) and B (D_out x r); the attention has a fused "
               "q/k/v matrix (D -> 3D) and out_proj (D -> D)")
def _lora_block(n, *, rank, width, reference):
    want = _lora_attn_block(int(rank), int(width))
    if int(reference) != want:
        return Result(False, f"the library's count ({reference}) is not r(D + 3D) + r(D + D) = {want} for r = {rank}, "
                             f"D = {width}: pass the count of ONE attention block (targets=('attn',), one block)")
    return Result(int(n) == want, f"r(D + 3D) + r(D + D) with r = {rank}, D = {width} is {want} "
                                  f"(the library counts {reference}); you answered {n}")


@exercise("05.2", title="LoRA on the top two blocks only",
          right=((3072, 6144),), right_context={"rank": 4, "width": 64, "depth": 4},
          wrong=((6144, 6144),), wrong_context={"rank": 4, "width": 64, "depth": 4},
          hint="each adapted attention block costs the same r(D + 3D) + r(D + D); count the blocks you adapt")
def _top_blocks(counts, *, rank, width, depth):
    n_top, n_all = (int(c) for c in counts)
    per = _lora_attn_block(int(rank), int(width))
    want = (2 * per, int(depth) * per)
    return Result((n_top, n_all) == want, f"attention-only LoRA at r = {rank}: top two blocks {want[0]}, all {depth} "
                                          f"blocks {want[1]} (a fraction 2/{depth}); you answered {(n_top, n_all)}")


@exercise("05.3", title="which lambda prunes most",
          right=(0.02,), right_context={"eff_rank": {0.0: 16.0, 0.005: 12.5, 0.02: 3.0}},
          wrong=(0.005,), wrong_context={"eff_rank": {0.0: 16.0, 0.005: 12.5, 0.02: 3.0}},
          hint="read the effective-rank column of the lambda sweep (`rl`) for the task and take the lambda with the "
               "fewest non-zero v per layer")
def _lambda(lam, *, eff_rank):
    er = {float(k): float(v) for k, v in eff_rank.items()}
    low = min(er.values())
    best = sorted(k for k, v in er.items() if v == low)
    lam = float(lam)
    ok = any(np.isclose(lam, b) for b in best)
    return Result(ok, f"the fewest directions ({low:.1f} per layer) are kept at lambda = "
                      f"{', '.join(f'{b:g}' for b in best)}; you answered {lam:g}")


@exercise("05.4", title="BUSI lesions: known or novel?",
          right=("known",), right_context={"class_names": ["skin", "lesion", "kidney"], "held_out": ["kidney"]},
          wrong=("novel",), wrong_context={"class_names": ["skin", "lesion", "kidney"], "held_out": ["kidney"]},
          hint="look at `fm.class_names` and `fm.meta['held_out_structures']`: was 'lesion' a pretraining label?")
def _busi(answer, *, class_names, held_out):
    want = "known" if "lesion" in class_names and "lesion" not in held_out else "novel"
    res = same_choice(answer, want, "BUSI lesions for segfm-tiny", options=["known", "novel"])
    res.message += " (a known structure under a domain shift: synthetic to real ultrasound)" if want == "known" else ""
    return res


def _toy_l1(c, lam: float, lr: float, steps: int, prox: bool) -> np.ndarray:
    """min_v 0.5 ||v - c||^2 + lam ||v||_1 from v = 1, by proximal gradient or plain subgradient steps (float32)."""
    c = np.asarray(c, dtype=np.float32)
    v = np.ones_like(c)
    lr32, lam32 = np.float32(lr), np.float32(lam)
    for _ in range(int(steps)):
        if prox:
            z = v - lr32 * (v - c)
            v = np.sign(z) * np.maximum(np.abs(z) - lr32 * lam32, np.float32(0))
        else:
            v = v - lr32 * (v - c + lam32 * np.sign(v))
    return v


@exercise("05.5", title="proximal step vs subgradient",
          right=((0, 3),), right_context={"c": [0.9, 0.5, 0.03, -0.02, 0.01], "lam": 0.1, "lr": 0.1, "steps": 300},
          wrong=((3, 3),), wrong_context={"c": [0.9, 0.5, 0.03, -0.02, 0.01], "lam": 0.1, "lr": 0.1, "steps": 300},
          hint="count entries that are *exactly* 0.0 (v == 0), not merely small; the subgradient step oscillates "
               "around 0 without landing on it")
def _prox(counts, *, c, lam, lr, steps):
    n_sub, n_prox = (int(x) for x in counts)
    want = (int((_toy_l1(c, lam, lr, steps, prox=False) == 0).sum()), int((_toy_l1(c, lam, lr, steps, prox=True) == 0).sum()))
    return Result((n_sub, n_prox) == want, f"exact zeros after {steps} steps: subgradient {want[0]}, proximal {want[1]} "
                                           f"(entries with |c_i| <= lambda = {lam:g}: {int((np.abs(c) <= lam).sum())}); "
                                           f"you answered {(n_sub, n_prox)}")

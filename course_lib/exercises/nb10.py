"""Checkers for notebook 10 (TAP-SLF: prompt parameters, DaViT prompt windows, a real-data split, a
position-free detection head, frozen ratio -> LoRA blocks), registered with course_lib.exercises."""
from __future__ import annotations

import math

import numpy as np

from course_lib.exercises import Result, exercise, same_choice


@exercise("10.1", title="prompt parameters for L = 1 and L = 20",
          right=((288, 5760),), right_context={"width": 96, "n_prompted_tasks": 3},
          wrong=((384, 7680),), wrong_context={"width": 96, "n_prompted_tasks": 3},
          hint="one P_t (L x d) per task that uses prompts; detection bypasses them (3 prompt sets, not 4)")
def _prompt_params(counts, *, width, n_prompted_tasks=3):
    n1, n20 = (int(c) for c in counts)
    want = (n_prompted_tasks * 1 * width, n_prompted_tasks * 20 * width)
    ok = (n1, n20) == want
    return Result(ok, f"{n_prompted_tasks} prompt sets x L x d (d = {width}): L = 1 -> {want[0]}, L = 20 -> {want[1]}; "
                      f"you counted ({n1}, {n20})")


@exercise("10.2", title="prompt copies per image: first vs last DaViT stage",
          right=((160, 10),), right_context={"grids": [(16, 16), (2, 2)], "window": 4, "length": 10},
          wrong=((10, 10),), wrong_context={"grids": [(16, 16), (2, 2)], "window": 4, "length": 10},
          hint="the grid is padded to a multiple of the window; every window gets its own copy of the L prompt tokens: "
               "ceil(H / w) * ceil(W / w) * L")
def _davit_windows(counts, *, grids, window, length):
    want = tuple(math.ceil(h / window) * math.ceil(w / window) * length for h, w in grids)
    got = tuple(int(c) for c in counts)
    return Result(got == want, f"grids {list(map(tuple, grids))} in windows of {window}x{window}, L = {length}: "
                               f"{want} prompt tokens attended per image (stage 0, last stage); you gave {got}")


@exercise("10.3", title="a train/test split of BUSI that keeps both classes",
          right=((0.5, 0.5),), right_context={"labels": [0, 1] * 24},
          wrong=((0.0, 1.0),), wrong_context={"labels": [0, 1] * 24},
          hint="busi.load returns the samples grouped by class: shuffle (seeded) before splitting, otherwise the test half "
               "holds one class and AUC/MCC are undefined")
def _busi_split(fractions, *, labels, tol=0.15):
    p_tr, p_te = (float(f) for f in fractions)
    overall = float(np.mean(labels))
    ok = 0.0 < p_te < 1.0 and abs(p_tr - overall) <= tol and abs(p_te - overall) <= tol
    return Result(ok, f"malignant fraction train {p_tr:.3f}, test {p_te:.3f}; overall {overall:.3f}: both halves need both "
                      f"classes and a fraction within ±{tol:g} of the overall one (a seeded shuffle gives that)")


@exercise("10.4", title="a position-free detector and where positions live",
          right=((0.12, "token content"),), right_context={"mean_box_miou": 0.095},
          wrong=((0.12, "token order"),), wrong_context={"mean_box_miou": 0.095},
          hint="fit a ridge regression from the frozen encoder's globally pooled features to the box and compare its test "
               "mIoU with the constant mean box; pooling forgets the token order, so whatever survives was written into "
               "the tokens' content (the positional embedding is added before block 0)")
def _position_free(answer, *, mean_box_miou):
    miou, where = answer
    choice = same_choice(where, "token content", "spatial information lives in", options=["token order", "token content"])
    beats = float(miou) > float(mean_box_miou)
    ok = bool(choice) and beats and 0.0 <= float(miou) <= 1.0
    return Result(ok, f"pooled-feature detector mIoU {float(miou):.3f} vs constant box {float(mean_box_miou):.3f} "
                      f"({'beats' if beats else 'does not beat'} it); {choice.message}")


@exercise("10.5", title="which blocks a frozen ratio adapts, and their LoRA parameters",
          right=(([2, 3], 9216),), right_context={"depth": 4, "width": 96, "rank": 8, "frozen_ratio": 0.5},
          wrong=(([3], 4608),), wrong_context={"depth": 4, "width": 96, "rank": 8, "frozen_ratio": 0.5},
          hint="frozen blocks = floor(ratio x depth + 0.5), LoRA on the rest; per block LoRA on in_proj (d -> 3d) adds "
               "r(d + 3d) and on out_proj (d -> d) adds r(d + d)")
def _frozen_ratio(answer, *, depth, width, rank, frozen_ratio, lora_params=None):
    """``lora_params``: the count measured on the built model, for encoders whose blocks differ in width or hold
    two attentions (Florence-2's DaViT in the full profile), where ``len(blocks) x r(6d)`` does not apply."""
    from course_lib.methods.tapslf.tapslf import lora_blocks

    blocks, n = answer
    want_blocks = lora_blocks(int(depth), float(frozen_ratio))
    uniform = len(want_blocks) * rank * ((width + 3 * width) + (width + width))
    want_n = uniform if lora_params is None else int(lora_params)
    how = (f"{len(want_blocks)} x r(6d) = {want_n}" if lora_params is None
           else f"{want_n} counted on the model (r(d_in + d_out) summed over the adapted projections)")
    ok = [int(b) for b in blocks] == want_blocks and int(n) == want_n
    return Result(ok, f"depth {depth}, ratio {frozen_ratio}: LoRA blocks {want_blocks}, {how} parameters "
                      f"(r = {rank}, d = {width}); you gave {list(blocks)}, {int(n)}")

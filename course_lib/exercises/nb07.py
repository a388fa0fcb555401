"""Checkers for notebook 07 (interactive segmentation), registered with course_lib.exercises."""
from __future__ import annotations

import numpy as np

from course_lib.exercises import Result, exercise, same_choice


@exercise("07.1", title="which candidate mask matches best", right=(2,), right_context={"true_iou": [0.1, 0.8, 0.3]},
          wrong=(1,), wrong_context={"true_iou": [0.1, 0.8, 0.3]},
          hint="compare the three masks' *true* IoU with the target (metrics.iou), not the predicted IoU")
def _ambiguity(k, *, true_iou):
    best = int(np.argmax(true_iou)) + 1
    return same_choice(int(k), best, "the candidate with the highest true IoU", options=[1, 2, 3])


@exercise("07.2", title="clicks to reach Dice 0.8",
          right=(3,), right_context={"curves": {1: np.array([0.5]), 3: np.array([0.85]), 5: np.array([0.9])}},
          wrong=(5,), wrong_context={"curves": {1: np.array([0.5]), 3: np.array([0.85]), 5: np.array([0.9])}},
          hint="take the smallest click count whose *mean* Dice is >= 0.8; None if no count reaches it")
def _budget(k, *, curves):
    ks = sorted(c for c in curves if c != "box")
    want = next((c for c in ks if float(np.mean(curves[c])) >= 0.8), None)
    ok = k == want
    return Result(ok, f"the smallest click count with mean Dice >= 0.8 is {want}; you answered {k}")


@exercise("07.3", title="annotation cost of 100 test images", right=((16, 0), (0, 300)), wrong=((16, 1600), (0, 3)),
          hint="in-context: the support masks are drawn once per task, no clicks; interactive: clicks on every test image")
def _cost(in_context, interactive):
    ok = tuple(in_context) == (16, 0) and tuple(interactive) == (0, 300)
    return Result(ok, f"in-context (masks, clicks) = {tuple(in_context)}, interactive = {tuple(interactive)}; "
                      f"expected (16, 0) and (0, 300)")


@exercise("07.4", title="LoRA parameters in the encoder", right=(576,), right_context={"rank": 1},
          wrong=(192,), wrong_context={"rank": 1},
          hint="LoRA on qkv (D -> 3D) adds A (r x D) and B (3D x r) per block: r (D + 3D) per block, times the blocks")
def _lora(n, *, rank):
    from course_lib.methods.interactive.sam import SONOSAM_CONFIG

    v = SONOSAM_CONFIG["vision_config"]
    want = v["num_hidden_layers"] * rank * (v["hidden_size"] + 3 * v["hidden_size"])
    return Result(int(n) == want, f"{v['num_hidden_layers']} blocks x r(D + 3D) with D = {v['hidden_size']}, r = {rank}: "
                                  f"{want}; you counted {n}")

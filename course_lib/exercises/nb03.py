"""Checkers for notebook 03 (CoOp prompt learning: class-specific context, class-token position, the
context initialisation, scanner diversity), registered with course_lib.exercises."""
from __future__ import annotations

from course_lib.exercises import Result, exercise, within


@exercise("03.1", title="parameters of class-specific context",
          right=(960,), right_context={"n_classes": 2, "n_ctx": 5, "width": 96},
          wrong=(480,), wrong_context={"n_classes": 2, "n_ctx": 5, "width": 96},
          hint="unified context: M x width numbers shared by all classes; class-specific (Eq. 4): one M x width set per class")
def _csc(n, *, n_classes, n_ctx, width):
    want = int(n_classes) * int(n_ctx) * int(width)
    return Result(int(n) == want, f"K x M x width = {n_classes} x {n_ctx} x {width} = {want}; you counted {int(n)}")


@exercise("03.2", title="the hand prompt that front-position CoOp reproduces",
          right=(("{} an ultrasound image of a.", 2e-7),), wrong=(("an ultrasound image of a {}.", 0.28),),
          hint="position='front' puts the class-name tokens right after [SOS] and the context after them; write that "
               "sentence as a template with {} for the class name and compare its encode_text features with "
               "CoOp's text_features() (max absolute difference)")
def _front(answer):
    template, diff = answer
    template, diff = str(template), float(diff)
    front = template.strip().startswith("{}")
    ok = front and diff < 1e-5
    return Result(ok, f"template {template!r} ({'class first' if front else 'class not first'}), max |difference| "
                      f"{diff:.2e} ({'below' if diff < 1e-5 else 'above'} 1e-5: the features "
                      f"{'are' if diff < 1e-5 else 'are not'} the same)")


@exercise("03.3", title="another initial context: identity at step 0, range after training",
          right=((0.48, 0.48, 0.70),), right_context={"reference": (0.706, 0.02)},
          wrong=((0.51, 0.48, 0.70),), wrong_context={"reference": (0.706, 0.02)},
          hint="before training CoOp must equal zero-shot with the same words (accuracy identical); after training "
               "compare with the notebook's CoOp row at the largest shot count (mean, sd over seeds)")
def _init(accs, *, reference):
    a0, zs, trained = (float(a) for a in accs)
    mean, sd = (float(v) for v in reference)
    tol = max(3 * sd, 0.05)
    same = abs(a0 - zs) < 1e-6
    r = within(trained, mean - tol, mean + tol, "accuracy after training (template-init CoOp mean ± max(3 sd, 5 points))")
    return Result(same and r.ok, f"at step 0 {a0:.4f} vs zero-shot {zs:.4f} ({'identical' if same else 'differ'}); "
                                 f"{r.message}")


@exercise("03.4", title="CoOp trained on centers A+B, tested on D",
          right=(0.68,), right_context={"reference": (0.685, 0.039)},
          wrong=(0.40,), wrong_context={"reference": (0.685, 0.039)},
          hint="load the task with centers=['A', 'B'] and test_centers=['D'], draw the shots with few_shot_indices, train "
               "with fs.train_prompt_predictor and measure accuracy on the test set; more scanners in the shots should "
               "not make center D worse than training on A alone")
def _diversity(acc, *, reference):
    mean, sd = (float(v) for v in reference)
    tol = max(3 * sd, 0.05)
    r = within(acc, mean - tol, 1.0, "accuracy on center D after training on A+B")
    r.message += f" (lower bound: CoOp trained on A only, {mean:.3f}, minus max(3 sd, 5 points))"
    return r

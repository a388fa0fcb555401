"""Checkers for notebook 09 (hybrid tuning: Mona -> HT), registered with course_lib.exercises, and the notebook's
diagram of where LoRA, Mona and HT sit in a transformer block (draw_hybrid_tuning_diagram)."""
from __future__ import annotations

import math

from course_lib.exercises import Result, close, exercise, within


def _alias(image_size: int, patch: int, period_px: float) -> int:
    f = round(image_size / period_px)  # cycles per image of the band pattern
    n = image_size // patch  # samples of the token grid per image side
    return int(abs(f - n * round(f / n)))


@exercise("09.1", title="where a band frequency lands on the token grid",
          right=(2,), right_context={"image_size": 224, "patch": 16, "period_px": 14},
          wrong=(16,), wrong_context={"image_size": 224, "patch": 16, "period_px": 14},
          hint="bands every p px = S/p cycles per image; the token grid samples S/patch points per side, so a frequency "
               "f aliases to |f - n·round(f/n)| with n = S/patch")
def _alias_check(k, *, image_size, patch, period_px):
    want = _alias(image_size, patch, period_px)
    return Result(int(k) == want, f"{image_size / period_px:.0f} cycles/image sampled by a {image_size // patch}-token "
                                  f"grid lands at {want} cycles/image; you answered {k}")


@exercise("09.2", title="trainable parameters of one HT adapter",
          right=(5315,), right_context={"dim": 96, "bottleneck": 16},
          wrong=(5232,), wrong_context={"dim": 96, "bottleneck": 16},
          hint="LayerNorm (2D) + γ, γx (2D) + down (Dm + m) + up (mD + D) + Θ (m) + three depth-wise k×k convs "
               "(m(k²+1) each) + point-wise 1×1 (m² + m) + noise estimator (m·h + h + 3h + 3, h = max(4, m//4))")
def _ht_params(n, *, dim, bottleneck):
    from course_lib.methods.ht.ht_adapter import HTAdapter
    from course_lib.train import count_parameters

    want = count_parameters(HTAdapter(dim, bottleneck), trainable=True)
    return Result(int(n) == want, f"HTAdapter(dim={dim}, bottleneck={bottleneck}) has {want:,} trainable parameters; "
                                  f"you counted {int(n):,}")


@exercise("09.3", title="an adapter with gamma_init = 1 is still the identity at initialisation",
          right=(0.0,), wrong=(0.3,),
          hint="build HTAdapter(dim, bottleneck, gamma_init=1.0), feed random tokens (B, 1 + H·W, D) and take "
               "max |adapter(x) - x|: the up-projection starts at zero whatever γ is")
def _identity(err):
    return within(float(err), 0.0, 1e-6, "max |adapter(x) − x| at initialisation")


@exercise("09.4", title="the price of input-dependent branch weights",
          right=(80,), right_context={"bottleneck": 16},
          wrong=(3,), wrong_context={"bottleneck": 16},
          hint="a learnable input-independent α has 3 parameters; the noise estimator (eq. 3) has fc1 (m → h) and "
               "fc2 (h → 3) with biases, h = max(4, m//4): count the extra parameters it costs over a fixed α")
def _ne_extra(n, *, bottleneck):
    from course_lib.methods.ht.ht_adapter import NoiseEstimator
    from course_lib.train import count_parameters

    want = count_parameters(NoiseEstimator(bottleneck)) - 3
    return Result(int(n) == want, f"noise estimator at m = {bottleneck}: {want + 3} parameters, {want} more than a "
                                  f"learnable fixed α; you answered {int(n)}")


@exercise("09.5", title="zero-shot AUC shift after stage 1",
          right=(0.028,), right_context={"before": 0.458, "after": 0.486},
          wrong=(0.486,), wrong_context={"before": 0.458, "after": 0.486},
          hint="the shift is after − before on BUSI (from zs_table); then compare it with the width of the AUC "
               "intervals of §4 before calling it forgetting or a gain")
def _zs_shift(d, *, before, after):
    return close(float(d), float(after) - float(before), 1e-6, "AUC after − before stage 1 on BUSI")


@exercise("09.6", title="a difference against the seed spread",
          right=(True,), right_context={"mean_a": 0.29, "sd_a": 0.03, "mean_b": 0.12, "sd_b": 0.05},
          wrong=(True,), wrong_context={"mean_a": 0.22, "sd_a": 0.11, "mean_b": 0.12, "sd_b": 0.05},
          hint="call a difference of means real (at this scale) only when it exceeds the two seed sds together: "
               "|mean_a − mean_b| > sd_a + sd_b")
def _seed_noise(answer, *, mean_a, sd_a, mean_b, sd_b):
    want = abs(mean_a - mean_b) > sd_a + sd_b
    return Result(bool(answer) == want, f"|{mean_a:.3f} − {mean_b:.3f}| = {abs(mean_a - mean_b):.3f} vs sd sum "
                                        f"{sd_a + sd_b:.3f}: {'beyond' if want else 'within'} the seed spread; "
                                        f"you answered {bool(answer)}")


@exercise("09.7", title="external validation: a gap or a tie?",
          right=("tie",), right_context={"lo_in": 0.20, "hi_in": 0.40, "lo_ex": 0.15, "hi_ex": 0.25},
          wrong=("gap",), wrong_context={"lo_in": 0.20, "hi_in": 0.40, "lo_ex": 0.15, "hi_ex": 0.25},
          hint="read one seed's row of the §8 table: the in-domain and the external 95 % intervals [lo, hi]; "
               "answer 'gap' when they do not overlap, 'tie' when they do")
def _external_verdict(answer, *, lo_in, hi_in, lo_ex, hi_ex):
    from course_lib.experiments.external import verdict

    want = verdict((float(lo_in), float(hi_in)), (float(lo_ex), float(hi_ex)))
    return Result(str(answer).strip().lower() == want,
                  f"in-domain [{lo_in:.3f}, {hi_in:.3f}] vs external [{lo_ex:.3f}, {hi_ex:.3f}]: the intervals "
                  f"{'do not overlap -> gap' if want == 'gap' else 'overlap -> tie'}; you answered {answer!r}")


def draw_hybrid_tuning_diagram():
    """One frozen ViT block with the three insertion points (LoRA inside attention's projections, Mona/HT after MSA
    and after MLP) and the inside of an HT adapter (eqs. 1-5: frequency filter, noise estimator, multi-kernel convs)."""
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.5]})

    def box(ax, x, y, txt, fc, w=None):
        ax.text(x, y, txt, ha="center", va="center", fontsize=8, transform=ax.transAxes,
                bbox=dict(boxstyle="round", fc=fc, ec="k", lw=0.6))

    def arrow(ax, p, q, **kw):
        ax.annotate("", xy=q, xytext=p, xycoords="axes fraction", arrowprops=dict(arrowstyle="->", lw=1, **kw))

    frozen, lora, adapter = "#dddddd", "#fce5cd", "#d9ead3"
    ys = [0.94, 0.8, 0.66, 0.52, 0.38, 0.24, 0.1]
    labels = [("tokens Z", "white"), ("LN → MSA\n(W_q, W_k, W_v, W_o frozen)", frozen), ("+ residual", "white"),
              ("adapter (Mona / HT)", adapter), ("LN → MLP (frozen) + residual", frozen), ("adapter (Mona / HT)", adapter),
              ("next block", "white")]
    for y, (t, c) in zip(ys, labels):
        box(a0, 0.35, y, t, c)
    for y0, y1 in zip(ys, ys[1:]):
        arrow(a0, (0.35, y0 - 0.04), (0.35, y1 + 0.04))
    box(a0, 0.85, 0.8, "LoRA: W + B·A\n(rank r, attention\nprojections)", lora)
    arrow(a0, (0.72, 0.8), (0.6, 0.8), ls="--")
    a0.set_title("where each method sits in a frozen ViT block", fontsize=9)
    a0.axis("off")

    pts = {"in": (0.03, 0.5, "Z (tokens)"), "down": (0.22, 0.5, "scaled LN +\nW_down → m ch.\n(eq. 1)"),
           "fft": (0.38, 0.82, "FFT2 ⊙ Θ → IFFT2\nfrequency filter\n(eq. 2)"),
           "ne": (0.5, 0.22, "noise estimator\nGAP→FC→ReLU→FC\n→softmax α (eq. 3)"),
           "conv": (0.62, 0.82, "Σ α_k DWConv_k\nk = 3, 5, 7\n+ PW 1×1 (eq. 4)"),
           "sum": (0.79, 0.82, "+ F_freq"), "up": (0.9, 0.5, "GELU → W_up\n(zero init)\n+ Z (eq. 5)")}
    for k, (x, y, t) in pts.items():
        box(a1, x, y, t, adapter if k in ("fft", "ne", "conv") else "white")
    for p, q in [("in", "down"), ("down", "fft"), ("fft", "conv"), ("fft", "ne"), ("ne", "conv"), ("conv", "sum"),
                 ("sum", "up")]:
        (x0, y0, _), (x1, y1, _) = pts[p], pts[q]
        a1.annotate("", xy=(x1, y1), xytext=(x0, y0), xycoords="axes fraction",
                    arrowprops=dict(arrowstyle="->", lw=1, shrinkA=26, shrinkB=26))
    a1.text(0.5, 0.02, "branch 1: frequency filter (Θ ∈ R^m per channel = a per-channel scale, §3);  "
            "branch 2: noise estimation weights the three kernel sizes per image", fontsize=7.5, ha="center",
            transform=a1.transAxes, color="dimgray")
    a1.set_title("inside one HT adapter (Qu et al., eqs. 1–5); Mona: no filter, no α (plain mean of the convs)",
                 fontsize=9)
    a1.axis("off")
    plt.tight_layout()
    return fig

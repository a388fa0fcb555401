"""TP-Seg benchmark runner: the unified multi-task benchmark (Table 1 analogue), the variants of Tables 2-4,
separate task-specific training, sampler on/off, parameter/FLOP growth (Table 5); notebook 11.

The benchmark keeps the tasks' natural size imbalance (sizes come from the profile section ``tpseg``):
SonoSynth breast lesion, thyroid nodule, lymph node and kidney (ultrasound, synthetic), and, when the real
data are found, BUSI breast lesions (ultrasound), HC18 fetal heads (ultrasound) and a TotalSegmentator CT
liver (CT, a second modality). Without the real data (``real="auto"``) those three are replaced by SonoSynth
liver, spleen and gallbladder tasks, and a message says so.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from course_lib import runtime, train
from course_lib.methods.tpseg import (TPSegConfig, build_tpseg, evaluate_tasks, fg_bg_separation,
                                      prototype_similarity, train_unified)


@dataclass
class BenchTask:
    """One segmentation task of the benchmark: ``train``/``val`` are dicts of ``image`` (N, H, W) float32 in
    [0, 1] and ``mask`` (N, H, W) uint8."""

    name: str
    short: str
    modality: str
    source: str
    train: dict
    val: dict
    synthetic: bool = True

    @property
    def n_train(self) -> int:
        return len(self.train["image"])

    @property
    def n_val(self) -> int:
        return len(self.val["image"])


def _split(images, masks, n_train, n_val):
    images, masks = np.asarray(images, np.float32), (np.asarray(masks) > 0).astype(np.uint8)
    if len(images) < n_train + 1:
        raise ValueError(f"need more than {n_train} images, got {len(images)}")
    n_val = min(n_val, len(images) - n_train)
    return (dict(image=images[:n_train], mask=masks[:n_train]),
            dict(image=images[n_train:n_train + n_val], mask=masks[n_train:n_train + n_val]))


def _sonosynth_task(name, short, anatomy, structure, n_train, n_val, size, seed):
    from course_lib.data import sonosynth as ss

    b = ss.generate_batch(n_train + n_val, seed=seed, image_size=size, anatomies=[anatomy])
    mask = b["mask"] if structure == "lesion" else (b["label_map"] == ss.structure_id(structure))
    tr, va = _split(b["image"], mask, n_train, n_val)
    return BenchTask(name, short, "ultrasound (synthetic)", f"SonoSynth/{anatomy}", tr, va, True)


# region: tpseg-benchmark
def build_benchmark(n_train, n_val: int, image_size: int, *, seed: int = 0, real: str | bool = "auto",
                    data_dir=None) -> list[BenchTask]:
    """The unified benchmark: 7 tasks with sizes ``n_train`` (7 numbers, largest first) and ``n_val`` each.

    ``real``: ``"auto"`` uses BUSI, HC18 and TotalSegmentator when found (else SonoSynth stand-ins, with a
    message), ``True`` requires them (raises the loader's clear error), ``False`` never uses them."""
    if len(n_train) != 7:
        raise ValueError(f"n_train needs 7 sizes (one per task), got {len(n_train)}")
    if real not in ("auto", True, False):
        raise ValueError(f"real={real!r}: use 'auto', True or False")
    n = list(n_train)
    tasks = [
        _sonosynth_task("Breast lesion", "BL-syn", "breast", "lesion", n[0], n_val, image_size, seed),
        _sonosynth_task("Thyroid nodule", "TN-syn", "thyroid", "lesion", n[1], n_val, image_size, seed + 1),
        _sonosynth_task("Lymph node", "LN-syn", "lymph_node", "lesion", n[2], n_val, image_size, seed + 2),
        _sonosynth_task("Kidney", "KI-syn", "abdomen", "kidney", n[3], n_val, image_size, seed + 3),
    ]
    if real is not False:
        try:
            from course_lib.data import busi, hc18, totalseg

            s = busi.load("gt", path=data_dir, image_size=image_size, classes=("benign", "malignant"),
                          limit=(n[4] + n_val + 1) // 2 + 1, seed=seed)
            rng = np.random.default_rng(seed)
            s = [s[i] for i in rng.permutation(len(s))]
            tr, va = _split([x["image"] for x in s], [x["mask"] for x in s], n[4], n_val)
            tasks.append(BenchTask("Breast lesion (BUSI)", "BL-BUSI", "ultrasound", "BUSI (Al-Dhabyani 2020)", tr, va, False))
            s = hc18.load(path=data_dir, image_size=image_size, limit=n[5] + n_val, seed=seed)
            tr, va = _split([x["image"] for x in s], [x["mask"] for x in s], n[5], n_val)
            tasks.append(BenchTask("Fetal head", "FH-HC18", "ultrasound", "HC18 (van den Heuvel 2018)", tr, va, False))
            s = totalseg.load_slices(path=data_dir, structures=("liver",), image_size=image_size)
            rng.shuffle(s)
            tr, va = _split([x["image"] for x in s], [x["mask"] for x in s], min(n[6], len(s) - 2), n_val)
            tasks.append(BenchTask("Liver (CT)", "LV-CT", "CT", "TotalSegmentator example (Wasserthal 2023)", tr, va, False))
        except runtime.DatasetNotFoundError as e:
            if real is True:
                raise
            print(f"[auto] real data not found ({str(e).splitlines()[0][:120]}...); using SonoSynth liver, spleen "
                  f"and gallbladder tasks instead")
            tasks = tasks[:4]
    if len(tasks) == 4:
        tasks += [
            _sonosynth_task("Liver", "LV-syn", "abdomen", "liver", n[4], n_val, image_size, seed + 4),
            _sonosynth_task("Spleen", "SP-syn", "abdomen", "spleen", n[5], n_val, image_size, seed + 5),
            _sonosynth_task("Gallbladder", "GB-syn", "abdomen", "gallbladder", n[6], n_val, image_size, seed + 6),
        ]
    return tasks
# endregion


def task_table(tasks):
    """Table 1 analogue: task, short name, modality, source, #train, #val, foreground fraction (%)."""
    import pandas as pd

    return pd.DataFrame([dict(task=t.name, short=t.short, modality=t.modality, source=t.source, n_train=t.n_train,
                              n_val=t.n_val, fg_percent=round(100 * float(t.train["mask"].mean()), 1)) for t in tasks])


# region: tpseg-variants
#: the variants of Tables 2-4 (id -> (description, TPSegConfig changes))
VARIANTS = {
    "A1": ("Baseline: shared frozen encoder + U-decoder", dict(adapter="none", stages=(False, False, False))),
    "A2": ("w/o TCA", dict(adapter="none")),
    "A3": ("w/o PGTD", dict(stages=(False, False, False))),
    "A4": ("Full (TP-Seg)", dict()),
    "B1": ("Shared LoRA + PGTD", dict(adapter="lora")),
    "B2": ("Shared Adapter + PGTD", dict(adapter="adapter")),
    "B3": ("w/o task-specific route", dict(adapter="shared")),
    "B4": ("w/o shared route", dict(adapter="task")),
    "C1": ("lambda_p = 2.5", dict(lambda_p=2.5)),
    "C2": ("lambda_p = 10", dict(lambda_p=10.0)),
    "C3": ("alpha = 0.6, M = 8", dict(alpha=0.6, n_experts=8)),
    "C4": ("M = 4", dict(n_experts=4)),
    "C5": ("M = 8", dict(n_experts=8)),
    "T4-1": ("w/o PGTD1", dict(stages=(False, True, True))),
    "T4-2": ("w/o PGTD2", dict(stages=(True, False, True))),
    "T4-3": ("w/o PGTD3", dict(stages=(True, True, False))),
}
# endregion


class Runner:
    """Builds and trains models on a benchmark with sizes from the profile section ``S`` (``P.section("tpseg")``);
    the encoder is loaded once and deep-copied for every model."""

    def __init__(self, tasks: list[BenchTask], S, *, encoder=None, device=None, progress: bool = False):
        self.tasks, self.S, self.progress = tasks, S, progress
        self.device = device or runtime.get_device()
        self.base_cfg = TPSegConfig(hidden=S.hidden, width=S.width, heads=S.heads)
        self._encoder = encoder
        self._mean_std = None
        if encoder is None:
            if "sam2" in S.encoder.lower():
                from course_lib.methods.tpseg.tca import load_sam2_encoder

                self._encoder = load_sam2_encoder(S.encoder)
            else:
                from course_lib import models

                bb = models.load_backbone(S.encoder)
                self._encoder, self._mean_std = bb.visual, (bb.mean, bb.std)
        self.seconds = 0.0

    def build(self, changes: dict | None = None, task_names=None):
        cfg = replace(self.base_cfg, **(changes or {}))
        names = task_names or [t.short for t in self.tasks]
        m = build_tpseg(self.S.encoder, names, cfg, encoder=copy.deepcopy(self._encoder), device=self.device)
        if self._mean_std is not None:
            m.encoder.mean.copy_(torch.tensor(self._mean_std[0]).view(1, 3, 1, 1))
            m.encoder.std.copy_(torch.tensor(self._mean_std[1]).view(1, 3, 1, 1))
        return m

    def run(self, changes: dict | None = None, *, seed: int = 0, steps: int | None = None, balanced: bool = True,
            tasks: list[BenchTask] | None = None) -> tuple[dict, object, dict]:
        """Train one unified model (seeded) and evaluate it per task: ``(results, model, history)``."""
        tasks = tasks or self.tasks
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = self.build(changes, [t.short for t in tasks])
        hist = train_unified(model, [t.train for t in tasks], steps=steps or self.S.steps, lr=self.S.lr,
                             batch_size=self.S.batch_size, balanced=balanced, seed=seed, progress=self.progress)
        res = evaluate_tasks(model, [t.val for t in tasks])
        self.seconds += time.perf_counter() - t0
        return res, model, hist

    def run_separate(self, *, seed: int = 0, steps_total: int | None = None) -> dict:
        """A5: one TP-Seg model per task (n_tasks = 1), each with ``steps_total / T`` steps (at least 4, or
        ``steps_total`` when smaller), i.e. the same total budget as one unified run, where the balanced sampler
        also gives each task ~1/T of the steps."""
        steps_total = steps_total or self.S.steps
        per = max(min(4, steps_total), steps_total // len(self.tasks))
        out = {}
        for t in self.tasks:
            res, _, _ = self.run(seed=seed, steps=per, tasks=[t])
            out.update(res)
        return out


def mean_sd(runs: list[dict], tasks) -> dict:
    """``{task: (dice mean, dice sd, miou mean, miou sd)}`` plus ``"Average"`` over tasks, from per-seed results."""
    out = {}
    for t in [t.short for t in tasks]:
        d = np.array([r[t]["dice"] for r in runs])
        m = np.array([r[t]["miou"] for r in runs])
        out[t] = (d.mean(), d.std(ddof=1) if len(d) > 1 else 0.0, m.mean(), m.std(ddof=1) if len(m) > 1 else 0.0)
    avg_d = np.array([np.mean([r[t.short]["dice"] for t in tasks]) for r in runs])
    avg_m = np.array([np.mean([r[t.short]["miou"] for t in tasks]) for r in runs])
    out["Average"] = (avg_d.mean(), avg_d.std(ddof=1) if len(runs) > 1 else 0.0,
                      avg_m.mean(), avg_m.std(ddof=1) if len(runs) > 1 else 0.0)
    return out


def results_frame(rows: dict, tasks, metric: str = "dice"):
    """A Table 2/3-style DataFrame: one row per method, one column per task + Average, cells 'mean ± sd'."""
    import pandas as pd

    k = 0 if metric == "dice" else 2
    cols = [t.short for t in tasks] + ["Average"]
    data = {}
    for name, ms in rows.items():
        data[name] = {c: (f"{ms[c][k]:.1f} ± {ms[c][k + 1]:.1f}" if ms[c][k + 1] > 0 else f"{ms[c][k]:.1f}") for c in cols}
    return pd.DataFrame(data).T[cols]


def parameter_growth(runner: Runner, max_tasks: int, image_size: int | None = None) -> "object":
    """Table 5 analogue: per number of tasks T = 1..max_tasks, the parameters of TCA (shared + task routers +
    gates), the PGTD prototypes (per-task buffers, counted as parameters as the paper does), the rest of the
    decoder, the whole model, and the forward FLOPs of one image (``torch.utils.flop_counter``)."""
    import pandas as pd
    from torch.utils.flop_counter import FlopCounterMode

    size = image_size or runner.S.image_size
    rows = []
    for T in sorted({1, 2, max_tasks // 2, max_tasks}):
        m = runner.build(task_names=[f"t{i}" for i in range(T)]).eval()
        tca = sum(train.count_parameters(mod) for mod in (m.encoder.adapters, m.encoder.gate) if mod is not None)
        protos = sum(mod.prototypes.numel() for mod in m.decoder.pgtd_modules().values())
        dec = train.count_parameters(m.decoder)
        x = torch.zeros(1, 1, size, size, device=train.model_device(m))
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(x, 0)
        rows.append(dict(tasks=T, tca=tca, prototypes=protos, decoder=dec,
                         total=train.count_parameters(m) + protos, trainable=train.count_parameters(m, True),
                         gflops=fc.get_total_flops() / 1e9))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the paper's numbers (for side-by-side tables)
#: Table 1 (task, modality, #train, #val)
PAPER_TABLE1 = [("Wet AMD", "OCT", 2346, 703), ("Brain tumor", "MR-T1", 2298, 766),
                ("Adenocarcinoma", "pathology", 636, 159), ("Thyroid nodule", "ultrasound", 966, 276),
                ("Colon polyp", "endoscopy", 1450, 798), ("Lung infection", "CT", 894, 385),
                ("Breast lesion", "ultrasound", 486, 161), ("Skin lesion", "dermoscopy", 1886, 808)]
#: Tables 2-4, average over the 8 tasks: variant id -> (Dice %, mIoU %)
PAPER_AVERAGE = {"A1": (78.69, 78.02), "A2": (80.08, 79.32), "A3": (85.54, 84.85), "A4": (86.63, 86.44),
                 "A5": (86.41, 86.18), "B1": (85.48, 84.94), "B2": (85.49, 84.83), "B3": (85.30, 85.01),
                 "B4": (86.40, 86.14), "C1": (86.28, 86.01), "C2": (86.37, 86.13), "C3": (86.45, 86.21),
                 "C4": (86.22, 85.96), "C5": (86.24, 86.00), "T4-1": (86.16, 85.77), "T4-2": (86.21, 85.80),
                 "T4-3": (86.41, 86.13)}
#: Table 5 (parameters in M, FLOPs in G) and the thresholds quoted for Figs. 7-8
PAPER_TABLE5 = dict(tca_params_m=3.37, tca_growth_per_task_m=3.37, tca_growth_percent=1.27, decoder_params_m=12.03,
                    model_1_task_m=264.84, model_8_tasks_m=288.46, gflops_1_task=254.00, gflops_8_tasks=254.23)
PAPER_PROTOTYPES = dict(max_cross_task_similarity=0.9, related_task_similarity=0.3, min_fg_bg_separation=0.85)


# --------------------------------------------------------------------------- figures
def plot_architecture():
    """A schematic of TP-Seg (matplotlib): the TCA before a frozen block with its split gate, and one PGTD module."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))

    def box(ax, x, y, w, h, text, color):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="k", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def arrow(ax, a, b):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, lw=1.2))

    ax = axes[0]
    box(ax, 0.02, 0.42, 0.14, 0.16, "h (block input)", "#eeeeee")
    box(ax, 0.25, 0.66, 0.24, 0.16, "shared router\nConv(GELU(Conv(GN h)))", "#cfe2f3")
    box(ax, 0.25, 0.18, 0.24, 0.16, "task router t\nConv(GELU(Conv(GN h)))", "#f9cb9c")
    box(ax, 0.57, 0.42, 0.16, 0.16, "h + (1-g) dh_s\n+ g dh_t", "#d9ead3")
    box(ax, 0.80, 0.42, 0.18, 0.16, "frozen block b\n(SAM 2 / ViT)", "#dddddd")
    for a, b in [((0.16, 0.5), (0.25, 0.74)), ((0.16, 0.5), (0.25, 0.26)), ((0.49, 0.74), (0.57, 0.54)),
                 ((0.49, 0.26), (0.57, 0.46)), ((0.73, 0.5), (0.80, 0.5))]:
        arrow(ax, a, b)
    ins = ax.inset_axes([0.55, 0.02, 0.42, 0.3])
    b = np.arange(1, 13)
    for tem, ls in ((1.0, "--"), (0.3, "-")):
        ins.plot(b, 1 / (1 + np.exp(-(b - 6.5) / tem)), ls, label=f"tem={tem}")
    ins.set_title("g_t(b): cumulative sigmoid", fontsize=8)
    ins.tick_params(labelsize=7)
    ins.legend(fontsize=7)
    ax.set_title("Task-conditioned adapter (TCA, eqs. 1-3)")
    ax.axis("off")
    ax = axes[1]
    box(ax, 0.0, 0.70, 0.17, 0.14, "f_low, f_high", "#eeeeee")
    box(ax, 0.22, 0.70, 0.17, 0.14, "fuse (eq. 4)", "#d9ead3")
    box(ax, 0.0, 0.30, 0.17, 0.14, "task t: P_fg, P_bg\n(MLP, eq. 5; EMA)", "#f9cb9c")
    box(ax, 0.22, 0.30, 0.17, 0.14, "cross-attn (6)\nZ = MLP (7)", "#cfe2f3")
    box(ax, 0.45, 0.70, 0.2, 0.14, "S = sig(cos fg - cos bg)\nf' = f(1+aS) (8-9)", "#fff2cc")
    box(ax, 0.45, 0.30, 0.2, 0.14, "M experts, w(Z)\ny = sum w_m W_m*f' (10)", "#cfe2f3")
    box(ax, 0.72, 0.50, 0.26, 0.14, "Head(y) + l_p rho tanh(s/temp)\n(eq. 11)", "#d9ead3")
    box(ax, 0.72, 0.12, 0.26, 0.12, "training: EMA of masked\nmean features (eqs. 12-13)", "#f4cccc")
    for a, b in [((0.17, 0.77), (0.22, 0.77)), ((0.39, 0.77), (0.45, 0.77)), ((0.17, 0.37), (0.22, 0.37)),
                 ((0.39, 0.37), (0.45, 0.37)), ((0.55, 0.70), (0.55, 0.44)), ((0.65, 0.37), (0.72, 0.55)),
                 ((0.65, 0.77), (0.72, 0.60)), ((0.85, 0.24), (0.09, 0.30))]:
        arrow(ax, a, b)
    ax.set_title("Prototype-guided task decoder module (PGTD, eqs. 4-13)")
    ax.axis("off")
    fig.tight_layout()
    return fig


def plot_gates(model, title: str = "learned split gate per task (final temperature)"):
    """Routing weight g_t(b) per block for every task, with the split depth b_t marked."""
    import matplotlib.pyplot as plt

    enc = model.encoder
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    b = np.arange(1, enc.n_blocks + 1)
    for t, name in enumerate(model.task_names):
        with torch.no_grad():
            g = enc.gates(t).cpu().numpy()
        ax.plot(b, g, "o-", label=f"{name} (b_t={enc.gate.split_depth(t)})", alpha=0.8)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("encoder block b")
    ax.set_ylabel("g_t(b) (0 = shared, 1 = task route)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_prototypes(sim: dict, sep: dict, dice: dict, names):
    """Fig. 7 analogue (FG prototype cosine similarity across tasks, per PGTD module) and Fig. 8 analogue
    (FG-BG separation per task vs Dice)."""
    import matplotlib.pyplot as plt

    keys = [k for k in ("PGTD1", "PGTD2", "PGTD3") if k in sim]
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4.2 * (len(keys) + 1), 3.8))
    for ax, k in zip(axes, keys):
        im = ax.imshow(sim[k], vmin=-1, vmax=1, cmap="coolwarm")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{sim[k][i, j]:.2f}", ha="center", va="center", fontsize=6)
        ax.set_title(f"{k}: cos(P_fg^i, P_fg^j)")
    fig.colorbar(im, ax=axes[:len(keys)].tolist(), shrink=0.7)
    ax = axes[-1]
    for k in keys:
        ax.scatter(sep[k], [dice[n] for n in names], label=k)
    ax.set_xlabel("FG-BG separation 1 - cos(P_fg, P_bg)")
    ax.set_ylabel("Dice (%)")
    ax.set_title("separation vs Dice (Fig. 8 analogue)")
    ax.legend(fontsize=7)
    return fig


def plot_per_task(rows: dict, tasks, metric: str = "dice", title: str = ""):
    """Grouped bars (mean ± sd over seeds) per task for several methods (``rows`` from :func:`mean_sd`)."""
    import matplotlib.pyplot as plt

    k = 0 if metric == "dice" else 2
    cols = [t.short for t in tasks] + ["Average"]
    fig, ax = plt.subplots(figsize=(11, 3.6))
    w = 0.8 / len(rows)
    for i, (name, ms) in enumerate(rows.items()):
        ax.bar(np.arange(len(cols)) + i * w, [ms[c][k] for c in cols], w, yerr=[ms[c][k + 1] for c in cols],
               label=name, capsize=2)
    ax.set_xticks(np.arange(len(cols)) + 0.4 - w / 2, cols, fontsize=8)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

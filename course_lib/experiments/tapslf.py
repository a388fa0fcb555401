"""TAP-SLF experiments: multi-task SonoSynth data, the seeded variant grid behind the paper's Tables 2-4 and
the detection-bypass test, and the tables built from it; used by notebook 10 (``10_tap_slf.ipynb``).

Data: four tasks from one SonoSynth world (breast and thyroid lesions, linear probe defaults, every image
with a lesion), each task on its **own** images, as in the FMC_UIA challenge where an image carries one
task's annotation: segmentation (lesion mask), classification (benign vs malignant), detection (the
lesion's box, one per image), regression (lesion max diameter in mm). Train and test images come from
disjoint sample ranges.

Runs are shared between tables: every configuration is reduced to a key (prompt mode, detection
prompts, the exact LoRA blocks), so e.g. 70 % and 80 % frozen on a 4-block encoder (both 3 frozen
blocks) are one run, reused by Table 4 and by TAP-SLF in Tables 2 and 3.
"""
from __future__ import annotations

import copy
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from course_lib import runtime
from course_lib.data import sonosynth as ss
from course_lib.methods.tapslf import tapslf as ts

__all__ = ["METRICS", "PAPER", "load_encoder_backbone", "make_task_data", "florence2_base_breakdown", "plot_placement", "preprocess", "variant_key", "run_grid", "summary",
           "format_table", "paper_table"]

runtime.register_section(
    "tapslf",
    quick=dict(backbone="sonoclip-tiny", n_train=64, n_test=32, steps=32, warm_steps=400, batch_size=8, lr=2e-3, warm_lr=1e-2, seeds=(0, 1, 2),
               fpn_dim=32, anatomies=("breast", "thyroid")),
    full=dict(backbone="florence-2-base", n_train=2000, n_test=500, steps=4000, warm_steps=1000, batch_size=16, lr=1e-3, warm_lr=1e-3,
              seeds=(0, 1, 2), fpn_dim=256, anatomies=("breast", "thyroid")),
    # smoke mode (COURSE_SMOKE=1): Florence-2-base at 256 px on a CPU (about 1 s per image and pass on one core), about
    # ten distinct runs; one image per batch, 4 training and 2 test images per task (4 steps: every task trained once by
    # the round robin) keep notebook 10 within minutes
    smoke=dict(n_train=4, n_test=2, batch_size=1),
)

#: the paper's seven metrics, in its column order (HD95 in pixels, MRE in %)
METRICS = ("dsc", "hd95", "auc", "f1", "mcc", "miou", "mre")
#: lower is better for these
LOWER_IS_BETTER = ("hd95", "mre")

#: the paper's numbers (Table 3: ablation; Table 4: frozen ratios; the TAP-SLF row of Table 2 = Table 3's last row;
#: the other rows of Table 2 are not in the paper text we have)
PAPER = {
    "table3": {
        "backbone only": dict(dsc=0.9072, hd95=12.1545, auc=0.7410, f1=0.7778, mcc=0.6797, miou=0.4955, mre=29.2690),
        "w/o TAP": dict(dsc=0.9402, hd95=7.4894, auc=0.8921, f1=0.7946, mcc=0.6916, miou=0.6943, mre=22.6911),
        "w/o SLF": dict(dsc=0.9408, hd95=7.3057, auc=0.8901, f1=0.8059, mcc=0.6947, miou=0.6845, mre=26.9228),
        "TAP-SLF": dict(dsc=0.9423, hd95=7.2104, auc=0.9038, f1=0.8014, mcc=0.7012, miou=0.6867, mre=22.9845),
    },
    "table4": {
        0.5: dict(dsc=0.9358, hd95=8.4126, auc=0.9184, f1=0.8221, mcc=0.7363, miou=0.3612, mre=21.4478),
        0.6: dict(dsc=0.9286, hd95=10.2214, auc=0.9082, f1=0.8116, mcc=0.7195, miou=0.5728, mre=34.8821),
        0.7: dict(dsc=0.9423, hd95=7.2104, auc=0.9038, f1=0.8014, mcc=0.7012, miou=0.6867, mre=22.9845),
        0.8: dict(dsc=0.8814, hd95=28.7342, auc=0.8675, f1=0.7982, mcc=0.7094, miou=0.6325, mre=27.9913),
    },
    "trainable_percent": 6.8,
}


def load_encoder_backbone(name: str):
    """``(module, image_size, mean, std, encoder_kw)`` for a backbone name: ``"florence-2-base"`` (Florence-2's
    DaViT vision encoder via ``transformers``, 256 px, ImageNet normalisation) or any
    :func:`course_lib.models.load_backbone` name (its ``visual`` tower, size and normalisation)."""
    if name.lower() in ("florence-2-base", "florence2-base", "microsoft/florence-2-base"):
        from course_lib.methods.tapslf.encoders import load_florence2_vision

        return load_florence2_vision(pretrained=True), 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), \
            dict(image_size=256)
    from course_lib.models import load_backbone

    bb = load_backbone(name, verbose=False)
    return bb.visual, bb.image_size, bb.mean, bb.std, {}


def preprocess(images: np.ndarray, size: int, mean=None, std=None) -> torch.Tensor:
    """``(N, H, W)`` images in [0, 1] -> ``(N, 3, size, size)`` normalised float tensor."""
    x = torch.as_tensor(np.asarray(images, np.float32))[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.expand(-1, 3, -1, -1)
    if mean is not None:
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous()


def make_task_data(n: int, *, split: str, image_size: int, mean=None, std=None, anatomies=("breast", "thyroid"),
                   seed: int = 0) -> dict:
    """``{task: {"x", "y"}}`` for the four tasks, each from its own SonoSynth images (disjoint ranges per task
    and split). Targets: seg ``(n, 1, S, S)`` float masks, cls labels (0 benign, 1 malignant), det boxes
    normalised to [0, 1], reg lesion max diameter (mm)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    out = {}
    for i, task in enumerate(ts.TASKS):
        start = (0 if split == "train" else 10_000_000) + i * 1_000_000
        b = ss.generate_batch(n, seed=seed, start=start, image_size=image_size, anatomies=list(anatomies),
                              p_lesion=1.0)
        x = preprocess(b["image"], image_size, mean, std)
        if task == "seg":
            y = torch.as_tensor(b["mask"])[:, None].float()
        elif task == "cls":
            y = torch.as_tensor(b["label"])
        elif task == "det":
            y = torch.as_tensor(b["box"]) / image_size
        else:
            y = torch.as_tensor(b["measurement"])
        out[task] = {"x": x, "y": y}
    return out


def variant_key(config: ts.TapSlfConfig, depth: int) -> tuple:
    """What a run actually trains: prompt mode, detection prompts, the LoRA block indices."""
    blocks = tuple(ts.lora_blocks(depth, config.frozen_ratio)) if config.lora else ()
    return (config.prompt_mode, config.det_prompts and config.prompt_mode is not None, blocks)


def run_grid(backbone, configs: dict, data_train: dict, data_test: dict, *, seeds, steps: int, lr: float,
             batch_size: int, warm_steps: int = 0, warm_lr: float | None = None, fpn_dim: int | None = None, encoder_kw: dict | None = None, progress=None) -> pd.DataFrame:
    """Train and evaluate every configuration for every seed (identical configurations run once).

    ``warm_steps > 0``: per seed, heads are first trained on cached frozen features
    (:func:`course_lib.methods.tapslf.tapslf.warm_start_heads`) and every variant starts from them; its
    ``steps`` then adapt prompts, LoRA and heads together (at ``lr``; the warm start uses ``warm_lr``). ``seconds`` excludes the shared warm start.
    ``backbone`` is copied for each run (LoRA is injected in place) and trained on ``runtime.get_device()``.
    Returns one row per
    (name, seed): the seven metrics, trainable/total parameters, percent, seconds and the run key.
    """
    encoder_kw = encoder_kw or {}
    depth = ts.make_encoder(copy.deepcopy(backbone), **encoder_kw).depth
    done: dict = {}
    warm: dict = {}
    device = runtime.get_device()
    rows = []
    jobs = [(name, cfg, s) for name, cfg in configs.items() for s in seeds]
    it = progress(jobs, desc="TAP-SLF runs") if progress else jobs
    for name, cfg, seed in it:
        if fpn_dim is not None:
            cfg = replace(cfg, fpn_dim=fpn_dim)
        key = (variant_key(cfg, depth), seed)
        if key not in done:
            t0 = time.perf_counter()
            if warm_steps and seed not in warm:  # one warm start of the heads per seed, shared by every variant
                runtime.seed_everything(seed)
                base = ts.build_tapslf(copy.deepcopy(backbone), replace(ts.VARIANTS["heads_only"], fpn_dim=cfg.fpn_dim),
                                       **encoder_kw).to(device)
                if "cache" not in warm:  # frozen features do not depend on the seed: compute them once
                    warm["cache"] = ts.cache_features(base, data_train)
                warm[seed] = ts.warm_start_heads(base, data_train, steps=warm_steps, lr=warm_lr or lr, batch_size=batch_size,
                                                 seed=seed, cached=warm["cache"])
            runtime.seed_everything(seed)
            model = ts.build_tapslf(copy.deepcopy(backbone), cfg, **encoder_kw).to(device)
            if warm_steps:
                model.heads.load_state_dict(warm[seed])
            t0 = time.perf_counter()
            ts.train(model, data_train, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
            res = ts.evaluate(model, data_test)
            pb = ts.parameter_breakdown(model)
            done[key] = dict(**res, trainable=pb["trainable"], total=pb["total"], percent=pb["percent"],
                             seconds=time.perf_counter() - t0)
        rows.append(dict(variant=name, seed=seed, key=str(key[0]), **done[key]))
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame, names=None, metrics=METRICS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(mean, sd)`` tables over seeds, rows in the order of ``names``."""
    names = list(names) if names is not None else list(dict.fromkeys(df["variant"]))
    g = df[df["variant"].isin(names)].groupby("variant")
    cols = list(metrics) + [c for c in ("trainable", "percent") if c in df]
    mean = g[cols].mean().reindex(names)
    sd = g[cols].std(ddof=1).reindex(names)
    return mean, sd


def format_table(mean: pd.DataFrame, sd: pd.DataFrame, labels: dict | None = None, digits: int = 3) -> pd.DataFrame:
    """``"mean ± sd"`` strings (parameters as integers, percent with 2 decimals)."""
    out = pd.DataFrame(index=mean.index)
    for c in mean.columns:
        if c == "trainable":
            out[c] = [f"{int(round(v)):,}" for v in mean[c]]
        elif c == "percent":
            out["% trainable"] = [f"{v:.2f}" for v in mean[c]]
        else:
            d = 1 if c in LOWER_IS_BETTER else digits
            out[c.upper()] = [f"{m:.{d}f} ± {s:.{d}f}" for m, s in zip(mean[c], sd[c])]
    if labels:
        out.index = [labels.get(i, i) for i in out.index]
    return out


def paper_table(name: str) -> pd.DataFrame:
    """The paper's Table 3 or Table 4 as a DataFrame (columns upper-case like :func:`format_table`)."""
    if name not in ("table3", "table4"):
        raise ValueError(f"the paper text has numbers for 'table3' and 'table4' only, got {name!r}")
    df = pd.DataFrame(PAPER[name]).T
    df.columns = [c.upper() for c in df.columns]
    if name == "table4":
        df.index = [f"{int(100 * r)} %" for r in df.index]
    return df


def florence2_base_breakdown(config: ts.TapSlfConfig | str = "tap_slf", fpn_dim: int | None = None) -> dict:
    """:func:`~course_lib.methods.tapslf.tapslf.parameter_breakdown` of TAP-SLF on Florence-2-base's vision encoder,
    built from its config on the ``meta`` device (no weights, no download, no memory)."""
    from transformers import Florence2VisionBackbone

    from course_lib.methods.tapslf.encoders import florence2_base_config

    if isinstance(config, str):
        config = ts.VARIANTS[config]
    if fpn_dim is not None:
        config = replace(config, fpn_dim=fpn_dim)
    with torch.device("meta"):
        model = ts.build_tapslf(Florence2VisionBackbone(florence2_base_config()), config, image_size=256)
    return ts.parameter_breakdown(model)


def plot_placement(model: ts.TapSlfModel, ax=None, title: str | None = None):
    """Diagram of where TAP-SLF acts in ``model``: prompt tokens before block 0 (bypassed by detection),
    frozen blocks, LoRA blocks (q, k, v, out), the blocks/stages that feed the FPN decoder, the four heads."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    enc = model.encoder
    depth = enc.depth
    lora = {i for i in range(depth) if any(".lora_" in n for n, _ in enc.named_parameters()
                                              if _block_of(enc, n) == i)}
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 3.2))
    ax.set_xlim(-3.2, depth + 4.2)
    ax.set_ylim(-1.6, 2.3)
    ax.axis("off")

    def box(x, y, w, h, text, color, **kw):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="k", lw=0.8, **kw))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=7.5)

    box(-3.1, 0.0, 1.2, 1.0, "patch embed\n+ E_pos", "#d9d9d9")
    if model.prompts is not None:
        who = "shared P" if model.prompts.mode == "shared" else "P_t (per task)"
        box(-1.7, 1.2, 1.4, 0.7, f"{who}\nL={model.prompts.length}", "#9ecae1")
        ax.annotate("", xy=(-0.2, 0.75), xytext=(-1.0, 1.2), arrowprops=dict(arrowstyle="->", lw=1))
        if model.prompts.bypass:
            ax.text(-1.7, 2.05, "detection bypasses prompts", fontsize=7, color="#08519c")
    ax.annotate("", xy=(-0.2, 0.5), xytext=(-1.9, 0.5), arrowprops=dict(arrowstyle="->", lw=1))
    feat = set(getattr(enc, "feature_blocks", []))
    if enc.kind == "davit":
        ends = np.cumsum([len(s) for s in enc.vision.blocks]) - 1
        feat = {int(ends[s]) for s in enc.feature_stages}
    for i in range(depth):
        color = "#fdae6b" if i in lora else "#f0f0f0"
        box(i - 0.1, 0.0, 0.8, 1.0, f"block {i}\n" + ("LoRA\nq,k,v,o" if i in lora else "frozen"), color)
        if i in feat:
            ax.annotate("", xy=(i + 0.3, -0.75), xytext=(i + 0.3, -0.02), arrowprops=dict(arrowstyle="->", lw=0.8))
    box(min(feat) - 0.1, -1.5, max(feat) - min(feat) + 0.8, 0.7, "FPN decoders -> seg mask, det box", "#c7e9c0")
    box(depth + 0.2, 0.0, 1.4, 1.0, "GAP", "#d9d9d9")
    box(depth + 2.0, 0.0, 1.9, 1.0, "cls / reg heads", "#c7e9c0")
    ax.annotate("", xy=(depth + 0.2, 0.5), xytext=(depth - 0.3, 0.5), arrowprops=dict(arrowstyle="->", lw=1))
    ax.annotate("", xy=(depth + 2.0, 0.5), xytext=(depth + 1.6, 0.5), arrowprops=dict(arrowstyle="->", lw=1))
    ax.set_title(title or f"{enc.kind} encoder, {depth} blocks: LoRA on {sorted(lora)}", fontsize=9)
    return ax


def _block_of(enc, name: str):
    """Flat block index of a parameter name (``None`` outside the blocks)."""
    import re

    if enc.kind == "vit":
        m = re.search(r"resblocks\.(\d+)\.", name)
        return int(m.group(1)) if m else None
    m = re.search(r"vision\.blocks\.(\d+)\.(\d+)\.", name)
    return enc._index.index((int(m.group(1)), int(m.group(2)))) if m else None

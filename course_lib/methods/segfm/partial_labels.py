"""Training one multi-organ segmenter on an assembly of *partially labelled* datasets: the assembly,
the naive-softmax and masked-sigmoid UNets, their training and per-structure scoring (notebook 08).

Public datasets rarely label the same structures: one labels the kidneys, another the
spleen, a third the liver. :func:`assemble` builds such an assembly from fully labelled
samples (SonoSynth abdominal scenes, or TotalSegmentator CT slices) by giving each
sub-dataset only its subset of the K structures, and records the per-sample availability
vector ``w`` (``w_nk = 1`` iff structure k is annotated for sample n). The hidden labels
are kept in ``full_targets`` for evaluation only.

:func:`train_partial` trains the same small MONAI ``UNet`` with

* ``mode="naive"`` -- softmax over K + 1 classes, unannotated structures treated as
  background, CE + Dice (:func:`course_lib.losses.naive_softmax_ce_dice`), or
* ``mode="masked"`` -- K sigmoid outputs and the masked BCE + Dice loss normalised per sample by
  ``sum_k w_nk`` as on the course slide, with no Dice term on annotated-but-absent structures
  (:func:`course_lib.losses.masked_bce_dice`),

and :func:`per_structure_dice` compares them on fully labelled test images (pooled over all images, so
false positives on images without the structure count; :func:`false_positive_rate` reports how often). See
:mod:`course_lib.losses` for the maths and the references (Liu et al.,
"CLIP-Driven Universal Model", ICCV 2023).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from course_lib import losses as ml
from course_lib import metrics, runtime
from course_lib.train import fit

runtime.register_section(
    "partial_labels",
    quick=dict(image_size=48, n_train=240, n_test=60, steps=120, ct_steps=60, batch_size=8, lr=5e-3,
               features=(8, 16, 32, 32), seeds=(0, 1, 2), controls=("text", "random")),
    full=dict(image_size=128, n_train=1500, n_test=300, steps=2000, ct_steps=1000, batch_size=16, lr=2e-3,
              features=(16, 32, 64, 128, 256), seeds=(0, 1, 2, 3, 4), controls=("text", "random", "one-hot")),
)

MODES = ("naive", "masked")


@dataclass
class PartialAssembly:
    """``images`` ``(N, H, W)``; ``full_targets`` ``(N, K, H, W)`` (all structures, for evaluation);
    ``w`` ``(N, K)`` availability; ``dataset`` ``(N,)`` sub-dataset name of each sample."""

    images: np.ndarray
    full_targets: np.ndarray
    w: np.ndarray
    dataset: np.ndarray
    structures: tuple
    subsets: dict

    @property
    def targets(self) -> np.ndarray:
        """What the sub-datasets actually provide: hidden structures zeroed (``full_targets * w``)."""
        return self.full_targets * self.w[:, :, None, None]

    def __len__(self):
        return len(self.images)

    def table(self):
        """One row per sub-dataset: number of images and which structures it labels (the slide's table)."""
        import pandas as pd

        rows = []
        for name, subset in self.subsets.items():
            row = {"dataset": name, "images": int((self.dataset == name).sum())}
            row.update({s: ("yes" if s in subset else "-") for s in self.structures})
            rows.append(row)
        return pd.DataFrame(rows).set_index("dataset")


def one_hot_structures(samples: Sequence[dict], structures: Sequence[str]) -> np.ndarray:
    """``(N, K, H, W)`` binary masks of the named structures from each sample's ``label_map``."""
    out = []
    for s in samples:
        names = list(s["structures"])
        missing = [k for k in structures if k not in names]
        if missing:
            raise ValueError(f"sample {s['id']} has no structure(s) {missing}; it labels {names[1:]}. Pick structures from that list")
        out.append(np.stack([s["label_map"] == names.index(k) for k in structures]))
    return np.stack(out).astype(np.float32)


def assemble(samples: Sequence[dict], structures: Sequence[str], subsets: dict, seed: int = 0) -> PartialAssembly:
    """Split ``samples`` (seeded) into ``len(subsets)`` sub-datasets of equal size; sub-dataset
    ``name`` keeps only the labels of ``subsets[name]`` (a subset of ``structures``)."""
    structures = tuple(structures)
    for name, sub in subsets.items():
        bad = [k for k in sub if k not in structures]
        if bad:
            raise ValueError(f"sub-dataset {name!r} labels {bad}, which are not among structures={structures}")
    if len(samples) < len(subsets):
        raise ValueError(f"{len(samples)} samples cannot fill {len(subsets)} sub-datasets; pass more samples")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    names = list(subsets)
    part = np.empty(len(samples), dtype=object)
    for j, chunk in enumerate(np.array_split(order, len(names))):
        part[chunk] = names[j]
    w = np.stack([[1.0 if k in subsets[p] else 0.0 for k in structures] for p in part]).astype(np.float32)
    return PartialAssembly(
        images=np.stack([s["image"] for s in samples]).astype(np.float32),
        full_targets=one_hot_structures(samples, structures),
        w=w,
        dataset=part.astype(str),
        structures=structures,
        subsets={k: tuple(v) for k, v in subsets.items()},
    )


def build_net(mode: str, K: int, features=(8, 16, 32, 32)):
    """MONAI ``UNet`` (residual units, batch norm) with ``features`` channels per level; K + 1 softmax
    outputs for ``"naive"``, K sigmoid outputs for ``"masked"``."""
    from monai.networks.nets import UNet

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    features = tuple(int(f) for f in features)
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=K + 1 if mode == "naive" else K,
        channels=features,
        strides=(2,) * (len(features) - 1),
        num_res_units=1,
        norm="batch",
    )


def train_partial(
    data: PartialAssembly,
    mode: str,
    *,
    steps: int = 250,
    batch_size: int = 8,
    lr: float = 5e-3,
    features=(8, 16, 32, 32),
    seed: int = 0,
    device=None,
    progress: bool = True,
    model_fn=None,
):
    """Train a small MONAI UNet on the assembly with loss (a) ``"naive"`` or (b) ``"masked"``.

    ``model_fn()`` (called after seeding) builds another K-output sigmoid model to train with the masked
    loss instead, e.g. the CLIP-driven universal model (:mod:`.universal_model`); it needs ``mode="masked"``.
    Returns ``(net, losses)``. Only ``data.targets`` (hidden labels zeroed) and ``data.w`` are used.
    """
    if model_fn is not None and mode != "masked":
        raise ValueError(f"a custom model_fn has K sigmoid outputs and trains with the masked loss: use mode='masked', not {mode!r}")
    device = torch.device(device) if device is not None else runtime.get_device()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    K = len(data.structures)
    net = (model_fn() if model_fn is not None else build_net(mode, K, features)).to(device)
    # the fused kernel is the same AdamW update in one pass over all parameters (8x faster step on a CPU)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4, fused=device.type in ("cpu", "cuda"))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    X = torch.as_tensor(data.images, device=device)[:, None]
    T = torch.as_tensor(data.targets, device=device)
    Wt = torch.as_tensor(data.w, device=device)

    def batch(step):
        idx = torch.as_tensor(rng.choice(len(X), size=batch_size, replace=len(X) < batch_size), device=device)
        x, t, w = X[idx], T[idx], Wt[idx]
        # light intensity augmentation (no flips: left/right structures must keep their side)
        a = torch.empty(len(x), 1, 1, 1, device=device).uniform_(0.85, 1.15)
        return ((x - 0.5) * a + 0.5).clamp(0, 1), t, w

    loss_fn = ml.naive_softmax_ce_dice if mode == "naive" else ml.masked_bce_dice

    def forward(model, b):
        x, t, w = b
        return loss_fn(model(x).float(), t, w)

    hist = fit(net, batch, forward=forward, steps=steps, optimizer=opt, scheduler=sched, device=device,
               progress=progress, desc=f"train ({mode})")
    net.eval()
    return net, hist["step_loss"]


@torch.no_grad()
def predict_partial(net, images: np.ndarray, mode: str, batch_size: int = 64) -> np.ndarray:
    """Binary masks ``(N, K, H, W)``: argmax of the softmax (naive) or sigmoid > 0.5 (masked)."""
    dev = next(net.parameters()).device
    outs = []
    for i in range(0, len(images), batch_size):
        x = torch.as_tensor(np.asarray(images[i : i + batch_size]), dtype=torch.float32, device=dev)[:, None]
        logits = net(x).float()
        if mode == "naive":
            K = logits.shape[1] - 1
            cls = logits.argmax(1)
            outs.append(torch.stack([cls == k + 1 for k in range(K)], 1).cpu().numpy())
        else:
            outs.append((torch.sigmoid(logits) > 0.5).cpu().numpy())
    return np.concatenate(outs).astype(bool)


def per_structure_dice(pred: np.ndarray, target: np.ndarray, structures: Sequence[str], images: str = "pooled") -> dict:
    """Dice (:func:`course_lib.metrics.dice`) per structure on fully labelled test images.

    * ``"pooled"`` (default): one Dice per structure over all test images together,
      ``2 sum|P∩G| / (sum|P| + sum|G|)``: false positives on images *without* the structure enlarge the
      denominator (an over-predicting head is penalised) and predicting nothing scores 0 (an empty head
      is not rewarded), whatever the share of images that show the structure.
    * ``"present"``: mean per-image Dice over the images that show the structure (false positives
      elsewhere are ignored -- favours over-prediction; the former behaviour).
    * ``"all"``: mean per-image Dice over every image with the empty-mask convention (1 for nothing
      predicted where nothing is) -- rewards a head that predicts nothing on often-absent structures.
    """
    if images not in ("pooled", "present", "all"):
        raise ValueError(f"images must be 'pooled', 'present' or 'all', got {images!r}")
    pred, target = np.asarray(pred).astype(bool), np.asarray(target)
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != len(structures):
        raise ValueError(f"pred and target must both be (N, K={len(structures)}, H, W), got {pred.shape} and {target.shape}")
    out = {}
    N, _, H, W = pred.shape
    for k, name in enumerate(structures):
        t = target[:, k] > 0.5
        if images == "pooled":
            out[name] = float(metrics.dice(pred[:, k].reshape(N * H, W), t.reshape(N * H, W))[0])
            continue
        keep = t.reshape(len(t), -1).any(1) if images == "present" else np.ones(len(t), bool)
        out[name] = float(metrics.dice(pred[keep, k], t[keep]).mean()) if keep.any() else float("nan")
    return out


def false_positive_rate(pred: np.ndarray, target: np.ndarray, structures: Sequence[str]) -> dict:
    """Per structure: the share of test images *without* the structure on which it is predicted anyway
    (NaN when every image shows it)."""
    pred, target = np.asarray(pred).astype(bool), np.asarray(target)
    out = {}
    for k, name in enumerate(structures):
        absent = ~(target[:, k] > 0.5).reshape(len(target), -1).any(1)
        out[name] = float(pred[absent, k].reshape(int(absent.sum()), -1).any(1).mean()) if absent.any() else float("nan")
    return out

"""Experiment runners of the HT notebook: BUSI task tensors with a seeded split, and one "build, train, predict"
run per method with the HT recipe (course_lib.methods.ht.recipe). Used by notebook 09 (§4–§7).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import runtime
from ..data import busi, common
from ..methods.ht import recipe

__all__ = ["BusiTasks", "busi_tasks", "run"]


@dataclass
class BusiTasks:
    """Preprocessed BUSI tensors for the two tasks of Tables V/VI (segmentation on ``busi_gt``, benign vs
    malignant classification on ``busi_256``) and the sample indices of each split."""

    seg_train_x: torch.Tensor  # (N, 3, S, S) preprocessed
    seg_train_y: torch.Tensor  # (N, S, S) long masks
    seg_test_x: torch.Tensor
    seg_test_y: np.ndarray  # (M, S, S) masks
    seg_test_images: np.ndarray  # (M, S, S) raw images in [0, 1] (for overlays)
    cls_train_x: torch.Tensor
    cls_train_y: torch.Tensor  # (N,) labels
    cls_test_x: torch.Tensor
    cls_test_y: np.ndarray  # (M,) labels
    cls_test_images: np.ndarray  # (M, S, S) raw images (zero-shot evaluation)
    seg_split: tuple[np.ndarray, np.ndarray]
    cls_split: tuple[np.ndarray, np.ndarray]


def _split(samples: list[dict], fractions, seed: int):
    lab = [s["label"] for s in samples]
    return common.split_indices(len(samples), fractions, seed=seed, stratify=lab)


def _tensors(bb, samples: list[dict], idx):
    imgs = common.stack([samples[i] for i in idx], "image")
    return bb.preprocess(imgs), imgs


def busi_tasks(bb, S, seed: int = 0, path=None) -> BusiTasks:
    """Load the BUSI subset the profile section ``S`` allows (``S.real_limit`` images per class, 0 = all) at the
    backbone's image size, benign + malignant, and split it stratified with ``S.real_split`` (seeded)."""
    size = bb.image_size
    limit = S.real_limit or None
    seg_s = busi.load("gt", path=path, image_size=size, classes=("benign", "malignant"), limit=limit)
    cls_s = busi.load("256", path=path, image_size=size, classes=("benign", "malignant"), limit=limit)
    (seg_tr, seg_te), (cls_tr, cls_te) = _split(seg_s, S.real_split, seed), _split(cls_s, S.real_split, seed)
    xs_tr, _ = _tensors(bb, seg_s, seg_tr)
    xs_te, seg_imgs_te = _tensors(bb, seg_s, seg_te)
    xc_tr, _ = _tensors(bb, cls_s, cls_tr)
    xc_te, cls_imgs_te = _tensors(bb, cls_s, cls_te)
    return BusiTasks(
        seg_train_x=xs_tr,
        seg_train_y=torch.as_tensor(common.stack([seg_s[i] for i in seg_tr], "mask")).long(),
        seg_test_x=xs_te,
        seg_test_y=common.stack([seg_s[i] for i in seg_te], "mask"),
        seg_test_images=seg_imgs_te,
        cls_train_x=xc_tr,
        cls_train_y=torch.tensor([cls_s[i]["label"] for i in cls_tr]),
        cls_test_x=xc_te,
        cls_test_y=np.array([cls_s[i]["label"] for i in cls_te]),
        cls_test_images=cls_imgs_te,
        seg_split=(seg_tr, seg_te),
        cls_split=(cls_tr, cls_te),
    )


def run(bb, S, method: str, task: str, X, Y, X_test, seed: int = 0, epochs: int | None = None, **extra):
    """Seed everything, build ``method`` (:func:`recipe.build_model`, sizes from ``S``), train it with the HT
    recipe (:func:`recipe.fit_task`) and predict class-1 probabilities on ``X_test``.

    Returns ``(model, history, probabilities)``. ``extra`` goes to ``fit_task`` (``steps=``, ``progress=``...).
    """
    runtime.seed_everything(seed)
    model = recipe.build_model(bb, method, task, bottleneck=S.bottleneck, d_red=S.d_red, cls_hidden=S.cls_hidden,
                               lora_rank=S.lora_rank)
    extra.setdefault("desc", f"{method}/{task}")
    hist = recipe.fit_task(model, X, Y, epochs=epochs or S.epochs, batch_size=S.batch_size, lr=S.lr,
                           weight_decay=S.weight_decay, betas=S.betas, seed=seed, **extra)
    return model, hist, recipe.predict_proba(model, X_test)

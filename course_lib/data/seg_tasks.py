"""Binary segmentation *tasks* for in-context learning: SonoSynth (anatomy, structure, center) tasks with
held-out structure types, BUSI and HC18 as real tasks (UniverSeg, notebook 06; benchmarks/eval_universeg.py).

A task is a set of (image, binary label) pairs that share one meaning: "segment the
kidney in abdominal scans from center B". SonoSynth gives many of them, one per
``(anatomy, structure, center)``; :data:`HELD_OUT_STRUCTURES` are never used for
meta-training, so the tasks made of them test generalisation to *new structure types*.
Real tasks (BUSI lesions, HC18 fetal heads) are never seen in training at all.

    train, held = sonosynth_split(image_size=64)     # lists of Task
    busi = busi_task(image_size=64)                   # Task from ../shared/data/busi_gt
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

#: structure types kept out of meta-training entirely (evaluated as unseen tasks)
HELD_OUT_STRUCTURES = ("kidney", "renal_sinus", "thyroid")


@dataclass
class Task:
    """One binary segmentation task: ``images`` ``(N, H, W)`` float32 in [0, 1], ``labels`` ``(N, H, W)`` float32 {0, 1}."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    anatomy: str = ""
    structure: str = ""
    center: str = ""
    source: str = ""
    ids: list = field(default_factory=list)

    def __post_init__(self):
        self.images = np.ascontiguousarray(self.images, dtype=np.float32)
        self.labels = np.ascontiguousarray(self.labels > 0.5, dtype=np.float32)
        if self.images.ndim != 3 or self.images.shape != self.labels.shape:
            raise ValueError(
                f"task {self.name!r}: images and labels must both be (N, H, W) with equal shapes, got "
                f"{self.images.shape} and {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, n={len(self)}, size={self.images.shape[1:]})"


def tasks_from_samples(samples: Sequence[dict], *, min_pixels: int = 12, min_images: int = 12, prefix: str = "") -> list[Task]:
    """Group samples by ``(anatomy, center)`` and make one task per structure id of their
    ``label_map`` that covers at least ``min_pixels`` pixels in at least ``min_images`` images.

    Images where the structure is absent (or tiny) are left out of that task.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for s in samples:
        groups.setdefault((s["anatomy"], s["center"]), []).append(s)
    tasks = []
    for (anat, center), ss in sorted(groups.items()):
        names = ss[0]["structures"]
        lm = np.stack([s["label_map"] for s in ss])
        img = np.stack([s["image"] for s in ss])
        for sid in range(1, len(names)):
            lab = lm == sid
            keep = lab.reshape(len(lab), -1).sum(1) >= min_pixels
            if keep.sum() < min_images:
                continue
            tasks.append(
                Task(
                    name=f"{prefix}{anat}/{names[sid]}/{center}",
                    images=img[keep],
                    labels=lab[keep],
                    anatomy=anat,
                    structure=names[sid],
                    center=center,
                    source=ss[0]["source"],
                    ids=[s["id"] for s, k in zip(ss, keep) if k],
                )
            )
    return tasks


def _is_held_out(structure: str, held: Sequence[str]) -> bool:
    return structure in tuple(held)


def sonosynth_tasks(
    n_per_group: int = 48,
    *,
    image_size: int = 64,
    seed: int = 0,
    anatomies: Sequence[str] | None = None,
    centers: Sequence[str] | None = None,
    min_pixels: int = 12,
    min_images: int = 12,
) -> list[Task]:
    """Generate ``n_per_group`` SonoSynth scenes for every (anatomy, center) and cut them into tasks."""
    from course_lib.data import sonosynth as ss

    anatomies = tuple(anatomies or ss.ANATOMIES)
    centers = tuple(centers or ss.CENTERS)
    samples = []
    start = 0
    for a in anatomies:
        for c in centers:
            samples += ss.generate(n_per_group, seed=seed, start=start, image_size=image_size, anatomies=(a,), centers=(c,))
            start += n_per_group
    return tasks_from_samples(samples, min_pixels=min_pixels, min_images=min_images)


def sonosynth_split(
    n_per_group: int = 96,
    *,
    image_size: int = 64,
    seed: int = 0,
    held_out: Sequence[str] = HELD_OUT_STRUCTURES,
    **kw,
) -> tuple[list[Task], list[Task]]:
    """``(train_tasks, held_out_tasks)``: tasks whose structure type is in ``held_out`` go to the second list only."""
    tasks = sonosynth_tasks(n_per_group, image_size=image_size, seed=seed, **kw)
    train = [t for t in tasks if not _is_held_out(t.structure, held_out)]
    held = [t for t in tasks if _is_held_out(t.structure, held_out)]
    return train, held


def held_out_tasks(n_per_group: int = 40, *, image_size: int = 64, seed: int = 1000, held_out: Sequence[str] = HELD_OUT_STRUCTURES, **kw) -> list[Task]:
    """Only the held-out tasks, generated from a seed disjoint from training (cheaper than a full split)."""
    from course_lib.data import sonosynth as ss

    anat = [a for a in ss.ANATOMIES if a in _anatomies_with(held_out)]
    return [t for t in sonosynth_tasks(n_per_group, image_size=image_size, seed=seed, anatomies=anat or None, **kw) if _is_held_out(t.structure, held_out)]


def _anatomies_with(held: Sequence[str]) -> set:
    """Anatomies whose scenes contain a held-out structure (heuristic by name)."""
    table = {"kidney": "abdomen", "renal_sinus": "abdomen", "liver": "abdomen", "spleen": "abdomen", "gallbladder": "abdomen",
             "diaphragm": "abdomen", "thyroid": "thyroid", "trachea": "thyroid", "node_cortex": "lymph_node",
             "node_hilum": "lymph_node", "fibroglandular": "breast", "rib": "breast"}
    return {table[h] for h in held if h in table}


# --------------------------------------------------------------------------- real tasks (never seen in training)
def busi_task(image_size: int = 64, limit: int | None = None, path=None, seed: int = 0) -> Task:
    """BUSI breast lesions (benign + malignant, ``busi_gt``) as one binary task."""
    from course_lib.data import busi

    s = busi.load("gt", path=path, image_size=image_size, classes=("benign", "malignant"), limit=limit, seed=seed)
    return Task("BUSI/lesion", np.stack([x["image"] for x in s]), np.stack([x["mask"] for x in s]), "breast", "lesion", s[0]["center"], "busi_gt", [x["id"] for x in s])


def hc18_task(image_size: int = 64, limit: int | None = None, path=None, seed: int = 0) -> Task:
    """HC18 fetal heads (filled ellipse masks) as one binary task."""
    from course_lib.data import hc18

    s = hc18.load(path=path, image_size=image_size, limit=limit, seed=seed)
    return Task("HC18/fetal_head", np.stack([x["image"] for x in s]), np.stack([x["mask"] for x in s]), "fetal_head", "head", s[0]["center"], "hc18", [x["id"] for x in s])

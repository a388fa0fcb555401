"""FSEFT comparison: few-shot adaptation of ``segfm-tiny`` with black-box adapters, PEFT and fine-tuning.

Paper: Silva-Rodríguez, Dolz, Ben Ayed, "Towards foundation models and few-shot parameter-efficient
fine-tuning for volumetric organ segmentation", Medical Image Analysis 2025 (FSEFT). Its protocol:
a supervised-pretrained segmentation foundation model, adapted with k labelled scans to (a) *known*
structures under a domain shift and (b) *novel* structures; black-box adapters vs selective and
additive PEFT vs fine-tuning; ARENA (Baklouti et al., MICCAI 2025) added as adaptive-rank LoRA.

Our version (2D, small, CPU-friendly):

========================  =====================================================================
task                       what
========================  =====================================================================
``lesion@D``               *known* structure (breast lesion) under a *new centre* (SonoSynth centre
                           D, never seen in pretraining)
``kidney``                 *novel* SonoSynth structure (kidney + renal sinus were labelled
                           background during pretraining), pretraining centres
``hc18_head``              *novel, real*: HC18 fetal heads (needs the HC18 folder; skipped with a
                           message when it is absent)
========================  =====================================================================

Each (method, task, shots, seed) run: draw ``shots`` support images (seeded), build the method with
:func:`course_lib.methods.peft_variants.prepare`, train ``steps`` full-batch Adam steps on
BCE + soft-Dice with flips, and report test Dice (threshold 0.5), trainable parameters, training
wall time and peak memory (``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak *resident
set* increase, sampled every 2 ms in a thread — noisy, allocator caching included).

The sweep is cached: :func:`results` returns the cached table for the active profile, loads the
committed ``course_lib/assets/fseft_<profile>.json`` when its fingerprint matches the current code
and checkpoint, and otherwise re-runs :func:`run_sweep` and stores the result under
``runtime.cache_dir("fseft")``. Rebuild the committed file with::

    python -m course_lib.methods.fseft --profile quick --out course_lib/assets/fseft_quick.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from course_lib import runtime
from course_lib.methods import peft_variants as pv

__all__ = [
    "TASKS",
    "load_task",
    "support_indices",
    "run_one",
    "run_sweep",
    "rank_sweep",
    "results",
    "summary_table",
    "fingerprint",
]

TASKS = {
    "lesion@D": dict(kind="known, new centre", structure="lesion", anatomy="breast", centers=("D",)),
    "kidney": dict(kind="novel structure", structure="kidney", anatomy="abdomen", centers=("A", "B", "C")),
    "hc18_head": dict(kind="novel, real", structure=None, anatomy="fetal_head", centers=()),
}

runtime.register_section(
    "fseft",
    quick=dict(
        tasks=("lesion@D", "kidney", "hc18_head"), shots=(5, 10), seeds=(0, 1, 2), steps=30, n_pool=60, n_test=48,
        rank_sweep_ranks=(1, 2, 4, 8, 16), rank_sweep_tasks=("lesion@D", "kidney"), rank_sweep_shots=10,
        live_task="lesion@D", live_shots=5, live_seed=0, live_methods=("linear_probe", "lora", "arena"),
    ),
    full=dict(
        tasks=("lesion@D", "kidney", "hc18_head"), shots=(5, 10), seeds=(0, 1, 2, 3, 4), steps=150, n_pool=200, n_test=200,
        rank_sweep_ranks=(1, 2, 4, 8, 16, 32), rank_sweep_tasks=("lesion@D", "kidney"), rank_sweep_shots=10,
        live_task="lesion@D", live_shots=5, live_seed=0, live_methods=pv.METHODS,
    ),
)


# ---------------------------------------------------------------------- tasks
def load_task(name: str, n_pool: int = 60, n_test: int = 48, image_size: int = 64, seed: int = 123):
    """``dict(x_pool, y_pool, x_test, y_test, structure, kind)``: float32 images (N,H,W), {0,1} masks.

    SonoSynth tasks keep only images where the structure covers >= 12 pixels; the pool (support
    candidates) and the test set are disjoint.
    """
    if name not in TASKS:
        raise ValueError(f"unknown FSEFT task {name!r}; choose one of {tuple(TASKS)}")
    spec = TASKS[name]
    if name == "hc18_head":
        from course_lib.data import hc18

        samples = hc18.load(image_size=image_size, limit=n_pool + n_test, seed=seed)
        x = np.stack([s["image"] for s in samples]).astype(np.float32)
        y = np.stack([s["mask"] for s in samples]).astype(np.float32)
    else:
        from course_lib.data import sonosynth as ss

        ids = [ss.structure_id(spec["structure"])] + ([ss.structure_id("renal_sinus")] if spec["structure"] == "kidney" else [])
        need = n_pool + n_test
        xs, ys, start = [], [], 0
        while sum(len(a) for a in xs) < need and start < 50 * need:
            b = ss.generate_batch(2 * need, seed=seed, start=start, image_size=image_size, anatomies=(spec["anatomy"],), centers=spec["centers"])
            lab = np.isin(b["label_map"], ids)
            keep = lab.reshape(len(lab), -1).sum(1) >= 12
            xs.append(np.asarray(b["image"], np.float32)[keep])
            ys.append(lab[keep].astype(np.float32))
            start += 2 * need
        x, y = np.concatenate(xs)[:need], np.concatenate(ys)[:need]
    if len(x) < n_pool + n_test:
        raise ValueError(f"task {name}: only {len(x)} images available, {n_pool + n_test} needed; lower n_pool/n_test")
    return dict(
        x_pool=x[:n_pool], y_pool=y[:n_pool], x_test=x[n_pool : n_pool + n_test], y_test=y[n_pool : n_pool + n_test],
        structure=spec["structure"] if name == "lesion@D" else None, kind=spec["kind"], name=name,
    )


def support_indices(n_pool: int, shots: int, seed: int) -> np.ndarray:
    """The seeded choice of ``shots`` support images from the pool."""
    if not isinstance(shots, int) or shots <= 0:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    if shots > n_pool:
        raise ValueError(f"shots={shots} exceeds the {n_pool} images in the support pool; lower shots or raise n_pool")
    return np.random.default_rng(1000 + seed).choice(n_pool, size=shots, replace=False)


# ---------------------------------------------------------------------- training
def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + soft Dice, the usual few-shot segmentation loss."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + 1 - dice


class _PeakRSS:
    """Peak increase of the resident set size, sampled in a thread (CPU memory proxy)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:
            return 0

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.mb = (self.peak - self.base) / 2**20
        return False




@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(x[i : i + batch_size].to(device)).float()).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)[:, 0]


def run_one(fm, method: str, task: dict, shots: int, seed: int, steps: int, record_v: bool = False, **overrides) -> dict:
    """Adapt ``fm`` to ``task`` with ``shots`` images and ``method``; returns one result row."""
    from course_lib import metrics

    device = next(fm.parameters()).device
    runtime.seed_everything(seed)
    idx = support_indices(len(task["x_pool"]), shots, seed)
    xs = torch.from_numpy(task["x_pool"][idx]).to(device)
    ys = torch.from_numpy(task["y_pool"][idx])[:, None].to(device)
    ad = pv.prepare(method, fm, task["structure"], **overrides)
    model = ad.model.to(device)
    opt = ad.optimizer()
    g = torch.Generator().manual_seed(seed)
    v_path = []
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    with _PeakRSS() as rss:
        if model.black_box:  # the foundation model is frozen: compute its features once (both flips)
            with runtime.autocast(device):
                feats = (model.frozen_features(xs), model.frozen_features(xs.flip(-1)))
        for step in range(steps):
            if ad.on_step is not None:
                ad.on_step(step, steps)
            model.train()
            flip = torch.rand(1, generator=g).item() < 0.5  # horizontal flip augmentation
            yb = ys.flip(-1) if flip else ys
            with runtime.autocast(device):
                if model.black_box:
                    model.fm.eval()
                    logits = model.from_features(feats[int(flip)].float())
                else:
                    logits = model(xs.flip(-1) if flip else xs)
                loss = bce_dice_loss(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ad.after_step is not None:
                ad.after_step(opt, step, steps)
            if record_v and method == "arena":
                from course_lib.methods import arena

                v_path.append(arena.v_values(model.fm))
        if cuda:
            torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    mem_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else rss.mb
    prob = predict(model, torch.from_numpy(task["x_test"]))
    dice = metrics.dice((prob > 0.5).numpy(), task["y_test"] > 0.5)
    row = dict(
        method=method, family=pv.FAMILIES[method], task=task["name"], shots=int(shots), seed=int(seed),
        dice=float(np.mean(dice)), trainable=int(ad.trainable()), train_s=round(train_s, 3), peak_mb=round(float(mem_mb), 2),
        memory="cuda max_memory_allocated" if cuda else "cpu peak RSS increase (sampled)", final_loss=round(float(loss.item()), 4),
    )
    if method == "arena":
        from course_lib.methods import arena

        row["effective_ranks"] = arena.effective_ranks(model.fm)
        if record_v:
            row["v_path"] = v_path
    if "rank" in ad.info and method == "lora":
        row["rank"] = ad.info["rank"]
    return row


# ---------------------------------------------------------------------- sweeps and caching
def fingerprint(profile=None) -> str:
    """Hash of everything that decides the sweep's numbers: sizes, method defaults, checkpoint."""
    from course_lib.models import seg_foundation as sf

    P = profile or runtime.get_profile()
    S = {k: v for k, v in vars(P.section("fseft")).items() if not k.startswith("live_")}  # live_* only pick a slice
    ck = sf.sha256(sf.CHECKPOINT) if sf.CHECKPOINT.exists() else "missing"
    blob = json.dumps(dict(S=S, defaults=pv.DEFAULTS, ck=ck, version=3), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_sweep(profile=None, fm=None, verbose: bool = True) -> dict:
    """Run the whole comparison of the profile (+ the LoRA rank sweep); returns the results dict."""
    from tqdm.auto import tqdm

    from course_lib.models import seg_foundation as sf

    P = profile or runtime.get_profile()
    S = P.section("fseft")
    fm = fm or sf.load()
    tasks, skipped = {}, {}
    for name in S.tasks:
        try:
            tasks[name] = load_task(name, S.n_pool, S.n_test, fm.image_size)
        except FileNotFoundError as e:  # real data absent: say so, keep going
            skipped[name] = str(e).split(";")[0]
    jobs = [(m, t, k, s) for t in tasks for k in S.shots for s in S.seeds for m in pv.METHODS]
    rows = []
    t0 = time.perf_counter()
    for m, t, k, s in tqdm(jobs, desc="FSEFT sweep", disable=not verbose):
        rows.append(run_one(fm, m, tasks[t], k, s, S.steps))
    ranks = rank_sweep(P, fm, {t: tasks[t] for t in S.rank_sweep_tasks if t in tasks}, verbose=verbose)
    return dict(
        profile=P.name, fingerprint=fingerprint(P), device=str(next(fm.parameters()).device), threads=torch.get_num_threads(),
        seconds=round(time.perf_counter() - t0, 1), skipped=skipped, rows=rows, rank_sweep=ranks,
        command=f"python -m course_lib.methods.fseft --profile {P.name}",
    )


def rank_sweep(profile, fm, tasks: dict, verbose: bool = True) -> list[dict]:
    """LoRA at each rank of the profile and ARENA started at the largest rank, per task and seed."""
    from tqdm.auto import tqdm

    S = profile.section("fseft")
    top = max(S.rank_sweep_ranks)
    jobs = [(t, r, s) for t in tasks for s in S.seeds for r in (*S.rank_sweep_ranks, "arena")]
    out = []
    for t, r, s in tqdm(jobs, desc="rank sweep", disable=not verbose):
        if r == "arena":
            row = run_one(fm, "arena", tasks[t], S.rank_sweep_shots, s, S.steps, arena_rank=top)
        else:
            row = run_one(fm, "lora", tasks[t], S.rank_sweep_shots, s, S.steps, rank=r)
        out.append(row)
    return out


def _asset_path(profile_name: str) -> Path:
    return runtime.PACKAGE_DIR / "assets" / f"fseft_{profile_name}.json"


def results(profile=None, rebuild: bool = False, verbose: bool = True) -> dict:
    """The sweep of the active profile: cache -> committed asset (if its fingerprint matches) -> rebuild."""
    P = profile or runtime.get_profile()
    fp = fingerprint(P)
    cache = runtime.cache_dir("fseft") / f"fseft_{P.name}_{fp}.json"
    if cache.exists() and not rebuild:
        data = json.loads(cache.read_text())
        data["source"] = f"cache {cache.name}"
        return data
    asset = _asset_path(P.name)
    if asset.exists() and not rebuild:
        data = json.loads(asset.read_text())
        if data.get("fingerprint") == fp:
            cache.write_text(json.dumps(data))
            data["source"] = f"committed {asset.name} (fingerprint {fp})"
            return data
        if verbose:
            print(f"{asset.name} was made with other settings (fingerprint {data.get('fingerprint')} != {fp}); rebuilding")
    data = run_sweep(P, verbose=verbose)
    cache.write_text(json.dumps(data))
    data["source"] = f"rebuilt now, cached at {cache}"
    return data


def summary_table(rows: list[dict]):
    """pandas DataFrame: one line per (task, shots, method) with Dice mean ± std over seeds."""
    import pandas as pd

    df = pd.DataFrame(rows)
    g = df.groupby(["task", "shots", "method"], sort=False)
    out = g.agg(
        family=("family", "first"), trainable=("trainable", "first"), train_s=("train_s", "mean"),
        peak_mb=("peak_mb", "mean"), dice_mean=("dice", "mean"), dice_std=("dice", "std"), n_seeds=("seed", "nunique"),
    ).reset_index()
    out["dice"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(out.dice_mean, out.dice_std.fillna(0))]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run the FSEFT comparison sweep and write its JSON.")
    ap.add_argument("--profile", default=None, choices=runtime.PROFILE_NAMES)
    ap.add_argument("--out", default=None, help="also write the results here (e.g. course_lib/assets/fseft_quick.json)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: tiny models, robust on shared CPUs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    P = runtime.get_profile(args.profile)
    data = results(P, rebuild=True)
    data.pop("source", None)
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=0))
        print("wrote", args.out)
    print(summary_table(data["rows"]).to_string())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

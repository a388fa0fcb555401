"""FSEFT comparison: few-shot adaptation of ``segfm-tiny`` with black-box adapters, PEFT and fine-tuning.
Used by notebook 05 (live slice, the cached sweep and every table it prints).

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
:func:`course_lib.methods.peft.strategies.prepare`, train ``steps`` full-batch Adam steps on
BCE + soft-Dice (:func:`course_lib.losses.bce_dice_loss`, batch Dice) with flips through
:func:`course_lib.train.fit`, and report test Dice (threshold 0.5), trainable parameters, training
wall time and peak memory (``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak *resident
set* increase, sampled every 2 ms in a thread — noisy, allocator caching included).

The sweep is cached: :func:`results` returns the cached table for the active profile, loads the
committed ``course_lib/assets/fseft_<profile>.json`` when its fingerprint matches the current code
and checkpoint, and otherwise re-runs :func:`run_sweep` and stores the result under
``runtime.cache_dir("fseft")``. Rebuild the committed file with::

    python -m course_lib.experiments.fseft --profile quick --out course_lib/assets/fseft_quick.json

The controls of issue 13 (ARENA vs LoRA at equal starting rank, ARENA over lambda with lambda = 0, the
decoder frozen / tuned as a separate factor; :func:`run_controls`) are cached the same way in
``course_lib/assets/fseft_controls_<profile>.json``::

    python -m course_lib.experiments.fseft --profile quick --controls --out course_lib/assets/fseft_controls_quick.json
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

from course_lib import checkpoints, losses, runtime, train
from course_lib.methods.peft import strategies as pv

__all__ = [
    "TASKS",
    "load_task",
    "support_indices",
    "run_one",
    "run_sweep",
    "rank_sweep",
    "results",
    "summary_table",
    "live_vs_cached",
    "fseft_table",
    "family_best",
    "rank_summary",
    "arena_layer_ranks",
    "paper_check",
    "fingerprint",
    "run_controls",
    "controls",
    "controls_fingerprint",
    "arena_vs_lora",
    "rank_vs_lambda",
    "decoder_factor",
    "decoder_rule",
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




# region: fseft-run-one
def run_one(fm, method: str, task: dict, shots: int, seed: int, steps: int, record_v: bool = False, **overrides) -> dict:
    """Adapt ``fm`` to ``task`` with ``shots`` images and ``method``; returns one result row.

    Full-batch Adam (the strategy's param groups) for ``steps`` steps on
    ``losses.bce_dice_loss(..., batch=True)``, a seeded horizontal flip per step, trained by
    :func:`course_lib.train.fit`; black-box strategies compute the frozen features once.
    """
    from course_lib import metrics

    device = next(fm.parameters()).device
    runtime.seed_everything(seed)
    idx = support_indices(len(task["x_pool"]), shots, seed)
    xs = torch.from_numpy(task["x_pool"][idx]).to(device)
    ys = torch.from_numpy(task["y_pool"][idx])[:, None].to(device)
    ad = pv.prepare(method, fm, task["structure"], **overrides)
    model = ad.model.to(device)
    g = torch.Generator().manual_seed(seed)
    v_path: list = []
    feats = None

    def batch(step):  # the support set, flipped with probability 1/2
        flip = torch.rand(1, generator=g).item() < 0.5
        return step, flip

    def forward(m, b):
        step, flip = b
        if ad.on_step is not None:
            ad.on_step(step, steps)
        m.train()
        yb = ys.flip(-1) if flip else ys
        if m.black_box:  # frozen foundation model: features computed once (both flips)
            m.fm.eval()
            logits = m.from_features(feats[int(flip)].float())
        else:
            logits = m(xs.flip(-1) if flip else xs)
        return losses.bce_dice_loss(logits.float(), yb, batch=True)

    hook = ad.fit_after_step(steps)

    def after_step(step, m, opt):
        if hook is not None:
            hook(step, m, opt)
        if record_v and method == "arena":
            from course_lib.methods.peft import arena

            v_path.append(arena.v_values(m.fm))

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    with _PeakRSS() as rss:
        if model.black_box:
            with runtime.autocast(device):
                feats = (model.frozen_features(xs), model.frozen_features(xs.flip(-1)))
        hist = train.fit(model, batch, steps=steps, optimizer=ad.optimizer(), scheduler=None, forward=forward,
                         after_step=after_step, progress=False)
        if cuda:
            torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    mem_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else rss.mb
    prob = train.predict(model, torch.from_numpy(task["x_test"]), batch_size=64,
                         fn=lambda m, xb: torch.sigmoid(m(xb).float()))[:, 0]
    dice = metrics.dice((prob > 0.5).numpy(), task["y_test"] > 0.5)
    row = dict(
        method=method, family=pv.FAMILIES[method], task=task["name"], shots=int(shots), seed=int(seed),
        dice=float(np.mean(dice)), trainable=int(ad.trainable()), train_s=round(train_s, 3), peak_mb=round(float(mem_mb), 2),
        memory="cuda max_memory_allocated" if cuda else "cpu peak RSS increase (sampled)",
        final_loss=round(float(hist["step_loss"][-1]), 4),
    )
    if method == "arena":
        from course_lib.methods.peft import arena

        row["effective_ranks"] = arena.effective_ranks(model.fm)
        if record_v:
            row["v_path"] = v_path
    if "rank" in ad.info and method == "lora":
        row["rank"] = ad.info["rank"]
    return row
# endregion


# ---------------------------------------------------------------------- sweeps and caching
def fingerprint(profile=None) -> str:
    """Hash of everything that decides the sweep's numbers: sizes, method defaults, checkpoint."""
    from course_lib.models import seg_foundation as sf

    P = profile or runtime.get_profile()
    S = {k: v for k, v in vars(P.section("fseft")).items() if not k.startswith("live_")}  # live_* only pick a slice
    ck = checkpoints.sha256_file(sf.CHECKPOINT) if sf.CHECKPOINT.exists() else "missing"
    blob = json.dumps(dict(S=S, defaults=pv.DEFAULTS, ck=ck, version=4), sort_keys=True, default=str)
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
        command=f"python -m course_lib.experiments.fseft --profile {P.name}",
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


# ---------------------------------------------------------------------- controls (issue 13, defect 5)
runtime.register_section(
    "fseft_controls",
    quick=dict(tasks=("lesion@D", "kidney"), shots=10, seeds=(0, 1, 2), arena_lams=(0.0, 1e-3, 5e-3, 2e-2, 1e-1),
               decoder_methods=pv.DECODER_FACTOR_METHODS),
    full=dict(tasks=("lesion@D", "kidney"), shots=10, seeds=(0, 1, 2, 3, 4), arena_lams=(0.0, 1e-3, 5e-3, 2e-2, 1e-1),
              decoder_methods=pv.DECODER_FACTOR_METHODS),
)


def controls_fingerprint(profile=None) -> str:
    """Hash of the main sweep's fingerprint and the controls' sizes."""
    P = profile or runtime.get_profile()
    C = vars(P.section("fseft_controls"))
    blob = json.dumps(dict(main=fingerprint(P), C=C, version=1), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_controls(profile=None, fm=None, verbose: bool = True) -> dict:
    """The controls that de-confound ARENA vs LoRA and additive vs selective PEFT (same steps, lrs, seeds
    and support draws as the main sweep; ``shots`` images):

    * ``lam_rows``: ARENA from the rank sweep's top rank at every ``arena_lams`` value, ``0`` included
      (ARENA with lambda = 0 is LoRA of that rank plus the ``v`` diagonal);
    * ``decoder_rows``: every strategy of ``decoder_methods`` with the decoder explicitly frozen and
      tuned (:func:`course_lib.methods.peft.strategies.apply_decoder_choice`); the strategy's own
      default is the main sweep's row.

    LoRA at ARENA's starting rank is the rank sweep's top rank (same seeds, same shots)."""
    from tqdm.auto import tqdm

    from course_lib.models import seg_foundation as sf

    P = profile or runtime.get_profile()
    S, C = P.section("fseft"), P.section("fseft_controls")
    fm = fm or sf.load()
    tasks = {t: load_task(t, S.n_pool, S.n_test, fm.image_size) for t in C.tasks}
    top = max(S.rank_sweep_ranks)
    jobs = [("lam", t, s, lam) for t in tasks for s in C.seeds for lam in C.arena_lams]
    for m in C.decoder_methods:
        for choice in pv.DECODER_CHOICES:
            default_frozen = m in ("lora", "arena", "adaptformer")
            if choice == "frozen" and default_frozen:
                continue  # identical to the main sweep's row
            jobs += [("decoder", t, s, (m, choice)) for t in tasks for s in C.seeds]
    lam_rows, dec_rows = [], []
    t0 = time.perf_counter()
    for kind, t, s, arg in tqdm(jobs, desc="FSEFT controls", disable=not verbose):
        if kind == "lam":
            row = run_one(fm, "arena", tasks[t], C.shots, s, S.steps, arena_rank=top, arena_lam=arg)
            row["lam"] = float(arg)
            lam_rows.append(row)
        else:
            m, choice = arg
            row = run_one(fm, m, tasks[t], C.shots, s, S.steps, decoder=choice)
            row["decoder"] = choice
            dec_rows.append(row)
    return dict(profile=P.name, fingerprint=controls_fingerprint(P), seconds=round(time.perf_counter() - t0, 1),
                arena_rank=top, lam_rows=lam_rows, decoder_rows=dec_rows,
                command=f"python -m course_lib.experiments.fseft --profile {P.name} --controls")


def controls(profile=None, rebuild: bool = False, verbose: bool = True) -> dict:
    """The controls of the active profile: cache -> committed asset (fingerprint match) -> rebuild."""
    P = profile or runtime.get_profile()
    fp = controls_fingerprint(P)
    cache = runtime.cache_dir("fseft") / f"fseft_controls_{P.name}_{fp}.json"
    if cache.exists() and not rebuild:
        return json.loads(cache.read_text())
    asset = runtime.PACKAGE_DIR / "assets" / f"fseft_controls_{P.name}.json"
    if asset.exists() and not rebuild:
        data = json.loads(asset.read_text())
        if data.get("fingerprint") == fp:
            return data
        if verbose:
            print(f"{asset.name} was made with other settings (fingerprint {data.get('fingerprint')} != {fp}); rebuilding")
    data = run_controls(P, verbose=verbose)
    with checkpoints.atomic_write(cache, "w") as f:
        f.write(json.dumps(data))
    return data


def arena_vs_lora(sweep: dict, ctrl: dict):
    """Dice mean ± sd over seeds per task: LoRA at the default rank, LoRA at ARENA's starting rank,
    and ARENA at every lambda (0 = no penalty), with trainable parameters and the mean effective rank.
    Also returns the paired (same seed) differences ARENA(default lambda) - LoRA(starting rank)."""
    import pandas as pd

    top = ctrl["arena_rank"]
    lam0 = float(pv.DEFAULTS["arena_lam"])
    rows = []
    for r in sweep["rank_sweep"]:
        if r["method"] == "lora" and r.get("rank") in (pv.DEFAULTS["rank"], top):
            rows.append(dict(task=r["task"], seed=r["seed"], config=f"LoRA r={r['rank']}", trainable=r["trainable"],
                             dice=r["dice"], eff_rank=float(r["rank"])))
    for r in ctrl["lam_rows"]:
        rows.append(dict(task=r["task"], seed=r["seed"], config=f"ARENA r={top}, λ={r['lam']:g}", trainable=r["trainable"],
                         dice=r["dice"], eff_rank=float(np.mean(list(r["effective_ranks"].values())))))
    df = pd.DataFrame(rows)
    summ = df.groupby(["task", "config"], sort=False).agg(
        dice_mean=("dice", "mean"), dice_sd=("dice", "std"), eff_rank=("eff_rank", "mean"),
        trainable=("trainable", "first"), n_seeds=("seed", "nunique")).reset_index()
    summ["dice"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(summ.dice_mean, summ.dice_sd.fillna(0))]
    a = df[df.config == f"ARENA r={top}, λ={lam0:g}"].set_index(["task", "seed"]).dice
    lo = df[df.config == f"LoRA r={top}"].set_index(["task", "seed"]).dice
    paired = (a - lo).dropna().rename("arena_minus_lora").reset_index()
    return summ, paired


def rank_vs_lambda(ctrl: dict):
    """Effective rank (mean over layers) and Dice vs lambda, mean ± sd over seeds, per task."""
    import pandas as pd

    df = pd.DataFrame([dict(task=r["task"], seed=r["seed"], lam=r["lam"], dice=r["dice"],
                            eff_rank=float(np.mean(list(r["effective_ranks"].values()))),
                            min_rank=min(r["effective_ranks"].values()), max_rank=max(r["effective_ranks"].values()))
                       for r in ctrl["lam_rows"]])
    return df.groupby(["task", "lam"]).agg(eff_rank=("eff_rank", "mean"), eff_rank_sd=("eff_rank", "std"),
                                           min_rank=("min_rank", "min"), max_rank=("max_rank", "max"),
                                           dice=("dice", "mean"), dice_sd=("dice", "std")).reset_index()


def decoder_factor(sweep: dict, ctrl: dict):
    """Dice mean ± sd per (task, method) for decoder default / frozen / tuned (10 shots), with trainable
    counts: the decoder treatment as a separate factor of the PEFT comparison."""
    import pandas as pd

    C_tasks = {r["task"] for r in ctrl["decoder_rows"]}
    shots = ctrl["decoder_rows"][0]["shots"] if ctrl["decoder_rows"] else None
    methods = {r["method"] for r in ctrl["decoder_rows"]}
    rows = [dict(r, decoder="default") for r in sweep["rows"]
            if r["task"] in C_tasks and r["shots"] == shots and r["method"] in methods]
    rows += ctrl["decoder_rows"]
    df = pd.DataFrame(rows)
    df["decoder"] = [("frozen (default)" if m in ("lora", "arena", "adaptformer") else "partly tuned (default)")
                     if d == "default" else d for m, d in zip(df.method, df.decoder)]
    g = df.groupby(["task", "method", "decoder"], sort=False).agg(
        dice_mean=("dice", "mean"), dice_sd=("dice", "std"), trainable=("trainable", "first")).reset_index()
    g["dice"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(g.dice_mean, g.dice_sd.fillna(0))]
    return g


def decoder_rule(sweep: dict, ctrl: dict, min_diff: float = 0.02):
    """The slides' rule "decoder frozen for known categories, fine-tuned for new ones", tested per task and
    PEFT strategy on the decoder controls (same shots, seeds, support draws and steps for both arms).

    One row per (task, method): ``kind`` of the task (:data:`TASKS`), Dice mean ± sd over seeds with the
    decoder frozen and tuned, the exact trainable counts of both arms (their difference is the decoder's
    parameter count), the paired per-seed difference tuned - frozen (mean and number of seeds where tuned is
    ahead), the ``verdict`` (``"tuned better"`` / ``"frozen better"`` when the means differ by more than the
    larger seed sd and by more than ``min_diff`` Dice, else ``"tie"``), the arm the rule ``prescribes``
    (``frozen`` for a known structure, ``tuned`` for a novel one) and ``agrees``: ``"yes"`` when the verdict
    is the prescribed arm, ``"no"`` when it is the other one, ``"tie"`` otherwise. "Frozen" is the
    strategy's own default for LoRA / ARENA / AdaptFormer (they never touch the decoder) and the explicit
    control for BitFit / Affine-LN (which by default also train decoder biases / norms)."""
    import pandas as pd

    dec = decoder_factor(sweep, ctrl)
    shots = ctrl["decoder_rows"][0]["shots"]
    rows = [dict(r, decoder="frozen") for r in sweep["rows"]
            if r["shots"] == shots and r["method"] in ("lora", "arena", "adaptformer")]
    rows += ctrl["decoder_rows"]
    per_seed = pd.DataFrame([dict(task=r["task"], method=r["method"], decoder=r["decoder"], seed=r["seed"], dice=r["dice"])
                             for r in rows if r["task"] in set(dec.task) and r["method"] in set(dec.method)])
    wide = per_seed.pivot_table(index=["task", "method", "seed"], columns="decoder", values="dice").dropna()
    diff = (wide["tuned"] - wide["frozen"]).groupby(level=[0, 1], sort=False)
    d = dec.set_index(["task", "method", "decoder"])
    out = []
    for t in dict.fromkeys(dec.task):
        for m in dict.fromkeys(dec.method):
            fro = d.loc[(t, m, "frozen (default)")] if (t, m, "frozen (default)") in d.index else d.loc[(t, m, "frozen")]
            tun = d.loc[(t, m, "tuned")]
            delta = tun.dice_mean - fro.dice_mean
            margin = max(fro.dice_sd, tun.dice_sd, min_diff)
            verdict = "tuned better" if delta > margin else "frozen better" if delta < -margin else "tie"
            kind = TASKS.get(t, {}).get("kind", "")
            prescribed = "frozen" if kind.startswith("known") else "tuned"
            agrees = "tie" if verdict == "tie" else "yes" if verdict.startswith(prescribed) else "no"
            pd_ = diff.get_group((t, m))
            out.append(dict(task=t, kind=kind, method=m, frozen=fro.dice, tuned=tun.dice,
                            trainable_frozen=int(fro.trainable), trainable_tuned=int(tun.trainable),
                            tuned_minus_frozen=float(delta), paired_tuned_ahead=f"{int((pd_ > 0).sum())}/{len(pd_)}",
                            verdict=verdict, prescribed=prescribed, agrees=agrees))
    return pd.DataFrame(out)


# ---------------------------------------------------------------------- the notebook's tables
def live_vs_cached(live: list[dict], sweep: dict):
    """DataFrame comparing live runs with the cached sweep's rows of the same (method, task, shots, seed)."""
    import pandas as pd

    cached = {(r["method"], r["task"], r["shots"], r["seed"]): r for r in sweep["rows"]}
    rows = []
    for r in live:
        key = (r["method"], r["task"], r["shots"], r["seed"])
        if key not in cached:
            raise KeyError(f"the cached sweep has no run {key}; the live slice must be part of the sweep's grid")
        c = cached[key]
        rows.append(dict(method=r["method"], trainable=r["trainable"], dice_live=round(r["dice"], 3),
                         dice_cached=round(c["dice"], 3), train_s=r["train_s"]))
    return pd.DataFrame(rows)


def fseft_table(tab, tasks, shots, methods=None):
    """``(table, dice)``: ``dice`` is Dice ``mean ± std`` per method (rows) x (task, shots) (columns);
    ``table`` adds family, trainable parameters and time/memory of the first task at the largest shots."""
    import pandas as pd

    order = list(methods or pv.METHODS)
    dice = tab.pivot_table(index="method", columns=["task", "shots"], values="dice", aggfunc="first").reindex(order)
    info = tab[(tab.task == tasks[0]) & (tab.shots == max(shots))].set_index("method").reindex(order)
    table = pd.concat([info[["family", "trainable"]], info[["train_s", "peak_mb"]].round(2), dice], axis=1)
    table.columns = [" ".join(map(str, c)) if isinstance(c, tuple) else c for c in table.columns]
    return table, dice


def family_best(tab):
    """Best mean Dice of each family (max over its methods) per (task, shots)."""
    return tab.groupby(["task", "shots", "family"]).dice_mean.max().unstack("family")


def arena_label(top_rank: int) -> str:
    return f"ARENA (from {top_rank})"


def rank_summary(rank_rows: list[dict], top_rank: int):
    """``(summary, best_rank)`` of the LoRA rank sweep: Dice mean/std, mean effective rank (ARENA) and
    trainable parameters per (task, rank label); ``best_rank[task]`` = the best fixed LoRA rank."""
    import pandas as pd

    rs = pd.DataFrame(rank_rows)
    label = arena_label(top_rank)
    rs["label"] = [label if m == "arena" else int(r) for m, r in zip(rs.method, rs.get("rank", np.nan).fillna(0))]
    rs["eff_rank"] = [np.mean(list(e.values())) if isinstance(e, dict) else np.nan
                      for e in rs.get("effective_ranks", [None] * len(rs))]
    summ = rs.groupby(["task", "label"], sort=False).agg(dice=("dice", "mean"), std=("dice", "std"),
                                                         eff_rank=("eff_rank", "mean"), trainable=("trainable", "first"))
    best_rank = {t: int(summ.loc[t].drop(label).dice.idxmax()) for t in dict.fromkeys(rs.task)}
    return summ, best_rank


def arena_layer_ranks(rank_rows: list[dict]):
    """DataFrame task x layer of ARENA's selected rank (mean over seeds)."""
    import pandas as pd

    heat = {}
    for t in dict.fromkeys(r["task"] for r in rank_rows):
        ranks = [r["effective_ranks"] for r in rank_rows if r["method"] == "arena" and r["task"] == t]
        heat[t] = {k.split("resblocks.")[1]: np.mean([e[k] for e in ranks]) for k in ranks[0]}
    return pd.DataFrame(heat).T


def paper_check(tab, tasks, shots, tol: float = 0.02):
    """The FSEFT slides' / ARENA paper's findings checked on our table (a DataFrame of verdicts).

    ``tasks[0]`` is the known-structure task, the others novel; black-box "competitive" means within
    ``tol`` Dice of the best other family."""
    import pandas as pd

    def best(task, k, fam_):
        d = tab[(tab.task == task) & (tab.shots == k) & (tab.family == fam_)]
        return d.dice_mean.max(), d.loc[d.dice_mean.idxmax(), "method"]

    def dm(method, task, k):
        return float(tab[(tab.method == method) & (tab.task == task) & (tab.shots == k)].dice_mean.iloc[0])

    present = set(tab.task)
    known, novel = tasks[0], [t for t in tasks[1:] if t in present]
    lo_k, hi_k = min(shots), max(shots)
    others = ("additive PEFT", "selective PEFT", "fine-tuning", "survey strategy")
    rows = []
    bb, bbm = best(known, lo_k, "black-box")
    ot = max(best(known, lo_k, f)[0] for f in others)
    rows.append(("black-box competitive at very low shots, known task", "yes", "yes" if bb >= ot - tol else "no",
                 f"{known}, {lo_k} shots: best black-box {bb:.3f} ({bbm}) vs best PEFT/FT {ot:.3f}"))
    for t in novel:
        bb, bbm = best(t, hi_k, "black-box")
        ot = max(best(t, hi_k, f)[0] for f in others)
        rows.append(("black-box not competitive on novel tasks", "yes", "yes" if bb < ot - tol else "no",
                     f"{t}, {hi_k} shots: best black-box {bb:.3f} ({bbm}) vs best PEFT/FT {ot:.3f}"))
    for t in [known, *novel]:
        a, am = best(t, hi_k, "additive PEFT")
        s_, sm = best(t, hi_k, "selective PEFT")
        rows.append(("additive PEFT > selective PEFT", "yes", "yes" if a > s_ else "no",
                     f"{t}, {hi_k} shots: additive {a:.3f} ({am}) vs selective {s_:.3f} ({sm})"))
    for t in [known, *novel]:
        a, l_ = dm("arena", t, hi_k), dm("lora", t, hi_k)
        rows.append((f"ARENA > LoRA at {hi_k} shots", "yes", "yes" if a > l_ else "no",
                     f"{t}: ARENA {a:.3f} vs LoRA (r={pv.DEFAULTS['rank']}) {l_:.3f}"))
    return pd.DataFrame(rows, columns=["finding (FSEFT slides / ARENA paper)", "paper", "here?", "ours (Dice, mean of seeds)"])


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run the FSEFT comparison sweep and write its JSON.")
    ap.add_argument("--profile", default=None, choices=runtime.PROFILE_NAMES)
    ap.add_argument("--out", default=None, help="also write the results here (e.g. course_lib/assets/fseft_quick.json)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: tiny models, robust on shared CPUs)")
    ap.add_argument("--controls", action="store_true",
                    help="run the ARENA/LoRA and decoder controls instead (asset: fseft_controls_<profile>.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    P = runtime.get_profile(args.profile)
    if args.controls:
        data = controls(P, rebuild=True)
        if args.out:
            with checkpoints.atomic_write(args.out, "w") as f:
                f.write(json.dumps(data, indent=0))
            print("wrote", args.out)
        return 0
    data = results(P, rebuild=True)
    data.pop("source", None)
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=0))
        print("wrote", args.out)
    print(summary_table(data["rows"]).to_string())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""Tyche, stochastic in-context segmentation: K interacting candidates from noise in the target branch, the
best-candidate loss, test-time augmentation, GED and best-candidate Dice, the tyche-tiny checkpoint (notebook 06).

Paper: M. Rakic, H. E. Wong, J. J. G. Ortiz, B. Cimini, J. Guttag, A. V. Dalca, "Tyche: Stochastic
In-Context Learning for Medical Image Segmentation", CVPR 2024 (arXiv:2401.13650). Implemented from the
method's description (the paper is not in the course's paper folder, so no equation numbers are cited):

* **Stochastic target** -- :class:`Tyche` is UniverSeg (:mod:`.universeg`, the same :class:`CrossBlock`)
  whose query (target) branch takes one extra input channel: for candidate ``k`` the query image is
  stacked with Gaussian noise ``eps_k ~ N(0, I)``; the ``K`` candidates run through the network together
  (each with its own interaction with the support set).
* **Interacting candidates** -- after every CrossBlock a :class:`SetBlock` lets each candidate see the
  others: ``u_k <- u_k + A(Conv([u_k || 1/K sum_k' u_k']))``. (Ours: the residual form with the convolution
  initialised to zero, so that a model warm-started from ``universeg-tiny`` starts as UniverSeg.)
* **Best-candidate loss** (:func:`best_candidate_loss`) -- for each query one annotator's mask ``y`` is
  drawn at random and only the closest candidate is penalised: ``L = min_k l(f_k(x, S, eps), y)``
  (winner-takes-all), with ``l`` = soft Dice + 0.5 BCE (:func:`course_lib.losses`, as in meta-training).
* **Metrics** against a set of annotations: :func:`generalized_energy_distance` (GED; Kohl et al.,
  "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018, eq. 4; ``d = 1 - IoU``) and
  :func:`best_candidate_dice` (for each annotator the Dice of the best candidate, averaged over annotators).
* **Baselines** -- deterministic UniverSeg (one candidate) and :func:`tta_candidates`: K predictions of
  the same deterministic model under flips / small shifts of query *and* support (undone on the output).

The shipped checkpoint ``tyche-tiny`` is warm-started from ``universeg-tiny`` (every tensor whose shape
matches is copied; the first CrossConv gets the new noise input column) and trained briefly on SonoSynth
tasks whose labels come from :func:`course_lib.data.sonosynth.annotators.annotators`; rebuild with::

    python -m course_lib.experiments.tyche --train

(the command line lives in :mod:`course_lib.experiments.tyche`: this module is imported by the package, so
``python -m`` on it would run it twice).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from course_lib import checkpoints, losses, metrics, runtime
from course_lib.methods.segfm.meta_training import in_task_augment, running_mean, task_augment
from course_lib.methods.segfm.universeg import UniverSeg, _pool, _up, check_inputs, crossblock_levels
from course_lib.train import fit

runtime.register_section(
    "tyche",
    quick=dict(candidates=4, annotators=3, support_sizes=(1, 4), seeds=(0, 1, 2), eval_tasks=2, eval_queries=4,
               tta_shift=2),
    full=dict(candidates=8, annotators=4, support_sizes=(1, 2, 4, 8, 16, 32), seeds=(0, 1, 2, 3, 4), eval_tasks=12,
              eval_queries=16, tta_shift=2),
)

#: training configuration of the committed checkpoint
DEFAULT_TRAIN = dict(candidates=4, annotators=3, steps=240, batch_tasks=2, max_support=6, lr=1e-3, seed=0,
                     image_size=64, noise_init=0.5)

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
CHECKPOINT_NAME = "tyche-tiny.safetensors"
#: SHA-256 of the committed checkpoint (also in data_cards/tyche-tiny.md)
CHECKPOINT_SHA256 = "56719ecadd5b340c9d644f942e0b7dcebd8f187355102e09a31915970ea6884f"
REBUILD = "python -m course_lib.experiments.tyche --train"


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"the number of candidates K must be a positive int, got {k!r}; e.g. K=4")
    return int(k)


# =========================================================================== the network
class SetBlock(nn.Module):
    """Candidates interact: ``u_k + A(Conv([u_k || mean_k' u_k']))`` for ``u``: ``(B, K, C, H, W)``.

    The convolution starts at zero (identity at initialisation); the block is equivariant to the order
    of the candidates (the mean is symmetric and the same weights act on every ``k``).
    """

    def __init__(self, channels: int, negative_slope: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.act = nn.LeakyReLU(negative_slope)

    # region: tyche-setblock
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        B, K = u.shape[:2]
        mean = u.mean(dim=1, keepdim=True).expand_as(u)  # what the other candidates do
        x = torch.cat([u, mean], dim=2).flatten(0, 1)  # (B*K, 2C, H, W)
        return u + self.act(self.conv(x)).view_as(u)
    # endregion


class Tyche(nn.Module):
    """UniverSeg with a stochastic target branch and SetBlocks. ``forward(query, support, k=K) -> (B, K, H, W)``.

    ``query`` ``(B, 1, H, W)`` and ``support`` ``(B, S, 2, H, W)`` follow UniverSeg's input contract
    (:func:`.universeg.check_inputs`); ``noise`` ``(B, K, 1, H, W)`` may be given, otherwise it is drawn
    from ``generator`` (or the global torch RNG).
    """

    def __init__(self, channels: Sequence[int] = (16, 16, 16, 16), candidates: int = 4, validate: bool = True):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or any(c <= 0 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}; e.g. (16, 16, 16, 16)")
        self.channels, self.depth, self.validate = channels, len(channels) - 1, validate
        self.candidates = _check_k(candidates)
        self.enc, self.dec = crossblock_levels(channels, query_in=2, support_in=2)  # query branch: image + noise
        self.set_enc = nn.ModuleList(SetBlock(c) for c in channels)
        self.set_dec = nn.ModuleList(SetBlock(channels[lvl]) for lvl in range(self.depth - 1, -1, -1))
        self.out = nn.Conv2d(channels[0], 1, 1)

    def _set(self, blk: SetBlock, u: torch.Tensor, B: int, K: int) -> torch.Tensor:
        return blk(u.view(B, K, *u.shape[1:])).flatten(0, 1)

    # region: tyche-forward
    def forward(self, query, support, k: int | None = None, noise=None, generator=None) -> torch.Tensor:
        K = _check_k(self.candidates if k is None else k)
        if self.validate:
            check_inputs(query, support, self.depth)
        B, S = support.shape[:2]
        if noise is None:  # the stochastic target: one Gaussian noise image per candidate
            noise = torch.randn((B, K, 1, *query.shape[-2:]), generator=generator, device=query.device, dtype=query.dtype)
        if noise.shape != (B, K, 1, *query.shape[-2:]):
            raise ValueError(f"noise must have shape {(B, K, 1, *query.shape[-2:])}, got {tuple(noise.shape)}")
        u = torch.cat([query[:, None].expand(-1, K, -1, -1, -1), noise], dim=2).flatten(0, 1)  # (B*K, 2, H, W)
        v = support[:, None].expand(-1, K, -1, -1, -1, -1).flatten(0, 1)  # each candidate meets the support
        skips = []
        for i, blk in enumerate(self.enc):
            u, v = blk(u, v)
            u = self._set(self.set_enc[i], u, B, K)  # candidates interact
            if i < self.depth:
                skips.append((u, v))
                u, v = _pool(u, v)
        for j, blk in enumerate(self.dec):
            su, sv = skips.pop()
            u, v = _up(u, v)
            u, v = torch.cat([u, su], 1), torch.cat([v, sv], 2)
            u, v = blk(u, v, need_support=j < len(self.dec) - 1)
            u = self._set(self.set_dec[j], u, B, K)
        return self.out(u).view(B, K, *query.shape[-2:])
    # endregion


def from_universeg(base: UniverSeg, candidates: int = 4, noise_init: float = 0.5, seed: int = 0) -> Tyche:
    """A :class:`Tyche` warm-started from a UniverSeg: every tensor of the same name and shape is copied;
    the first CrossConv's weight gets the new noise input column (``N(0, noise_init * std)`` of the image
    column's weights, seeded) between the query-image column and the support columns. SetBlocks start at
    zero, so with ``noise_init=0`` the warm-started model returns UniverSeg's logits for every candidate."""
    model = Tyche(base.channels, candidates=candidates)
    own = model.state_dict()
    src = base.state_dict()
    copied = 0
    for name, t in src.items():
        if name in own and own[name].shape == t.shape:
            own[name] = t.detach().clone().float()
            copied += 1
    w = src["enc.0.cross.conv.weight"].float()  # (C, 1 + 2, 3, 3): query image, support image, support label
    g = torch.Generator().manual_seed(seed)
    noise_col = torch.randn(w[:, :1].shape, generator=g) * (noise_init * float(w[:, :1].std()))
    own["enc.0.cross.conv.weight"] = torch.cat([w[:, :1], noise_col, w[:, 1:]], 1)
    model.load_state_dict(own)
    model.warm_started = copied + 1
    return model


# =========================================================================== loss
def candidate_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B, K)``: soft Dice (per sample, smoothing 1) + 0.5 BCE of every candidate against ``target`` ``(B, H, W)``."""
    B, K = logits.shape[:2]
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != (B, *logits.shape[2:]):
        raise ValueError(f"target must be (B, H, W) = {(B, *logits.shape[2:])}, got {tuple(target.shape)}")
    tk = target[:, None].expand_as(logits).to(logits.dtype)
    dice = losses.dice_loss(logits.flatten(0, 1)[:, None], tk.flatten(0, 1)[:, None], smooth=1.0, reduction="none")
    bce = nn.functional.binary_cross_entropy_with_logits(logits, tk, reduction="none").flatten(2).mean(2)
    return dice.view(B, K) + 0.5 * bce


# region: tyche-wta-loss
def best_candidate_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Winner-takes-all: ``1/B sum_b min_k l(logits[b, k], target[b])`` -- only the candidate closest to
    the (randomly chosen) annotator's mask gets a gradient."""
    return candidate_losses(logits, target).min(dim=1).values.mean()
# endregion


# =========================================================================== metrics on sets of masks
def _as_set(masks, name: str) -> np.ndarray:
    m = np.asarray(masks.detach().cpu() if isinstance(masks, torch.Tensor) else masks)
    if m.ndim != 3 or len(m) == 0:
        raise ValueError(f"{name} must be a non-empty stack (n, H, W) of binary masks, got shape {m.shape}")
    if m.dtype != bool and not np.isin(m, (0, 1)).all():
        raise ValueError(f"{name} must be binary; binarise first (e.g. probabilities > 0.5)")
    return m.astype(bool)


def _pairwise(a: np.ndarray, b: np.ndarray, fn) -> np.ndarray:
    ia, ib = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
    return fn(a[ia.ravel()], b[ib.ravel()]).reshape(len(a), len(b))


# region: tyche-ged
def generalized_energy_distance(samples, annotations) -> float:
    """GED^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')] with ``d = 1 - IoU`` (Kohl et al. 2018, eq. 4).

    ``samples`` ``(K, H, W)`` and ``annotations`` ``(A, H, W)`` binary; the expectations are means over
    all pairs (including ``S = S'``, whose distance is 0); two empty masks have IoU 1 (:func:`metrics.iou`).
    """
    s, y = _as_set(samples, "samples"), _as_set(annotations, "annotations")
    d = lambda a, b: 1.0 - metrics.iou(a, b)
    return float(2 * _pairwise(s, y, d).mean() - _pairwise(s, s, d).mean() - _pairwise(y, y, d).mean())


def best_candidate_dice(samples, annotations) -> float:
    """``1/A sum_a max_k Dice(S_k, Y_a)``: how well the best candidate matches each annotator."""
    s, y = _as_set(samples, "samples"), _as_set(annotations, "annotations")
    return float(_pairwise(s, y, metrics.dice).max(0).mean())
# endregion


# =========================================================================== inference
def _support(support_images, support_labels, dev) -> torch.Tensor:
    si = torch.as_tensor(np.asarray(support_images), dtype=torch.float32, device=dev)
    sl = torch.as_tensor(np.asarray(support_labels), dtype=torch.float32, device=dev)
    if si.ndim != 3 or si.shape != sl.shape or len(si) == 0:
        raise ValueError(f"support_images and support_labels must both be non-empty (S, H, W) with the same shape, "
                         f"got {tuple(si.shape)} and {tuple(sl.shape)}")
    return torch.stack([si, sl], 1)[None]  # (1, S, 2, H, W)


def _query(query, dev) -> torch.Tensor:
    q = torch.as_tensor(np.asarray(query), dtype=torch.float32, device=dev)
    return q[:, None] if q.ndim == 3 else q


@torch.no_grad()
def tyche_candidates(model: Tyche, query, support_images, support_labels, *, k: int | None = None, seed: int = 0):
    """Probabilities ``(Q, K, H, W)`` (CPU) of Tyche's ``K`` candidates for each query (noise seeded)."""
    dev = next(model.parameters()).device
    q, sup = _query(query, dev), _support(support_images, support_labels, dev)
    g = torch.Generator(device=dev).manual_seed(int(seed))
    model.eval()
    return torch.sigmoid(model(q, sup.expand(len(q), -1, -1, -1, -1), k=k, generator=g)).float().cpu()


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    return torch.roll(x, (dy, dx), dims=(-2, -1))


def tta_transforms(k: int, shift: int = 2) -> list[tuple[int, int, int]]:
    """The first ``k`` of (horizontal flip, dy, dx): identity, flip, then shifts of +-``shift`` pixels with and
    without the flip (cycled when ``k`` exceeds the list)."""
    k = _check_k(k)
    base = [(0, 0, 0), (1, 0, 0)]
    for dy, dx in ((shift, 0), (-shift, 0), (0, shift), (0, -shift), (shift, shift), (-shift, -shift)):
        base += [(0, dy, dx), (1, dy, dx)]
    return [base[i % len(base)] for i in range(k)]


# region: tyche-tta
@torch.no_grad()
def tta_candidates(model: UniverSeg, query, support_images, support_labels, *, k: int = 4, shift: int = 2):
    """Test-time augmentation: ``K`` predictions of a deterministic UniverSeg, each with the *same* flip/shift
    applied to the query and every support pair, undone on the output. Probabilities ``(Q, K, H, W)`` (CPU)."""
    dev = next(model.parameters()).device
    q, sup = _query(query, dev), _support(support_images, support_labels, dev)
    model.eval()
    outs = []
    for flip, dy, dx in tta_transforms(k, shift):
        qt, st = _shift(q, dy, dx), _shift(sup, dy, dx)
        if flip:
            qt, st = qt.flip(-1), st.flip(-1)
        p = torch.sigmoid(model(qt, st.expand(len(q), -1, -1, -1, -1)))[:, 0]
        if flip:
            p = p.flip(-1)
        outs.append(_shift(p, -dy, -dx))
    return torch.stack(outs, 1).float().cpu()
# endregion


@torch.no_grad()
def deterministic_candidates(model: UniverSeg, query, support_images, support_labels):
    """The deterministic baseline as a one-candidate set: probabilities ``(Q, 1, H, W)`` (CPU)."""
    dev = next(model.parameters()).device
    q, sup = _query(query, dev), _support(support_images, support_labels, dev)
    model.eval()
    return torch.sigmoid(model(q, sup.expand(len(q), -1, -1, -1, -1))).float().cpu()


# =========================================================================== training
def _check_annotators(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"the annotator count must be a positive int, got {n!r}; e.g. 3 (one per annotator style)")
    return int(n)


def annotated_tasks(tasks, n_annotators: int, seed: int = 0) -> list[np.ndarray]:
    """For every task a bool array ``(N, A, H, W)`` of simulated annotators of its labels (task ``i`` uses the
    seed ``seed + 7919 i``; the same masks :func:`sample_annotated_episode` draws one at a time)."""
    from course_lib.data.sonosynth.annotators import annotators

    n = _check_annotators(n_annotators)
    return [annotators(t.labels > 0.5, n, seed=seed + 7919 * i) for i, t in enumerate(tasks)]


# region: tyche-episode
def sample_annotated_episode(tasks, n_annotators: int, batch_tasks: int, support_size: int, rng: np.random.Generator,
                             device, seed: int = 0):
    """UniverSeg's episode (:func:`.meta_training.sample_episode`) with every label drawn from a random one of
    ``n_annotators`` simulated annotators (:func:`course_lib.data.sonosynth.annotators.annotator`, drawn only
    for the images of the episode): the query's target is one annotator's mask, each support pair another's."""
    from course_lib.data.sonosynth.annotators import annotator

    qs, qys, sups = [], [], []
    for _ in range(batch_tasks):
        ti = int(rng.integers(len(tasks)))
        t = tasks[ti]
        idx = rng.choice(len(t), size=min(len(t), support_size + 1), replace=False)
        if len(idx) < support_size + 1:
            idx = np.concatenate([idx, rng.choice(idx[1:], support_size + 1 - len(idx))])
        who = rng.integers(n_annotators, size=len(idx))  # one random annotator per image
        ys = [annotator(t.labels[i] > 0.5, int(j), seed + 7919 * ti, image_index=int(i)) for i, j in zip(idx, who)]
        x = torch.as_tensor(t.images[idx], device=device)
        y = torch.as_tensor(np.stack(ys), device=device, dtype=torch.float32)
        x, y = in_task_augment(x, y, rng)
        x, y = task_augment(x, y, rng)
        qs.append(x[0:1])
        qys.append(y[0])
        sups.append(torch.stack([x[1:], y[1:]], 1))
    return torch.stack(qs), torch.stack(qys), torch.stack(sups)
# endregion


def train_tyche(tasks, base: UniverSeg, *, candidates: int = DEFAULT_TRAIN["candidates"],
                annotators: int = DEFAULT_TRAIN["annotators"], steps: int = DEFAULT_TRAIN["steps"],
                batch_tasks: int = DEFAULT_TRAIN["batch_tasks"], max_support: int = DEFAULT_TRAIN["max_support"],
                lr: float = DEFAULT_TRAIN["lr"], seed: int = 0, noise_init: float = DEFAULT_TRAIN["noise_init"],
                device=None, progress: bool = True, log_every: int = 10):
    """Warm-start :class:`Tyche` from ``base`` and train it with :func:`best_candidate_loss` on annotated
    episodes (AdamW, weight decay 1e-4, cosine LR with 5 % warm-up, through :func:`course_lib.train.fit`).
    Returns ``(model, history)``."""
    if len(tasks) == 0:
        raise ValueError("train_tyche got no tasks; build them with course_lib.data.seg_tasks.sonosynth_split(...)")
    _check_k(candidates)
    device = torch.device(device) if device is not None else runtime.get_device()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_ann = _check_annotators(annotators)
    model = from_universeg(base, candidates, noise_init, seed).to(device)
    model.validate = False
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)

    def episode(step):
        return sample_annotated_episode(tasks, n_ann, batch_tasks, int(rng.integers(1, max_support + 1)), rng, device, seed)

    def forward(net, batch):
        q, qy, sup = batch
        return best_candidate_loss(net(q, sup).float(), qy)

    try:
        hist = fit(model, episode, forward=forward, steps=steps, optimizer=opt, scheduler="cosine",
                   warmup=max(1, steps // 20), device=device, progress=progress, desc="Tyche")
    finally:
        model.validate = True
    model.eval()
    return model, running_mean(hist["step_loss"], log_every)


# =========================================================================== checkpoint
def checkpoint_path() -> Path:
    """The shipped default checkpoint path (the only one that may be rebuilt by training)."""
    return ASSETS_DIR / CHECKPOINT_NAME


def load_tyche(path=None, *, device=None, build_if_missing: bool = True) -> Tyche:
    """The course's ``tyche-tiny``, fp32 on ``device``, eval mode. ``path=None`` is the shipped file (verified
    against :data:`CHECKPOINT_SHA256`, rebuilt when missing if ``build_if_missing``); an explicit path that
    does not exist raises ``FileNotFoundError``."""
    default = path is None
    path = checkpoint_path() if default else Path(path)
    if not path.exists():
        if not default:
            raise FileNotFoundError(f"Tyche checkpoint {path} does not exist; pass an existing file, or omit the path "
                                    f"to use (and if missing rebuild) the shipped one with `{REBUILD}`")
        if not build_if_missing:
            raise FileNotFoundError(f"Tyche checkpoint {path} is missing; rebuild it with `{REBUILD}`")
        print(f"{path.name} missing: training it now ({REBUILD})")
        train_checkpoint(path)
    expected = CHECKPOINT_SHA256 if default and CHECKPOINT_SHA256 != "TO_BE_FILLED" else None
    tensors, meta = checkpoints.load_state(path, expected_sha256=expected)
    if "candidates" not in meta or "channels" not in meta:
        raise checkpoints.CheckpointError(f"checkpoint {path} is not a Tyche checkpoint (no 'candidates'/'channels' "
                                          f"in its metadata); rebuild it with `{REBUILD}`")
    model = Tyche(meta["channels"], candidates=meta["candidates"])
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    model.meta = meta
    device = torch.device(device) if device is not None else runtime.get_device()
    return model.to(device).eval()


def train_checkpoint(path=None, **overrides) -> tuple[Tyche, dict]:
    """Build the SonoSynth training tasks, warm-start from ``universeg-tiny``, train and save (fp16)."""
    from course_lib.data import seg_tasks
    from course_lib.methods.segfm.checkpoint import CHECKPOINT_SHA256 as BASE_SHA
    from course_lib.methods.segfm.checkpoint import load_pretrained

    cfg = dict(DEFAULT_TRAIN, **overrides)
    path = Path(path) if path is not None else checkpoint_path()
    runtime.seed_everything(cfg["seed"])
    t0 = time.perf_counter()
    train_tasks, _ = seg_tasks.sonosynth_split(image_size=cfg["image_size"], seed=cfg["seed"])
    base = load_pretrained(device="cpu")
    t_data = time.perf_counter() - t0
    model, hist = train_tyche(train_tasks, base, candidates=cfg["candidates"], annotators=cfg["annotators"],
                              steps=cfg["steps"], batch_tasks=cfg["batch_tasks"], max_support=cfg["max_support"],
                              lr=cfg["lr"], seed=cfg["seed"], noise_init=cfg["noise_init"])
    meta = dict(cfg, channels=list(model.channels), warm_start="universeg-tiny", warm_start_sha256=BASE_SHA,
                device=str(runtime.get_device()), history=hist, data_seconds=round(t_data, 1),
                train_seconds=round(time.perf_counter() - t0 - t_data, 1), torch=torch.__version__,
                threads=torch.get_num_threads())
    state = {k: v.detach().cpu().half() for k, v in model.state_dict().items()}
    digest = checkpoints.save_state(path, state, meta)
    print(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB) sha256={digest} train_seconds={meta['train_seconds']}")
    return model, meta

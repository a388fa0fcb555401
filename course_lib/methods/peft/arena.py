"""ARENA: LoRA whose rank is learnt, through an l1-penalised diagonal and a proximal step.
Used by notebook 05 (section 3 and the FSEFT comparison of :mod:`course_lib.experiments.fseft`).

Paper: Baklouti, Silva-Rodríguez, Dolz, Bahig, Ben Ayed, "Regularized Low-Rank Adaptation for
Few-Shot Organ Segmentation", MICCAI 2025 (arXiv:2507.15793). Method section: the low-rank update
is viewed as an SVD-like product and the "singular values" carry an l1 (sparsity) penalty, which
is a convex surrogate of the rank; the penalised loss is minimised with a proximal optimiser.

What this module implements (notation of the course notebook 05)::

    W = W0 + s * B diag(v) A                      # LoRA (Hu et al. 2022, Eq. 3) with a diagonal
    L(theta) = L_task(theta) + lam * sum_l ||v_l||_1   # rank penalty over adapted layers l
    v <- prox_{eta lam ||.||_1}(v) = sign(v) * max(|v| - eta * lam, 0)    # after each optimiser step

``A`` (r x in) is random, ``B`` (out x r) starts at zero (so the adapted model equals the frozen
one at initialisation) and ``v`` starts at ones. The task gradient moves ``A, B, v``; the
soft-threshold (proximal operator of the l1 norm, see Parikh & Boyd, "Proximal Algorithms",
Sec. 6.5.2) then shrinks every ``v_i`` by ``eta * lam`` and sets it to **exactly zero** once it
is small: the direction ``B[:, i] A[i, :]`` is switched off. The *effective rank* of a layer is
``(v != 0).sum()``. With ``lam = 0`` ARENA is LoRA of the same rank (plus ``r`` scalars per layer);
with a large ``lam`` every ``v`` hits zero and the model equals the frozen one.

Notes on our implementation
- The update is attached with ``torch.nn.utils.parametrize`` to the weight *tensors*: the fused
  ``in_proj_weight`` of ``nn.MultiheadAttention`` and ``out_proj.weight`` (target ``"attn"``),
  and ``mlp.c_fc.weight`` / ``mlp.c_proj.weight`` (``"mlp"``). This is the same target spec as
  :func:`course_lib.methods.peft.lora.apply_lora` (``resolve_targets`` is shared), and it works with
  the fused attention kernel because ``nn.MultiheadAttention`` simply reads the (now computed)
  weights. :func:`merge_arena` folds the update in (``leave_parametrized=True``).
- The product ``B diag(v) A`` is scale-ambiguous (``v`` can shrink while ``B`` grows). The paper
  adds no explicit constraint that we could verify; we keep plain LoRA initialisation and rely on
  the optimiser's finite steps, as the proximal LoRA literature does. ``orth_penalty`` (AdaLoRA's
  ``||P^T P - I||^2`` regulariser) is available to curb this; it is 0 by default.
- The threshold uses the optimiser's current learning rate ``eta`` (exact proximal gradient for
  SGD). With Adam we threshold in Adam's diagonal metric (see :func:`proximal_step`), and, as
  AdaLoRA does before pruning, the proximal steps start after a short warm-up: at initialisation
  ``B = 0`` so ``v`` has no gradient yet and every entry would look useless.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from course_lib.methods.peft.lora import resolve_targets, unwrap_model

__all__ = [
    "ArenaDelta",
    "apply_arena",
    "arena_modules",
    "soft_threshold",
    "proximal_step",
    "l1_penalty",
    "orthogonality_penalty",
    "effective_ranks",
    "v_values",
    "merge_arena",
    "expected_arena_params",
]


def soft_threshold(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Proximal operator of ``t * ||x||_1``: ``sign(x) * max(|x| - t, 0)`` (exact zeros below ``t``)."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0 (it is lr * lambda), got {threshold!r}")
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0.0)


class ArenaDelta(nn.Module):
    """A parametrization ``W0 -> W0 + s * B diag(v) A`` for one weight matrix (out x in)."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float | None = None):
        super().__init__()
        self.rank = int(rank)
        self.scaling = float(rank if alpha is None else alpha) / self.rank
        self.arena_A = nn.Parameter(torch.empty(self.rank, in_features))
        self.arena_B = nn.Parameter(torch.zeros(out_features, self.rank))
        self.arena_v = nn.Parameter(torch.ones(self.rank))
        nn.init.kaiming_uniform_(self.arena_A, a=math.sqrt(5))  # same as LoRA's A init

    # region: peft-arena-delta
    def delta(self) -> torch.Tensor:
        return self.scaling * (self.arena_B * self.arena_v) @ self.arena_A

    def forward(self, W0: torch.Tensor) -> torch.Tensor:
        return W0 + self.delta().to(W0.dtype)
    # endregion

    def effective_rank(self) -> int:
        return int((self.arena_v.detach() != 0).sum())

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, effective_rank={self.effective_rank()}"


def _weight_slots(model: nn.Module, name: str) -> list[tuple[nn.Module, str, str]]:
    """(owner module, tensor attribute, readable name) for one resolved target."""
    m = model.get_submodule(name)
    if isinstance(m, nn.MultiheadAttention):
        return [(m, "in_proj_weight", f"{name}.qkv"), (m.out_proj, "weight", f"{name}.out")]
    return [(m, "weight", name)]


def apply_arena(
    module: nn.Module,
    rank: int,
    alpha: float | None = None,
    targets: Sequence[str] = ("attn",),
    blocks: Iterable[int] | None = None,
) -> nn.Module:
    """Attach ARENA updates (in place) to the same weights :func:`~course_lib.methods.peft.lora.apply_lora`
    would adapt, freeze everything else; returns ``module``. Only ``A, B, v`` are trainable."""
    model = unwrap_model(module)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank!r}; pass e.g. rank=16")
    names = resolve_targets(model, targets, blocks)
    model.requires_grad_(False)
    for name in names:
        for owner, attr, _ in _weight_slots(model, name):
            W = getattr(owner, attr)
            delta = ArenaDelta(W.shape[0], W.shape[1], rank, alpha).to(device=W.device, dtype=torch.float32)
            parametrize.register_parametrization(owner, attr, delta)
            owner.parametrizations[attr].original.requires_grad_(False)
    return module


def arena_modules(module: nn.Module) -> dict[str, ArenaDelta]:
    """Every :class:`ArenaDelta` in ``module``, keyed by a readable layer name (``...attn.qkv``)."""
    model = unwrap_model(module)
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, ArenaDelta):
            # name = <owner>.parametrizations.<attr>.0
            owner, _, rest = name.partition(".parametrizations.")
            attr = rest.split(".")[0]
            if attr == "in_proj_weight":
                label = owner + ".qkv"
            elif owner.endswith(".out_proj"):
                label = owner[: -len("_proj")]  # '...attn.out'
            else:
                label = owner
            out[label] = m
    if not out:
        raise ValueError("no ARENA layers found; call apply_arena(model, rank) first")
    return out


def l1_penalty(module: nn.Module) -> torch.Tensor:
    """``sum_l ||v_l||_1`` (multiply by lambda yourself if you use a subgradient instead of the prox)."""
    return sum(m.arena_v.abs().sum() for m in arena_modules(module).values())


def orthogonality_penalty(module: nn.Module) -> torch.Tensor:
    """AdaLoRA-style ``sum ||A A^T - I||_F^2 + ||B^T B - I||_F^2`` (optional; curbs the scale ambiguity)."""
    total = 0.0
    for m in arena_modules(module).values():
        eye = torch.eye(m.rank, device=m.arena_A.device)
        total = total + ((m.arena_A @ m.arena_A.T - eye) ** 2).sum() + ((m.arena_B.T @ m.arena_B - eye) ** 2).sum()
    return total


def _adam_denominator(optimizer, p: torch.Tensor) -> torch.Tensor | None:
    """``sqrt(v_hat) + eps`` of Adam/AdamW for parameter ``p`` (None if not available)."""
    if optimizer is None or not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return None
    st = optimizer.state.get(p, {})
    if "exp_avg_sq" not in st:
        return None
    group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
    beta2, eps = group["betas"][1], group["eps"]
    step = float(st["step"]) if "step" in st else 1.0
    return (st["exp_avg_sq"] / (1 - beta2**step)).sqrt() + eps


@torch.no_grad()
def proximal_step(module: nn.Module, lam: float, lr: float, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Soft-threshold every ``v`` in place; returns how many entries are now zero.

    Plain (SGD) proximal gradient: threshold ``lr * lam``. If ``optimizer`` is the Adam(W) that
    updates ``v``, the threshold is taken in Adam's diagonal metric, ``lr * lam / (sqrt(v_hat) + eps)``
    (the proximal step of preconditioned/"proximal Adam" methods): Adam moves every coordinate by
    about ``lr`` whatever its gradient, so a fixed ``lr * lam`` would zero all or nothing, whereas
    in Adam's metric an entry survives when its gradient RMS exceeds roughly ``lam``.
    """
    if lam < 0 or lr < 0:
        raise ValueError(f"lam and lr must be >= 0, got lam={lam!r}, lr={lr!r}")
    # region: peft-arena-prox
    zeros = 0
    for m in arena_modules(module).values():
        v = m.arena_v
        denom = _adam_denominator(optimizer, v)
        thr = lr * lam if denom is None else (lr * lam) / denom
        v.copy_(torch.sign(v) * torch.clamp(v.abs() - thr, min=0.0))
        zeros += int((v == 0).sum())
    # endregion
    return zeros


def effective_ranks(module: nn.Module) -> dict[str, int]:
    """``{layer: number of non-zero v entries}`` — the rank ARENA selected for each layer."""
    return {k: m.effective_rank() for k, m in arena_modules(module).items()}


def v_values(module: nn.Module) -> dict[str, list[float]]:
    """Current ``|v|`` of every layer (for the l1-path plot)."""
    return {k: m.arena_v.detach().abs().cpu().tolist() for k, m in arena_modules(module).items()}


def merge_arena(module: nn.Module) -> nn.Module:
    """Fold ``s B diag(v) A`` into the weights and remove the parametrizations (plain model back)."""
    model = unwrap_model(module)
    owners = {id(m.parametrizations): m for m in model.modules() if parametrize.is_parametrized(m)}
    if not any(isinstance(p, ArenaDelta) for o in owners.values() for plist in o.parametrizations.values() for p in plist):
        raise ValueError("no ARENA layers found to merge; call apply_arena(model, rank) first")
    for owner in owners.values():
        for attr in list(owner.parametrizations.keys()):
            if any(isinstance(p, ArenaDelta) for p in owner.parametrizations[attr]):
                parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
    return module


def expected_arena_params(module: nn.Module, rank: int, targets=("attn",), blocks=None) -> int:
    """``r * (in + out + 1)`` per adapted matrix: LoRA's count plus ``r`` entries of ``v``."""
    model = unwrap_model(module)
    total = 0
    for name in resolve_targets(model, targets, blocks):
        for owner, attr, _ in _weight_slots(model, name):
            out_f, in_f = getattr(owner, attr).shape
            total += rank * (in_f + out_f + 1)
    return total

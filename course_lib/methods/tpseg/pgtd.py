"""TP-Seg's prototype-guided task decoder (PGTD, eqs. 4-13) with EMA task prototypes; used by notebook
11 (``11_tp_seg.ipynb``).

Each PGTD module (Sec. 3.2, Fig. 4) receives a low-level and a high-level feature map and

1. fuses them: ``f = C(GELU(GN(Conv1x1(f_low))), GELU(GN(Conv1x1(f_high))))`` (eq. 4; ``f_high`` is
   upsampled to ``f_low``'s size, each branch has ``width / 2`` channels so ``f`` has ``width``);
2. lets the task's foreground/background prototypes ``P_fg, P_bg`` (initialised from an MLP of a task
   embedding, eq. 5) attend to ``f`` by cross-attention (eq. 6) and aggregates the answers into a
   descriptor ``Z = MLP([A_fg, A_bg, A_fg - A_bg])`` (eq. 7);
3. computes the similarity map ``S = sigmoid(cos(f, P_fg) - cos(f, P_bg))`` (eq. 8), modulates
   ``f' = f * (1 + alpha S)`` (eq. 9, alpha = 0.5) and applies ``M`` convolution experts mixed by routing
   weights ``w = softmax(Linear(Z))`` (eq. 10, M = 6; a per-sample mixture of a shared expert bank, as in
   CondConv, Yang et al. NeurIPS 2019);
4. the last module predicts ``Head(y) + lambda_p * rho * tanh(s / temp)`` (eq. 11, lambda_p = 5, ``rho``
   learnable). Deviation: eq. 11 applies ``tanh`` to ``S`` in (0, 1), which is positive everywhere and
   cannot vote for background; we apply it to ``s = cos(f, P_fg) - cos(f, P_bg)``, the argument of the
   sigmoid in eq. 8, so the term is signed.

Prototypes are *buffers* refined without gradients by EMA (eqs. 12-13): during training, with the
ground-truth mask ``M`` resized to ``f``, ``P <- Normalize(m P + (1 - m) Normalize(sum M f / sum M))``
with m = 0.9, for the foreground (``M``) and background (``1 - M``) separately. The outer ``Normalize``
keeps prototypes on the unit sphere (the paper states that they lie on it); a region without pixels in
the batch (e.g. no foreground) leaves its prototype unchanged, so no NaN can appear.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

ALPHA, LAMBDA_P, N_EXPERTS, MOMENTUM = 0.5, 5.0, 6, 0.9


def _gn(c: int) -> nn.GroupNorm:
    import math

    return nn.GroupNorm(math.gcd(c, 8), c)


# region: tpseg-ema
@torch.no_grad()
def ema_prototype_update(proto: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor,
                         momentum: float = MOMENTUM) -> torch.Tensor:
    """Eqs. 12-13 for one prototype: ``normalize(m P + (1 - m) normalize(sum M f / sum M))``.

    ``proto`` (C,), ``feats`` (B, C, H, W), ``mask`` (B, 1, H, W) with values in [0, 1]. Returns the new
    prototype (unit norm); when ``mask`` sums to zero the prototype is returned unchanged (no NaN).
    """
    if feats.shape[-2:] != mask.shape[-2:] or feats.shape[0] != mask.shape[0]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match features {tuple(feats.shape)}")
    w = mask.sum()
    if float(w) <= 0:
        return proto
    mean = (feats * mask).sum(dim=(0, 2, 3)) / w  # eq. 13 (numerator / denominator)
    mean = F.normalize(mean, dim=0)
    return F.normalize(momentum * proto + (1 - momentum) * mean, dim=0)  # eq. 12, back on the unit sphere
# endregion


def _fuse_layers(c_low: int, c_high: int, width: int) -> nn.ModuleDict:
    half = width // 2
    return nn.ModuleDict(dict(
        low=nn.Sequential(nn.Conv2d(c_low, half, 1), _gn(half), nn.GELU()),
        high=nn.Sequential(nn.Conv2d(c_high, width - half, 1), _gn(width - half), nn.GELU()),
    ))


def _fuse(layers: nn.ModuleDict, f_low: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
    f_high = F.interpolate(f_high, size=f_low.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([layers["low"](f_low), layers["high"](f_high)], 1)  # eq. 4


class PlainStage(nn.Module):
    """A U-decoder stage without prototypes (ablations "w/o PGTD" and "w/o PGTD_k"): the fusion of eq. 4
    followed by a 3x3 conv, GN, GELU with a residual connection."""

    def __init__(self, c_low: int, c_high: int, width: int):
        super().__init__()
        self.fuse = _fuse_layers(c_low, c_high, width)
        self.conv = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), _gn(width), nn.GELU())

    def forward(self, f_low, f_high, task: int, mask=None):
        f = _fuse(self.fuse, f_low, f_high)
        return f + self.conv(f), None


# region: tpseg-pgtd
class PGTDModule(nn.Module):
    """One prototype-guided task decoder module (eqs. 4-10, 12-13); returns ``(y, s)`` with ``y`` the
    expert response (B, width, H, W) and ``s = cos(f, P_fg) - cos(f, P_bg)`` (B, 1, H, W)."""

    def __init__(self, c_low: int, c_high: int, width: int, n_tasks: int, *, heads: int = 2,
                 n_experts: int = N_EXPERTS, alpha: float = ALPHA, momentum: float = MOMENTUM, embed_dim: int = 16,
                 seed: int = 0):
        super().__init__()
        if not isinstance(n_experts, int) or n_experts <= 0:
            raise ValueError(f"the number of dynamic conv experts M must be a positive integer, got {n_experts!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum}")
        self.width, self.alpha, self.momentum, self.n_experts = width, float(alpha), float(momentum), n_experts
        self.fuse = _fuse_layers(c_low, c_high, width)
        # eq. 5: [P_fg, P_bg] = MLP(task embedding); prototypes are EMA buffers, the MLP only initialises them
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("task_embedding", torch.randn(n_tasks, embed_dim, generator=gen))
        self.proto_mlp = nn.Sequential(nn.Linear(embed_dim, width), nn.GELU(), nn.Linear(width, 2 * width))
        self.proto_mlp.requires_grad_(False)
        self.register_buffer("prototypes", torch.zeros(n_tasks, 2, width))
        self.reset_prototypes()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)  # eq. 6
        self.z_mlp = nn.Sequential(nn.Linear(3 * width, width), nn.GELU(), nn.Linear(width, width))  # eq. 7
        self.route = nn.Linear(width, n_experts)  # eq. 10 routing weights from Z
        self.experts = nn.Parameter(torch.empty(n_experts, width, width, 3, 3))
        self.expert_bias = nn.Parameter(torch.zeros(n_experts, width))
        for m in range(n_experts):
            nn.init.kaiming_uniform_(self.experts.data[m], a=5 ** 0.5)
        self.post = nn.Sequential(_gn(width), nn.GELU())

    @torch.no_grad()
    def reset_prototypes(self):
        """Eq. 5: prototypes = normalize(MLP(task embedding)), split into foreground and background."""
        p = self.proto_mlp(self.task_embedding).view(-1, 2, self.width)
        self.prototypes.copy_(F.normalize(p, dim=-1))

    def forward(self, f_low, f_high, task: int, mask=None):
        f = _fuse(self.fuse, f_low, f_high)  # eq. 4
        B, C, H, W = f.shape
        P = self.prototypes[task].clone()  # (2, C): the values before this step's EMA update
        kv = f.flatten(2).transpose(1, 2)  # (B, HW, C)
        q = P.unsqueeze(0).expand(B, -1, -1)  # (B, 2, C): row 0 = P_fg, row 1 = P_bg
        A, _ = self.attn(q, kv, kv, need_weights=False)  # eq. 6
        a_fg, a_bg = A[:, 0], A[:, 1]
        z = self.z_mlp(torch.cat([a_fg, a_bg, a_fg - a_bg], -1))  # eq. 7
        fn = F.normalize(f, dim=1)
        s = torch.einsum("bchw,c->bhw", fn, P[0]) - torch.einsum("bchw,c->bhw", fn, P[1])
        s = s.unsqueeze(1)
        S = torch.sigmoid(s)  # eq. 8
        f_mod = f * (1 + self.alpha * S)  # eq. 9
        w = torch.softmax(self.route(z), -1)  # (B, M), eq. 10
        kernel = torch.einsum("bm,moikl->boikl", w, self.experts).reshape(B * C, C, 3, 3)
        bias = (w @ self.expert_bias).reshape(B * C)
        y = F.conv2d(f_mod.reshape(1, B * C, H, W), kernel, bias, padding=1, groups=B).view(B, C, H, W)
        y = self.post(y) + f_mod
        if self.training and mask is not None:
            self.update_prototypes(task, f.detach(), mask)
        return y, s

    @torch.no_grad()
    def update_prototypes(self, task: int, f: torch.Tensor, mask: torch.Tensor):
        """EMA update (eqs. 12-13) of the task's foreground and background prototypes from features ``f``
        and a ground-truth mask (any size; resized to ``f`` by area averaging, then thresholded at 0.5)."""
        m = F.interpolate(mask.float(), size=f.shape[-2:], mode="area")
        m = (m > 0.5).float()
        self.prototypes[task, 0] = ema_prototype_update(self.prototypes[task, 0], f, m, self.momentum)
        self.prototypes[task, 1] = ema_prototype_update(self.prototypes[task, 1], f, 1 - m, self.momentum)
# endregion


# region: tpseg-decoder
class PrototypeGuidedDecoder(nn.Module):
    """Three decoder modules from deep to shallow (PGTD3 -> PGTD2 -> PGTD1) over four encoder levels, and the
    prediction of eq. 11. ``stages`` (PGTD1, PGTD2, PGTD3) says which modules are PGTD (True) or a plain
    U-decoder stage (False, the ablations of Table 3 A1/A3 and Table 4)."""

    def __init__(self, tap_dims, width: int, n_tasks: int, *, stages=(True, True, True), heads: int = 2,
                 n_experts: int = N_EXPERTS, alpha: float = ALPHA, lambda_p: float = LAMBDA_P, temp: float = 0.5,
                 momentum: float = MOMENTUM):
        super().__init__()
        if len(tap_dims) != 4 or len(stages) != 3:
            raise ValueError("the decoder needs 4 encoder levels and 3 stage flags (PGTD1, PGTD2, PGTD3)")
        self.stages_flags = tuple(bool(s) for s in stages)
        self.lambda_p, self.temp = float(lambda_p), float(temp)
        mods = []
        c_high = tap_dims[3]
        for k in (2, 1, 0):  # PGTD3 (deepest) first
            if self.stages_flags[k]:
                mods.append(PGTDModule(tap_dims[k], c_high, width, n_tasks, heads=heads, n_experts=n_experts,
                                       alpha=alpha, momentum=momentum, seed=k))
            else:
                mods.append(PlainStage(tap_dims[k], c_high, width))
            c_high = width
        self.modules_deep_to_shallow = nn.ModuleList(mods)
        self.head = nn.Conv2d(width, 1, 1)
        self.rho = nn.Parameter(torch.tensor(0.1)) if self.stages_flags[0] else None

    def forward(self, feats: list[torch.Tensor], task: int, mask=None) -> torch.Tensor:
        y = feats[3]
        s = None
        for k, mod in zip((2, 1, 0), self.modules_deep_to_shallow):
            y, s = mod(feats[k], y, task, mask)
        logits = self.head(y)
        if s is not None:  # the last module is PGTD1: eq. 11
            logits = logits + self.lambda_p * self.rho * torch.tanh(s / self.temp)
        return logits

    def pgtd_modules(self) -> dict[str, PGTDModule]:
        """``{"PGTD1": ..., "PGTD2": ..., "PGTD3": ...}`` for the modules that are PGTD."""
        names = ("PGTD3", "PGTD2", "PGTD1")
        return {n: m for n, m in zip(names, self.modules_deep_to_shallow) if isinstance(m, PGTDModule)}
# endregion

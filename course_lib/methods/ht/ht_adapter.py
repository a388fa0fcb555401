"""HT: the hybrid-tuning adapter (frequency filtering + noise estimation, eqs. 1-5) for CLIP ViTs.
Used by notebook 09 (§2, §4-§7) through :mod:`course_lib.methods.ht.recipe`.

Paper: Qu et al., "Adapting Vision-Language Foundation Model for Next Generation Medical Ultrasound
Image Analysis" (HT), arXiv:2506.08849, Sec. III, eqs. (1)–(5). For tokens ``Z`` of width ``D`` on
the residual stream of a frozen ViT block:

(1) ``F_in = (LN(Z) ⊙ γ + Z ⊙ γx) W_down + b_down``, patch tokens reshaped to ``B × m × H × W``
(2) ``F_freq = IFFT2D(FFT2D(F_in) ⊙ Θ)``, ``Θ ∈ R^m``                         (frequency filtering, FF)
(3) ``α = Softmax(W2 · ReLU(W1 · GAP(F_freq))) ∈ R^{B×3}``                    (noise estimator, NE)
(4) ``F_multi = Σ_i α_i · DWConv_{k_i}(F_freq)``, ``k ∈ {3, 5, 7}``, depthwise-separable;
    ``Z_out = F_freq + F_multi`` (residual)
(5) ``H = Z + Dropout(GELU(Z_out)) W_up + b_up``

Implementation notes (our choices, documented):

* Depthwise-separable: each branch is a depthwise k×k conv; the 1×1 pointwise conv is shared by the
  three branches, which is the same as ``Σ α_i PW(DW_{k_i}(x))`` with tied PW weights
  (``PW`` is linear) and costs a third of the parameters.
* ``filter="channel"`` is eq. (2) as written and the default. It equals a per-channel scaling
  (``course_lib.methods.ht.filters`` proves it and tests it to 1e-5); ``filter="global"``
  swaps in a GFNet frequency-dependent filter (needs the patch grid), ``filter="none"`` drops FF.
* ``noise_estimator=False`` replaces α by the uniform 1/3 (no NE). The ablation switches of the
  paper's Table VII are therefore: NE only = ``HTAdapter(filter="none")``, FF only =
  ``HTAdapter(noise_estimator=False)``, full = ``HTAdapter()``; see :data:`VARIANTS`.
* CLS token: as for Mona, only patch tokens go through (2)–(4); the CLS token takes the token-wise
  path (1) → GELU → (5). See ``course_lib.methods.ht.mona``.
* Init: ``W_up = 0, b_up = 0`` and ``Θ = 1``, so the adapter is an exact identity at init.
"""
from __future__ import annotations

import torch
from torch import nn

from .filters import FILTER_KINDS, make_filter
from .mona import TokenAdapter

__all__ = ["HTAdapter", "NoiseEstimator", "VARIANTS"]

#: ablation variants of Table VII (+ our frequency-dependent filter): name -> HTAdapter kwargs
VARIANTS = {
    "ht_ne": dict(filter="none", noise_estimator=True),  # NE only
    "ht_ff": dict(filter="channel", noise_estimator=False),  # FF only
    "ht": dict(filter="channel", noise_estimator=True),  # full HT (paper)
    "ht_global": dict(filter="global", noise_estimator=True),  # full HT with a frequency-dependent filter
}


class NoiseEstimator(nn.Module):
    """Eq. (3): ``α = Softmax(W2 · ReLU(W1 · GAP(F)))``, one weight per kernel size, per sample."""

    def __init__(self, channels: int, n_branches: int = 3, reduction: int = 4):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, n_branches)

    # region: ht-noise-estimator
    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        g = fmap.mean(dim=(-2, -1))  # global average pooling over the patch grid
        return torch.softmax(self.fc2(torch.relu(self.fc1(g))), dim=-1)
    # endregion


class HTAdapter(TokenAdapter):
    """HT adapter, eqs. (1)–(5). ``filter`` in ``("channel", "global", "none")``; ``grid`` (H, W) is
    required for ``filter="global"``; ``noise_estimator`` toggles eq. (3) (else α = 1/3)."""

    def __init__(self, dim: int, bottleneck: int = 64, kernels=(3, 5, 7), dropout: float = 0.1,
                 num_prefix_tokens: int = 1, filter: str = "channel", noise_estimator: bool = True,
                 grid: tuple[int, int] | int | None = None, gamma_init: float = 1e-6):
        super().__init__(dim, bottleneck, dropout, num_prefix_tokens, gamma_init)
        if filter not in FILTER_KINDS:
            raise ValueError(f"unknown filter {filter!r}; choose one of {FILTER_KINDS}")
        kernels = tuple(int(k) for k in kernels)
        if not kernels or any(k <= 0 or k % 2 == 0 for k in kernels):
            raise ValueError(f"kernels must be odd positive sizes like (3, 5, 7), got {kernels}")
        self.kernels, self.filter_kind, self.use_ne = kernels, filter, bool(noise_estimator)
        self.freq = make_filter(filter, bottleneck, grid)
        self.dwconvs = nn.ModuleList(
            nn.Conv2d(bottleneck, bottleneck, k, padding=k // 2, groups=bottleneck) for k in kernels
        )
        self.pw = nn.Conv2d(bottleneck, bottleneck, 1)
        self.ne = NoiseEstimator(bottleneck, len(kernels)) if self.use_ne else None
        self.last_alpha: torch.Tensor | None = None

    def alpha(self, f_freq: torch.Tensor) -> torch.Tensor:
        """Branch weights ``(B, n_kernels)``: eq. (3), or uniform when the NE is switched off."""
        if self.ne is None:
            k = len(self.kernels)
            return f_freq.new_full((f_freq.shape[0], k), 1.0 / k)
        return self.ne(f_freq)

    # region: ht-adapter-spatial
    def spatial(self, fmap: torch.Tensor) -> torch.Tensor:
        f_freq = self.freq(fmap)  # eq. (2)
        a = self.alpha(f_freq)  # eq. (3)
        self.last_alpha = a.detach()
        mixed = sum(a[:, i, None, None, None] * conv(f_freq) for i, conv in enumerate(self.dwconvs))
        return f_freq + self.pw(mixed)  # eq. (4) + residual
    # endregion

"""Mona: the multi-cognitive visual adapter, for a plain ViT with a CLS token, and the token/grid frame it
shares with HT. Used by notebook 09 (§2 and the comparisons) through :mod:`course_lib.methods.ht.recipe`.

Paper: Yin et al., "5%>100%: Breaking Performance Shackles of Full Fine-Tuning on Visual
Recognition Tasks" (Mona), CVPR 2025 (arXiv:2408.08345), Sec. 3.2 and its Fig. 3. The adapter
sits on the residual stream of a transformer block and computes, for tokens ``Z`` of width ``D``::

    x   = (LN(Z) ⊙ γ + Z ⊙ γx) W_down + b_down          scaled LayerNorm, then down-projection (D -> m)
    x   = x + mean_k DWConv_k(x),  k ∈ {3, 5, 7}         multi-cognitive filters on the patch grid
    x   = x + PWConv_1x1(x)                              1x1 aggregation
    H   = Z + Dropout(GELU(x)) W_up + b_up               up-projection (m -> D), residual

The HT adapter (``course_lib.methods.ht.ht_adapter``) keeps the same input/output (its eqs. (1) and
(5)) and replaces the middle; both share :class:`TokenAdapter`.

**CLS token (our documented choice).** Mona was written for Swin, which has no CLS token. In a
CLIP ViT the sequence is ``[CLS, p_1 ... p_N]``; only the ``N`` patch tokens form the ``H×W`` grid,
so only they go through the spatial operators (convolutions, FFT, noise estimator's pooling). The
prefix (CLS) token goes through every *token-wise* part (scaled LN, W_down, GELU, dropout, W_up,
residual) and skips the spatial middle (identity there). This keeps the CLS pathway adapted while
never mixing it into the image grid. ``num_prefix_tokens`` says how many leading tokens to treat
this way (1 for open_clip ViTs).

**Initialisation.** ``W_up = 0, b_up = 0`` so the adapter is the exact identity at init (the
pretrained network is unchanged until training moves it); γ starts at ``gamma_init`` (1e-6, as in
Mona's reference setting) and γx at 1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["TokenAdapter", "Mona", "tokens_to_map", "map_to_tokens", "infer_grid"]


def infer_grid(n_patches: int, hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """Patch-grid ``(H, W)`` for ``n_patches`` tokens (square unless ``hw`` is given)."""
    if hw is not None:
        h, w = int(hw[0]), int(hw[1])
        if h * w != n_patches:
            raise ValueError(
                f"grid {h}x{w} = {h * w} does not match the {n_patches} patch tokens; "
                f"pass the backbone's patch grid (e.g. bb.grid) or check num_prefix_tokens"
            )
        return h, w
    s = int(round(math.sqrt(n_patches)))
    if s * s != n_patches:
        raise ValueError(
            f"{n_patches} patch tokens do not form a square grid; pass hw=(H, W) explicitly, "
            f"or set num_prefix_tokens to the number of CLS/register tokens"
        )
    return s, s


def tokens_to_map(tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, N, C)`` patch tokens (row-major) -> ``(B, C, H, W)``."""
    b, n, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def map_to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)``."""
    b, c, h, w = fmap.shape
    return fmap.reshape(b, c, h * w).transpose(1, 2)


class TokenAdapter(nn.Module):
    """Shared frame of Mona and HT: scaled-LN input, down-projection, a spatial middle on the patch
    grid (subclasses implement :meth:`spatial`), GELU, dropout, zero-initialised up-projection, residual.

    ``forward(z, hw=None)``: ``z`` is ``(B, L, D)`` (batch first) with ``num_prefix_tokens`` leading
    CLS-like tokens; ``hw`` is the patch grid (inferred as square if omitted).
    """

    def __init__(self, dim: int, bottleneck: int = 64, dropout: float = 0.1, num_prefix_tokens: int = 1,
                 gamma_init: float = 1e-6):
        super().__init__()
        for name, v in (("dim", dim), ("bottleneck", bottleneck)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive int, got {v!r}")
        if not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be an int >= 0 (1 for a CLS token), got {num_prefix_tokens!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dim, self.bottleneck, self.num_prefix_tokens = dim, bottleneck, num_prefix_tokens
        self.norm = nn.LayerNorm(dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(gamma_init)))
        self.gammax = nn.Parameter(torch.ones(dim))
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def spatial(self, fmap: torch.Tensor) -> torch.Tensor:  # (B, m, H, W) -> (B, m, H, W)
        raise NotImplementedError

    def forward(self, z: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        if z.ndim != 3 or z.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects tokens of shape (B, L, {self.dim}) (batch first), got "
                f"{tuple(z.shape)}; for a (L, B, D) sequence transpose it first"
            )
        p = self.num_prefix_tokens
        if z.shape[1] <= p:
            raise ValueError(f"got {z.shape[1]} tokens but num_prefix_tokens={p}: no patch tokens left")
        f_in = self.down(self.norm(z) * self.gamma + z * self.gammax)  # eq. (1) / Mona input
        prefix, patches = f_in[:, :p], f_in[:, p:]
        grid = infer_grid(patches.shape[1], hw)
        mid = map_to_tokens(self.spatial(tokens_to_map(patches, grid)))
        z_out = torch.cat([prefix, mid], dim=1)  # prefix (CLS) skips the spatial middle
        return z + self.up(self.drop(self.act(z_out)))  # eq. (5) / Mona output


class Mona(TokenAdapter):
    """Mona adapter (see module docstring). ``kernels``: depthwise kernel sizes (default 3, 5, 7)."""

    def __init__(self, dim: int, bottleneck: int = 64, kernels=(3, 5, 7), dropout: float = 0.1,
                 num_prefix_tokens: int = 1, gamma_init: float = 1e-6):
        super().__init__(dim, bottleneck, dropout, num_prefix_tokens, gamma_init)
        kernels = tuple(int(k) for k in kernels)
        if not kernels or any(k <= 0 or k % 2 == 0 for k in kernels):
            raise ValueError(f"kernels must be odd positive sizes like (3, 5, 7), got {kernels}")
        self.kernels = kernels
        self.dwconvs = nn.ModuleList(
            nn.Conv2d(bottleneck, bottleneck, k, padding=k // 2, groups=bottleneck) for k in kernels
        )
        self.pw = nn.Conv2d(bottleneck, bottleneck, 1)

    # region: ht-mona-spatial
    def spatial(self, fmap: torch.Tensor) -> torch.Tensor:
        x = fmap + torch.stack([conv(fmap) for conv in self.dwconvs]).mean(0)  # averaged with identity
        return x + self.pw(x)
    # endregion

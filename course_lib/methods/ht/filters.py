"""Frequency filters for the HT adapter: the paper's channel-wise Θ (eq. 2) and a frequency-dependent one.
Used by notebook 09 (§3, the filter experiment) and by :mod:`course_lib.methods.ht.ht_adapter`.

HT (Qu et al., "Adapting Vision-Language Foundation Model for Next Generation Medical Ultrasound
Image Analysis", arXiv:2506.08849) filters the adapter's feature map in the Fourier domain,
eq. (2)::

    F_freq = IFFT2D( FFT2D(F_in) ⊙ Θ ),      Θ ∈ R^d  (one learnable scalar per channel)

**The finding this module teaches.** The 2-D DFT is linear and acts on each channel separately, so
for a Θ that holds one number θ_c per channel::

    IFFT2D( FFT2D(x_c) · θ_c ) = θ_c · IFFT2D( FFT2D(x_c) ) = θ_c · x_c

i.e. eq. (2) with Θ ∈ R^d is *exactly* a per-channel scaling (a diagonal 1×1 convolution). It
multiplies every spatial frequency of a channel by the same number, so it cannot single out the
frequency of a periodic artifact (the horizontal reverberation bands of ultrasound).
:class:`ChannelFilter` implements eq. (2) literally (FFT, multiply, inverse FFT) so the identity can
be checked numerically (``tests/methods/ht/test_filters.py`` does, to 1e-5).

To filter *frequencies* Θ must depend on the frequency too. :class:`GlobalFilter` is the
GFNet-style global filter (Rao et al., "Global Filter Networks for Image Classification",
NeurIPS 2021, eq. (4)): a learnable complex weight per channel **and** per rfft2 frequency,
``Θ ∈ C^{d × H × (W/2+1)}``; it can learn a notch at the band frequency. It is our extension; the
paper's default (and the course default) stays :class:`ChannelFilter`.

Both work on ``(B, C, H, W)`` float tensors, compute the FFT in float32 (half-precision FFTs need
power-of-two sizes on CUDA) and cast back to the input dtype, and start as the exact identity
(Θ = 1).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ... import train

__all__ = [
    "ChannelFilter",
    "GlobalFilter",
    "make_filter",
    "FILTER_KINDS",
    "per_channel_scale",
    "power_spectrum",
    "band_gain",
    "fit_filter",
]

FILTER_KINDS = ("channel", "global", "none")


def _check_map(x: torch.Tensor, channels: int, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"{name} expects a feature map of shape (B, C, H, W), got shape {tuple(x.shape)}; "
            f"reshape tokens with x.transpose(1, 2).reshape(B, C, H, W) first"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{name} was built for {channels} channels but got {x.shape[1]}; "
            f"build it with dim={x.shape[1]}"
        )


class ChannelFilter(nn.Module):
    """HT eq. (2) verbatim: ``IFFT2D(FFT2D(x) ⊙ Θ)`` with ``Θ ∈ R^d`` (init 1 = identity).

    Mathematically equal to ``x * Θ[None, :, None, None]`` (see the module docstring); the FFT is
    kept so that this equality is something a learner can test rather than take on faith.
    """

    def __init__(self, dim: int):
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int (number of channels), got {dim!r}")
        self.dim = dim
        self.theta = nn.Parameter(torch.ones(dim))

    # region: ht-channel-filter
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, self.dim, "ChannelFilter")
        dtype = x.dtype
        spec = torch.fft.fft2(x.float(), norm="ortho")
        spec = spec * self.theta.float()[None, :, None, None]
        return torch.fft.ifft2(spec, norm="ortho").real.to(dtype)
    # endregion

    def frequency_response(self, h: int, w: int) -> torch.Tensor:
        """|gain| per channel and rfft2 frequency ``(C, h, w//2+1)``: constant over frequencies."""
        return self.theta.detach().abs()[:, None, None].expand(self.dim, h, w // 2 + 1).clone()


class GlobalFilter(nn.Module):
    """Frequency-dependent global filter (GFNet): ``irfft2(rfft2(x) ⊙ Θ)``, ``Θ ∈ C^{d×H×(W/2+1)}``.

    Θ is stored as real/imaginary parts, initialised to 1 + 0j (exact identity). The grid
    ``(h, w)`` is fixed at construction because Θ has one weight per frequency of that grid.
    """

    def __init__(self, dim: int, h: int, w: int | None = None):
        super().__init__()
        w = h if w is None else w
        for name, v in (("dim", dim), ("h", h), ("w", w)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"GlobalFilter {name} must be a positive int, got {v!r}")
        self.dim, self.h, self.w = dim, h, w
        weight = torch.zeros(dim, h, w // 2 + 1, 2)
        weight[..., 0] = 1.0
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, self.dim, "GlobalFilter")
        if tuple(x.shape[-2:]) != (self.h, self.w):
            raise ValueError(
                f"GlobalFilter was built for a {self.h}x{self.w} grid but got "
                f"{x.shape[-2]}x{x.shape[-1]}; build it with h={x.shape[-2]}, w={x.shape[-1]} "
                f"(the patch grid of your backbone at this image size)"
            )
        dtype = x.dtype
        spec = torch.fft.rfft2(x.float(), norm="ortho")
        spec = spec * torch.view_as_complex(self.weight.float().contiguous())
        return torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho").to(dtype)

    def frequency_response(self, h: int | None = None, w: int | None = None) -> torch.Tensor:
        """|Θ| per channel and rfft2 frequency ``(C, H, W//2+1)``."""
        return torch.view_as_complex(self.weight.detach().float().contiguous()).abs()


def make_filter(kind: str, dim: int, grid: tuple[int, int] | int | None = None) -> nn.Module:
    """``"channel"`` (paper eq. 2), ``"global"`` (GFNet, needs ``grid``) or ``"none"`` (identity)."""
    if kind == "channel":
        return ChannelFilter(dim)
    if kind == "global":
        if grid is None:
            raise ValueError("filter='global' needs the patch grid: pass grid=(H, W) (e.g. bb.grid)")
        h, w = (grid, grid) if isinstance(grid, int) else tuple(grid)
        return GlobalFilter(dim, int(h), int(w))
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown frequency filter {kind!r}; choose one of {FILTER_KINDS}")


def per_channel_scale(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Reference for the FFT identity: ``x * θ`` broadcast over ``(B, C, H, W)``."""
    return x * theta[None, :, None, None]


# ----------------------------------------------------------------------------- measurement helpers
def power_spectrum(img, log: bool = True) -> torch.Tensor:
    """Centred power spectrum ``|FFT2(img - mean)|²`` of ``(H, W)`` or ``(..., H, W)`` (mean over leading dims)."""
    x = torch.as_tensor(img, dtype=torch.float32)
    if x.ndim < 2:
        raise ValueError(f"power_spectrum needs an image (H, W) or a batch (..., H, W), got shape {tuple(x.shape)}")
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    p = torch.fft.fftshift(torch.fft.fft2(x).abs() ** 2, dim=(-2, -1))
    p = p.reshape(-1, *p.shape[-2:]).mean(0)
    return torch.log10(p + 1e-8) if log else p


def band_gain(before, after, ky: int, kx: int = 0) -> dict:
    """Gain (dB) of a filter at frequency ``(ky, kx)`` (cycles per image) vs its median gain elsewhere.

    ``before``/``after``: ``(..., H, W)`` images. Returns ``band_db`` (power gain at ±(ky, kx)),
    ``other_db`` (median power gain over all other non-DC frequencies) and ``notch_db`` =
    band − other (negative = the band is suppressed *more* than the rest of the image).
    """
    b = torch.as_tensor(before, dtype=torch.float32)
    a = torch.as_tensor(after, dtype=torch.float32)
    pb = torch.fft.fft2(b - b.mean(dim=(-2, -1), keepdim=True)).abs().pow(2).reshape(-1, *b.shape[-2:]).mean(0)
    pa = torch.fft.fft2(a - a.mean(dim=(-2, -1), keepdim=True)).abs().pow(2).reshape(-1, *a.shape[-2:]).mean(0)
    H, W = pb.shape
    sel = torch.zeros(H, W, dtype=torch.bool)
    for sy, sx in ((ky, kx), (-ky, -kx)):
        sel[sy % H, sx % W] = True
    other = ~sel
    other[0, 0] = False
    gain = 10 * torch.log10((pa + 1e-12) / (pb + 1e-12))
    band_db = float(10 * math.log10((pa[sel].sum() + 1e-12) / (pb[sel].sum() + 1e-12)))
    other_db = float(gain[other].median())
    return {"band_db": band_db, "other_db": other_db, "notch_db": band_db - other_db}


def fit_filter(filt: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, steps: int = 200, lr: float = 0.05) -> list[float]:
    """Fit a filter (its parameters only) so that ``filt(inputs) ≈ targets``: MSE, Adam (no weight decay,
    constant lr), full batch, through :func:`course_lib.train.fit`.

    Used by notebook 09 to ask each filter to remove reverberation bands from SonoSynth images:
    ``inputs``/``targets`` are ``(B, C, H, W)``. Returns the loss history.
    """
    if inputs.shape != targets.shape:
        raise ValueError(
            f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must have the same shape"
        )
    hist = train.fit(filt, lambda step: (inputs, targets), torch.nn.functional.mse_loss, steps=int(steps), lr=lr,
                     optimizer="adam", weight_decay=0.0, scheduler=None, progress=False)
    return hist["step_loss"]

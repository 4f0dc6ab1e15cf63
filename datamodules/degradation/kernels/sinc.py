"""Pixel-centred kernels of DASR / Real-ESRGAN: 2-D sinc (ringing) filters and per-sample restricted supports.

Kernels are ``(B, k, k)`` float tensors summing to 1, centred on the middle pixel of an odd ``k``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.degradation.kernels.conventions import pixel_grid


def sinc_kernels(size: int, cutoff: Tensor, pad_to: int | None = None) -> Tensor:
    """2-D circular low-pass (sinc / ringing) filters, pixel-centred (DASR / Real-ESRGAN).

    ``k(r) = omega_c * J1(omega_c * r) / (2 pi r)`` with ``k(0) = omega_c^2 / (4 pi)``, normalised to sum 1.

    Args:
        size: Odd filter side.
        cutoff: ``(B,)`` cut-off frequency ``omega_c`` in radians (``pi/3 .. pi`` in DASR).
        pad_to: Zero-pad symmetrically to this odd side (e.g. 21).

    Returns:
        ``(B, size or pad_to, size or pad_to)``.
    """
    if size % 2 == 0:
        raise ValueError(f"sinc kernel size must be odd, got {size}")
    cutoff = torch.as_tensor(cutoff)
    dtype = cutoff.dtype if cutoff.is_floating_point() else torch.get_default_dtype()
    cutoff = cutoff.to(dtype)[:, None, None]
    xx, yy = pixel_grid(size, cutoff.device, dtype)
    r = torch.sqrt((xx - size // 2) ** 2 + (yy - size // 2) ** 2)[None]
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    k = torch.where(
        r > 0, cutoff * torch.special.bessel_j1(cutoff * safe_r) / (2 * math.pi * safe_r), cutoff**2 / (4 * math.pi)
    )
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    if pad_to is not None and pad_to > size:
        p = (pad_to - size) // 2
        k = F.pad(k, (p, p, p, p))
    return k


def restrict_support(kernels: Tensor, sizes: Tensor) -> Tensor:
    """Zero a centred kernel outside its own odd ``sizes[i] x sizes[i]`` window and renormalise (DASR's 7..21 sizes).

    Args:
        kernels: ``(B, K, K)`` pixel-centred kernels, ``K`` odd (e.g. 21).
        sizes: ``(B,)`` odd integers ``<= K``.
    """
    big = kernels.shape[-1]
    radius = (sizes.to(kernels.device) // 2)[:, None, None]
    d = (torch.arange(big, device=kernels.device) - big // 2).abs()
    inside = (d[None, :, None] <= radius) & (d[None, None, :] <= radius)
    k = kernels * inside
    return k / k.sum(dim=(-2, -1), keepdim=True)

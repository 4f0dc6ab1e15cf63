"""Noise operators on ``(B, C, H, W)`` images in ``[0, 1]``; results are not clamped.

Additive noise takes a field drawn beforehand (``samplers.gaussian_noise_field``); Poisson noise depends on the
signal, so it draws from the ``generator`` it is given (on the image's device).
"""

from __future__ import annotations

import torch
from torch import Tensor

from datamodules.degradation.ops._checks import check_image


def add_noise(x: Tensor, noise: Tensor) -> Tensor:
    """Additive noise, e.g. a field from ``samplers.gaussian_noise_field``: ``x + noise`` (not clamped)."""
    if noise.shape != x.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match image shape {tuple(x.shape)}")
    return x + noise


def poisson_noise(x: Tensor, scale: Tensor, gray: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Signal-dependent Poisson noise at 8-bit photon counts (Real-ESRGAN / DASR semantics).

    ``noisy = x + scale * (Poisson(255 x) / 255 - x)``; with ``gray``, the noise is computed on the luma and shared by
    the channels.

    Args:
        x: ``(B, C, H, W)`` in ``[0, 1]``.
        scale: ``(B,)`` noise scale (DASR: 0.05 .. 3).
        gray: ``(B,)`` bool.
        generator: Source of the Poisson draw (on ``x.device``).
    """
    check_image(x)
    clean = x.clamp(0, 1)
    colour = torch.poisson(clean * 255, generator=generator) / 255 - clean
    if x.shape[1] == 3:
        luma = (clean * clean.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        mono = (torch.poisson(luma * 255, generator=generator) / 255 - luma).expand_as(clean)
        colour = torch.where(gray.view(-1, 1, 1, 1).to(x.device), mono, colour)
    return x + scale.view(-1, 1, 1, 1).to(x) * colour

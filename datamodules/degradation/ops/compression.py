"""JPEG compression of ``(B, 3, H, W)`` RGB images in ``[0, 1]`` (Kornia's differentiable codec)."""

from __future__ import annotations

import kornia
from torch import Tensor

from datamodules.degradation.ops._checks import check_image


def jpeg(x: Tensor, quality: Tensor) -> Tensor:
    """Differentiable JPEG compression (Kornia), per-sample quality ``(B,)`` in ``[1, 100]``; RGB only."""
    check_image(x)
    if x.shape[1] != 3:
        raise ValueError(f"JPEG needs RGB input, got {x.shape[1]} channels")
    return kornia.enhance.jpeg_codec_differentiable(x.clamp(0, 1), quality.to(x))

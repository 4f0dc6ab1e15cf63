"""Colour conversions: MATLAB ``rgb2ycbcr`` (BT.601 studio range), the one owner of RGB -> Y in the project.

All functions take RGB batches ``(B, 3, H, W)`` in ``[0, 1]`` and compute in the input's dtype. ``peak`` is the
scale of the result: ``peak=1`` gives MATLAB's values divided by 255 (Y in ``[16, 235] / 255``, the mixture
networks' input), ``peak=255`` MATLAB's own values (Y in ``[16, 235]``, the evaluation protocol's).
"""

from __future__ import annotations

import torch
from torch import Tensor

from datamodules.degradation.ops._checks import exact

# MATLAB rgb2ycbcr for RGB in [0, 1]: rows Y, Cb, Cr; results on the 0..255 scale.
YCBCR_MATRIX = ((65.481, 128.553, 24.966), (-37.797, -74.203, 112.0), (112.0, -93.786, -18.214))
YCBCR_OFFSET = (16.0, 128.0, 128.0)


def _check_rgb(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an RGB batch of shape (B, 3, H, W), got {tuple(x.shape)}")


def rgb_to_y(x: Tensor, peak: float = 1.0) -> Tensor:
    """Y (luma) ``(B, 1, H, W)`` of MATLAB ``rgb2ycbcr``: ``(16 + 65.481 R + 128.553 G + 24.966 B) * peak / 255``."""
    _check_rgb(x)
    (wr, wg, wb), offset = YCBCR_MATRIX[0], YCBCR_OFFSET[0]
    y = offset + wr * x[:, 0:1] + wg * x[:, 1:2] + wb * x[:, 2:3]
    return y if peak == 255 else y * (peak / 255.0)


def rgb_to_ycbcr(x: Tensor) -> Tensor:
    """MATLAB ``rgb2ycbcr`` divided by 255: ``(B, 3, H, W)`` RGB in ``[0, 1]`` -> YCbCr, Y in ``[16, 235] / 255``."""
    _check_rgb(x)
    m = torch.tensor(YCBCR_MATRIX, dtype=torch.float64) / 255
    offset = torch.tensor(YCBCR_OFFSET, dtype=torch.float64) / 255
    context, x = exact(x)  # float32 under a bfloat16 autocast too
    with context:
        return torch.einsum("ij,bjhw->bihw", m.to(x), x) + offset.to(x).view(1, 3, 1, 1)


def ycbcr_to_rgb(x: Tensor) -> Tensor:
    """Exact inverse of :func:`rgb_to_ycbcr` (not clamped)."""
    _check_rgb(x)
    inv = torch.linalg.inv(torch.tensor(YCBCR_MATRIX, dtype=torch.float64) / 255)
    offset = torch.tensor(YCBCR_OFFSET, dtype=torch.float64) / 255
    context, x = exact(x)
    with context:
        return torch.einsum("ij,bjhw->bihw", inv.to(x), x - offset.to(x).view(1, 3, 1, 1))

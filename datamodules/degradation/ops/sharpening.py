"""Sharpening of ``(B, C, H, W)`` images in ``[0, 1]``: unsharp masking with a soft threshold mask."""

from __future__ import annotations

from torch import Tensor

from datamodules.degradation.kernels import gaussian_kernels
from datamodules.degradation.ops._checks import check_image
from datamodules.degradation.ops.blurring import blur


def unsharp_mask(x: Tensor, weight: float = 0.5, radius: int = 50, threshold: float = 10 / 255) -> Tensor:
    """Unsharp masking with a soft threshold mask (the USM-sharpened ground truth of Real-ESRGAN and DASR).

    ``residual = x - G(x)`` with a ``(2 radius + 1)``-tap Gaussian of OpenCV's default sigma for that size;
    ``mask = G(|residual| > threshold)``; ``out = mask * clamp(x + weight * residual) + (1 - mask) * x``.
    """
    check_image(x)
    size = 2 * radius + 1
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    kernel = gaussian_kernels(size, x.new_tensor([sigma]), x.new_tensor([sigma]), x.new_tensor([0.0]), param="std")
    blurred = blur(x, kernel)
    residual = x - blurred
    mask = (residual.abs() > threshold).to(x)
    soft = blur(mask, kernel)
    sharp = (x + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * x

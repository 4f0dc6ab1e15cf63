"""Cubic-convolution kernels: Keys' cubic, the bicubic downsampling kernel, KOALAnet's Gaussian-x-bicubic kernels.

``cubic`` is 1-D and elementwise; ``bicubic_kernel`` is ``(size, size)``; ``koala_kernels`` maps ``(B, g, g)``
Gaussians to ``(B, size, size)`` kernels summing to 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cubic(x: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel (``a=-0.5``: MATLAB ``imresize`` and Pillow; ``a=-0.75``: PyTorch/OpenCV)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (a + 2) * ax3 - (a + 3) * ax2 + 1
    far = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return torch.where(ax <= 1, near, torch.where(ax < 2, far, torch.zeros_like(ax)))


def bicubic_kernel(size: int, a: float = -0.5, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The non-antialiased bicubic downsampling kernel zero-padded to ``size x size`` (KOALAnet's ``k_b``).

    Taps sit at distances ``i - (size - 1) / 2`` from the centre; for an even ``size`` these are the half-integers
    ``+-0.5, +-1.5`` (the only non-zero taps), i.e. bicubic sampling of the point between the four central pixels.

    Returns:
        ``(size, size)`` kernel summing to 1.
    """
    d = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = cubic(d, a)
    w = w / w.sum()
    return torch.outer(w, w)


def koala_kernels(gaussian: Tensor, size: int = 20) -> Tensor:
    """KOALAnet's degradation kernels: pixel-centred Gaussians (e.g. 15x15) convolved with the 20x20 bicubic kernel.

    The 'same' convolution keeps the 20x20 support and its centre at 9.5, so decimating by 2 from pixel 0 (x2) or
    from pixel 1 (x4) after ``ops.blur`` aligns with a bicubic upsample (see ``decimation_phase``).

    Args:
        gaussian: ``(B, g, g)`` pixel-centred kernels, ``g`` odd and ``<= size``.
        size: Output side (20 in the paper).

    Returns:
        ``(B, size, size)`` kernels summing to 1.
    """
    g = gaussian.shape[-1]
    if g % 2 == 0 or g > size:
        raise ValueError(f"KOALAnet Gaussians must be odd and at most {size} wide, got {g}")
    kb = bicubic_kernel(size, dtype=gaussian.dtype, device=gaussian.device)
    out = F.conv2d(kb[None, None], gaussian.flip(-2, -1)[:, None], padding=g // 2)[0]
    return out / out.sum(dim=(-2, -1), keepdim=True)

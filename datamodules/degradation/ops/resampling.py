"""Bicubic resizing in two named conventions: ``(B, C, H, W) -> (B, C, H', W')``, values not clamped.

* ``resize(..., convention="torch")``: ``F.interpolate(mode="bicubic", align_corners=False)``, Keys ``a = -0.75``,
  no antialiasing, border pixels clamped. MoESR's experts and ISE use it for their bicubic inputs.
* ``resize(..., convention="matlab")``: MATLAB ``imresize`` (Keys ``a = -0.5``; when shrinking, the kernel is
  stretched by ``1/scale`` (antialiasing); symmetric border; output size ``ceil(in * scale)``). The "Bicubic" rows
  of tables and Gaussian8-style test sets use it. It agrees with Pillow's ``BICUBIC`` up to Pillow's 8-bit
  arithmetic and border handling (``tests/degradation/test_ops.py`` states the tolerance).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.degradation.kernels import cubic
from datamodules.degradation.ops._checks import check_image, exact

ResizeConvention = Literal["torch", "matlab"]


@lru_cache(maxsize=64)
def _matlab_weights(in_len: int, out_len: int, scale: float, antialias: bool) -> Tensor:
    """Dense ``(out_len, in_len)`` MATLAB ``imresize`` bicubic weights (float64, CPU), symmetric borders."""
    width = 4.0
    kernel_scale = 1.0
    if scale < 1 and antialias:
        width, kernel_scale = width / scale, scale
    u = torch.arange(1, out_len + 1, dtype=torch.float64)
    centre = u / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate of each output pixel
    left = torch.floor(centre - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None]
    w = kernel_scale * cubic(kernel_scale * (centre[:, None] - idx), a=-0.5)
    w = w / w.sum(dim=1, keepdim=True)
    # symmetric (mirror) border as MATLAB: index sequence 1..n, n..1 repeated
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    src = mirror[((idx - 1).long()) % (2 * in_len)]
    dense = torch.zeros(out_len, in_len, dtype=torch.float64)
    dense.scatter_add_(1, src, w)
    return dense


@lru_cache(maxsize=16)
def _matlab_weights_on(
    in_len: int, out_len: int, scale: float, antialias: bool, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """:func:`_matlab_weights` copied to ``device`` / ``dtype`` once (no host-to-device copy per call)."""
    return _matlab_weights(in_len, out_len, scale, antialias).to(device=device, dtype=dtype)


def _matlab_resize(x: Tensor, out_hw: tuple[int, int], scale_hw: tuple[float, float], antialias: bool) -> Tensor:
    """Separable MATLAB resize as one einsum, in at least float32 (also under a bfloat16 autocast)."""
    h, w = x.shape[-2:]
    context, x = exact(x)
    with context:
        wh = _matlab_weights_on(h, out_hw[0], scale_hw[0], antialias, x.device, x.dtype)
        ww = _matlab_weights_on(w, out_hw[1], scale_hw[1], antialias, x.device, x.dtype)
        return torch.einsum("oh,bchw,pw->bcop", wh, x, ww)


def resize(
    x: Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    convention: ResizeConvention = "matlab",
    antialias: bool = True,
) -> Tensor:
    """Bicubic resize in the PyTorch or the MATLAB convention (see module docstring).

    Args:
        x: ``(B, C, H, W)``.
        scale: Factor (``> 1`` enlarges, e.g. ``1/4`` shrinks). Give exactly one of ``scale`` or ``size``.
        size: Output ``(H', W')``.
        convention: ``"torch"`` or ``"matlab"``.
        antialias: MATLAB convention only: stretch the kernel when shrinking (MATLAB's default, True).

    Returns:
        ``(B, C, H', W')``; the MATLAB convention gives ``H' = ceil(H * scale)``; values are not clamped.
    """
    check_image(x)
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    h, w = x.shape[-2:]
    if size is None:
        out_hw = (math.ceil(h * scale - 1e-9), math.ceil(w * scale - 1e-9))
        scale_hw = (float(scale), float(scale))
    else:
        out_hw = (int(size[0]), int(size[1]))
        scale_hw = (out_hw[0] / h, out_hw[1] / w)
    if convention == "torch":
        if size is None:
            return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
        return F.interpolate(x, size=out_hw, mode="bicubic", align_corners=False)
    if convention == "matlab":
        return _matlab_resize(x, out_hw, scale_hw, antialias)
    raise ValueError(f"convention must be 'torch' or 'matlab', got {convention!r}")

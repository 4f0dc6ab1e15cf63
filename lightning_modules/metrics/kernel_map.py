"""Per-pixel kernel errors: predicted kernel maps ``(B, k*k, H, W)`` against the ground truth (no Lightning).

A **kernel map** holds one ``k x k`` kernel per LR pixel, tap ``(a, b)`` in channel ``k * a + b`` (KOALAnet's
downsampling network predicts ``(B, 400, H, W)``; ``datamodules.sv_sets`` hands out the ground truth of
spatially-variant sets the same way). Either argument may instead be ``(B, k, k)`` (or ``(k, k)``), one kernel for
every pixel: a spatially-invariant ground truth, or a global estimate. Maps of different kernel sizes are zero-padded
to a common size as ``kernel.pad_to_common_size`` does.

* :func:`kernel_error_maps`: the per-pixel sum of absolute errors (SAE) and KOALAnet's shift-aligned l2
  (:func:`kernel.kernel_shift_aligned_l2` at every pixel) as ``(B, H, W)`` float64 maps, for pictures.
* :func:`kernel_map_sae`, :func:`kernel_map_l2`: their means over the LR pixels, ``(B,)``; for a map that repeats one
  kernel they equal ``kernel_sae`` / ``kernel_shift_aligned_l2`` of that kernel (tested).
* :class:`KernelMapSAE`, :class:`KernelMapL2`: the mean over images of those per-image means, DDP-syncable
  (log names ``test/kernel_map_sae``, ``test/kernel_map_l2``).

The shift-aligned l2 uses ``|g - shift(e)|^2 = |g|^2 + |e|^2 - 2 <g, shift(e)>`` (zero fill, no mass lost on an
enlarged canvas), the cross-correlations of every pixel's pair at all ``(2m + 1)^2`` shifts coming from one grouped
convolution; pixels are processed ``chunk`` at a time so memory stays bounded for full-size images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.metrics.collections import _MeanOfPerItem
from lightning_modules.metrics.kernel import pad_to_common_size

__all__ = ["KernelMapL2", "KernelMapSAE", "kernel_error_maps", "kernel_map_l2", "kernel_map_sae"]

DEFAULT_CHUNK = 8192
"""Pixels per chunk of :func:`kernel_error_maps` (about 8192 x 400 x 8 bytes = 26 MB per copy)."""


def _as_map(x: Tensor, name: str) -> tuple[Tensor, int]:
    """``(B, k*k, H, W)`` as is, or ``(B, k, k)`` / ``(k, k)`` as ``(B, k*k, 1, 1)``; returns it and ``k``."""
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"{name}: a kernel is (k, k), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1, 1, 1), x.shape[-1]
    if x.ndim != 4:
        raise ValueError(f"{name} must be a kernel map (B, k*k, H, W) or kernels (B, k, k), got {tuple(x.shape)}")
    k = math.isqrt(x.shape[1])
    if k * k != x.shape[1]:
        raise ValueError(f"{name}: a kernel map needs a square number of channels, got {x.shape[1]}")
    return x, k


def _broadcast(est: Tensor, gt: Tensor) -> tuple[Tensor, Tensor, int, int, int, int]:
    """Both as ``(B, ., H, W)`` with common batch and grid; returns them, ``B``, ``H``, ``W`` and the common side."""
    (est, ke), (gt, kg) = _as_map(est.detach(), "est"), _as_map(gt.detach(), "gt")
    try:
        bsz, _, h, w = torch.broadcast_shapes(est[:, :1].shape, gt[:, :1].shape)
    except RuntimeError as err:
        raise ValueError(f"est {tuple(est.shape)} and gt {tuple(gt.shape)} do not broadcast") from err
    return est, gt, bsz, h, w, max(ke, kg)


def _pixels(x: Tensor, bsz: int, h: int, w: int, k: int, index: Tensor) -> Tensor:
    """Kernels of flat pixels ``index`` (over ``B * H * W``) of a ``(B', k'*k', H', W')`` map as ``(N, k, k)`` float64.

    Broadcast dimensions (size 1) are indexed at 0; kernels are zero-padded to ``k`` (``pad_to_common_size``).
    """
    b, rest = index // (h * w), index % (h * w)
    r, c = rest // w, rest % w
    b = b if x.shape[0] > 1 else torch.zeros_like(b)
    r, c = (r, c) if x.shape[-2:] != (1, 1) else (torch.zeros_like(r), torch.zeros_like(c))
    side = math.isqrt(x.shape[1])
    kernels = x[b, :, r, c].to(torch.float64).reshape(-1, side, side)
    return pad_to_common_size(kernels, kernels.new_zeros(1, k, k))[0]


def kernel_error_maps(
    est: Tensor, gt: Tensor, max_shift: int = 3, squared: bool = True, chunk: int = DEFAULT_CHUNK
) -> tuple[Tensor, Tensor]:
    """Per-pixel SAE and shift-aligned l2 between two kernel maps (module docstring).

    Args:
        est: Estimated kernel map ``(B, k1*k1, H, W)`` or kernels ``(B, k1, k1)`` / ``(k1, k1)``.
        gt: Ground truth, same forms (``k2`` may differ from ``k1``); batch and grid broadcast with ``est``'s.
        max_shift: Largest integer shift tried along each axis for the l2 (KOALAnet's Eq. (9)), ``>= 0``.
        squared: The paper's sum of squared errors (True) or its square root (False).
        chunk: Pixels processed at once.

    Returns:
        ``(sae, l2)``, each ``(B, H, W)`` float64 on ``est``'s device.

    Raises:
        ValueError: On malformed shapes, grids that do not broadcast or a negative ``max_shift``.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    est, gt, bsz, h, w, k = _broadcast(est, gt)
    m, total = int(max_shift), bsz * h * w
    sae = torch.empty(total, dtype=torch.float64, device=est.device)
    l2 = torch.empty_like(sae)
    for start in range(0, total, max(1, chunk)):
        index = torch.arange(start, min(start + chunk, total), device=est.device)
        e = _pixels(est, bsz, h, w, k, index)
        g = _pixels(gt.to(est.device), bsz, h, w, k, index)
        sae[index] = (e - g).abs().sum(dim=(-2, -1))
        n = e.shape[0]
        # cross[p, i, j] = sum_{a,b} g[p, a, b] * e[p, a + i - m, b + j - m]: g against e shifted by (i - m, j - m)
        cross = F.conv2d(F.pad(e, (m, m, m, m))[None], g[:, None], groups=n)[0]
        energy = g.square().sum(dim=(-2, -1)) + e.square().sum(dim=(-2, -1))
        l2[index] = (energy - 2 * cross.flatten(1).amax(dim=1)).clamp_min(0)
    sae, l2 = sae.reshape(bsz, h, w), l2.reshape(bsz, h, w)
    return sae, l2 if squared else l2.sqrt()


def kernel_map_sae(est: Tensor, gt: Tensor) -> Tensor:
    """Mean over the LR pixels of the per-pixel sum of absolute errors, ``(B,)`` float64.

    Args:
        est: Estimated kernel map ``(B, k*k, H, W)`` or kernels ``(B, k, k)``.
        gt: Ground-truth kernel map or kernels (sizes may differ; zero-padded to a common size).
    """
    return kernel_error_maps(est, gt, max_shift=0)[0].mean(dim=(-2, -1))


def kernel_map_l2(est: Tensor, gt: Tensor, max_shift: int = 3, squared: bool = True) -> Tensor:
    """Mean over the LR pixels of the per-pixel shift-aligned l2 (KOALAnet's Eq. (9)), ``(B,)`` float64.

    Args:
        est: Estimated kernel map ``(B, k*k, H, W)`` or kernels ``(B, k, k)``.
        gt: Ground-truth kernel map or kernels (sizes may differ; zero-padded to a common size).
        max_shift: Largest integer shift tried along each axis.
        squared: Sum of squared errors (True, the paper) or its square root (False), before the mean.
    """
    return kernel_error_maps(est, gt, max_shift=max_shift, squared=squared)[1].mean(dim=(-2, -1))


class KernelMapSAE(_MeanOfPerItem):
    """Mean over images of :func:`kernel_map_sae` (each image: the mean over its LR pixels), DDP-syncable.

    ``update(est, gt)`` takes kernel maps ``(B, k*k, H, W)`` (or kernels ``(B, k, k)`` for either argument).

    Args:
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = False

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        return kernel_map_sae(preds, target)


class KernelMapL2(_MeanOfPerItem):
    """Mean over images of :func:`kernel_map_l2` (each image: the mean over its LR pixels), DDP-syncable.

    ``update(est, gt)`` takes kernel maps ``(B, k*k, H, W)`` (or kernels ``(B, k, k)`` for either argument).

    Args:
        max_shift: Largest integer shift tried along each axis.
        squared: Sum of squared errors as in KOALAnet's Eq. (9) (True) or its square root (False).
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = False

    def __init__(self, max_shift: int = 3, squared: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift
        self.squared = squared

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        return kernel_map_l2(preds, target, max_shift=self.max_shift, squared=self.squared)

"""Evaluation protocol for blind super-resolution: Y-channel PSNR / SSIM and blur-kernel accuracy (no Lightning).

* :mod:`.protocol`: the named per-paper protocols (``"standard"``, ``"koalanet"``, ``"mixture"``: shave, Y rounding,
  SSIM window, 8-bit quantisation) and the full protocol description.
* :mod:`.image`: functional per-image PSNR / SSIM on MATLAB Y, RGB ``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B,)``.
* :mod:`.kernel`: functional kernel errors (SAE, KOALAnet's shift-aligned l2, FKP's kernel PSNR), ``(B, k, k)`` ->
  ``(B,)``.
* :mod:`.collections`: the DDP-syncable torchmetrics classes and the collections the systems log.

Every public name is re-exported here; import from ``lightning_modules.metrics``.
"""

from lightning_modules.metrics.collections import (
    PSNR_CLAMP_DB,
    PSNRY,
    SSIMY,
    KernelL2,
    KernelPSNR,
    KernelSAE,
    make_kernel_metrics,
    make_sr_metrics,
)
from lightning_modules.metrics.image import psnr_y, rgb_to_y_matlab, ssim_y
from lightning_modules.metrics.kernel import kernel_psnr, kernel_sae, kernel_shift_aligned_l2, pad_to_common_size
from lightning_modules.metrics.protocol import METRIC_PROTOCOLS, MetricProtocol, get_metric_protocol, resolve_shave

__all__ = [
    "METRIC_PROTOCOLS",
    "PSNR_CLAMP_DB",
    "PSNRY",
    "SSIMY",
    "KernelL2",
    "KernelPSNR",
    "KernelSAE",
    "MetricProtocol",
    "get_metric_protocol",
    "kernel_psnr",
    "kernel_sae",
    "kernel_shift_aligned_l2",
    "make_kernel_metrics",
    "make_sr_metrics",
    "pad_to_common_size",
    "psnr_y",
    "resolve_shave",
    "rgb_to_y_matlab",
    "ssim_y",
]

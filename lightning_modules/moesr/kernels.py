"""MoESR's kernels at test time: from KEN's parameters, from ground truths, and written beside the SR images.

Conventions (DESIGN.md): kernels are ``(B, k, k)`` summing to 1; MoESR works with block-centred kernels of the grid's
size (``13x13`` at x2, ``33x33`` at x4); DIV2KRK's ``.mat`` ground truths (``11x11`` / ``31x31``) are centred on the
middle pixel. Parameters are ``(B, 3)`` ``(lambda1, lambda2, theta)`` in KEN's column order (``nets.moesr.ken_params``).

* :func:`ken_kernels`: Eq. 9's ``K(rho)``; :func:`gaussians_like`: the same Gaussians in another centre convention
  and size (kernel accuracy against ground truths, the ``.mat`` files).
* :func:`fit_kernel_size`, :func:`kernel_moments`: a ground truth in MoESR's convention
  and its parameters (``use_gt_kernel``).
The files written beside the SR images are ``core.kernel_files.save_kernel_files``'s (``Kernel``: the estimate in the
DIV2KRK convention, grid size; ``KernelBlockCentred``: the kernel used for fine-tuning; ``params``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from datamodules.degradation.kernels import gaussian_kernels, pad_centred
from datamodules.degradation.kernels.moesr import moesr_kernels
from lightning_modules.nets.moesr import ken_params


def ken_kernels(params: Tensor, size: int, scale: int) -> Tensor:
    """``(B, 3)`` parameters (KEN's output) -> ``(B, size, size)`` block-centred kernels (Eq. 9's ``K``; autograd)."""
    p = ken_params(params)
    return moesr_kernels(p["lambda1"], p["lambda2"], p["theta"], size, scale)


def gaussians_like(params: Tensor, size: int, centre: Literal["pixel", "block"], scale: int) -> Tensor:
    """``(B, 3)`` parameters -> ``(B, size, size)`` Gaussians (``param="var"``) centred on ``centre``'s convention."""
    p = ken_params(params)
    return gaussian_kernels(size, p["lambda1"], p["lambda2"], p["theta"], param="var", centre=centre, scale=scale)


def kernel_moments(kernels: Tensor) -> Tensor:
    """Second moments of kernels as MoESR parameters: ``(B, k, k) -> (B, 3)`` ``(lambda1, lambda2, theta)``.

    ``lambda1 >= lambda2`` are the eigenvalues of the covariance (about the kernel's own mean) on the ``(x = column,
    y = row)`` grid, ``theta`` in ``[0, pi)`` the angle of the first eigenvector from the x axis: the inverse of
    ``gaussian_kernels(param="var")`` up to truncation by the kernel's support.
    """
    k = kernels.detach().to(torch.float64)
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    coords = torch.arange(k.shape[-1], dtype=torch.float64, device=k.device)
    py, px = k.sum(dim=-1), k.sum(dim=-2)  # marginals over rows (y) and columns (x)
    my, mx = (py * coords).sum(-1), (px * coords).sum(-1)
    dy, dx = coords[None, :, None] - my[:, None, None], coords[None, None, :] - mx[:, None, None]
    cxx, cyy, cxy = (k * dx * dx).sum((-2, -1)), (k * dy * dy).sum((-2, -1)), (k * dx * dy).sum((-2, -1))
    cov = torch.stack([torch.stack([cxx, cxy], -1), torch.stack([cxy, cyy], -1)], -2)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    theta = torch.remainder(torch.atan2(vectors[:, 1, 1], vectors[:, 0, 1]), math.pi)
    return torch.stack([values[:, 1], values[:, 0].clamp_min(1e-6), theta], dim=-1)


def fit_kernel_size(kernels: Tensor, size: int) -> Tensor:
    """Zero-pad or centre-crop ``(B, k, k)`` kernels to ``(B, size, size)``, renormalised to sum 1.

    Odd differences put the extra row/column at the end; even ones (11 -> 13, 31 -> 33) keep the centre exactly.
    """
    k = kernels.shape[-1]
    if k < size:
        kernels = pad_centred(kernels, size)
    elif k > size:
        d = k - size
        kernels = kernels[..., d // 2 : d // 2 + size, d // 2 : d // 2 + size]
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


@dataclass
class KernelChoice:
    """Kernels and expert of a batch of images.

    Attributes:
        kernel: ``(B, k, k)`` block-centred fine-tuning kernels at the model's scale.
        grid_index: ``(B,)`` long grid kernel whose expert is used (CPU).
        params: ``(B, 3)`` ``(lambda1, lambda2, theta)`` of KEN or of the ground truth's moments (CPU float64).
        intermediate: x4: ``(B, 13, 13)`` x2 kernels for the intermediate term, else ``None``.
        estimated: Whether the kernels come from KEN (else from the ground truth).
        seconds: Wall time spent choosing (estimation), for the whole batch.
    """

    kernel: Tensor
    grid_index: Tensor
    params: Tensor
    intermediate: Tensor | None
    estimated: bool
    seconds: float

"""Functional blur-kernel metrics: accuracy of an estimated kernel against the ground truth.

Kernels are ``(k, k)`` or batches ``(B, k, k)``, each summing to one; a single kernel broadcasts over the other
argument's batch. Estimate and ground truth may differ in size (DIV2KRK: 13x13 estimates vs 11x11 ground truth) and
are zero-padded symmetrically to a common size first (:func:`pad_to_common_size`). Results are ``(B,)`` float64.

* :func:`kernel_sae`: sum of absolute errors (MoESR Fig. 4, KernelGAN-style), no alignment.
* :func:`kernel_shift_aligned_l2`: KOALAnet Table 4 / Eq. (9), the minimum over integer shifts of the estimate of
  the sum of squared errors.
* :func:`kernel_psnr`: FKP's kernel PSNR (peak 1, mean squared error over the kernel's pixels), no alignment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.degradation.kernels import pad_centred

__all__ = ["kernel_psnr", "kernel_sae", "kernel_shift_aligned_l2", "pad_to_common_size"]


def _as_kernel_batch(k: Tensor, name: str) -> Tensor:
    if k.ndim == 2:
        return k.unsqueeze(0)
    if k.ndim == 3:
        return k
    raise ValueError(f"{name} must be a kernel (kh, kw) or a batch of kernels (B, kh, kw), got {tuple(k.shape)}")


def pad_to_common_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-pad two kernels (or kernel batches) symmetrically to their common (larger) size.

    Each spatial dimension is padded to ``max`` of the two sizes with ``d // 2`` zeros before and ``d - d // 2``
    after, where ``d`` is the size difference; with an odd difference the extra row / column goes to the bottom /
    right, so an element at index ``i`` moves to ``i + d // 2``. Even differences (13 vs 11, 33 vs 31) preserve
    the centre exactly.

    Args:
        a: Kernel ``(ha, wa)`` or batch ``(Ba, ha, wa)``.
        b: Kernel ``(hb, wb)`` or batch ``(Bb, hb, wb)``.

    Returns:
        ``(a_padded, b_padded)``, each keeping its own leading dimensions, spatial size
        ``(max(ha, hb), max(wa, wb))``.

    Raises:
        ValueError: If either input is not 2-D or 3-D.
    """
    for t, name in ((a, "a"), (b, "b")):
        if t.ndim not in (2, 3):
            raise ValueError(f"{name} must be a kernel (kh, kw) or a batch (B, kh, kw), got {tuple(t.shape)}")
    size_h = max(a.shape[-2], b.shape[-2])
    size_w = max(a.shape[-1], b.shape[-1])
    return pad_centred(a, size_h, size_w), pad_centred(b, size_h, size_w)


def _prepare_kernels(est: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Batch, pad to common size, cast to float64 and broadcast; returns two ``(B, h, w)`` tensors."""
    est = _as_kernel_batch(est.detach(), "est").to(torch.float64)
    gt = _as_kernel_batch(gt.detach(), "gt").to(torch.float64)
    if est.shape[0] != gt.shape[0] and 1 not in (est.shape[0], gt.shape[0]):
        raise ValueError(f"est and gt batch sizes differ: est {tuple(est.shape)} and gt {tuple(gt.shape)}")
    est, gt = pad_to_common_size(est, gt)
    est, gt = torch.broadcast_tensors(est, gt)
    return est, gt


def kernel_sae(est: Tensor, gt: Tensor) -> Tensor:
    """Sum of absolute errors between estimated and ground-truth kernels (MoESR Fig. 4, KernelGAN-style).

    Both are zero-padded to a common size with :func:`pad_to_common_size`; no shift alignment.

    Args:
        est: Estimated kernel(s) ``(k1, k1)`` or ``(B, k1, k1)``.
        gt: Ground-truth kernel(s) ``(k2, k2)`` or ``(B, k2, k2)``; a single kernel broadcasts over the batch.

    Returns:
        ``(B,)`` float64 sums of ``|est - gt|`` (``B = 1`` when both inputs are single kernels).

    Raises:
        ValueError: On malformed shapes or incompatible batch sizes.
    """
    est, gt = _prepare_kernels(est, gt)
    return (est - gt).abs().sum(dim=(-2, -1))


def kernel_shift_aligned_l2(est: Tensor, gt: Tensor, max_shift: int = 3, squared: bool = True) -> Tensor:
    """Shift-aligned l2 kernel error of KOALAnet (Table 4, Eq. (9) of its appendix).

    ``min over (dh, dw) in [-max_shift, max_shift]^2 of sum_{h,w} (gt(h, w) - est(h + dh, w + dw))^2``.

    KOALAnet's Eq. (9) is the *squared* error (no square root), so ``squared=True`` (the default) follows the
    paper; ``squared=False`` returns the square root of the same minimum (the Euclidean norm). The kernels are
    first zero-padded to a common size (:func:`pad_to_common_size`); the shifts use zero fill (not circular) on a
    canvas enlarged by ``max_shift`` on every side, so no mass of the estimate is cut off by a shift. Vectorised:
    all ``(2 max_shift + 1)^2`` shifted copies are views of one padded tensor (``unfold``).

    Args:
        est: Estimated kernel(s) ``(k1, k1)`` or ``(B, k1, k1)``.
        gt: Ground-truth kernel(s) ``(k2, k2)`` or ``(B, k2, k2)``; a single kernel broadcasts over the batch.
        max_shift: Largest integer shift tried along each axis (>= 0).
        squared: Return the paper's sum of squared errors (True) or its square root (False).

    Returns:
        ``(B,)`` float64 errors (``B = 1`` when both inputs are single kernels).

    Raises:
        ValueError: On malformed shapes, incompatible batch sizes or a negative ``max_shift``.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    est, gt = _prepare_kernels(est, gt)
    m = int(max_shift)
    h, w = gt.shape[-2:]
    gt_canvas = F.pad(gt, (m, m, m, m))  # (B, h + 2m, w + 2m)
    est_canvas = F.pad(est, (2 * m, 2 * m, 2 * m, 2 * m))  # (B, h + 4m, w + 4m)
    # Window (i, j) of est_canvas is est shifted so that gt(h, w) meets est(h + i - m, w + j - m).
    shifted = est_canvas.unfold(1, h + 2 * m, 1).unfold(2, w + 2 * m, 1)  # (B, 2m+1, 2m+1, h+2m, w+2m)
    err = (shifted - gt_canvas[:, None, None]).square().sum(dim=(-2, -1)).flatten(1).amin(dim=1)
    return err if squared else err.sqrt()


def kernel_psnr(est: Tensor, gt: Tensor) -> Tensor:
    """Kernel PSNR as FKP defines it: ``20 log10(1 / sqrt(mean((gt - est)^2)))`` dB, peak 1, no alignment.

    FKP (JingyunLiang/FKP, ``DIPFKP/util.py``, ``calculate_psnr(..., is_kernel=True)``) takes the mean over all
    kernel pixels. The KENet paper reports "kernel PSNR" (its Table 2) without a definition; this is FKP's, which
    KENet cites for its data and compares with. Kernels of different sizes are zero-padded to a common size first
    (:func:`pad_to_common_size`) and the mean runs over that common grid, so the value depends on the padded size
    (zero-padding both kernels by a ring lowers the MSE and raises the PSNR); compare kernels of the same size.

    Args:
        est: Estimated kernel(s) ``(k1, k1)`` or ``(B, k1, k1)``.
        gt: Ground-truth kernel(s) ``(k2, k2)`` or ``(B, k2, k2)``; a single kernel broadcasts over the batch.

    Returns:
        ``(B,)`` float64 PSNR in dB, ``inf`` where the kernels are identical (``B = 1`` for two single kernels).

    Raises:
        ValueError: On malformed shapes or incompatible batch sizes.
    """
    est, gt = _prepare_kernels(est, gt)
    mse = (est - gt).square().mean(dim=(-2, -1))
    return 20 * torch.log10(1 / mse.sqrt())

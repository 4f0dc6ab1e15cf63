"""Kernel centre conventions, the aligned decimation phase, and the conversions between conventions.

Every kernel here is a ``(B, k, k)`` float tensor that sums to 1, indexed ``[row, column]`` = ``[y, x]``.
Three choices decide where a kernel puts the image, and every function takes them explicitly:

* **parameterisation** ``param``: ``"var"`` gives the covariance eigenvalues (variances) ``lambda1 >= lambda2``
  (DIV2KRK, MoESR, the mixture paper); ``"std"`` gives standard deviations ``sigma_x, sigma_y`` (KOALAnet, DASR,
  Real-ESRGAN). Both build ``Sigma = R(theta) diag(a, b) R(theta)^T`` with ``R = [[cos, -sin], [sin, cos]]`` acting on
  ``(x, y) = (column, row)``; ``"std"`` squares its arguments first.
* **centre** ``centre``: ``"pixel"`` puts the mean on the middle of the ``k x k`` grid, ``(k - 1) / 2``;
  ``"block"`` puts it on ``k // 2 + 0.5 * (scale - k % 2)`` (KernelGAN / DIV2KRK / MoESR), so that correlating and
  decimating from pixel 0 samples the centre of each ``scale x scale`` HR block.
* **how it is applied** (``ops.blur(..., mode=...)``): ``"correlate"`` (DIV2KRK, Kornia's default) or ``"convolve"``
  (the kernel flipped first; USRNet / KAIR). A kernel made with ``convention="convolve"`` has its mean mirrored
  (``k - 1 - mu``: KAIR's "upper-left" shift) so that convolving it samples the same HR position that the
  ``"correlate"`` kernel samples by correlation.

``decimation_phase`` gives the first kept pixel that makes a bicubic-upsampled LR line up with its HR for a given
kernel centre, and ``tests/degradation/test_alignment.py`` proves it for each convention.

The DIV2KRK ``.mat`` kernels as released are centred on the middle pixel, but their LR images were made with the
kernel shifted to the block centre (see DESIGN.md): ``div2krk_kernel_to_block_centre`` (``shift_kernel`` by
``+0.5 * (scale - 1)``) regenerates them, ``block_centre_to_div2krk_kernel`` stores a block-centred kernel the DIV2KRK
way; compare estimated kernels only after aligning centres (``lightning_modules.metrics``).

USRNet / KAIR convolve their kernel (centre ``k // 2``, circular boundary) and keep the upper-left pixel of each
block: ``block_centre_to_usrnet`` (a 180-degree rotation, proved in its docstring) turns a block-centred, correlated
kernel into the one USRNet must be given, ``usrnet_to_block_centre`` back.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Param = Literal["var", "std"]
Centre = Literal["block", "pixel"]
Convention = Literal["correlate", "convolve"]


def kernel_mean(size: int, scale: int = 1, centre: Centre = "pixel", convention: Convention = "correlate") -> float:
    """Position (row = column, in pixels from 0) of a kernel's mean on its ``size x size`` grid.

    Args:
        size: Kernel side ``k``.
        scale: Downscaling factor the kernel is made for (only used by ``centre="block"``).
        centre: ``"pixel"`` -> ``(k - 1) / 2``; ``"block"`` -> ``k // 2 + 0.5 * (scale - k % 2)``.
        convention: ``"convolve"`` mirrors the mean to ``k - 1 - mu`` (the kernel is flipped when applied).
    """
    if centre == "pixel":
        mu = (size - 1) / 2
    elif centre == "block":
        mu = size // 2 + 0.5 * (scale - size % 2)
    else:
        raise ValueError(f"centre must be 'block' or 'pixel', got {centre!r}")
    if convention == "convolve":
        mu = size - 1 - mu
    elif convention != "correlate":
        raise ValueError(f"convention must be 'correlate' or 'convolve', got {convention!r}")
    return mu


def decimation_phase(size: int, scale: int, centre: Centre = "pixel") -> int:
    """First kept pixel of ``ops.decimate`` that aligns blur-then-decimate with a bicubic upsample.

    ``ops.blur`` pads ``(k - 1) // 2`` before and ``k // 2`` after, so output pixel ``p`` of a correlation is centred
    on HR position ``p + mu - (k - 1) // 2``. PyTorch/MATLAB bicubic upsampling puts LR pixel ``i`` at HR position
    ``i * s + (s - 1) / 2``, hence ``phase = (s - 1) / 2 - mu + (k - 1) // 2``. Applying with ``mode="convolve"`` a
    kernel made with ``convention="convolve"`` gives the same phase as the correlate pair, so only ``centre`` matters.

    Args:
        size: Kernel side ``k``.
        scale: Integer downscaling factor ``s``.
        centre: Kernel centre convention (see module docstring).

    Raises:
        ValueError: If no integer phase aligns (e.g. an odd pixel-centred kernel with an even scale is off by half
            a pixel: use ``centre="block"``, an even kernel size, or MATLAB bicubic downsampling instead).
    """
    mu = kernel_mean(size, scale, centre)
    phase = (scale - 1) / 2 - mu + (size - 1) // 2
    if phase != int(phase) or not 0 <= phase < scale:
        raise ValueError(
            f"a {size}x{size} {centre}-centred kernel cannot be aligned by decimation at x{scale} "
            f"(phase would be {phase}); use centre='block' for odd kernels or an even kernel size"
        )
    return int(phase)


def pixel_grid(size: int, device: torch.device | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(xx, yy)``: column and row coordinates ``0 .. size - 1`` of a ``size x size`` grid, each ``(size, size)``."""
    coords = torch.arange(size, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return xx, yy


def pad_centred(kernels: Tensor, height: int, width: int | None = None) -> Tensor:
    """Zero-pad ``(..., h, w)`` kernels to ``(..., height, width)`` (``width`` defaults to ``height``), centred.

    ``d // 2`` zeros before and ``d - d // 2`` after for a size difference ``d``: even differences (11 -> 13,
    31 -> 33) keep the centre exactly, odd ones put the extra row/column at the bottom/right.
    """
    width = height if width is None else width
    dh, dw = height - kernels.shape[-2], width - kernels.shape[-1]
    if dh < 0 or dw < 0:
        raise ValueError(f"cannot pad {tuple(kernels.shape[-2:])} kernels to a smaller {(height, width)}")
    return torch.nn.functional.pad(kernels, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def shift_kernel(kernels: Tensor, dy: float, dx: float) -> Tensor:
    """Shift kernels by a (sub-)pixel offset with bilinear interpolation, zero outside (``(B,k,k)`` -> same).

    Used to move the DIV2KRK ``.mat`` kernels (centred on the middle pixel) to the block centre the LR images were
    made with (``+0.5 * (scale - 1)`` in both axes).
    """
    size = kernels.shape[-1]
    coords = torch.arange(size, device=kernels.device, dtype=kernels.dtype)
    out = kernels
    for axis, shift in ((-2, dy), (-1, dx)):
        if shift == 0:
            continue
        lo = math.floor(shift)
        frac = shift - lo
        src = coords - lo  # out[i] = (1 - frac) * in[i - lo] + frac * in[i - lo - 1]
        w = []
        for offset, weight in ((0, 1 - frac), (1, frac)):
            idx = src - offset
            valid = (idx >= 0) & (idx < size)
            taken = out.index_select(axis, idx.clamp(0, size - 1).long())
            mask = valid.to(out.dtype).view(-1, 1) if axis == -2 else valid.to(out.dtype).view(1, -1)
            w.append(weight * taken * mask)
        out = w[0] + w[1]
    return out


def centre_of_mass(kernels: Tensor) -> Tensor:
    """``(..., h, w)`` kernels -> ``(..., 2)`` centre of mass ``(row, column)`` in pixels from 0 (tensor ops only)."""
    rows = torch.arange(kernels.shape[-2], device=kernels.device, dtype=kernels.dtype)
    cols = torch.arange(kernels.shape[-1], device=kernels.device, dtype=kernels.dtype)
    total = kernels.sum(dim=(-2, -1))
    cy = (kernels.sum(dim=-1) * rows).sum(dim=-1) / total
    cx = (kernels.sum(dim=-2) * cols).sum(dim=-1) / total
    return torch.stack([cy, cx], dim=-1)


def shift_kernels(kernels: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """Shift each of ``(B, h, w)`` kernels by its own ``(dy[b], dx[b])`` px (linear interpolation, zero outside).

    ``out[i] = sum_j max(0, 1 - |i - d - j|) in[j]`` in each axis, as matrix products: no host synchronisation,
    any real shift. The centre of mass moves by exactly ``d`` unless mass leaves the support; a fractional shift
    ``f`` also widens the kernel by a variance of ``f (1 - f)`` px^2.
    """

    def weights(n: int, d: Tensor) -> Tensor:  # (B, n, n)
        idx = torch.arange(n, device=kernels.device, dtype=kernels.dtype)
        return (1 - (idx[:, None] - idx[None] - d.to(kernels)[:, None, None]).abs()).clamp_min(0)

    return weights(kernels.shape[-2], dy) @ kernels @ weights(kernels.shape[-1], dx).transpose(-1, -2)


def recentre_kernels(kernels: Tensor, mean: float, iterations: int = 2) -> Tensor:
    """Move the centre of mass of each ``(B, k, k)`` kernel to ``(mean, mean)`` and renormalise to sum 1.

    KernelGAN's / DIV2KRK's ``kernel_shift`` after the multiplicative noise (the noise and the truncated support move
    the centre of mass of a ``k = 11`` block-centred kernel by up to 0.11 px). ``shift_kernels`` by the offset, twice:
    the second pass corrects what the support's edge cut off (residual at most 0.002 px over 4,000 DIV2KRK kernels).
    Tensor ops only.
    """
    for _ in range(iterations):
        com = centre_of_mass(kernels)
        kernels = shift_kernels(kernels, mean - com[..., 0], mean - com[..., 1])
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def div2krk_kernel_to_block_centre(kernel: Tensor, scale: int) -> Tensor:
    """Move a DIV2KRK ``.mat`` kernel (pixel-centred) to the block centre its LR image was made with.

    ``shift_kernel(kernel, 0.5 * (scale - 1), 0.5 * (scale - 1))`` (bilinear, zero outside), renormalised to sum 1
    (the shift pushes a little mass off the bottom/right border). Correlating the HR image with the result and
    decimating from pixel 0 (``ops.blur`` then ``ops.decimate(x, scale, 0)``) regenerates the released LR: x2 at
    43-51 dB, x4 at 50-51 dB on the 8-image sample, against 37-39 / 33-35 dB with the kernel as stored.

    Args:
        kernel: ``(k, k)`` or ``(B, k, k)`` pixel-centred kernels, as ``datamodules.io.load_kernel`` returns them.
        scale: The set's scale factor (2 -> +0.5 px, 4 -> +1.5 px).

    Returns:
        Kernels of the same shape, block-centred (mean at ``k // 2 + 0.5 * (scale - k % 2)`` for odd ``k``).
    """
    offset = 0.5 * (scale - 1)
    shifted = shift_kernel(kernel, offset, offset)
    return shifted / shifted.sum(dim=(-2, -1), keepdim=True)


def block_centre_to_div2krk_kernel(kernel: Tensor, scale: int) -> Tensor:
    """The inverse convention change: a block-centred kernel stored the DIV2KRK way (pixel-centred).

    ``shift_kernel(kernel, -0.5 * (scale - 1), -0.5 * (scale - 1))``, renormalised to sum 1. The bilinear shift is
    not exactly invertible: ``div2krk_kernel_to_block_centre`` of the result equals the input blurred by
    ``[1/4, 1/2, 1/4]`` in each axis, which is why ``datamodules.generate`` also stores the exact kernel.

    Args:
        kernel: ``(k, k)`` or ``(B, k, k)`` block-centred kernels (``DIV2KRKKernelSampler.kernels``).
        scale: The scale factor the kernel is made for.
    """
    offset = -0.5 * (scale - 1)
    shifted = shift_kernel(kernel, offset, offset)
    return shifted / shifted.sum(dim=(-2, -1), keepdim=True)


def block_centre_to_usrnet(kernel: Tensor) -> Tensor:
    """The kernel USRNet / KAIR must be given to reproduce an engine degradation: rotated by 180 degrees.

    The engine makes an LR image as ``ops.decimate(ops.blur(x, K_b, mode="correlate"), s, 0)`` with a block-centred
    ``K_b``; USRNet's model (``lightning_modules.nets.layers.fft``) is ``(x (*) K_u)[0::s, 0::s]`` with a circular
    convolution through ``psf2otf``. Proof that ``K_u = flip(K_b)`` (any ``k``, odd or even, any ``s``):

    * ``ops.blur`` pads ``(k - 1) // 2`` before and ``k // 2`` after, so a correlation is
      ``c[p] = sum_j K_b[j] x[p + j - (k - 1) // 2]``;
    * ``psf2otf`` rolls the zero-padded kernel by ``-(k // 2)``, so USRNet's blur is
      ``u[p] = sum_i K_u[i] x[p - i + k // 2]``; substituting ``i = k - 1 - j`` and using
      ``k - 1 - k // 2 = (k - 1) // 2`` gives ``u[p] = sum_j K_u[k - 1 - j] x[p + j - (k - 1) // 2]``;
    * so ``u`` is the correlation with ``flip(K_u)``: ``u == c`` for every ``p`` iff ``K_u = flip(K_b)`` (in both
      axes), and keeping pixel 0 of each block of both gives the same LR image.

    Checked numerically (``tests/degradation/test_usrnet_convention.py``; max difference ~1e-15 in float64 for
    k = 4, 5, 10, 11, 20, 21 and s = 2, 3, 4 with a circular border). The mean moves to ``k - 1 - mu``: for odd ``k``
    from the block centre ``k // 2 + 0.5 (s - 1)`` to KAIR's ``k // 2 - 0.5 (s - 1)``. Giving USRNet ``K_b`` unflipped
    samples each block ``s - 1`` px off. For centrally symmetric kernels (every Gaussian) the flip equals an integer
    shift by ``-(s - 1)`` px, so shifting instead of flipping happens to work for them only.

    Args:
        kernel: ``(..., k, k)`` block-centred kernels as the engine correlates them (``item["kernel"]`` of the test
            sets, ``gaussian_kernels(..., centre="block")``).

    Returns:
        ``(..., k, k)`` kernels in USRNet's convention (convolved, upper-left decimation).
    """
    return kernel.flip(-2, -1)


def usrnet_to_block_centre(kernel: Tensor) -> Tensor:
    """The inverse of ``block_centre_to_usrnet``: the same 180-degree rotation, ``(..., k, k)`` -> same.

    Turns a USRNet / KAIR kernel into the one the engine correlates (``ops.blur(..., mode="correlate")`` then
    ``ops.decimate(x, s, 0)``) to make the same LR image.
    """
    return kernel.flip(-2, -1)

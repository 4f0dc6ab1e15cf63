"""Degradation operators: pure, batched tensor functions on the input's device.

Images are ``(B, C, H, W)`` float tensors in ``[0, 1]``. Kernels are ``(B, k, k)`` (one per sample) or ``(k, k)``
(shared). Nothing here draws random numbers except where a ``generator`` argument says so (Poisson noise, whose
draw depends on the signal); parameters come from ``samplers``.

Two bicubic conventions exist and both are here, named:

* ``resize(..., convention="torch")``: ``F.interpolate(mode="bicubic", align_corners=False)``, Keys ``a = -0.75``,
  no antialiasing, border pixels clamped. MoESR's experts and ISE use it for their bicubic inputs.
* ``resize(..., convention="matlab")``: MATLAB ``imresize`` (Keys ``a = -0.5``; when shrinking, the kernel is
  stretched by ``1/scale`` (antialiasing); symmetric border; output size ``ceil(in * scale)``). The "Bicubic" rows
  of tables and Gaussian8-style test sets use it. It agrees with Pillow's ``BICUBIC`` up to Pillow's 8-bit
  arithmetic and border handling (``tests/test_degradation_ops.py`` states the tolerance).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.degradation.kernels import cubic, gaussian_kernels

BlurMode = Literal["correlate", "convolve"]
Border = Literal["reflect", "replicate", "circular", "constant", "symmetric"]
ResizeConvention = Literal["torch", "matlab"]


def _check_image(x: Tensor, name: str = "input") -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(x.shape)}")


def blur(x: Tensor, kernel: Tensor, mode: BlurMode = "correlate", border: str = "reflect") -> Tensor:
    """Blur each sample with its own kernel (Kornia ``filter2d``), same-size output.

    Padding is ``(k - 1) // 2`` before and ``k // 2`` after in each axis (Kornia's 'same'), so output pixel ``p`` of a
    correlation weights input pixel ``p + j - (k - 1) // 2`` by ``kernel[j]``.

    Args:
        x: ``(B, C, H, W)``.
        kernel: ``(B, k, k)`` per-sample or ``(k, k)`` / ``(1, k, k)`` shared kernels.
        mode: ``"correlate"`` (DIV2KRK, KernelGAN, MoESR) or ``"convolve"`` (kernel flipped; USRNet / KAIR).
        border: Kornia border type: ``"reflect"``, ``"replicate"``, ``"circular"`` or ``"constant"``.

    Returns:
        ``(B, C, H, W)``.
    """
    _check_image(x)
    if kernel.dim() == 2:
        kernel = kernel[None]
    if kernel.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"kernel batch {kernel.shape[0]} does not match image batch {x.shape[0]}")
    behaviour = {"correlate": "corr", "convolve": "conv"}.get(mode)
    if behaviour is None:
        raise ValueError(f"mode must be 'correlate' or 'convolve', got {mode!r}")
    return kornia.filters.filter2d(x, kernel.to(x), border_type=border, behaviour=behaviour)


def decimate(x: Tensor, scale: int, phase: int = 0) -> Tensor:
    """Keep every ``scale``-th pixel starting at ``phase`` in both axes: ``(B,C,H,W) -> (B,C,H//s,W//s)``."""
    _check_image(x)
    if not 0 <= phase < scale:
        raise ValueError(f"phase must be in [0, {scale}), got {phase}")
    h, w = x.shape[-2] // scale, x.shape[-1] // scale
    return x[..., phase : phase + scale * h : scale, phase : phase + scale * w : scale]


def pad_symmetric(x: Tensor, before: int, after: int) -> Tensor:
    """Half-sample symmetric padding ``(c b a | a b c | c b a)`` of the last two axes (scipy ``ndimage`` 'reflect')."""
    h, w = x.shape[-2:]
    if max(before, after) > min(h, w):
        raise ValueError(f"symmetric padding of {max(before, after)} needs at least that many pixels, got {h}x{w}")
    parts_h = [x[..., :before, :].flip(-2), x, x[..., h - after :, :].flip(-2)]
    x = torch.cat(parts_h, dim=-2)
    return torch.cat([x[..., :before].flip(-1), x, x[..., w - after :].flip(-1)], dim=-1)


def _pad(x: Tensor, left: int, right: int, top: int, bottom: int, border: Border) -> Tensor:
    if border == "symmetric":
        if (left, right) != (top, bottom):
            raise ValueError("symmetric padding is applied equally to both axes")
        return pad_symmetric(x, left, right)
    return F.pad(x, (left, right, top, bottom), mode=border)


def blur_decimate(
    x: Tensor, kernel: Tensor, scale: int, phase: int = 0, mode: BlurMode = "correlate", border: Border = "reflect"
) -> Tensor:
    """``decimate(blur(x, kernel, mode, border), scale, phase)`` in one strided depthwise convolution.

    Only the kept pixels are computed (``scale**2`` times less work than blurring the whole image), with the same
    padding as ``blur``; the result equals the two-step form exactly (``tests/test_degradation_ops.py``).

    Args:
        x: ``(B, C, H, W)``.
        kernel: ``(B, k, k)`` per-sample or ``(k, k)`` / ``(1, k, k)`` shared kernels.
        scale: Decimation factor ``s``.
        phase: First kept pixel in both axes, ``0 <= phase < s``.
        mode: ``"correlate"`` or ``"convolve"`` (as ``blur``).
        border: ``"reflect"``, ``"replicate"``, ``"circular"``, ``"constant"`` (as ``blur``) or ``"symmetric"``
            (scipy ``ndimage``'s default 'reflect', which repeats the edge pixel; the mixture paper's code).

    Returns:
        ``(B, C, H // s, W // s)``.
    """
    _check_image(x)
    if kernel.dim() == 2:
        kernel = kernel[None]
    bsz, ch, h, w = x.shape
    if kernel.shape[0] not in (1, bsz):
        raise ValueError(f"kernel batch {kernel.shape[0]} does not match image batch {bsz}")
    kernel = _correlation_kernels(kernel, mode)
    k = kernel.shape[-1]
    oh, ow = h // scale, w // scale
    padded = _pad_for_decimation(x, k, scale, phase, border)
    span_h, span_w = padded.shape[-2:]
    weight = kernel.to(x).expand(bsz, k, k).repeat_interleave(ch, dim=0)[:, None]
    out = F.conv2d(padded.reshape(1, bsz * ch, span_h, span_w), weight, stride=scale, groups=bsz * ch)
    return out[..., :oh, :ow].reshape(bsz, ch, oh, ow)


def blur_decimate_bank(
    x: Tensor, kernels: Tensor, scale: int, phase: int = 0, mode: BlurMode = "correlate", border: Border = "reflect"
) -> Tensor:
    """Every image blurred and decimated by **every** kernel of a bank, in one strided convolution.

    ``out[:, j] == blur_decimate(x, kernels[j], scale, phase, mode, border)`` (tested); the kernels are the output
    channels of a single convolution over the ``B * C`` planes (MoESR's experts: each HR crop x every expert kernel).

    Args:
        x: ``(B, C, H, W)``.
        kernels: ``(K, k, k)``.
        scale: Decimation factor ``s``.
        phase: First kept pixel in both axes (as ``blur_decimate``).
        mode: ``"correlate"`` or ``"convolve"``.
        border: Padding, as ``blur_decimate`` (``"symmetric"`` included).

    Returns:
        ``(B, K, C, H // s, W // s)``.
    """
    _check_image(x)
    if kernels.dim() != 3 or kernels.shape[-1] != kernels.shape[-2]:
        raise ValueError(f"kernels must be (K, k, k), got shape {tuple(kernels.shape)}")
    kernels = _correlation_kernels(kernels, mode)
    bsz, ch, h, w = x.shape
    num, k = kernels.shape[0], kernels.shape[-1]
    oh, ow = h // scale, w // scale
    padded = _pad_for_decimation(x.reshape(bsz * ch, 1, h, w), k, scale, phase, border)
    out = F.conv2d(padded, kernels.to(x)[:, None], stride=scale)[..., :oh, :ow]
    return out.reshape(bsz, ch, num, oh, ow).transpose(1, 2)


def _correlation_kernels(kernels: Tensor, mode: BlurMode) -> Tensor:
    """``(..., k, k)`` kernels as correlation weights: flipped for ``"convolve"``, as given for ``"correlate"``."""
    if mode == "convolve":
        return kernels.flip(-2, -1)
    if mode != "correlate":
        raise ValueError(f"mode must be 'correlate' or 'convolve', got {mode!r}")
    return kernels


def _pad_for_decimation(x: Tensor, k: int, scale: int, phase: int, border: Border) -> Tensor:
    """Pad ``(N, C, H, W)`` for a ``k``-tap blur whose stride-``scale`` output ``i`` is centred on ``phase + s * i``."""
    if not 0 <= phase < scale:
        raise ValueError(f"phase must be in [0, {scale}), got {phase}")
    if border not in ("reflect", "replicate", "circular", "constant", "symmetric"):
        raise ValueError(f"border must be reflect, replicate, circular, constant or symmetric, got {border!r}")
    before, after = (k - 1) // 2, k // 2
    h, w = x.shape[-2:]
    # output i reads x[phase + s*i + j - before], j < k: shift the padding by the phase (same total, no input copy)
    if phase <= before and after + phase < min(h, w):
        return _pad(x, before - phase, after + phase, before - phase, after + phase, border)
    return _pad(x, before, after, before, after, border)[..., phase:, phase:]


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


def _matlab_resize(x: Tensor, out_hw: tuple[int, int], scale_hw: tuple[float, float], antialias: bool) -> Tensor:
    h, w = x.shape[-2:]
    wh = _matlab_weights(h, out_hw[0], scale_hw[0], antialias).to(device=x.device, dtype=x.dtype)
    ww = _matlab_weights(w, out_hw[1], scale_hw[1], antialias).to(device=x.device, dtype=x.dtype)
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
    _check_image(x)
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


def add_noise(x: Tensor, noise: Tensor) -> Tensor:
    """Additive noise, e.g. a field from ``samplers.gaussian_noise_field``: ``x + noise`` (not clamped)."""
    if noise.shape != x.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match image shape {tuple(x.shape)}")
    return x + noise


def poisson_noise(x: Tensor, scale: Tensor, gray: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Signal-dependent Poisson noise at 8-bit photon counts (Real-ESRGAN / DASR semantics).

    ``noisy = x + scale * (Poisson(255 x) / 255 - x)``; with ``gray``, the noise is computed on the luma and shared by
    the channels.

    Args:
        x: ``(B, C, H, W)`` in ``[0, 1]``.
        scale: ``(B,)`` noise scale (DASR: 0.05 .. 3).
        gray: ``(B,)`` bool.
        generator: Source of the Poisson draw (on ``x.device``).
    """
    _check_image(x)
    clean = x.clamp(0, 1)
    colour = torch.poisson(clean * 255, generator=generator) / 255 - clean
    if x.shape[1] == 3:
        luma = (clean * clean.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        mono = (torch.poisson(luma * 255, generator=generator) / 255 - luma).expand_as(clean)
        colour = torch.where(gray.view(-1, 1, 1, 1).to(x.device), mono, colour)
    return x + scale.view(-1, 1, 1, 1).to(x) * colour


def jpeg(x: Tensor, quality: Tensor) -> Tensor:
    """Differentiable JPEG compression (Kornia), per-sample quality ``(B,)`` in ``[1, 100]``; RGB only."""
    _check_image(x)
    if x.shape[1] != 3:
        raise ValueError(f"JPEG needs RGB input, got {x.shape[1]} channels")
    return kornia.enhance.jpeg_codec_differentiable(x.clamp(0, 1), quality.to(x))


def unsharp_mask(x: Tensor, weight: float = 0.5, radius: int = 50, threshold: float = 10 / 255) -> Tensor:
    """Unsharp masking with a soft threshold mask (the USM-sharpened ground truth of Real-ESRGAN and DASR).

    ``residual = x - G(x)`` with a ``(2 radius + 1)``-tap Gaussian of OpenCV's default sigma for that size;
    ``mask = G(|residual| > threshold)``; ``out = mask * clamp(x + weight * residual) + (1 - mask) * x``.
    """
    _check_image(x)
    size = 2 * radius + 1
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    kernel = gaussian_kernels(size, x.new_tensor([sigma]), x.new_tensor([sigma]), x.new_tensor([0.0]), param="std")
    blurred = blur(x, kernel)
    residual = x - blurred
    mask = (residual.abs() > threshold).to(x)
    soft = blur(mask, kernel)
    sharp = (x + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * x


def quantize(x: Tensor) -> Tensor:
    """Clamp to ``[0, 1]`` and round to 8-bit levels, halves up: ``floor(255 x + 0.5) / 255``.

    The one 8-bit quantiser of the project (LR synthesis, the metrics' "as saved to PNG" step, ``datamodules.io``):
    MATLAB's ``im2uint8`` rounds halves away from zero, which for non-negative values is halves up
    (``torch.round`` would round halves to even).
    """
    return x.clamp(0, 1).mul(255).add_(0.5).floor_().div_(255)


from datamodules.degradation.ops.colour import rgb_to_y as rgb_to_y  # noqa: E402
from datamodules.degradation.ops.colour import rgb_to_ycbcr as rgb_to_ycbcr  # noqa: E402
from datamodules.degradation.ops.colour import ycbcr_to_rgb as ycbcr_to_rgb  # noqa: E402

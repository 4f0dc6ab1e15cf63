"""Blur and decimation: per-sample or shared kernels, correlation or convolution, Kornia's 'same' padding.

Images are ``(B, C, H, W)`` float tensors; kernels are ``(B, k, k)`` (one per sample), ``(k, k)`` / ``(1, k, k)``
(shared) or, for ``blur_decimate_bank``, a bank ``(K, k, k)`` applied to every image. A correlation's output pixel
``p`` weights input pixel ``p + j - (k - 1) // 2`` by ``kernel[j]`` (``"convolve"`` flips the kernel first);
``decimate`` keeps every ``s``-th pixel from ``phase`` (``kernels.decimation_phase`` gives the aligned one).
"""

from __future__ import annotations

from typing import Literal

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.degradation.ops._checks import check_image

BlurMode = Literal["correlate", "convolve"]
Border = Literal["reflect", "replicate", "circular", "constant", "symmetric"]


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
    check_image(x)
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
    check_image(x)
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
    padding as ``blur``; the result equals the two-step form exactly (``tests/degradation/test_ops.py``).

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
    check_image(x)
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
    check_image(x)
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

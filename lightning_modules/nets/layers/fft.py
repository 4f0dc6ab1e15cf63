"""FFT pieces of a deep-unfolding data step (USRNet, Zhang et al. CVPR 2020): circular blur and its closed form.

Degradation model (USRNet's convention, circular boundary): ``y = (x (*) k)[0::s, 0::s]``, where ``(*)`` is a
**convolution** whose kernel centre is ``k // 2`` (``psf2otf`` rolls by ``-(k // 2)``), so
``(x (*) k)[p] = sum_i k[i] x[p - i + k // 2]`` (indices modulo the image size), and the ``s``-fold downsampler keeps
the upper-left pixel of each ``s x s`` block. This equals ``ops.blur(x, k, mode="convolve", border="circular")``
of the degradation engine followed by ``ops.decimate(x, s, 0)``; ``kernels.block_centre_to_usrnet`` gives the
kernel that reproduces an engine (block-centred, correlated) degradation.

Shapes: images ``(B, C, H, W)`` real; kernels ``(B, k, k)`` (or ``(k, k)``, shared); spectra ``(B, 1, H, W)`` complex
(broadcast over channels). Everything is batched tensor code on the input's device and dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_kernel_batch(kernel: Tensor) -> Tensor:
    if kernel.dim() == 2:
        kernel = kernel[None]
    if kernel.dim() != 3:
        raise ValueError(f"kernel must be (B, k, k) or (k, k), got shape {tuple(kernel.shape)}")
    return kernel


def psf2otf(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    """Optical transfer function of a point-spread function: zero-pad, roll the centre to pixel 0, ``fft2``.

    The ``(kh, kw)`` kernel is placed in the upper-left corner of an ``(H, W)`` zero image and rolled circularly by
    ``-(kh // 2, kw // 2)``, so that multiplying a spectrum by the result convolves (circularly) with the kernel
    centred on ``(kh // 2, kw // 2)``.

    Args:
        kernel: ``(B, kh, kw)`` or ``(kh, kw)`` real kernels.
        size: ``(H, W)`` of the image, at least the kernel's size.

    Returns:
        ``(B, 1, H, W)`` complex spectra.
    """
    kernel = _as_kernel_batch(kernel)
    kh, kw = kernel.shape[-2:]
    height, width = size
    if kh > height or kw > width:
        raise ValueError(f"a {kh}x{kw} kernel does not fit an image of {height}x{width}")
    padded = F.pad(kernel[:, None], (0, width - kw, 0, height - kh))
    padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.fft2(padded)


def circular_convolve(x: Tensor, kernel: Tensor) -> Tensor:
    """``x (*) k`` with circular boundary through the FFT (``real(ifft2(fft2(x) * psf2otf(k)))``).

    Args:
        x: ``(B, C, H, W)`` real images.
        kernel: ``(B, k, k)`` or ``(k, k)`` kernels (centre ``k // 2``, see the module docstring).

    Returns:
        ``(B, C, H, W)``.
    """
    otf = psf2otf(kernel.to(x.dtype), x.shape[-2:])
    return torch.fft.ifft2(torch.fft.fft2(x) * otf).real


def upsample_zeros(x: Tensor, scale: int) -> Tensor:
    """Zero-insertion upsampling, the adjoint of keeping the upper-left pixel of each ``s x s`` block.

    Args:
        x: ``(B, C, h, w)``.
        scale: Integer factor ``s``.

    Returns:
        ``(B, C, s*h, s*w)`` with ``out[..., ::s, ::s] == x`` and zeros elsewhere.
    """
    b, c, h, w = x.shape
    spread = F.pad(x.reshape(b, c, h, 1, w, 1), (0, scale - 1, 0, 0, 0, scale - 1))
    return spread.reshape(b, c, h * scale, w * scale)


def downsample_upper_left(x: Tensor, scale: int) -> Tensor:
    """Keep the upper-left pixel of each ``s x s`` block: ``(B, C, H, W) -> (B, C, H // s, W // s)``."""
    return x[..., ::scale, ::scale][..., : x.shape[-2] // scale, : x.shape[-1] // scale]


def splits_mean(x: Tensor, scale: int) -> Tensor:
    """Mean of the ``s x s`` distinct blocks of size ``(H / s, W / s)`` that tile the last two axes.

    In the Fourier domain this is what decimation does to a spectrum (the aliases of each low-resolution frequency
    are averaged).

    Args:
        x: ``(B, C, H, W)`` (real or complex), ``H`` and ``W`` divisible by ``s``.
        scale: Integer factor ``s``.

    Returns:
        ``(B, C, H / s, W / s)``: ``out[..., u, v] = mean_{a, b < s} x[..., a * H / s + u, b * W / s + v]``.
    """
    b, c, h, w = x.shape
    if h % scale or w % scale:
        raise ValueError(f"{h}x{w} is not divisible by the scale {scale}")
    return x.reshape(b, c, scale, h // scale, scale, w // scale).mean(dim=(2, 4))


class DataTerms(NamedTuple):
    """What the data step needs of ``(y, k, s)``, computed once per forward pass (all ``(B, 1 or C, H, W)`` complex).

    Attributes:
        otf: ``FB = psf2otf(k)``, ``(B, 1, H, W)``.
        otf_conj: ``conj(FB)``.
        otf_abs2: ``|FB|^2`` (complex dtype with zero imaginary part, for the complex arithmetic).
        adjoint_y: ``conj(FB) * fft2(upsample_zeros(y))``, i.e. the spectrum of ``H^T y``, ``(B, C, H, W)``.
    """

    otf: Tensor
    otf_conj: Tensor
    otf_abs2: Tensor
    adjoint_y: Tensor


def data_terms(lr: Tensor, kernel: Tensor, scale: int) -> DataTerms:
    """Pre-compute the spectra of the data step for LR images ``(B, C, h, w)`` and kernels ``(B, k, k)``."""
    size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
    otf = psf2otf(kernel.to(lr.dtype), size)
    otf_conj = otf.conj()
    otf_abs2 = (otf * otf_conj).real.to(otf.dtype)
    adjoint_y = otf_conj * torch.fft.fft2(upsample_zeros(lr, scale))
    return DataTerms(otf, otf_conj, otf_abs2, adjoint_y)


def data_step(z: Tensor, terms: DataTerms, alpha: Tensor, scale: int) -> Tensor:
    """Closed-form solution of ``argmin_x ||y - (x (*) k)[0::s, 0::s]||^2 + alpha ||x - z||^2`` (circular boundary).

    With ``H`` the blur-and-decimate operator, the normal equations are ``(H^T H + alpha I) x = H^T y + alpha z``.
    In the Fourier domain ``H^T H`` is ``conj(FB) * tile(splits_mean(FB * .))`` and the Woodbury identity gives
    (USRNet Eq. 7)::

        FR = F(H^T y) + alpha * F(z)
        x  = real(ifft2((FR - conj(FB) * tile(splits_mean(FB * FR) / (splits_mean(|FB|^2) + alpha))) / alpha))

    where ``tile`` repeats an ``(H/s, W/s)`` array ``s x s`` times.

    Args:
        z: ``(B, C, H, W)`` current estimate (HR size).
        terms: ``data_terms(lr, kernel, scale)``.
        alpha: ``(B, 1, 1, 1)`` positive weights of the proximity term (or a broadcastable tensor).
        scale: Integer factor ``s``.

    Returns:
        ``(B, C, H, W)`` real.
    """
    fr = terms.adjoint_y + torch.fft.fft2(alpha * z)
    fbr = splits_mean(terms.otf * fr, scale)
    inv_w = splits_mean(terms.otf_abs2, scale)
    ratio = fbr / (inv_w + alpha)
    fx = (fr - terms.otf_conj * ratio.repeat(1, 1, scale, scale)) / alpha
    return torch.fft.ifft2(fx).real

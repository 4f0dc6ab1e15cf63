"""Blur-kernel families and their conventions.

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
kernel centre, and ``tests/test_degradation_alignment.py`` proves it for each convention.

The DIV2KRK ``.mat`` kernels as released are centred on the middle pixel, but their LR images were made with the
kernel shifted to the block centre (see DESIGN.md): use ``shift_kernel`` with ``+0.5 * (scale - 1)`` to regenerate
them, and compare estimated kernels only after aligning centres (``lightning_modules.metrics``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
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


def _grid(size: int, device: torch.device | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    coords = torch.arange(size, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return xx, yy


def gaussian_kernels(
    size: int,
    a: Tensor,
    b: Tensor,
    theta: Tensor,
    *,
    param: Param = "var",
    centre: Centre = "pixel",
    scale: int = 1,
    convention: Convention = "correlate",
    noise: Tensor | None = None,
) -> Tensor:
    """Anisotropic Gaussian kernels, batched.

    Args:
        size: Kernel side ``k``.
        a: ``(B,)`` first variance ``lambda1`` (``param="var"``) or standard deviation ``sigma_x`` (``"std"``).
        b: ``(B,)`` second variance ``lambda2`` or standard deviation ``sigma_y``.
        theta: ``(B,)`` rotation in radians of the first principal axis from the x (column) axis.
        param: ``"var"`` or ``"std"`` (see module docstring).
        centre: ``"block"`` or ``"pixel"``.
        scale: Downscaling factor (for ``centre="block"``).
        convention: ``"correlate"`` or ``"convolve"`` (mirrored mean).
        noise: Optional ``(B, k, k)`` multiplicative noise ``n``: the kernel becomes ``exp(-q/2) * (1 + n)`` before
            normalisation (DIV2KRK's kernel noise, ``n ~ U(-level, level)`` per pixel).

    Returns:
        ``(B, k, k)`` kernels summing to 1, dtype and device of ``a``; values below ``1e-20`` of the peak are 0.

    Example:
        >>> one = torch.tensor([1.0])
        >>> k = gaussian_kernels(13, 4 * one, one, 0.3 * one, centre="block", scale=2)
        >>> k.shape
        torch.Size([1, 13, 13])
    """
    a, b, theta = torch.broadcast_tensors(torch.as_tensor(a), torch.as_tensor(b), torch.as_tensor(theta))
    if a.dim() != 1:
        raise ValueError(f"kernel parameters must be 1-D (B,), got shape {tuple(a.shape)}")
    dtype = a.dtype if a.is_floating_point() else torch.get_default_dtype()
    a, b, theta = a.to(dtype), b.to(dtype), theta.to(device=a.device, dtype=dtype)
    if param == "std":
        a, b = a * a, b * b
    elif param != "var":
        raise ValueError(f"param must be 'var' or 'std', got {param!r}")
    if bool((a <= 0).any()) or bool((b <= 0).any()):
        raise ValueError("kernel variances / standard deviations must be positive")
    cos, sin = torch.cos(theta), torch.sin(theta)
    # Sigma = R diag(a, b) R^T; its inverse is R diag(1/a, 1/b) R^T.
    inv_xx = cos * cos / a + sin * sin / b
    inv_yy = sin * sin / a + cos * cos / b
    inv_xy = cos * sin * (1 / a - 1 / b)
    mu = kernel_mean(size, scale, centre, convention)
    xx, yy = _grid(size, a.device, dtype)
    dx, dy = (xx - mu)[None], (yy - mu)[None]
    q = inv_xx[:, None, None] * dx * dx + 2 * inv_xy[:, None, None] * dx * dy + inv_yy[:, None, None] * dy * dy
    # Tails below exp(-46) ~ 1e-20 of the peak are set to exactly 0: they are invisible next to the float32 sum, but
    # would otherwise underflow to denormal numbers, which make CPU convolutions about 8x slower.
    kernel = torch.exp(-0.5 * q).masked_fill(q > 92.0, 0.0)
    if noise is not None:
        if noise.shape != kernel.shape:
            raise ValueError(f"kernel noise must have shape {tuple(kernel.shape)}, got {tuple(noise.shape)}")
        kernel = kernel * (1 + noise.to(kernel))
    return kernel / kernel.sum(dim=(-2, -1), keepdim=True)


def isotropic_gaussian_kernels(
    size: int, sigma: Tensor, *, centre: Centre = "pixel", scale: int = 1, convention: Convention = "correlate"
) -> Tensor:
    """Isotropic Gaussians given by their standard deviation ``sigma`` ``(B,)`` -> ``(B, k, k)``."""
    sigma = torch.as_tensor(sigma)
    return gaussian_kernels(
        size, sigma, sigma, torch.zeros_like(sigma), param="std", centre=centre, scale=scale, convention=convention
    )


def compose_x2_twice(k2: Tensor) -> Tensor:
    """The x4 kernel equivalent to applying an x2 kernel twice (blur, decimate by 2, blur, decimate by 2).

    ``k4 = k2 * dilate(k2, 2)`` (full 2-D convolution), of size ``3k - 2``: DIV2KRK's 11x11 x2 kernels give its
    31x31 x4 kernels, and the covariance grows by 5x (``Sigma4 = Sigma2 + 4 Sigma2``). For odd ``k``, blurring with
    ``k4`` and decimating by 4 from pixel 0 equals the two-step x2 process exactly (away from the borders).

    Args:
        k2: ``(B, k, k)`` x2 kernels, applied by correlation.

    Returns:
        ``(B, 3k-2, 3k-2)`` x4 kernels, applied by correlation.
    """
    bsz, k, _ = k2.shape
    dilated = k2.new_zeros(bsz, 2 * k - 1, 2 * k - 1)
    dilated[:, ::2, ::2] = k2
    # correlation output index t = 2l + j over (k2 at j, k2 at l): a full convolution of k2 with dilated k2.
    padded = F.pad(dilated[None], (k - 1, k - 1, k - 1, k - 1))
    out = F.conv2d(padded, k2.flip(-2, -1)[:, None], groups=bsz)
    return out[0]


def cubic(x: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel (``a=-0.5``: MATLAB ``imresize`` and Pillow; ``a=-0.75``: PyTorch/OpenCV)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (a + 2) * ax3 - (a + 3) * ax2 + 1
    far = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return torch.where(ax <= 1, near, torch.where(ax < 2, far, torch.zeros_like(ax)))


def bicubic_kernel(size: int, a: float = -0.5, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The non-antialiased bicubic downsampling kernel zero-padded to ``size x size`` (KOALAnet's ``k_b``).

    Taps sit at distances ``i - (size - 1) / 2`` from the centre; for an even ``size`` these are the half-integers
    ``+-0.5, +-1.5`` (the only non-zero taps), i.e. bicubic sampling of the point between the four central pixels.

    Returns:
        ``(size, size)`` kernel summing to 1.
    """
    d = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = cubic(d, a)
    w = w / w.sum()
    return torch.outer(w, w)


def koala_kernels(gaussian: Tensor, size: int = 20) -> Tensor:
    """KOALAnet's degradation kernels: pixel-centred Gaussians (e.g. 15x15) convolved with the 20x20 bicubic kernel.

    The 'same' convolution keeps the 20x20 support and its centre at 9.5, so decimating by 2 from pixel 0 (x2) or
    from pixel 1 (x4) after ``ops.blur`` aligns with a bicubic upsample (see ``decimation_phase``).

    Args:
        gaussian: ``(B, g, g)`` pixel-centred kernels, ``g`` odd and ``<= size``.
        size: Output side (20 in the paper).

    Returns:
        ``(B, size, size)`` kernels summing to 1.
    """
    g = gaussian.shape[-1]
    if g % 2 == 0 or g > size:
        raise ValueError(f"KOALAnet Gaussians must be odd and at most {size} wide, got {g}")
    kb = bicubic_kernel(size, dtype=gaussian.dtype, device=gaussian.device)
    out = F.conv2d(kb[None, None], gaussian.flip(-2, -1)[:, None], padding=g // 2)[0]
    return out / out.sum(dim=(-2, -1), keepdim=True)


def sinc_kernels(size: int, cutoff: Tensor, pad_to: int | None = None) -> Tensor:
    """2-D circular low-pass (sinc / ringing) filters, pixel-centred (DASR / Real-ESRGAN).

    ``k(r) = omega_c * J1(omega_c * r) / (2 pi r)`` with ``k(0) = omega_c^2 / (4 pi)``, normalised to sum 1.

    Args:
        size: Odd filter side.
        cutoff: ``(B,)`` cut-off frequency ``omega_c`` in radians (``pi/3 .. pi`` in DASR).
        pad_to: Zero-pad symmetrically to this odd side (e.g. 21).

    Returns:
        ``(B, size or pad_to, size or pad_to)``.
    """
    if size % 2 == 0:
        raise ValueError(f"sinc kernel size must be odd, got {size}")
    cutoff = torch.as_tensor(cutoff)
    dtype = cutoff.dtype if cutoff.is_floating_point() else torch.get_default_dtype()
    cutoff = cutoff.to(dtype)[:, None, None]
    xx, yy = _grid(size, cutoff.device, dtype)
    r = torch.sqrt((xx - size // 2) ** 2 + (yy - size // 2) ** 2)[None]
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    k = torch.where(
        r > 0, cutoff * torch.special.bessel_j1(cutoff * safe_r) / (2 * math.pi * safe_r), cutoff**2 / (4 * math.pi)
    )
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    if pad_to is not None and pad_to > size:
        p = (pad_to - size) // 2
        k = F.pad(k, (p, p, p, p))
    return k


def restrict_support(kernels: Tensor, sizes: Tensor) -> Tensor:
    """Zero a centred kernel outside its own odd ``sizes[i] x sizes[i]`` window and renormalise (DASR's 7..21 sizes).

    Args:
        kernels: ``(B, K, K)`` pixel-centred kernels, ``K`` odd (e.g. 21).
        sizes: ``(B,)`` odd integers ``<= K``.
    """
    big = kernels.shape[-1]
    radius = (sizes.to(kernels.device) // 2)[:, None, None]
    d = (torch.arange(big, device=kernels.device) - big // 2).abs()
    inside = (d[None, :, None] <= radius) & (d[None, None, :] <= radius)
    k = kernels * inside
    return k / k.sum(dim=(-2, -1), keepdim=True)


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


def parameter_grid(**values: Sequence[float]) -> dict[str, Tensor]:
    """Cartesian product of named parameter lists, in the order given (last name varies fastest).

    >>> g = parameter_grid(lambda1=[1.0, 2.0], theta=[0.0, 0.5, 1.0])
    >>> g["lambda1"].tolist(), g["theta"].tolist()
    ([1.0, 1.0, 1.0, 2.0, 2.0, 2.0], [0.0, 0.5, 1.0, 0.0, 0.5, 1.0])
    """
    names = list(values)
    rows = list(itertools.product(*(values[n] for n in names)))
    return {n: torch.tensor([r[i] for r in rows], dtype=torch.float32) for i, n in enumerate(names)}


def gaussian_kernel_bank(
    size: int,
    params: dict[str, Tensor],
    *,
    param: Param = "var",
    centre: Centre = "pixel",
    scale: int = 1,
    convention: Convention = "correlate",
) -> Tensor:
    """A fixed bank of Gaussians from named parameter tensors (e.g. from ``parameter_grid``).

    Args:
        size: Kernel side.
        params: ``{"a": (N,), "b": (N,), "theta": (N,)}`` where ``a``/``b`` may also be named ``lambda1``/``lambda2``
            (``param="var"``) or ``sigma_x``/``sigma_y`` (``param="std"``).
        param: ``"var"`` or ``"std"``.
        centre: ``"block"`` or ``"pixel"``.
        scale: Downscaling factor (for ``centre="block"``).
        convention: ``"correlate"`` or ``"convolve"``.

    Returns:
        ``(N, size, size)``.
    """
    names = ("lambda1", "lambda2") if param == "var" else ("sigma_x", "sigma_y")
    a = params.get(names[0], params.get("a"))
    b = params.get(names[1], params.get("b"))
    if a is None or b is None or "theta" not in params:
        raise KeyError(f"kernel bank parameters need {names[0]}, {names[1]} and theta; got {sorted(params)}")
    return gaussian_kernels(size, a, b, params["theta"], param=param, centre=centre, scale=scale, convention=convention)


# --------------------------------------------------------------------------------------------------------------
# Conversions between centre conventions
# --------------------------------------------------------------------------------------------------------------


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

"""Gaussian kernel families: anisotropic / isotropic, fixed banks from parameter grids, x2 kernels applied twice.

Every kernel is a ``(B, k, k)`` float tensor summing to 1, indexed ``[row, column]`` = ``[y, x]``; ``param``,
``centre`` and ``convention`` are the choices described in ``kernels.conventions``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.degradation.kernels.conventions import Centre, Convention, Param, kernel_mean, pixel_grid


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

    Raises:
        ValueError: A non-positive ``a`` or ``b`` on the CPU (not checked on other devices: no host sync).

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
    if a.device.type == "cpu" and (bool((a <= 0).any()) or bool((b <= 0).any())):
        # checked on the CPU only: on an accelerator the check would wait for the device every batch (the samplers
        # draw positive values; a non-positive one there gives a non-finite kernel, which the NaN guard reports)
        raise ValueError("kernel variances / standard deviations must be positive")
    cos, sin = torch.cos(theta), torch.sin(theta)
    # Sigma = R diag(a, b) R^T; its inverse is R diag(1/a, 1/b) R^T.
    inv_xx = cos * cos / a + sin * sin / b
    inv_yy = sin * sin / a + cos * cos / b
    inv_xy = cos * sin * (1 / a - 1 / b)
    mu = kernel_mean(size, scale, centre, convention)
    xx, yy = pixel_grid(size, a.device, dtype)
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

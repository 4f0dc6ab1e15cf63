"""KOALAnet's degradation kernels (Kim et al., CVPR 2021, Sec. 4 "Data generation"): sampler and conventions.

A KOALAnet kernel ``k_d`` is the 20x20 non-antialiased bicubic kernel ``k_b`` (``kernels.bicubic_kernel``: only the
central 4x4 taps, at distances +-0.5 and +-1.5, are non-zero) convolved ("same") with a 15x15 anisotropic Gaussian
``k_g`` centred on its middle pixel, with standard deviations ``sigma_x, sigma_y ~ U(0.2, 4.0)`` and angle
``theta ~ U(0, pi/2)`` (``kernels.koala_kernels``). The same kernel serves x2 and x4.

Conventions (see ``kernels.conventions``; ``tests/degradation/test_koala_degradation.py`` proves each):

* **native** (``centre="pixel"``, the default; training): ``(B, 20, 20)`` kernels whose mean is the grid's middle,
  ``9.5``. The official code pads the HR image symmetrically by ``(20 - s) / 2`` on every side and correlates with
  stride ``s`` (VALID), so LR pixel ``i`` is centred on HR position ``s i + (s - 1) / 2``: the centre of its
  ``s x s`` block, which is where a bicubic upsample puts it. ``ClassicalDegradation`` does exactly that (symmetric
  border, correlation) with decimation phase ``kernels.decimation_phase(20, s, "pixel")``: 0 at x2, 1 at x4.
* **block** (``centre="block"``; the test-set files): the same kernels zero-padded by ``s - 1`` rows and columns at
  the top and left, ``(s + 19)``-sided (21 at x2, 23 at x4), odd and block-centred (mean ``k // 2 + (s - 1) / 2``)
  like every other kernel the test sets hand out, so decimation starts at pixel 0. An integer move, no interpolation:
  both give the same LR image. ``koala_to_block_centre`` / ``block_centre_to_koala`` convert between the two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.degradation.kernels import Centre, gaussian_kernels, koala_kernels
from datamodules.degradation.samplers import uniform

KOALA_KERNEL_SIZE = 20
"""Side of KOALAnet's degradation kernels (and of its per-pixel kernel predictions, 400 channels)."""
KOALA_GAUSSIAN_SIZE = 15
"""Side of the anisotropic Gaussian convolved with the bicubic kernel."""


def koala_to_block_centre(kernel: Tensor, scale: int) -> Tensor:
    """Native ``(..., 20, 20)`` KOALAnet kernels -> the block-centred ``(..., 19 + s, 19 + s)`` ones (exact).

    Zero-pads ``s - 1`` rows and columns before (top, left): the mean moves from ``9.5`` to ``9.5 + s - 1``, which is
    the block centre ``k // 2 + (s - 1) / 2`` of the odd side ``k = 19 + s``. Correlating with the result and keeping
    every ``s``-th pixel from pixel 0 gives the LR image of the native kernel decimated at
    ``decimation_phase(20, s, "pixel")`` (tested).

    Args:
        kernel: ``(..., n, n)`` kernels centred on their middle (``n`` even, 20 for KOALAnet).
        scale: Even scale factor ``s``.

    Returns:
        ``(..., n + s - 1, n + s - 1)``.
    """
    _check_even(kernel.shape[-1], scale)
    return F.pad(kernel, (scale - 1, 0, scale - 1, 0))


def block_centre_to_koala(kernel: Tensor, scale: int) -> Tensor:
    """The inverse of ``koala_to_block_centre``: drop the first ``s - 1`` rows and columns (``(..., k, k)``).

    Exact for kernels made by ``koala_to_block_centre`` (those rows and columns are zero); for an estimate in the
    block convention it is a crop, so mass there is lost (an estimator should rather predict in one convention).

    Args:
        kernel: ``(..., k, k)`` block-centred kernels, ``k = n + s - 1`` odd.
        scale: Even scale factor ``s``.

    Returns:
        ``(..., k - s + 1, k - s + 1)``.
    """
    _check_even(kernel.shape[-1] - scale + 1, scale)
    return kernel[..., scale - 1 :, scale - 1 :]


def _check_even(size: int, scale: int) -> None:
    if size % 2 or scale % 2 or scale < 2:
        raise ValueError(f"KOALAnet kernels are even-sized and need an even scale, got {size}x{size} at x{scale}")


class KOALAKernelSampler:
    """KOALAnet's random degradation kernels (module docstring): Gaussian x non-antialiased bicubic, 20x20.

    ``sample`` draws ``sigma_x, sigma_y`` (standard deviations, HR pixels, independent, not sorted) and ``theta``
    (radians, of the ``sigma_x`` axis from the x axis); ``kernels`` builds the 15x15 Gaussians
    (``gaussian_kernels(..., param="std", centre="pixel")``) and convolves them with the bicubic kernel. One draw
    serves every scale. The official code draws ``theta`` from ``U(0, 3.141 / 2)``; with independent widths the range
    ``[0, pi / 2)`` already gives every orientation (swapping the widths turns the kernel by ``pi / 2``).

    Plugs into ``ClassicalDegradation(kernel_sampler=KOALAKernelSampler())`` (symmetric border, correlation, 8-bit
    LR: the official degradation exactly). Validation kernels are seeded by the DataModule's ``val_seed`` like any
    sampler's; test sets by ``python -m datamodules.generate --protocol koalanet``.

    Args:
        sigma_range: ``(lo, hi)`` of both standard deviations, in HR pixels (the paper's ``(0.2, 4.0)``).
        theta_range: ``(lo, hi)`` of the angle in radians (the paper's ``(0, pi / 2)``).
        kernel_size: Side of the native kernels (the paper's 20; even).
        gaussian_size: Odd side of the Gaussian (the paper's 15), at most ``kernel_size``.
        centre: ``"pixel"``: the native kernels (training batches, ``(B, 20, 20)``); ``"block"``: zero-padded to the
            block centre (``koala_to_block_centre``; the test-set writer), same LR.
    """

    def __init__(
        self,
        sigma_range: tuple[float, float] = (0.2, 4.0),
        theta_range: tuple[float, float] = (0.0, math.pi / 2),
        kernel_size: int = KOALA_KERNEL_SIZE,
        gaussian_size: int = KOALA_GAUSSIAN_SIZE,
        centre: Centre = "pixel",
    ) -> None:
        if not 0 < sigma_range[0] <= sigma_range[1]:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {tuple(sigma_range)}")
        if not theta_range[0] <= theta_range[1]:
            raise ValueError(f"need theta_min <= theta_max, got {tuple(theta_range)}")
        if kernel_size % 2 or gaussian_size % 2 == 0 or gaussian_size > kernel_size:
            raise ValueError(
                f"need an even kernel_size and an odd gaussian_size <= kernel_size, got {kernel_size}, {gaussian_size}"
            )
        if centre not in ("pixel", "block"):
            raise ValueError(f"centre must be 'pixel' or 'block', got {centre!r}")
        self.sigma_range = (float(sigma_range[0]), float(sigma_range[1]))
        self.theta_range = (float(theta_range[0]), float(theta_range[1]))
        self.size = kernel_size
        self.gaussian_size = gaussian_size
        self.centre: Centre = centre

    def kernel_size(self, scale: int) -> int:
        """Side of the kernels at ``scale``: ``kernel_size`` (native) or ``kernel_size + s - 1`` (block).

        Args:
            scale: Even scale factor ``s`` (odd ones cannot be aligned with an even kernel).
        """
        _check_even(self.size, scale)
        return self.size if self.centre == "pixel" else self.size + scale - 1

    def sample(self, batch_size: int, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """Draw ``sigma_x``, ``sigma_y`` and ``theta``, each ``(B,)``, in that order.

        Args:
            batch_size: Number of kernels ``B``.
            generator: The generator the draws come from (``None``: the global one).
            device: Device of the returned tensors.
        """
        (slo, shi), (tlo, thi) = self.sigma_range, self.theta_range
        return {
            "sigma_x": uniform(slo, shi, batch_size, generator, device),
            "sigma_y": uniform(slo, shi, batch_size, generator, device),
            "theta": uniform(tlo, thi, batch_size, generator, device),
        }

    def native_kernels(self, params: dict[str, Tensor]) -> Tensor:
        """``(B, kernel_size, kernel_size)`` native kernels (centred on the middle, ``9.5``) of ``params``.

        Args:
            params: ``sample``'s dict (``sigma_x``, ``sigma_y``, ``theta``).
        """
        return koala_gaussian_kernels(
            params["sigma_x"], params["sigma_y"], params["theta"], self.size, self.gaussian_size
        )

    def kernels(self, params: dict[str, Tensor], scale: int) -> Tensor:
        """``(B, k, k)`` kernels at ``scale`` in this sampler's ``centre`` convention (deterministic).

        Args:
            params: ``sample``'s dict (``sigma_x``, ``sigma_y``, ``theta``).
            scale: Even scale factor.
        """
        size = self.kernel_size(scale)
        k = self.native_kernels(params)
        return k if size == self.size else koala_to_block_centre(k, scale)


def koala_gaussian_kernels(
    sigma_x: Tensor,
    sigma_y: Tensor,
    theta: Tensor,
    size: int = KOALA_KERNEL_SIZE,
    gaussian_size: int = KOALA_GAUSSIAN_SIZE,
) -> Tensor:
    """Native KOALAnet kernels from Gaussian parameters: ``(N,)`` each -> ``(N, size, size)``, each summing to 1.

    Args:
        sigma_x: Standard deviation along the rotated x axis, HR pixels.
        sigma_y: Standard deviation along the rotated y axis.
        theta: Rotation of the ``sigma_x`` axis from the x (column) axis, radians.
        size: Even side of the result.
        gaussian_size: Odd side of the Gaussian.

    Returns:
        ``(N, size, size)`` in the dtype of ``sigma_x`` (floating) on its device.
    """
    g = gaussian_kernels(gaussian_size, sigma_x, sigma_y, theta, param="std", centre="pixel")
    return koala_kernels(g, size)

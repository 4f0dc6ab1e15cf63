"""Spatially-variant blur: smooth random kernel fields and the per-LR-pixel degradation (beyond the KOALAnet paper).

A **field** is a ``(3, H, W)`` tensor on the LR grid, channels ``sigma_x``, ``sigma_y`` (standard deviations, HR
pixels) and ``theta`` (radians), the parameters of KOALAnet's kernel (``koala_sampler``: a 15x15 Gaussian convolved
with the 20x20 non-antialiased bicubic kernel) at each LR pixel. The **kernel map** of a field is
``(20 * 20, H, W)``: channel ``20 * row + column`` holds that tap of every pixel's native kernel (mean on the middle
of the 20x20 grid, as KOALAnet's downsampling network predicts them). LR pixel ``(i, j)`` is the correlation of the
HR image with *its* kernel, centred on the middle of its ``s x s`` HR block: the official degradation of KOALAnet
(symmetric border, stride-``s`` correlation, decimation phase ``decimation_phase(20, s, "pixel")``) with one kernel per
output pixel, so a constant field gives exactly ``ClassicalDegradation(kernel_sampler=KOALAKernelSampler())``'s LR.

Fields (each drawn from a ``torch.Generator``, on the CPU, in a fixed order; float64):

* ``defocus_field``: defocus around a random in-focus point: the kernel width grows with the distance from it
  (a random power of the distance, scaled by a random strength, perturbed by a smooth random field), nearly isotropic
  (each width times ``exp(0.2 n)`` for smooth fields ``n`` in ``[-1, 1]``), smoothly varying angle in ``[0, pi/2]``.
* ``two_region_field``: a sharp region (small anisotropic Gaussian) and a defocused one (large isotropic Gaussian),
  split by a smooth random boundary (the level set of a smooth random field at a random area fraction), blended over
  ``transition`` LR pixels.

Smooth random fields are sums of a few random plane waves of low frequency (``smooth_random_field``): infinitely
smooth, defined in coordinates normalised by the longer side, so a field's shape does not depend on the resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from datamodules.degradation import ops
from datamodules.degradation.kernels import decimation_phase
from datamodules.degradation.koala_sampler import KOALA_GAUSSIAN_SIZE, KOALA_KERNEL_SIZE, koala_gaussian_kernels

FIELD_CHANNELS = ("sigma_x", "sigma_y", "theta")
"""Channels of a field, in order."""


def _uniform(lo: float, hi: float, generator: torch.Generator, n: int = 1) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def _grid(height: int, width: int) -> tuple[Tensor, Tensor]:
    """``(yy, xx)`` LR pixel coordinates ``(H, W)`` float64."""
    rows = torch.arange(height, dtype=torch.float64)
    cols = torch.arange(width, dtype=torch.float64)
    return torch.meshgrid(rows, cols, indexing="ij")


def smooth_random_field(
    height: int, width: int, generator: torch.Generator, waves: int = 4, max_frequency: float = 1.5
) -> Tensor:
    """A smooth random ``(H, W)`` float64 field in ``[-1, 1]``: a normalised sum of random low-frequency plane waves.

    ``sum_i a_i cos(2 pi f_i . p + phi_i) / sum_i a_i`` with ``p`` the pixel position divided by ``max(H, W)``,
    ``|f_i| ~ U(0.3, max_frequency)`` cycles per longer side in a uniform direction, ``a_i ~ U(0.5, 1)``,
    ``phi_i ~ U(0, 2 pi)``.

    Args:
        height: Rows ``H``.
        width: Columns ``W``.
        generator: CPU generator the draws come from.
        waves: Number of plane waves.
        max_frequency: Largest frequency, cycles per longer side.
    """
    radius = _uniform(0.3, max_frequency, generator, waves)
    angle = _uniform(0.0, 2 * math.pi, generator, waves)
    phase = _uniform(0.0, 2 * math.pi, generator, waves)
    amp = _uniform(0.5, 1.0, generator, waves)
    yy, xx = _grid(height, width)
    side = max(height, width)
    fy, fx = radius * torch.sin(angle), radius * torch.cos(angle)
    arg = 2 * math.pi * (fy[:, None, None] * yy + fx[:, None, None] * xx) / side + phase[:, None, None]
    return (amp[:, None, None] * torch.cos(arg)).sum(0) / amp.sum()


def defocus_field(
    height: int, width: int, generator: torch.Generator, sigma_range: tuple[float, float] = (0.2, 4.0)
) -> Tensor:
    """Defocus around a random in-focus point (module docstring): ``(3, H, W)`` float64 field.

    Width ``w = lo + (hi - lo) * g * clamp(r^gamma (1 + 0.2 n0), 0, 1)`` with ``r`` the distance to the in-focus
    point ``~ U`` over the image divided by the largest such distance, ``gamma ~ U(0.7, 1.5)``, strength
    ``g ~ U(0.6, 1)``; ``sigma_x = w exp(0.2 n1)``, ``sigma_y = w exp(0.2 n2)`` clamped to the range;
    ``theta = pi/4 (1 + n3)``; ``n0 .. n3`` smooth random fields.

    Args:
        height: LR rows.
        width: LR columns.
        generator: CPU generator.
        sigma_range: ``(lo, hi)`` of the standard deviations, HR pixels.
    """
    lo, hi = sigma_range
    cy, cx = _uniform(0, height - 1, generator).item(), _uniform(0, width - 1, generator).item()
    gamma, strength = _uniform(0.7, 1.5, generator).item(), _uniform(0.6, 1.0, generator).item()
    n0, n1, n2, n3 = (smooth_random_field(height, width, generator) for _ in range(4))
    yy, xx = _grid(height, width)
    dist = torch.hypot(yy - cy, xx - cx)
    corners = torch.tensor([[0, 0], [0, width - 1], [height - 1, 0], [height - 1, width - 1]], dtype=torch.float64)
    far = torch.hypot(corners[:, 0] - cy, corners[:, 1] - cx).max().clamp_min(1.0)
    r = (dist / far).pow(gamma)
    w = lo + (hi - lo) * strength * (r * (1 + 0.2 * n0)).clamp(0, 1)
    sx = (w * torch.exp(0.2 * n1)).clamp(lo, hi)
    sy = (w * torch.exp(0.2 * n2)).clamp(lo, hi)
    theta = math.pi / 4 * (1 + n3)
    return torch.stack([sx, sy, theta])


def two_region_field(
    height: int,
    width: int,
    generator: torch.Generator,
    sigma_range: tuple[float, float] = (0.2, 4.0),
    transition: float = 2.0,
) -> Tensor:
    """An in-focus and an out-of-focus region split by a smooth random boundary: ``(3, H, W)`` float64 field.

    ``n`` a smooth random field, ``t`` its ``q``-quantile with ``q ~ U(0.3, 0.7)`` (the in-focus area fraction); the
    out-of-focus weight is ``m = sigmoid(d / transition)`` with ``d = (n - t) / |grad n|`` (about the signed distance to
    the boundary in LR pixels). In focus: ``sigma_x, sigma_y ~ U(lo, lo + 0.15 (hi - lo))`` independently,
    ``theta ~ U(0, pi/2)``; out of focus: isotropic ``sigma ~ U(lo + 0.6 (hi - lo), hi)``; blended by ``m``.

    Args:
        height: LR rows.
        width: LR columns.
        generator: CPU generator.
        sigma_range: ``(lo, hi)`` of the standard deviations, HR pixels.
        transition: Width of the blend across the boundary, LR pixels.
    """
    lo, hi = sigma_range
    q = _uniform(0.3, 0.7, generator).item()
    sx_in, sy_in = _uniform(lo, lo + 0.15 * (hi - lo), generator, 2).tolist()
    theta_in = _uniform(0.0, math.pi / 2, generator).item()
    s_out = _uniform(lo + 0.6 * (hi - lo), hi, generator).item()
    n = smooth_random_field(height, width, generator)
    t = torch.quantile(n.flatten(), q)
    gy, gx = torch.gradient(n) if min(height, width) > 1 else (torch.zeros_like(n), torch.zeros_like(n))
    grad = torch.hypot(gy, gx)
    grad = grad.clamp_min(max(0.1 * grad.mean().item(), 1e-12))
    m = torch.sigmoid((n - t) / grad / transition)
    sx = (1 - m) * sx_in + m * s_out
    sy = (1 - m) * sy_in + m * s_out
    return torch.stack([sx, sy, torch.full_like(n, theta_in)])


FIELDS: dict[str, Callable[..., Tensor]] = {"defocus": defocus_field, "two_region": two_region_field}
"""The field families by name (``--field`` of ``python -m datamodules.generate --protocol spatially_variant``)."""


def field_kernels(field: Tensor, size: int = KOALA_KERNEL_SIZE, gaussian_size: int = KOALA_GAUSSIAN_SIZE) -> Tensor:
    """The kernel map of a field: ``(..., 3, H, W)`` -> ``(..., size * size, H, W)`` native KOALAnet kernels.

    Built in the field's dtype (the generator uses float64); channel ``size * row + column`` is that tap.

    Args:
        field: ``(3, H, W)`` or ``(B, 3, H, W)``, channels ``FIELD_CHANNELS``.
        size: Even kernel side.
        gaussian_size: Odd Gaussian side.
    """
    if field.shape[-3] != 3:
        raise ValueError(f"a field has 3 channels (sigma_x, sigma_y, theta), got shape {tuple(field.shape)}")
    lead, (h, w) = field.shape[:-3], field.shape[-2:]
    flat = field.movedim(-3, -1).reshape(-1, 3)
    k = koala_gaussian_kernels(flat[:, 0], flat[:, 1], flat[:, 2], size, gaussian_size)
    return k.reshape(*lead, h, w, size * size).movedim(-1, -3)


def _pad(x: Tensor, size: int, scale: int, phase: int, border: ops.Border) -> Tensor:
    """Pad ``(B, C, sH, sW)`` as ``ops.blur`` does for a ``size`` kernel, then drop the first ``phase`` rows/columns."""
    before, after = (size - 1) // 2, size // 2
    if border == "symmetric":
        padded = ops.pad_symmetric(x, before, after)
    else:
        padded = torch.nn.functional.pad(x, (before, after, before, after), mode=border)
    return padded[..., phase:, phase:]


def _correlate_rows(padded: Tensor, kernels: Tensor, scale: int, row0: int) -> Tensor:
    """LR rows ``row0 .. row0 + n`` of a per-pixel correlation: ``kernels`` ``(B, k*k, n, W)`` -> ``(B, C, n, W)``.

    A loop over the ``k*k`` taps (each a strided slice of ``padded`` times one weight map), never over pixels.
    """
    bsz, taps, n, w = kernels.shape
    k = math.isqrt(taps)
    out = padded.new_zeros(bsz, padded.shape[1], n, w)
    top = scale * row0
    for t in range(taps):
        j, i = divmod(t, k)
        window = padded[..., top + j : top + j + scale * n : scale, i : i + scale * w : scale]
        out += kernels[:, t, None] * window
    return out


def local_blur_decimate(
    x: Tensor, kernels: Tensor, scale: int, phase: int = 0, border: ops.Border = "symmetric"
) -> Tensor:
    """Per-LR-pixel blur and decimation: LR pixel ``(r, c)`` = the HR image correlated with kernel ``(:, r, c)``.

    ``kernels[:, k * a + b, r, c]`` weights HR pixel ``(s r + phase + a - q, s c + phase + b - q)`` with
    ``q = (k - 1) // 2`` (``ops.blur``'s padding and ``ops.decimate``'s phase), so a map repeating one kernel gives
    ``ops.blur_decimate(x, kernel, scale, phase, border=border)``.

    Args:
        x: ``(B, C, sH, sW)`` HR images.
        kernels: ``(B, k * k, H, W)`` kernel maps (``k x k`` kernels, row-major taps), ``H = sH // s``.
        scale: Integer factor ``s``.
        phase: First kept HR pixel of each axis, ``0 <= phase < s``.
        border: ``"symmetric"`` (half-sample, as the official code) or a ``torch.nn.functional.pad`` mode.

    Returns:
        ``(B, C, H, W)`` in the dtype of ``x``.
    """
    k = _kernel_side(kernels)
    h, w = x.shape[-2] // scale, x.shape[-1] // scale
    if kernels.shape[-2:] != (h, w) or kernels.shape[0] != x.shape[0]:
        raise ValueError(f"kernels {tuple(kernels.shape)} do not match the LR grid ({x.shape[0]}, {k * k}, {h}, {w})")
    if not 0 <= phase < scale:
        raise ValueError(f"phase must be in [0, {scale}), got {phase}")
    return _correlate_rows(_pad(x, k, scale, phase, border), kernels.to(x), scale, 0)


def field_blur_decimate(
    x: Tensor, field: Tensor, scale: int, border: ops.Border = "symmetric", rows_per_chunk: int = 32
) -> Tensor:
    """Degrade ``x`` with the native KOALAnet kernels of ``field``, building them ``rows_per_chunk`` LR rows at a time.

    ``local_blur_decimate(x, field_kernels(field), scale, decimation_phase(20, s, "pixel"), border)`` without holding
    the whole kernel map (400 numbers per LR pixel); kernels are built in the dtype of ``x``.

    Args:
        x: ``(B, C, sH, sW)`` HR images.
        field: ``(B, 3, H, W)`` fields on the LR grid (``FIELD_CHANNELS``).
        scale: Even scale factor ``s``.
        border: As ``local_blur_decimate``.
        rows_per_chunk: LR rows per chunk (memory ``~ rows x W x 400`` numbers).

    Returns:
        ``(B, C, H, W)``.
    """
    h, w = x.shape[-2] // scale, x.shape[-1] // scale
    if field.dim() != 4 or field.shape[1] != 3 or field.shape[-2:] != (h, w) or field.shape[0] != x.shape[0]:
        raise ValueError(f"field {tuple(field.shape)} does not match the LR grid ({x.shape[0]}, 3, {h}, {w})")
    phase = decimation_phase(KOALA_KERNEL_SIZE, scale, "pixel")
    padded = _pad(x, KOALA_KERNEL_SIZE, scale, phase, border)
    field = field.to(x)
    rows = [
        _correlate_rows(padded, field_kernels(field[..., r : r + rows_per_chunk, :]), scale, r)
        for r in range(0, h, rows_per_chunk)
    ]
    return torch.cat(rows, dim=-2)


def _kernel_side(kernels: Tensor) -> int:
    if kernels.dim() != 4:
        raise ValueError(f"kernel maps are (B, k*k, H, W), got shape {tuple(kernels.shape)}")
    k = math.isqrt(kernels.shape[1])
    if k * k != kernels.shape[1]:
        raise ValueError(f"kernel maps need a square number of channels, got {kernels.shape[1]}")
    return k

"""Where MoESR's fine-tuning cuts its crops: KernelGAN-style gradient probability maps and a seeded crop plan.

The official ``create_gradient_map`` / ``create_probability_map`` procedure, reimplemented in torch: luma ``0.299 R
+ 0.587 G + 0.114 B``; central-difference gradients; ``|g_row|`` and ``|g_col|`` reduced to their top 3 % (values
above the 97th percentile, the rest zero), plus the raw gradient magnitude, each normalised to sum 1 and summed; a
5-px zero border; a 5x5 box blur; then a ``(crop_small / 2)`` box blur, a zero border of ``crop_small / 2`` and
normalisation give the probability of each crop *centre*. One map serves both crop sizes; centres become top-left
corners clamped into the image and rounded down to even indices. Synthetic images (``real=False``) larger than
160 px lose a 10-px border before sampling (:func:`sampling_border`).

:func:`plan_crops` draws every iteration's crops at once from a CPU ``torch.Generator`` seeded with ``seed`` (the
same crops on every device): big-crop corners, then small-crop corners, then the 180-degree rotation flags.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Official hyper-parameters (MoESR options / DualSR data generator).
CROP_SIZE = 128
ROTATE_PROB = 0.4
SYNTHETIC_SHAVE = 10
SHAVE_MIN_SIZE = 160
_LUMA = (0.299, 0.587, 0.114)


def _box_mean(x: Tensor, size: int) -> Tensor:
    """'same'-size mean over ``size x size`` windows of a 2-D map (zero outside), in O(HW) with integral images."""
    before, after = (size - 1) // 2, size // 2
    pad = F.pad(x, (before + 1, after, before + 1, after))
    integral = pad.cumsum(0).cumsum(1)
    h, w = x.shape
    total = (
        integral[size : size + h, size : size + w]
        - integral[:h, size : size + w]
        - integral[size : size + h, :w]
        + integral[:h, :w]
    )
    return total / (size * size)


def _zero_border(x: Tensor, edge: int) -> Tensor:
    out = torch.zeros_like(x)
    if 2 * edge < min(x.shape):
        out[edge : x.shape[0] - edge, edge : x.shape[1] - edge] = x[edge : x.shape[0] - edge, edge : x.shape[1] - edge]
    return out


def _top_fraction(x: Tensor, percent: float) -> Tensor:
    """KernelGAN's ``clip_extreme``: ``clamp(x, v, v') - v``, ``v`` the ``percent`` quantile, ``v'`` the next value."""
    flat = x.flatten()
    pivot = min(int(percent * flat.numel()), flat.numel() - 2)
    lo = flat.kthvalue(pivot + 1).values  # sorted[pivot], in O(n)
    hi = flat.kthvalue(pivot + 2).values  # sorted[pivot + 1]
    hi = hi if hi > lo else lo + 1e-5
    return x.clamp(lo, hi) - lo


def gradient_map(img: Tensor, window: int = 5, percent: float = 0.97) -> Tensor:
    """KernelGAN / DualSR / MoESR gradient "loss map" of an image (see module docstring), mean 1.

    Args:
        img: ``(3, H, W)`` or ``(1, 3, H, W)`` RGB in ``[0, 1]``.
        window: Zero border and box-blur size.
        percent: Quantile above which the directional gradients count.

    Returns:
        ``(H, W)`` float64 map on the CPU.
    """
    img = img.detach().reshape(-1, *img.shape[-2:]).to("cpu", torch.float64)
    gray = sum(w * c for w, c in zip(_LUMA, img, strict=True))
    g_row, g_col = torch.gradient(gray)
    mag = torch.sqrt(g_row**2 + g_col**2)
    g_row, g_col, mag = (_zero_border(g.abs(), window) for g in (g_row, g_col, mag))
    parts = [_top_fraction(g_row, percent), _top_fraction(g_col, percent), mag]
    combined = sum(p / p.sum() for p in parts if p.sum() > 0)
    if not isinstance(combined, Tensor):  # a flat image: every position alike
        return torch.ones_like(gray)
    loss_map = _box_mean(combined, window)
    return loss_map / loss_map.mean()


def crop_probability(loss_map: Tensor, crop: int) -> Tensor:
    """Probability of each pixel as a crop centre: the ``crop // 2`` box mean of ``loss_map``, zero near borders.

    Args:
        loss_map: ``(H, W)`` map from ``gradient_map``.
        crop: The (small) crop side; centres closer than ``crop // 2`` to a border get probability 0.

    Returns:
        ``(H, W)`` float64, sums to 1 (uniform if the map is zero everywhere).
    """
    half = max(crop // 2, 1)
    prob = _zero_border(_box_mean(loss_map, half), half)
    total = prob.sum()
    return prob / total if total > 0 else torch.full_like(prob, 1.0 / prob.numel())


def sample_crop_corners(prob: Tensor, count: int, size: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """Draw ``count`` crop centres from ``prob`` ``(H, W)`` and turn them into top-left corners of ``size`` crops.

    Corners are clamped so that the crop fits and rounded down to even indices (as the official data generator).
    """
    h, w = prob.shape
    cdf = prob.flatten().cumsum(0)
    u = torch.rand(count, generator=generator, dtype=cdf.dtype) * cdf[-1]
    idx = torch.searchsorted(cdf, u).clamp(max=h * w - 1)
    top = (idx // w - size // 2).clamp(0, h - size)
    left = (idx % w - size // 2).clamp(0, w - size)
    top, left = top - top % 2, left - left % 2
    return list(zip(top.tolist(), left.tolist(), strict=True))


def sampling_border(height: int, width: int, real: bool, shave: int = SYNTHETIC_SHAVE) -> int:
    """Border left out of crop sampling: ``shave`` for synthetic images (``real=False``) over 160 px, else 0."""
    return shave if not real and min(height, width) > SHAVE_MIN_SIZE else 0


def finetune_crop_size(height: int, width: int, scale: int, crop_size: int = CROP_SIZE, border: int = 0) -> int:
    """The "HR" crop side used on an LR image of ``height x width``.

    ``crop_size``, or the largest multiple of ``scale`` that fits inside the image less ``border`` on every side.
    """
    big = min(crop_size, height - 2 * border, width - 2 * border)
    return big - big % scale


def can_finetune(
    height: int, width: int, scale: int, kernel_size: int, crop_size: int = CROP_SIZE, real: bool = False
) -> bool:
    """Whether an LR image of ``height x width`` yields crops of at least the kernel size (needed by ``finetune``)."""
    return finetune_crop_size(height, width, scale, crop_size, sampling_border(height, width, real)) >= kernel_size


@dataclass(frozen=True)
class CropPlan:
    """The crops of every iteration: corners (in full-image LR pixels) and 180-degree rotation flags."""

    big: list[tuple[int, int]]
    small: list[tuple[int, int]]
    rotate_big: list[bool]
    rotate_small: list[bool]
    big_size: int
    small_size: int


def plan_crops(
    image: Tensor, iterations: int, big: int, small: int, rotate_prob: float, seed: int, border: int
) -> CropPlan:
    """Draw the crops of ``iterations`` steps on ``image`` ``(1, 3, H, W)`` (``border`` px left out on every side).

    Corners of ``big`` and ``small`` crops come from one probability map (of the ``small`` crop centres); each crop
    is rotated by 180 degrees with probability ``rotate_prob``.
    """
    generator = torch.Generator().manual_seed(seed)
    b = border
    region = image[0, :, b : image.shape[-2] - b, b : image.shape[-1] - b]
    prob = crop_probability(gradient_map(region), small)
    corners_big = sample_crop_corners(prob, iterations, big, generator)
    corners_small = sample_crop_corners(prob, iterations, small, generator)
    flips = (torch.rand(iterations, 2, generator=generator) < rotate_prob).tolist()
    return CropPlan(
        big=[(top + b, left + b) for top, left in corners_big],
        small=[(top + b, left + b) for top, left in corners_small],
        rotate_big=[f[0] for f in flips],
        rotate_small=[f[1] for f in flips],
        big_size=big,
        small_size=small,
    )

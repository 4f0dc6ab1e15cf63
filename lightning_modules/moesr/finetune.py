"""MoESR test-time fine-tuning: adapt one expert to one LR image with its estimated kernel (paper Sec. 3.3).

MoESR fine-tunes the chosen expert ``U`` (LR -> SR, e.g. ``nets.vdsr.ChainedVDSR``) on the test image itself with
DualSR's self-supervised losses, the learned downsampler of DualSR replaced by the FIXED estimated kernel ``k``
(block-centred, ``(k, k)``, applied by correlation):

* crops: an "HR" crop of ``crop_size`` (128) px and an "LR" crop of ``crop_size / s`` px, both cut from the LR
  image, their centres drawn from one KernelGAN-style gradient probability map (below), each rotated by 180 degrees
  with probability 0.4 (the Gaussian kernels are centrosymmetric, so this is a valid augmentation);
* forward cycle ``5 * L1(down_k(U(LR)), LR)`` and backward cycle ``5 * L1(U(quantise(down_k(HR))), HR)``, where
  ``down_k`` is a per-channel *valid* correlation with stride ``s`` and the targets are centre-cropped to the
  output (``centre_crop``; the block-centred kernel makes the two line up exactly);
* x4 (two x2 stages, ``intermediate_kernel`` given): ``5 * L1(U1(quantise(down_k(HR))), down_{k2}(HR))`` with the
  x2 kernel ``k2`` of the estimated parameters at ``lambda / 5``, stride 2, not quantised (added to the backward
  cycle);
* masked interpolation ``1 * L1(U(LR) * M, bicubic(LR) * M)`` with ``M = 1 - clamp(|Sobel(bicubic(LR))|, 0, 1)``:
  the unnormalised 3x3 Sobel (``[-1 0 1; -2 0 2; -1 0 1]``) magnitude per channel, as the official ``torch_sobel``,
  so ``M`` is 0 on edges and 1 on flat regions, keeping flat regions close to bicubic;
* ``real=True``: Gaussian noise of std ``noise_std`` (0.04, about 10/255) added to ``down_k(HR)`` before quantising;
* Adam (betas 0.5, 0.999), OneCycleLR (max lr 1e-5, div_factor 10, ``total_steps = iterations``), batch 1, 1000
  iterations.

Crop sampling (the official ``create_gradient_map`` / ``create_probability_map`` procedure, reimplemented in torch):
luma ``0.299 R + 0.587 G + 0.114 B``; central-difference gradients; ``|g_row|`` and ``|g_col|`` reduced to their
top 3 % (values above the 97th percentile, the rest zero), plus the raw gradient magnitude, each normalised to
sum 1 and summed; a 5-px zero border; a 5x5 box blur; then a ``(crop_small / 2)`` box blur, a zero border of
``crop_small / 2`` and normalisation give the probability of each crop *centre*. One map serves both crop sizes;
centres become top-left corners clamped into the image and rounded down to even indices. Synthetic images
(``real=False``) larger than 160 px lose a 10-px border before sampling.

Differences from the official code, all deliberate: the bicubic target (PyTorch bicubic, as the official one) and
the mask are computed once on the whole image and cropped, instead of on every crop (identical inside a crop; the
official per-crop Sobel with zero padding also masks out the crop's own border); crops are clamped to the image for
small images (``crop_size`` becomes the largest multiple of ``s`` that fits); the network is any LR -> SR module (x4:
an ``nn.Sequential`` of two x2 stages for the intermediate term). Random draws: crop positions and rotations from a
CPU ``torch.Generator`` seeded with ``seed`` (the same crops on every device), noise from a generator on the
image's device.

Speed: everything that does not change per iteration (crop positions and rotations, the bicubic image, the mask)
is prepared once; the loop itself only slices, runs the network and steps the optimiser, with no host-device
synchronisation except the loss read-out once per ``progress_every`` iterations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.degradation.ops import quantize, resize

# Official hyper-parameters (MoESR options / DualSR losses).
CYCLE_WEIGHT = 5.0
INTERP_WEIGHT = 1.0
CROP_SIZE = 128
ROTATE_PROB = 0.4
SYNTHETIC_SHAVE = 10
SHAVE_MIN_SIZE = 160
NOISE_STD = 0.04
_LUMA = (0.299, 0.587, 0.114)

ProgressFn = Callable[[int, int, dict[str, float]], None]


# ------------------------------------------------------------------------------------------------ operators
def downscale_valid(x: Tensor, kernel: Tensor, scale: int) -> Tensor:
    """Per-channel 'valid' correlation with ``kernel`` and stride ``scale`` (MoESR's fixed downsampler).

    Output pixel ``m`` reads ``x[s m + j]`` for ``j < k``: no padding, so ``(B, C, H, W) -> (B, C, (H - k) // s + 1,
    (W - k) // s + 1)``. With a block-centred kernel this equals ``ops.blur_decimate(x, kernel, s)`` shifted by
    ``((k - 1) // 2) / s`` pixels (its interior), see the tests.

    Args:
        x: ``(B, C, H, W)`` with ``H, W >= k``.
        kernel: ``(k, k)`` kernel shared by all samples and channels.
        scale: Stride ``s``.
    """
    if kernel.dim() != 2:
        raise ValueError(f"kernel must be (k, k), got {tuple(kernel.shape)}")
    ch = x.shape[1]
    weight = kernel.to(x).expand(ch, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=scale, groups=ch)


def centre_crop(x: Tensor, height: int, width: int) -> Tensor:
    """Crop the last two dims of ``x`` symmetrically to ``(height, width)`` (extra pixel, if odd, at the end)."""
    dh, dw = x.shape[-2] - height, x.shape[-1] - width
    if dh < 0 or dw < 0:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} to {(height, width)}")
    return x[..., dh // 2 : dh // 2 + height, dw // 2 : dw // 2 + width]


def flat_region_mask(up: Tensor) -> Tensor:
    """DualSR's interpolation-loss mask ``1 - clamp(|Sobel(up)|, 0, 1)`` per channel: 0 on edges, 1 where flat.

    The Sobel kernels are unnormalised (``[-1, 0, 1; -2, 0, 2; -1, 0, 1]``, as the official ``torch_sobel``), so a
    ramp of 1/8 per pixel already masks a pixel out completely. Borders are replicated (Kornia).

    Args:
        up: ``(B, C, H, W)`` bicubic-upsampled LR in ``[0, 1]``.
    """
    return 1 - kornia.filters.sobel(up, normalized=False, eps=0.0).clamp(0, 1)


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


# ------------------------------------------------------------------------------------------------ objective
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
    border = SYNTHETIC_SHAVE if not real and min(height, width) > SHAVE_MIN_SIZE else 0
    return finetune_crop_size(height, width, scale, crop_size, border) >= kernel_size


@dataclass(frozen=True)
class CropPlan:
    """The crops of every iteration: corners (in full-image LR pixels) and 180-degree rotation flags."""

    big: list[tuple[int, int]]
    small: list[tuple[int, int]]
    rotate_big: list[bool]
    rotate_small: list[bool]
    big_size: int
    small_size: int


class FinetuneObjective:
    """The self-supervised MoESR/DualSR objective on one LR image, with everything per-image precomputed.

    Args:
        lr: ``(1, 3, H, W)`` LR image in ``[0, 1]`` (any device; work happens there).
        kernel: ``(k, k)`` block-centred estimated kernel at ``scale`` (fixed downsampler).
        scale: SR factor ``s`` of the network.
        iterations: Number of crop pairs to plan (one per iteration).
        intermediate_kernel: x4 only: ``(k2, k2)`` block-centred x2 kernel (estimated parameters at ``lambda / 5``)
            for the intermediate term; the network must then be an ``nn.Sequential`` whose first child is the first
            x2 stage.
        crop_size: "HR" crop side in LR-image pixels (128); the "LR" crop is ``crop_size // scale``. Reduced to fit
            small images.
        real: Add Gaussian noise to the synthetic LR of the backward cycle (real photographs).
        noise_std: Standard deviation of that noise (images in ``[0, 1]``).
        seed: Seed of crop positions, rotations and noise.
        rotate_prob: Probability of rotating each crop by 180 degrees.
        cycle_weight: Weight of each cycle term (and of the x4 intermediate term).
        interp_weight: Weight of the masked interpolation term.
        shave: Border removed before sampling crops of synthetic images (``real=False``) larger than 160 px.

    Raises:
        ValueError: The image is smaller than the kernel (no valid downscaled pixel), or shapes are wrong.
    """

    def __init__(
        self,
        lr: Tensor,
        kernel: Tensor,
        scale: int,
        iterations: int,
        intermediate_kernel: Tensor | None = None,
        crop_size: int = CROP_SIZE,
        real: bool = False,
        noise_std: float = NOISE_STD,
        seed: int = 100,
        rotate_prob: float = ROTATE_PROB,
        cycle_weight: float = CYCLE_WEIGHT,
        interp_weight: float = INTERP_WEIGHT,
        shave: int = SYNTHETIC_SHAVE,
    ) -> None:
        if lr.dim() != 4 or lr.shape[:2] != (1, 3):
            raise ValueError(f"lr must be one RGB image (1, 3, H, W), got {tuple(lr.shape)}")
        if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
            raise ValueError(f"kernel must be square (k, k), got {tuple(kernel.shape)}")
        self.scale = scale
        self.real = real
        self.noise_std = noise_std
        self.cycle_weight = cycle_weight
        self.interp_weight = interp_weight
        self.image = lr.detach().clone()
        self.kernel = kernel.detach().to(self.image).clone()
        self.intermediate_kernel = (
            None if intermediate_kernel is None else intermediate_kernel.detach().to(self.image).clone()
        )
        _, _, h, w = self.image.shape
        self.border = shave if not real and min(h, w) > SHAVE_MIN_SIZE else 0
        big = finetune_crop_size(h, w, scale, crop_size, self.border)
        k = self.kernel.shape[-1]
        if big < k:
            raise ValueError(
                f"image {w}x{h} is too small to fine-tune with a {k}x{k} kernel at x{scale} "
                f"(crops of at least {k} px are needed)"
            )
        self.plan = self._plan(iterations, big, big // scale, rotate_prob, seed)
        # whole-image bicubic target (PyTorch convention, as the experts' own input) and its flat-region mask
        self.bicubic = resize(self.image, scale=scale, convention="torch")
        self.mask = flat_region_mask(self.bicubic)
        self.noise_generator = torch.Generator(device=self.image.device).manual_seed(seed)

    def _plan(self, iterations: int, big: int, small: int, rotate_prob: float, seed: int) -> CropPlan:
        generator = torch.Generator().manual_seed(seed)
        b = self.border
        region = self.image[0, :, b : self.image.shape[-2] - b, b : self.image.shape[-1] - b]
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

    def crops(self, step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(hr_crop, lr_crop, bicubic_crop, mask_crop)`` of iteration ``step`` (rotated as planned)."""
        p, s = self.plan, self.scale
        (tb, lb), (ts, ls) = p.big[step], p.small[step]
        hr = self.image[..., tb : tb + p.big_size, lb : lb + p.big_size]
        lr = self.image[..., ts : ts + p.small_size, ls : ls + p.small_size]
        span = p.small_size * s
        bic = self.bicubic[..., s * ts : s * ts + span, s * ls : s * ls + span]
        mask = self.mask[..., s * ts : s * ts + span, s * ls : s * ls + span]
        if p.rotate_big[step]:
            hr = hr.rot90(2, dims=(-2, -1))
        if p.rotate_small[step]:
            lr, bic, mask = (t.rot90(2, dims=(-2, -1)) for t in (lr, bic, mask))
        return hr, lr, bic, mask

    def losses(self, net: nn.Module, step: int) -> dict[str, Tensor]:
        """The loss terms of iteration ``step`` (scalars on the image's device; ``"total"`` is their sum)."""
        hr, lr, bic, mask = self.crops(step)
        s = self.scale
        # forward cycle: LR -> SR -> LR
        sr = net(lr)
        rec_lr = downscale_valid(sr, self.kernel, s)
        forward = F.l1_loss(rec_lr, centre_crop(lr, *rec_lr.shape[-2:])) * self.cycle_weight
        # backward cycle: HR -> LR (fixed kernel, quantised, optionally noisy) -> HR
        fake_lr = downscale_valid(hr, self.kernel, s)
        if self.real:
            noise = torch.randn(fake_lr.shape, generator=self.noise_generator, device=fake_lr.device)
            fake_lr = fake_lr + noise.to(fake_lr) * self.noise_std
        fake_lr = quantize(fake_lr)
        terms: dict[str, Tensor] = {}
        if self.intermediate_kernel is not None:
            if not isinstance(net, nn.Sequential) or len(net) < 2:
                raise TypeError("the x4 intermediate term needs an nn.Sequential of x2 stages (e.g. ChainedVDSR)")
            mid = net[0](fake_lr)
            rec_hr = mid
            for stage in list(net)[1:]:
                rec_hr = stage(rec_hr)
            target_mid = downscale_valid(hr, self.intermediate_kernel, 2)
            terms["intermediate"] = F.l1_loss(mid, centre_crop(target_mid, *mid.shape[-2:])) * self.cycle_weight
        else:
            rec_hr = net(fake_lr)
        backward = F.l1_loss(rec_hr, centre_crop(hr, *rec_hr.shape[-2:])) * self.cycle_weight
        interp = F.l1_loss(sr * mask, bic * mask) * self.interp_weight
        terms = {"forward": forward, "backward": backward, **terms, "interp": interp}
        terms["total"] = sum(terms.values())
        return terms

    @torch.no_grad()
    def evaluate(self, net: nn.Module, steps: range) -> dict[str, float]:
        """Mean loss terms over the planned crops of ``steps`` without training (for monitoring and tests)."""
        sums: dict[str, Tensor] = {}
        for step in steps:
            for name, value in self.losses(net, step).items():
                sums[name] = sums.get(name, 0) + value
        return {name: float(v) / len(steps) for name, v in sums.items()}


# ------------------------------------------------------------------------------------------------ the loop
def finetune(
    net: nn.Module,
    lr: Tensor,
    kernel: Tensor,
    scale: int,
    iterations: int = 1000,
    lr_max: float = 1e-5,
    div_factor: float = 10.0,
    betas: tuple[float, float] = (0.5, 0.999),
    intermediate_kernel: Tensor | None = None,
    real: bool = False,
    noise_std: float = NOISE_STD,
    seed: int = 100,
    crop_size: int = CROP_SIZE,
    progress: ProgressFn | None = None,
    progress_every: int = 50,
) -> nn.Module:
    """Fine-tune ``net`` in place on ``lr`` with the fixed ``kernel`` (see module docstring); returns ``net``.

    Works inside ``torch.inference_mode()`` / ``no_grad`` (as Lightning's test and predict loops run): gradients
    are switched back on here, and the image is cloned outside inference mode. ``net``'s parameters must be
    ordinary tensors (create or copy the network outside inference mode). ``net`` is left in eval mode.

    Args:
        net: LR -> SR network (x4 with ``intermediate_kernel``: an ``nn.Sequential`` of two x2 stages).
        lr: ``(1, 3, H, W)`` LR image in ``[0, 1]``.
        kernel: ``(k, k)`` block-centred downsampling kernel at ``scale``.
        scale: SR factor.
        iterations: Optimiser steps (MoESR: 1000; 0 returns ``net`` untouched).
        lr_max: Maximum learning rate of the one-cycle schedule (MoESR: 1e-5).
        div_factor: One-cycle initial learning rate = ``lr_max / div_factor``.
        betas: Adam betas (DualSR/MoESR: 0.5, 0.999).
        intermediate_kernel: x4: ``(13, 13)`` x2 kernel at ``lambda / 5`` for the intermediate term.
        real: Add noise of std ``noise_std`` to the backward cycle's synthetic LR (real photographs).
        noise_std: Noise standard deviation for ``real`` (0.04 ~ 10/255).
        seed: Seed of crops, rotations and noise (official: 100).
        crop_size: "HR" crop side in LR pixels.
        progress: Called as ``progress(done, iterations, mean_losses)`` every ``progress_every`` iterations and at
            the end, with the block's mean loss terms as floats (the only host-device synchronisation).
        progress_every: Iterations per progress call.
    """
    if iterations <= 0:
        return net.eval()
    with torch.inference_mode(False), torch.enable_grad():
        objective = FinetuneObjective(
            lr.clone(), kernel.clone(), scale, iterations, intermediate_kernel=None if intermediate_kernel is None
            else intermediate_kernel.clone(), crop_size=crop_size, real=real, noise_std=noise_std, seed=seed,
        )  # fmt: skip
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=lr_max / div_factor, betas=betas)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr_max, total_steps=iterations, div_factor=div_factor
        )
        net.train()
        block: dict[str, Tensor] = {}
        block_start = 0
        for step in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            terms = objective.losses(net, step)
            terms["total"].backward()
            optimizer.step()
            schedule.step()
            if progress is not None:
                for name, value in terms.items():
                    block[name] = block.get(name, 0) + value.detach()
                done = step + 1
                if done % progress_every == 0 or done == iterations:
                    n = done - block_start
                    progress(done, iterations, {k: float(v) / n for k, v in block.items()})
                    block, block_start = {}, done
    return net.eval()

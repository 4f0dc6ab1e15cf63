"""MoESR test-time fine-tuning: adapt one expert to one LR image with its estimated kernel (paper Sec. 3.3).

MoESR fine-tunes the chosen expert ``U`` (LR -> SR, e.g. ``nets.vdsr.ChainedVDSR``) on the test image itself with
DualSR's self-supervised losses, the learned downsampler of DualSR replaced by the FIXED estimated kernel ``k``
(block-centred, ``(k, k)``, applied by correlation):

* crops: an "HR" crop of ``crop_size`` (128) px and an "LR" crop of ``crop_size / s`` px, both cut from the LR
  image, their centres drawn from one KernelGAN-style gradient probability map (``crops.py``), each rotated by 180
  degrees with probability 0.4 (the Gaussian kernels are centrosymmetric, so this is a valid augmentation);
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

Differences from the official code, all deliberate: the bicubic target (PyTorch bicubic, as the official one) and
the mask are computed once on the whole image and cropped, instead of on every crop (identical inside a crop; the
official per-crop Sobel with zero padding also masks out the crop's own border); crops are clamped to the image for
small images (``crop_size`` becomes the largest multiple of ``s`` that fits); the network is any LR -> SR module (x4:
an ``nn.Sequential`` of two x2 stages for the intermediate term). Random draws: crop positions and rotations from a
CPU ``torch.Generator`` seeded with ``seed`` (``crops.plan_crops``: the same crops on every device), noise from a
generator on the image's device.

Speed: everything that does not change per iteration (crop positions and rotations, the bicubic image, the mask)
is prepared once; the loop itself only slices, runs the network and steps the optimiser, with no host-device
synchronisation except the loss read-out once per ``progress_every`` iterations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from datamodules.degradation.ops import quantize, resize
from lightning_modules.core.precision import fresh_casts, full_precision
from lightning_modules.moesr.crops import (
    CROP_SIZE,
    ROTATE_PROB,
    SYNTHETIC_SHAVE,
    finetune_crop_size,
    plan_crops,
    sampling_border,
)

# Official hyper-parameters (MoESR options / DualSR losses).
CYCLE_WEIGHT = 5.0
INTERP_WEIGHT = 1.0
NOISE_STD = 0.04

ProgressFn = Callable[[int, int, dict[str, float]], None]


# ------------------------------------------------------------------------------------------------ operators
def downscale_valid(x: Tensor, kernel: Tensor, scale: int) -> Tensor:
    """Per-channel 'valid' correlation with ``kernel`` and stride ``scale`` (MoESR's fixed downsampler).

    Output pixel ``m`` reads ``x[s m + j]`` for ``j < k``: no padding, so ``(B, C, H, W) -> (B, C, (H - k) // s + 1,
    (W - k) // s + 1)``. With a block-centred kernel this equals ``ops.blur_decimate(x, kernel, s)`` shifted by
    ``((k - 1) // 2) / s`` pixels (its interior), see the tests. Float32, also under a bfloat16 autocast (a fixed
    3-channel operator: cheap, and the losses compare it with 8-bit pixels).

    Args:
        x: ``(B, C, H, W)`` with ``H, W >= k``.
        kernel: ``(k, k)`` kernel shared by all samples and channels, or ``(B, k, k)``: one per sample (the grouped
            fine-tuning of ``group_finetune``).
        scale: Stride ``s``.
    """
    if kernel.dim() not in (2, 3) or (kernel.dim() == 3 and kernel.shape[0] != x.shape[0]):
        raise ValueError(f"kernel must be (k, k) or (B={x.shape[0]}, k, k), got {tuple(kernel.shape)}")
    bsz, ch = x.shape[:2]
    x = x.float()
    with full_precision(x.device):
        if kernel.dim() == 2:
            return F.conv2d(x, kernel.to(x).expand(ch, 1, *kernel.shape), stride=scale, groups=ch)
        weight = kernel.to(x).repeat_interleave(ch, dim=0)[:, None]  # (B*C, 1, k, k)
        out = F.conv2d(x.reshape(1, bsz * ch, *x.shape[-2:]), weight, stride=scale, groups=bsz * ch)
    return out.reshape(bsz, ch, *out.shape[-2:])


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


# ------------------------------------------------------------------------------------------------ objective
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
        self.border = sampling_border(h, w, real, shave)
        big = finetune_crop_size(h, w, scale, crop_size, self.border)
        k = self.kernel.shape[-1]
        if big < k:
            raise ValueError(
                f"image {w}x{h} is too small to fine-tune with a {k}x{k} kernel at x{scale} "
                f"(crops of at least {k} px are needed)"
            )
        self.plan = plan_crops(self.image, iterations, big, big // scale, rotate_prob, seed, self.border)
        # whole-image bicubic target (PyTorch convention, as the experts' own input) and its flat-region mask
        self.bicubic = resize(self.image, scale=scale, convention="torch")
        self.mask = flat_region_mask(self.bicubic)
        self.noise_generator = torch.Generator(device=self.image.device).manual_seed(seed)

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
        with full_precision(lr.device):  # the fixed targets and mask, not the network, stay out of the autocast
            objective = FinetuneObjective(
                lr.clone(), kernel.clone(), scale, iterations, intermediate_kernel=None if intermediate_kernel is None
                else intermediate_kernel.clone(), crop_size=crop_size, real=real, noise_std=noise_std, seed=seed,
            )  # fmt: skip
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer, schedule = finetune_optimizer(params, iterations, lr_max, div_factor, betas)
        net.train()
        block: dict[str, Tensor] = {}
        block_start = 0
        for step in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            with fresh_casts(objective.image.device):  # under the bf16 path: this step's weights, not cached ones
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


def finetune_optimizer(
    params: list[Tensor],
    iterations: int,
    lr_max: float,
    div_factor: float = 10.0,
    betas: tuple[float, float] = (0.5, 0.999),
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.OneCycleLR]:
    """DualSR/MoESR's optimiser: Adam (betas 0.5, 0.999) under a one-cycle schedule peaking at ``lr_max``."""
    optimizer = torch.optim.Adam(params, lr=lr_max / div_factor, betas=betas)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr_max, total_steps=iterations, div_factor=div_factor
    )
    return optimizer, schedule


@contextlib.contextmanager
def progress_bar(total: int, desc: str, show: bool = True) -> Iterator[ProgressFn | None]:
    """A tqdm bar as ``finetune``'s ``progress`` callback (total loss shown); ``None`` unless ``show`` and steps."""
    if not show or total <= 0:
        yield None
        return
    bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def report(done: int, _: int, losses: dict[str, float]) -> None:
        bar.update(done - bar.n)
        bar.set_postfix(loss=f"{losses['total']:.4f}")

    try:
        yield report
    finally:
        bar.close()

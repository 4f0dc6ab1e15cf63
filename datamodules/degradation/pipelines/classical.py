"""The classical degradation ``y = (x (*) k) downarrow_s + n``: blur, aligned decimation, optional noise, 8-bit.

``hr`` ``(B, 3, sH, sW)`` in ``[0, 1]`` -> the batch dict of ``pipelines.base`` with ``kernel`` ``(B, k, k)`` from the
kernel sampler, applied by correlation (symmetric border by default, as scipy made DIV2KRK) and decimated at
``kernels.decimation_phase`` of the sampler's centre.
"""

from __future__ import annotations

import torch
from torch import Tensor

from datamodules.degradation import ops
from datamodules.degradation.kernels import decimation_phase
from datamodules.degradation.koala_sampler import KOALAKernelSampler
from datamodules.degradation.pipelines.base import Degradation
from datamodules.degradation.samplers import (
    DIV2KRKKernelSampler,
    KENetKernelSampler,
    KernelBankSampler,
    gaussian_noise_field,
    uniform,
)

KernelSampler = DIV2KRKKernelSampler | KENetKernelSampler | KernelBankSampler | KOALAKernelSampler
"""The kernel samplers ``ClassicalDegradation`` takes (its annotation: LightningCLI resolves ``class_path`` by it)."""


class ClassicalDegradation(Degradation):
    """The classical model ``y = (x (*) k) downarrow_s + n``: blur, aligned decimation, optional noise, 8-bit.

    Args:
        scale: Downscaling factor (linked from the DataModule's ``scale``).
        kernel_sampler: Draws the kernels (``DIV2KRKKernelSampler``, ``KernelBankSampler``, ``KOALAKernelSampler``,
            ...).
        noise_range: Gaussian noise standard deviation ``U(lo, hi)`` in 8-bit levels (``(0, 0)``: none).
        gray_noise_prob: Probability that a sample's noise is the same on all channels.
        quantize: Round the LR to 8-bit levels (as saved to PNG).
        border: Padding of the blur (``ops.blur_decimate``). Default ``"symmetric"`` (half-sample, ``c b a | a b c``):
            scipy ``ndimage.correlate``'s default ``mode="reflect"``, with which DIV2KRK was made (KernelGAN's
            generator); ``"reflect"`` here is PyTorch's whole-sample mirror (``c b | a b c``), scipy's ``"mirror"``.
    """

    def __init__(
        self,
        scale: int = 2,
        kernel_sampler: KernelSampler | None = None,
        noise_range: tuple[float, float] = (0.0, 0.0),
        gray_noise_prob: float = 0.0,
        quantize: bool = True,
        border: ops.Border = "symmetric",
    ) -> None:
        super().__init__(scale)
        self.kernel_sampler = kernel_sampler if kernel_sampler is not None else DIV2KRKKernelSampler()
        self.noise_range = noise_range
        self.gray_noise_prob = gray_noise_prob
        self.quantize = quantize
        self.border = border
        self.phase = decimation_phase(self.kernel_sampler.kernel_size(scale), scale, self.kernel_sampler.centre)

    def sample(self, hr_shape: torch.Size, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """Kernel parameters (see the sampler) plus ``noise_std`` ``(B,)`` [0,1] units and ``noise`` ``(B,3,H,W)``."""
        bsz, ch, h, w = hr_shape
        params = self.kernel_sampler.sample(bsz, generator, device)
        lo, hi = self.noise_range
        if hi > 0:
            std = uniform(lo, hi, bsz, generator, device) / 255
            gray = torch.rand(bsz, generator=generator, device=device) < self.gray_noise_prob
            params["noise_std"] = std
            params["noise"] = gaussian_noise_field(
                (bsz, ch, h // self.scale, w // self.scale), std, gray, generator, device
            )
        return params

    def apply(self, hr: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Blur with the sampled kernels, decimate with the aligned phase, add noise, quantise."""
        kernel = self.kernel_sampler.kernels(params, self.scale).to(hr)
        lr = ops.blur_decimate(hr, kernel, self.scale, self.phase, border=self.border)
        if "noise" in params:
            lr = ops.add_noise(lr, params["noise"].to(lr))
        lr = ops.quantize(lr) if self.quantize else lr.clamp(0, 1)
        return {"hr": hr, "lr": lr, "kernel": kernel, "params": params}

"""The degradations of MoESR's training stages; the kernel grid itself is ``kernels.moesr``.

Degradations of the training stages
-----------------------------------
* ``GridDegradation`` (experts): every HR crop is degraded by every expert kernel, so one batch trains all experts.
* ``MoESRKernelDegradation`` (ISE, KEN): one kernel per sample, uniform over the supported space
  (``lambda1, lambda2 ~ U(min, max)`` of the grid's variances, sorted; ``theta ~ U(0, pi)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from datamodules.degradation import ops
from datamodules.degradation.kernels import decimation_phase, kernel_mean, recentre_kernels
from datamodules.degradation.kernels.moesr import (
    KERNEL_SIZES,
    SUPPORTED_X2_LAMBDAS,
    X2_LAMBDAS,
    X4_VARIANCE_FACTOR,
    MoESRGrid,
    moesr_kernels,
)
from datamodules.degradation.pipelines.base import Degradation
from datamodules.degradation.samplers import uniform

_BORDERS = ("reflect", "replicate", "circular", "constant")


class GridDegradation(Degradation):
    """Experts stage: every HR crop blurred and decimated by **every** expert kernel (one batch trains all experts).

    Output batch::

        {"hr": (B, 3, sH, sW), "lr_experts": (B, E, 3, H, W), "lr": (B, 3, H, W) (the LR of a random expert,
         params["expert_index"], for the base validation and the image loggers), "kernel": (B, k, k) (its kernel),
         "params": {"expert_index": (B,)}}

    At x4 the batch also holds ``"hr_mid_experts"`` ``(B, E, 3, 2H, 2W)``: the HR image blurred with each expert's
    intermediate x2 kernel (its variances / 5, ``MoESRGrid.intermediate_kernels``) and decimated by 2, not
    quantised: the target of the first of the two chained x2 stages (the intermediate term of x4 fine-tuning).

    The blur is ``ops.blur_decimate_bank`` (``ops.blur_decimate``'s padding, decimation from pixel 0, aligned for
    block-centred kernels): one convolution with the E kernels as output channels.

    Args:
        scale: 2 or 4 (linked from the DataModule's ``scale``).
        lambdas: The grid's x2 variances (must equal the experts model's ``lambdas``; the system checks).
        quantize: Round the LR to 8-bit levels (as saved to PNG).
        border: Padding of the blur: ``"reflect"``, ``"replicate"``, ``"circular"`` or ``"constant"``.
    """

    def __init__(
        self, scale: int = 2, lambdas: Sequence[float] = X2_LAMBDAS, quantize: bool = True, border: str = "reflect"
    ) -> None:
        super().__init__(scale)
        if border not in _BORDERS:
            raise ValueError(f"border must be one of {_BORDERS}, got {border!r}")
        self.grid = MoESRGrid(scale, lambdas)
        self.quantize = quantize
        self.border = border
        self._kernels_on: dict[tuple, Tensor] = {}

    def expert_kernels(self, like: Tensor) -> Tensor:
        """``(E, k, k)`` expert kernels on ``like``'s device and dtype, copied there once (not every batch)."""
        key = (like.device, like.dtype)
        if key not in self._kernels_on:
            self._kernels_on[key] = self.grid.expert_kernels(like.dtype).to(like.device)
        return self._kernels_on[key]

    def intermediate_kernels(self, like: Tensor) -> Tensor:
        """x4: ``(E, 13, 13)`` intermediate x2 kernels of the experts, on ``like``'s device and dtype (cached)."""
        key = (like.device, like.dtype, "mid")
        if key not in self._kernels_on:
            self._kernels_on[key] = self.grid.intermediate_kernels(self.grid.experts).to(like.device, like.dtype)
        return self._kernels_on[key]

    def sample(self, hr_shape: torch.Size, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """Draw ``expert_index`` ``(B,)``: which expert's LR becomes ``batch["lr"]``."""
        return {
            "expert_index": torch.randint(self.grid.num_experts, (hr_shape[0],), generator=generator, device=device)
        }

    def degrade_all(self, hr: Tensor) -> Tensor:
        """``(B, 3, sH, sW)`` -> ``(B, E, 3, H, W)``: every expert kernel, blurred, decimated (not quantised)."""
        return ops.blur_decimate_bank(hr, self.expert_kernels(hr), self.scale, border=self.border)

    def apply(self, hr: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Degrade ``hr`` with every expert kernel; pick ``params["expert_index"]``'s LR as ``lr``."""
        lr_experts = self.degrade_all(hr)
        lr_experts = ops.quantize(lr_experts) if self.quantize else lr_experts.clamp(0, 1)
        idx = params["expert_index"].to(hr.device)
        rows = torch.arange(hr.shape[0], device=hr.device)
        kernel = self.expert_kernels(hr)[idx]
        out = {"hr": hr, "lr": lr_experts[rows, idx], "lr_experts": lr_experts, "kernel": kernel, "params": params}
        if self.scale == 4:
            out["hr_mid_experts"] = ops.blur_decimate_bank(hr, self.intermediate_kernels(hr), 2, border=self.border)
        return out


class MoESRKernelDegradation(Degradation):
    """ISE and KEN stages: one MoESR kernel per sample, uniform over the space MoESR supports; 8-bit LR.

    ``lambda1, lambda2 ~ U(lambda_range)`` (x2 variances; x4: times 5; sorted so that ``lambda1 >= lambda2``),
    ``theta ~ U(0, pi)``; kernel ``moesr_kernels(..., grid size, scale)`` (block-centred), optionally with
    DIV2KRK-style multiplicative noise, then ``ops.blur_decimate`` with phase 0 and quantisation. Batch:
    ``{"hr", "lr", "kernel": (B, k, k), "params": {"lambda1", "lambda2", "theta"[, "kernel_noise"]}}``.

    The default range is the space the official grid covers: its variances are the centres of five equal bins of
    ``[sqrt(0.6), sqrt(5)]`` in sigma, so the experts cover ``lambda`` in ``(0.6, 5)`` (x4: ``(3, 25)``), which is
    also DIV2KRK's range. (Sampling only between the outermost grid variances, 0.85 and 4.37, left about a third of
    DIV2KRK's kernels outside what KEN saw.)

    Args:
        scale: 2 or 4 (linked from the DataModule's ``scale``).
        lambda_range: ``(low, high)`` x2 variances of the sampled space (x4: times 5).
        kernel_noise: Upper bound ``n_max`` of DIV2KRK-style kernel noise: each kernel's taps times
            ``1 + U(-n, n)`` with ``n ~ U(0, n_max)`` per kernel, then re-centred on the block centre and normalised
            (``kernels.recentre_kernels``); 0: clean Gaussians.
        quantize: Round the LR to 8-bit levels.
        border: Padding of the blur (``ops.blur_decimate``'s ``border``).
    """

    def __init__(
        self,
        scale: int = 2,
        lambda_range: tuple[float, float] = SUPPORTED_X2_LAMBDAS,
        kernel_noise: float = 0.0,
        quantize: bool = True,
        border: str = "reflect",
    ) -> None:
        super().__init__(scale)
        if scale not in KERNEL_SIZES:
            raise ValueError(f"MoESR's kernels are defined for x2 and x4, got x{scale}")
        low, high = (float(v) for v in lambda_range)
        if not 0 < low <= high:
            raise ValueError(f"lambda_range must be (low, high) with 0 < low <= high, got {tuple(lambda_range)}")
        if kernel_noise < 0:
            raise ValueError(f"kernel_noise must be >= 0, got {kernel_noise}")
        factor = 1.0 if scale == 2 else X4_VARIANCE_FACTOR
        self.lambda_range = (low * factor, high * factor)
        self.kernel_size = KERNEL_SIZES[scale]
        self.phase = decimation_phase(self.kernel_size, scale, "block")
        self.kernel_noise = kernel_noise
        self.quantize = quantize
        self.border = border

    def sample(self, hr_shape: torch.Size, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """Draw ``lambda1 >= lambda2`` and ``theta`` ``(B,)`` (and ``kernel_noise`` ``(B, k, k)`` if enabled)."""
        lo, hi = self.lambda_range
        bsz = hr_shape[0]
        a = uniform(lo, hi, bsz, generator, device)
        b = uniform(lo, hi, bsz, generator, device)
        theta = uniform(0.0, math.pi, bsz, generator, device)
        params = {"lambda1": torch.maximum(a, b), "lambda2": torch.minimum(a, b), "theta": theta}
        if self.kernel_noise > 0:
            level = uniform(0.0, self.kernel_noise, bsz, generator, device)
            k = self.kernel_size
            params["kernel_noise"] = (2 * torch.rand(bsz, k, k, generator=generator, device=device) - 1) * level[
                :, None, None
            ]
        return params

    def kernels(self, params: dict[str, Tensor]) -> Tensor:
        """``(B, k, k)`` kernels of ``params`` (block-centred, sum 1)."""
        kernels = moesr_kernels(params["lambda1"], params["lambda2"], params["theta"], self.kernel_size, self.scale)
        if "kernel_noise" not in params:
            return kernels
        noisy = (kernels * (1 + params["kernel_noise"].to(kernels))).clamp_min(0)
        return recentre_kernels(noisy, kernel_mean(self.kernel_size, self.scale, "block"))

    def apply(self, hr: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Blur with each sample's kernel, decimate from pixel 0, quantise."""
        kernel = self.kernels({k: v.to(hr) for k, v in params.items()})
        lr = ops.blur_decimate(hr, kernel, self.scale, self.phase, border=self.border)
        lr = ops.quantize(lr) if self.quantize else lr.clamp(0, 1)
        return {"hr": hr, "lr": lr, "kernel": kernel, "params": params}

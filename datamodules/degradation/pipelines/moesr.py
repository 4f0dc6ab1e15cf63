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
from datamodules.degradation.kernels import decimation_phase
from datamodules.degradation.kernels.moesr import X2_LAMBDAS, MoESRGrid, moesr_kernels
from datamodules.degradation.pipelines.base import Degradation
from datamodules.degradation.samplers import uniform

_BORDERS = ("reflect", "replicate", "circular", "constant")


class GridDegradation(Degradation):
    """Experts stage: every HR crop blurred and decimated by **every** expert kernel (one batch trains all experts).

    Output batch::

        {"hr": (B, 3, sH, sW), "lr_experts": (B, E, 3, H, W), "lr": (B, 3, H, W) (the LR of a random expert,
         params["expert_index"], for the base validation and the image loggers), "kernel": (B, k, k) (its kernel),
         "params": {"expert_index": (B,)}}

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

    def sample(self, hr_shape: torch.Size, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """Draw ``expert_index`` ``(B,)``: which expert's LR becomes ``batch["lr"]``."""
        return {
            "expert_index": torch.randint(self.grid.num_experts, (hr_shape[0],), generator=generator, device=device)
        }

    def degrade_all(self, hr: Tensor) -> Tensor:
        """``(B, 3, sH, sW)`` -> ``(B, E, 3, H, W)``: every expert kernel, blurred, decimated (not quantised)."""
        kernels = self.grid.expert_kernels(hr.dtype).to(hr.device)
        return ops.blur_decimate_bank(hr, kernels, self.scale, border=self.border)

    def apply(self, hr: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Degrade ``hr`` with every expert kernel; pick ``params["expert_index"]``'s LR as ``lr``."""
        lr_experts = self.degrade_all(hr)
        lr_experts = ops.quantize(lr_experts) if self.quantize else lr_experts.clamp(0, 1)
        idx = params["expert_index"].to(hr.device)
        rows = torch.arange(hr.shape[0], device=hr.device)
        kernel = self.grid.expert_kernels(hr.dtype).to(hr.device)[idx]
        return {"hr": hr, "lr": lr_experts[rows, idx], "lr_experts": lr_experts, "kernel": kernel, "params": params}


class MoESRKernelDegradation(Degradation):
    """ISE and KEN stages: one MoESR kernel per sample, uniform over the space the grid covers; 8-bit LR.

    ``lambda1, lambda2 ~ U(min, max)`` of the grid's variances at this scale (sorted so that ``lambda1 >=
    lambda2``), ``theta ~ U(0, pi)``; kernel ``moesr_kernels(..., grid size, scale)`` (block-centred), then
    ``ops.blur_decimate`` with phase 0 and quantisation. Batch: ``{"hr", "lr", "kernel": (B, k, k), "params":
    {"lambda1", "lambda2", "theta"}: (B,)}``.

    Args:
        scale: 2 or 4 (linked from the DataModule's ``scale``).
        lambdas: The grid's x2 variances; only their minimum and maximum matter (the sampled range; x4: times 5).
        quantize: Round the LR to 8-bit levels.
        border: Padding of the blur (``ops.blur_decimate``'s ``border``).
    """

    def __init__(
        self, scale: int = 2, lambdas: Sequence[float] = X2_LAMBDAS, quantize: bool = True, border: str = "reflect"
    ) -> None:
        super().__init__(scale)
        self.grid = MoESRGrid(scale, lambdas)
        self.lambda_range = (min(self.grid.lambdas), max(self.grid.lambdas))
        self.kernel_size = self.grid.kernel_size
        self.phase = decimation_phase(self.kernel_size, scale, "block")
        self.quantize = quantize
        self.border = border

    def sample(self, hr_shape: torch.Size, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """Draw ``lambda1 >= lambda2`` and ``theta`` ``(B,)``."""
        lo, hi = self.lambda_range
        bsz = hr_shape[0]
        a = uniform(lo, hi, bsz, generator, device)
        b = uniform(lo, hi, bsz, generator, device)
        theta = uniform(0.0, math.pi, bsz, generator, device)
        return {"lambda1": torch.maximum(a, b), "lambda2": torch.minimum(a, b), "theta": theta}

    def kernels(self, params: dict[str, Tensor]) -> Tensor:
        """``(B, k, k)`` kernels of ``params``."""
        return moesr_kernels(params["lambda1"], params["lambda2"], params["theta"], self.kernel_size, self.scale)

    def apply(self, hr: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Blur with each sample's kernel, decimate from pixel 0, quantise."""
        kernel = self.kernels({k: v.to(hr) for k, v in params.items()})
        lr = ops.blur_decimate(hr, kernel, self.scale, self.phase, border=self.border)
        lr = ops.quantize(lr) if self.quantize else lr.clamp(0, 1)
        return {"hr": hr, "lr": lr, "kernel": kernel, "params": params}

"""MoESR stage 2: the Image Sharpness Evaluator (ISE) learns the local error of frozen experts' outputs (Eq. 6-7).

Each step: HR crops degraded by ``MoESRKernelDegradation`` (one kernel per crop, uniform over the supported
space); for every crop a random subset of ``experts_per_image`` grid kernels (drawn over the ``N`` grid kernels, so
the four input transforms are sampled too) is run through the frozen experts (batched: one ``ExpertBank`` call per
transform); ISE sees ``(SR, bicubic-upsampled LR)`` and is trained with L1 against ``ise_target`` (the squared error
to the HR crop, channel mean, average-pooled with a 49-pixel window at stride 8, aligned with ISE's output; Eq. 7),
or (``target="relative"``, the CPU recipe) against that error divided by the bicubic upsample's in the same window.

Recipe (paper Sec. 4.1): Adam, one-cycle with maximum learning rate 3e-4, 2e5 iterations, HR patches 128x128, batch
32; ISE widths 64, 64, 128, 256, 512. Deviations: Eq. 7 sums over all experts for every training image; we sample
``experts_per_image`` grid kernels per image (default 4; 0 = all ``N``), an unbiased estimate of that sum up to a
constant factor that fits the paper's batch of 32 crops in memory; the labels are squared errors of ``[0, 1]``
intensities times ``error_scale`` (default 1000; the paper states no unit; KEN standardises the errors, so the unit
does not reach it); by default ISE's first layer sees ``(10 (SR - up), up - 0.5)`` (``residual_gain``, an
invertible re-parametrisation of the official ``(SR, up)`` input; see ``nets.moesr.ISE``), measured better only at
the CPU size: ``configs/moesr/ise.yaml`` (the full recipe) sets ``residual_gain: 0``, the official input, and
``configs/moesr/cpu/ise.yaml`` 10; the CPU recipe trains on the ``"relative"`` target (see ``target``).

Validation (fixed crops, ``data.init_args.val_degradations`` fixed kernels per crop): the ISE errors of all ``N``
grid kernels (``grid_eval.grid_errors``); ``val/ise_top1`` (best-ISE grid kernel = the grid kernel nearest to the
true one, against ``val/ise_top1_chance`` = 1/N), ``val/ise_best_expert_top1``, ``val/ise_rank_corr``,
``val/ise_kernel_sae`` vs ``val/grid_kernel_sae``, and ``val/psnr_y`` of the best-ISE expert (MoESR with ISE's
choice, no KEN, no fine-tuning); see ``FrozenStagesSystem.log_grid_validation``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.core.optim import adam_one_cycle
from lightning_modules.moesr.frozen import FrozenStagesSystem
from lightning_modules.moesr.grid_eval import batch_index, grid_errors, grid_outputs, upsample
from lightning_modules.moesr.stages import DEFAULT_CKPTS
from lightning_modules.nets.moesr import ISE, ise_target

_SEED_STRIDE = 1_000_003


def ise_labels(
    sr: Tensor,
    hr: Tensor,
    up: Tensor,
    target: Literal["absolute", "relative"] = "absolute",
    error_scale: float = 1000.0,
    eps: float = 1e-4,
) -> Tensor:
    """ISE's training labels for ``K`` expert outputs per image.

    Args:
        sr: ``(B, K, 3, H, W)`` expert outputs.
        hr: ``(B, 3, H, W)`` ground truth.
        up: ``(B, 3, H, W)`` bicubic upsample of the LR.
        target: ``"absolute"``: ``error_scale * AP(delta_i)`` (Eq. 7); ``"relative"``:
            ``(AP(delta_i) + eps) / (AP(delta_bicubic) + eps)``.
        error_scale: Factor of the absolute labels.
        eps: Offset of the relative labels (squared ``[0, 1]`` intensities).

    Returns:
        ``(B, K, 1, h', w')`` on ISE's output grid.
    """
    bsz, k = sr.shape[:2]
    err = ise_target(sr.flatten(0, 1), hr[:, None].expand(bsz, k, *hr.shape[1:]).flatten(0, 1))
    err = err.unflatten(0, (bsz, k))
    if target == "absolute":
        return err * error_scale
    if target == "relative":
        return (err + eps) / (ise_target(up.clamp(0, 1), hr)[:, None] + eps)
    raise ValueError(f"target must be 'absolute' or 'relative', got {target!r}")


class MoESRISE(FrozenStagesSystem):
    """ISE trained on frozen experts' outputs for random MoESR kernels (Eq. 7); writes ``ise_x{scale}/last.ckpt``.

    State keys ``ise.*`` (the frozen experts are not stored: they are read from ``experts_ckpt``); hyper-parameters
    include ``ise_channels`` and ``experts_ckpt``.

    Args:
        experts_ckpt: Experts checkpoint (``python main.py fit -c configs/moesr/experts.yaml``); ``{scale}`` is filled
            with the model's scale. The grid and widths come from its hyper-parameters.
        experts_per_image: Grid kernels whose experts super-resolve each training crop (a random subset per crop;
            0: all ``N``, Eq. 7 as written).
        ise_channels: Widths of ISE's five hidden convolutions (paper: 64, 64, 128, 256, 512).
        residual_gain: ISE's first layer sees ``(residual_gain * (SR - up), up - 0.5)``; 0 is the official
            ``(SR, up)`` (same function class and parameters; see ``nets.moesr.ISE``; default 10).
        lr: Maximum learning rate of the one-cycle schedule (paper: 3e-4).
        weight_decay: Adam weight decay (not in the paper: 0).
        error_scale: Factor on the squared-error labels (of ``[0, 1]`` intensities). The default 1000 puts them near
            1 (30 dB PSNR = 1e-3), where Adam resolves the few-percent differences between experts; with raw units
            (1) ISE did not even learn the ranking of 4 fixed images in 300 steps in our tests.
        target: ``"absolute"``: Eq. 7, the pooled squared error (times ``error_scale``); ``"relative"``: the same
            pooled error divided by that of the bicubic upsample of the same LR in the same window,
            ``(AP(delta_i) + eps) / (AP(delta_bicubic) + eps)`` (not in the paper). The ratio takes out how hard a
            window is (texture, edges), which varies far more between windows than between experts, and leaves what
            separates the experts; it does not depend on which experts are sampled. KEN standardises the errors and
            Eq. 12 takes the minimum, so both see only the ranking. At a CPU budget (600 steps of 32 crops x 6
            experts, residual input) the Spearman correlation of ISE and true errors over a 27-kernel grid reached
            0.38 with ``"relative"`` and 0.02 with ``"absolute"``.
        relative_eps: ``eps`` of the ``"relative"`` target, in squared ``[0, 1]`` intensities (1e-4: 40 dB), so that
            flat windows, where every output is near-perfect, give ratios near 1.
        seed: Seed of the per-crop kernel subsets (combined with the rank and the global step).
        val_max_batch: Most (image, kernel) pairs per expert/ISE call in validation (memory); a runtime option.
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    frozen_parts = ("bank",)

    def __init__(
        self,
        experts_ckpt: str = DEFAULT_CKPTS["experts"],
        experts_per_image: int = 4,
        ise_channels: Sequence[int] = (64, 64, 128, 256, 512),
        residual_gain: float = 10.0,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        error_scale: float = 1000.0,
        target: Literal["absolute", "relative"] = "absolute",
        relative_eps: float = 1e-4,
        seed: int = 0,
        val_max_batch: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(experts_ckpt=experts_ckpt, val_max_batch=val_max_batch, **kwargs)
        self.save_hyperparameters(ignore=list(self.runtime_hparams))
        if target not in ("absolute", "relative"):
            raise ValueError(f"target must be 'absolute' or 'relative', got {target!r}")
        if relative_eps <= 0:
            raise ValueError(f"relative_eps must be > 0, got {relative_eps}")
        if experts_per_image < 0:
            raise ValueError(f"experts_per_image must be >= 0 (0: all grid kernels), got {experts_per_image}")
        self.ise = ISE(ise_channels, residual_gain)

    # ----------------------------------------------------------------------------------------------- forward
    def errors(self, lr: Tensor, return_outputs: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """ISE errors ``(B, N)`` of all grid kernels on ``lr`` (and the SR images ``(B, N, 3, sh, sw)``)."""
        return grid_errors(self.bank, self.ise, self.grid, lr, self.val_max_batch, return_outputs)

    def estimate_kernel(self, lr: Tensor) -> Tensor:
        """The grid kernel of the lowest ISE error, ``(B, k, k)``."""
        return self.grid_kernels(lr)[self.errors(lr).argmin(dim=1)]

    def super_resolve(self, lr: Tensor) -> Tensor:
        """The output of the expert of the lowest ISE error (per call: tiles choose on their own)."""
        errors, outputs = self.errors(lr, return_outputs=True)
        return outputs[batch_index(lr), errors.argmin(dim=1)]

    # ----------------------------------------------------------------------------------------------- training
    def _subsets(self, bsz: int, device: torch.device) -> Tensor | None:
        n = self.grid.num_kernels
        k = self.hparams.experts_per_image
        if k == 0 or k >= n:
            return None
        seed = self.hparams.seed + _SEED_STRIDE * (self.global_rank + self.trainer.world_size * self.global_step)
        gen = torch.Generator(device=device).manual_seed(seed)
        return torch.rand(bsz, n, generator=gen, device=device).argsort(dim=1)[:, :k]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Eq. 7 on a random subset of grid kernels per crop; logs ``train/loss``."""
        hr, lr = batch["hr"], batch["lr"]
        bsz = hr.shape[0]
        idx = self._subsets(bsz, lr.device)
        hp = self.hparams
        with torch.no_grad():
            sr = grid_outputs(self.bank, self.grid, lr, idx)  # (B, K, 3, H, W)
            up = upsample(lr, self.scale)
            target = ise_labels(sr, hr, up, hp.target, hp.error_scale, hp.relative_eps).flatten(0, 1)
            sr = sr.flatten(0, 1)
            up = up[:, None].expand(-1, target.shape[0] // bsz, -1, -1, -1).flatten(0, 1)
        loss = F.l1_loss(self.ise(sr, up), target)
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        return loss

    def configure_optimizers(self) -> dict:
        """Adam on ISE with a one-cycle schedule over ``trainer.estimated_stepping_batches``."""
        hp = self.hparams
        return adam_one_cycle(self.ise.parameters(), hp.lr, hp.weight_decay, self.trainer.estimated_stepping_batches)

    # --------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """ISE's choice over the whole grid on the fixed validation crops (see the module docstring)."""
        errors, outputs = self.errors(batch["lr"], return_outputs=True)
        self.log_grid_validation(batch, errors, outputs, errors.argmin(dim=1))

"""Base of MoESR's ISE and KEN stages: frozen earlier stages from their checkpoints, and the grid validation."""

from __future__ import annotations

from torch import Tensor
from torchmetrics import MeanMetric

from datamodules.degradation.kernels.moesr import MoESRGrid
from datamodules.degradation.pipelines.moesr import MoESRKernelDegradation
from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.stages import FrozenParts, exclude_from_checkpoint, freeze
from lightning_modules.metrics import KernelSAE
from lightning_modules.moesr.grid_eval import batch_index, rank_correlation
from lightning_modules.moesr.stages import DEFAULT_CKPTS, check_data_kernels, load_experts
from lightning_modules.nets.moesr import ExpertBank


class FrozenStagesSystem(FrozenParts, SRSystem):
    """Base of the stages that run frozen experts (and ISE): loading, checkpoint exclusion, data checks, metrics.

    The frozen parts (class attribute ``frozen_parts``) are read at ``setup`` from their own checkpoints (the grid and
    widths from the experts checkpoint's hyper-parameters), registered as submodules so they follow the model to its
    device, kept in eval mode (``FrozenParts``) and kept out of this stage's checkpoint (``exclude_from_checkpoint``).

    Validation batches arrive degraded by the DataModule; with ``data.init_args.val_degradations: n`` every
    validation crop comes ``n`` times, each with its own fixed kernel, which makes the grid metrics less coarse on
    small validation sets.

    Args:
        experts_ckpt: Experts checkpoint; ``{scale}`` is filled with the model's scale.
        val_max_batch: Most (image, kernel) pairs per expert/ISE call in validation and inference (memory; ``None``:
            one call per shape class of transforms). A runtime option.
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    frozen_parts: tuple[str, ...] = ("bank",)
    runtime_hparams: tuple[str, ...] = (*RUNTIME_HPARAMS, "val_max_batch")

    def __init__(
        self, experts_ckpt: str = DEFAULT_CKPTS["experts"], val_max_batch: int | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.val_max_batch = val_max_batch
        self.bank: ExpertBank | None = None
        self.grid: MoESRGrid | None = None
        exclude_from_checkpoint(self, self.frozen_parts)
        self.val_top1 = MeanMetric()
        self.val_best_expert_top1 = MeanMetric()
        self.val_rank_corr = MeanMetric()
        self.val_ise_kernel_sae = KernelSAE()
        self.val_grid_kernel_sae = KernelSAE()

    # ------------------------------------------------------------------------------------------------ loading
    @property
    def experts_ckpt_path(self) -> str:
        """``experts_ckpt`` with ``{scale}`` filled in."""
        return self.hparams.experts_ckpt.format(scale=self.scale)

    def load_frozen(self) -> None:
        """Load (and freeze) the experts; subclasses load more. Stops with a message if a checkpoint is missing."""
        bank, grid = load_experts(self.experts_ckpt_path, self.scale)
        self.grid = grid
        self.bank = freeze(bank)

    def setup(self, stage: str) -> None:
        """Check the scale, load the frozen stages, check that the data's kernels fit the experts' grid."""
        super().setup(stage)
        if self.bank is None:
            self.load_frozen()
        degradation = getattr(getattr(self.trainer, "datamodule", None), "degradation", None)
        if stage in ("fit", "validate") and degradation is not None:
            check_data_kernels(degradation, self.grid, MoESRKernelDegradation, type(self).__name__)

    # ------------------------------------------------------------------------------------------- grid helpers
    def grid_kernels(self, like: Tensor) -> Tensor:
        """``(N, k, k)`` grid kernels on ``like``'s device and dtype."""
        return self.grid.kernels(like.dtype).to(like.device)

    def log_grid_validation(self, batch: dict, errors: Tensor, outputs: Tensor, choice: Tensor) -> None:
        """Log the metrics of a grid selection ``choice`` ``(B,)`` (SR metrics of its expert, ISE ranking metrics).

        ``val/psnr_y``, ``val/ssim_y``: the chosen expert's output (no fine-tuning); ``val/ise_top1``: the best-ISE
        grid kernel is the grid kernel nearest (in SAE) to the true kernel, next to ``val/ise_top1_chance`` = 1/N;
        ``val/ise_best_expert_top1``: the best-ISE kernel's expert is the one with the lowest true error on this
        crop; ``val/ise_rank_corr``: Spearman correlation of ISE errors and true errors over the grid;
        ``val/ise_kernel_sae``: SAE of the best-ISE grid kernel; ``val/grid_kernel_sae``: SAE of the nearest grid
        kernel (the best any grid choice can do).

        Args:
            batch: ``{"hr": (B, 3, H, W), "lr": (B, 3, h, w), "kernel": (B, k, k)}``.
            errors: ``(B, N)`` ISE errors of the grid.
            outputs: ``(B, N, 3, H, W)`` the grid's expert outputs.
            choice: ``(B,)`` long grid kernel chosen per image.
        """
        hr, lr, kernel = batch["hr"], batch["lr"], batch["kernel"]
        bsz = hr.shape[0]
        sr = outputs[batch_index(hr), choice].clamp(0, 1)
        self.update_sr_metrics("val", sr, lr, hr)

        best_ise = errors.argmin(dim=1)
        true_err = (outputs - hr[:, None]).square().mean(dim=(2, 3, 4))
        nearest = self.grid.kernel_nearest(kernel)
        grid_k = self.grid_kernels(kernel)
        self.val_top1.update((best_ise == nearest).float())
        self.val_best_expert_top1.update((best_ise == true_err.argmin(dim=1)).float())
        self.val_rank_corr.update(rank_correlation(errors, true_err))
        self.val_ise_kernel_sae.update(grid_k[best_ise], kernel)
        self.val_grid_kernel_sae.update(grid_k[nearest], kernel)
        self.log("val/ise_top1", self.val_top1, on_epoch=True, batch_size=bsz, prog_bar=True)
        self.log("val/ise_top1_chance", 1.0 / self.grid.num_kernels, on_epoch=True, batch_size=bsz)
        self.log("val/ise_best_expert_top1", self.val_best_expert_top1, on_epoch=True, batch_size=bsz)
        self.log("val/ise_rank_corr", self.val_rank_corr, on_epoch=True, batch_size=bsz)
        self.log("val/ise_kernel_sae", self.val_ise_kernel_sae, on_epoch=True, batch_size=bsz)
        self.log("val/grid_kernel_sae", self.val_grid_kernel_sae, on_epoch=True, batch_size=bsz)

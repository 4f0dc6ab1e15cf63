"""MoESR stage 1: all kernel-specific experts of the grid trained at once (paper Sec. 3.2, Eq. 5; Sec. 4.1).

Each step takes one batch of HR crops, degraded by ``GridDegradation`` with every expert kernel
(``batch["lr_experts"]`` ``(B, E, 3, h, w)``), and trains expert ``i`` on its own LR with its own L1 loss (Eq. 5).
The ``E`` experts run as one grouped convolution (``nets.moesr.ExpertBank``). The loss is the **sum** over experts
of each expert's mean L1, so every expert gets exactly the gradient it would get if trained alone on these crops
(and Adam, being per parameter, makes this the same as ``E`` separate trainings on the same crops).

At x4 each expert is two chained x2 stages; ``intermediate_weight`` (default 5) adds the intermediate term of x4
fine-tuning (Sec. 3.4) to expert training: ``5 * L1(U1(LR_i), down_{k_i/5, s2}(HR))``, the first stage against the
HR image degraded by the expert's intermediate x2 kernel (``batch["hr_mid_experts"]``). Not in the paper's expert
training (deviation): without it, fine-tuning asks U1 for an output it was never trained to produce.

Recipe (paper Sec. 4.1): Adam, one-cycle schedule with maximum learning rate 3e-4, 3e4 iterations, HR patches
128x128 (``patch_size: 64`` at x2, 32 at x4), batch 32; 12 layers x 64 channels. Deviations: the paper trains each
expert as its own run (on DIV2K's 800 images); here all experts of the grid share every batch of crops (each with
its own kernel), which changes nothing per expert but the crops it sees. LR images are quantised to 8 bit.

Validation (``val/psnr_y``, ``val/ssim_y``): each validation crop is degraded with the kernel of a random expert
(``params["expert_index"]``, fixed per crop) and super-resolved by **that** expert (the true-kernel expert, i.e. MoESR
with a perfect kernel estimate and no fine-tuning); ``val/bicubic_*`` are MATLAB bicubic on the same LR.
``val/expert_psnr`` is the stage's own metric: the PSNR-Y of every expert on its own kernel, averaged over experts
and crops, next to ``val/expert_bicubic_psnr`` (MATLAB bicubic on the same LR) and their difference
``val/expert_gain``.

``super_resolve`` (test / predict / image logging, where no kernel is known) runs one fixed expert,
``eval_expert`` (a runtime option): the blind pipeline is ``lightning_modules.moesr.inference.MoESR``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from datamodules.degradation.kernels.moesr import X2_LAMBDAS, MoESRGrid
from datamodules.degradation.ops import resize
from datamodules.degradation.pipelines.moesr import GridDegradation
from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.optim import adam_one_cycle
from lightning_modules.metrics import PSNRY
from lightning_modules.moesr.stages import check_data_kernels
from lightning_modules.nets.moesr import ExpertBank

EXPERTS_RUNTIME_HPARAMS = (*RUNTIME_HPARAMS, "eval_expert")


class MoESRExperts(SRSystem):
    """All experts of MoESR's grid trained together on ``GridDegradation`` batches (L1, Adam, one-cycle).

    Writes ``checkpoints/moesr/experts_x{scale}/last.ckpt`` (configs/moesr/experts.yaml): state keys ``bank.*``,
    hyper-parameters ``lambdas``, ``num_layers``, ``channels``, ``scale``, which the ISE/KEN stages and inference read.

    Args:
        lambdas: The grid's x2 variances (official: 0.85, 1.47, 2.27, 3.23, 4.37 -> 85 kernels, 25 experts; x4 uses
            5 times these). Stated only here: the CLI passes them to the data's ``GridDegradation``
            (``BlindSRCLI``); a system built by hand is checked at set-up.
        num_layers: Convolutions per expert stage (paper: 12).
        channels: Feature maps per hidden layer (paper: 64).
        lr: Maximum learning rate of the one-cycle schedule (paper: 3e-4).
        weight_decay: Adam weight decay (not in the paper: 0).
        intermediate_weight: x4 only: weight of the intermediate term (see the module docstring; 0: the final output
            alone, as the paper).
        expert_chunk: Experts per forward/backward pass within a step (gradients accumulate over the chunks before
            the optimiser step, so the update is the same); ``None``: all experts in one pass. Lowers peak memory
            (full recipe, all 25 experts at once: about 40 GB of activations).
        zero_last: Initialise the last convolution of every expert stage to zero, so that training starts from the
            PyTorch bicubic upsample (not in the paper: Kaiming throughout). Short CPU runs learn much faster with it.
        eval_expert: Expert used by ``super_resolve`` on images of unknown kernel (test/predict/image logging); a
            runtime option.
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    def __init__(
        self,
        lambdas: Sequence[float] = X2_LAMBDAS,
        num_layers: int = 12,
        channels: int = 64,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        intermediate_weight: float = 5.0,
        expert_chunk: int | None = None,
        zero_last: bool = False,
        eval_expert: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(EXPERTS_RUNTIME_HPARAMS))
        self.grid = MoESRGrid(self.scale, lambdas)
        if not 0 <= eval_expert < self.grid.num_experts:
            raise ValueError(f"eval_expert must be in [0, {self.grid.num_experts}), got {eval_expert}")
        if expert_chunk is not None and expert_chunk < 1:
            raise ValueError(f"expert_chunk must be None or >= 1, got {expert_chunk}")
        self.eval_expert = eval_expert
        self.bank = ExpertBank(self.grid.num_experts, self.scale, num_layers, channels, zero_last=zero_last)
        self.automatic_optimization = False  # chunks of experts accumulate gradients before one step
        self.val_expert_psnr = PSNRY(self.scale, self.metric_protocol)
        self.val_expert_bicubic_psnr = PSNRY(self.scale, self.metric_protocol)

    # ------------------------------------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        """Check the scale and that the data degrades with this grid (``GridDegradation`` with the same lambdas)."""
        super().setup(stage)
        degradation = getattr(getattr(self.trainer, "datamodule", None), "degradation", None)
        if stage == "fit" or (stage == "validate" and degradation is not None):
            check_data_kernels(degradation, self.grid, GridDegradation, type(self).__name__)

    # ----------------------------------------------------------------------------------------------- forward
    def super_resolve(self, lr: Tensor) -> Tensor:
        """Super-resolve ``lr`` ``(B, 3, h, w)`` with expert ``eval_expert`` (the kernel is unknown here)."""
        idx = torch.tensor([self.eval_expert], device=lr.device)
        return self.bank(lr[:, None], idx)[:, 0]

    # ----------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Every expert on its own LR, each with its own L1 (summed); one optimiser step; logs ``train/loss``.

        ``train/loss`` is the mean over experts of their loss (the sum divided by ``E``; at x4 with the intermediate
        term).
        """
        opt = self.optimizers()
        sched = self.lr_schedulers()
        hr, lr_experts = batch["hr"], batch["lr_experts"]
        num = self.grid.num_experts
        chunk = self.hparams.expert_chunk or num
        opt.zero_grad(set_to_none=True)
        total = hr.new_zeros(())
        for start in range(0, num, chunk):
            idx = torch.arange(start, min(num, start + chunk), device=hr.device)
            stages = self.bank.stage_outputs(lr_experts[:, start : start + chunk], None if chunk == num else idx)
            loss = (stages[-1] - hr[:, None]).abs().mean(dim=(0, 2, 3, 4)).sum()
            if self.scale == 4 and self.hparams.intermediate_weight > 0:
                mid = batch["hr_mid_experts"][:, start : start + chunk]
                loss = loss + self.hparams.intermediate_weight * (stages[0] - mid).abs().mean(dim=(0, 2, 3, 4)).sum()
            self.manual_backward(loss)
            total = total + loss.detach()
        opt.step()
        sched.step()
        mean_loss = total / num
        self.log("train/loss", mean_loss, prog_bar=True, batch_size=hr.shape[0])
        return mean_loss

    def configure_optimizers(self) -> dict:
        """Adam with a one-cycle schedule over ``trainer.estimated_stepping_batches`` (stepped every batch)."""
        hp = self.hparams
        return adam_one_cycle(self.bank.parameters(), hp.lr, hp.weight_decay, self.trainer.estimated_stepping_batches)

    # --------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """True-kernel expert on ``lr`` (``val/psnr_y``), and every expert on its own kernel (``val/expert_psnr``)."""
        hr, lr = batch["hr"], batch["lr"]
        bsz = hr.shape[0]
        if "lr_experts" not in batch or "expert_index" not in batch.get("params", {}):
            return super().validation_step(batch, batch_idx)  # no grid degradation: the fixed expert
        sr = self.bank(lr[:, None], batch["params"]["expert_index"][:, None])[:, 0].clamp(0, 1)
        self.update_sr_metrics("val", sr, lr, hr)

        lr_experts = batch["lr_experts"]
        num = lr_experts.shape[1]
        target = hr[:, None].expand(bsz, num, *hr.shape[1:]).flatten(0, 1)
        all_sr = self.bank(lr_experts).clamp(0, 1).flatten(0, 1)
        bicubic = resize(lr_experts.flatten(0, 1), scale=self.scale, convention="matlab").clamp(0, 1)
        self.val_expert_psnr.update(all_sr, target)
        self.val_expert_bicubic_psnr.update(bicubic, target)
        self.log("val/expert_psnr", self.val_expert_psnr, on_epoch=True, batch_size=bsz * num, prog_bar=True)
        self.log("val/expert_bicubic_psnr", self.val_expert_bicubic_psnr, on_epoch=True, batch_size=bsz * num)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/expert_gain`` = ``val/expert_psnr - val/expert_bicubic_psnr``."""
        if self.val_expert_psnr.update_count and self.val_expert_bicubic_psnr.update_count:
            gain = self.val_expert_psnr.compute() - self.val_expert_bicubic_psnr.compute()
            self.log("val/expert_gain", gain, sync_dist=False)

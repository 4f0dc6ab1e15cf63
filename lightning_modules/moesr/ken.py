"""MoESR stage 3: the Kernel Estimation Network (KEN) learns kernel parameters from the grid's ISE errors (Eq. 8-9).

Each step: HR crops degraded by ``MoESRKernelDegradation``; the frozen experts super-resolve every crop with every
grid kernel (through the transforms) and the frozen ISE scores them (``grid_eval.grid_errors``, ``(B, N)``);
KEN maps the errors to ``(lambda1, lambda2, theta)``; the differentiable generator ``moesr_kernels`` (Eq. 9's ``K``)
turns them into kernel pixels; the loss is the L1 distance (sum over pixels, mean over the batch: the kernel SAE)
to the true kernel's pixels.

Recipe (paper Sec. 4.1): Adam, one-cycle with maximum learning rate 1e-3, 1e5 iterations, batch 32 (HR patches as
for ISE: 128x128). Option (not in the paper; off by default): ``buffer_size`` > 0 keeps the last ``buffer_size``
computed ``(errors, kernel)`` pairs and ``updates_per_batch`` KEN updates are made per computed batch, each on a
random minibatch of the buffer. Experts and ISE are frozen, so the errors are a fixed function of the crop and
re-using them is the same as precomputing a training set: on a CPU budget it gives KEN many more updates for the
same (expensive) expert passes. With it, ``max_steps`` counts KEN updates (optimizer steps) and
``val_check_interval`` counts computed batches; the buffer is not saved in checkpoints.

Validation (``data.init_args.val_degradations`` fixed kernels per crop): ``val/kernel_sae``, ``val/kernel_l2`` of
KEN's kernel, against ``val/ise_kernel_sae`` (the best-ISE grid kernel, which KEN should beat) and
``val/grid_kernel_sae`` (the nearest grid kernel); ``val/nearest_kernel_sae`` of the grid kernel that Eq. 12 selects
from KEN's estimate, whose expert gives ``val/psnr_y`` (MoESR without fine-tuning); the ISE metrics of
``FrozenStagesSystem.log_grid_validation``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from datamodules.degradation.kernels.moesr import MoESRGrid
from lightning_modules.core.optim import adam_one_cycle
from lightning_modules.core.stages import freeze
from lightning_modules.metrics import KernelSAE, make_kernel_metrics
from lightning_modules.moesr.frozen import FrozenStagesSystem
from lightning_modules.moesr.grid_eval import batch_index, grid_errors
from lightning_modules.moesr.kernels import ken_kernels
from lightning_modules.moesr.stages import DEFAULT_CKPTS, experts_spec, load_ise
from lightning_modules.nets.moesr import ISE, KEN


class MoESRKEN(FrozenStagesSystem):
    """KEN trained on the ISE errors of the frozen experts (Eq. 9); writes ``ken_x{scale}/last.ckpt`` (keys ``ken.*``).

    The grid (hence KEN's input size ``N``) comes from the experts checkpoint, ISE's widths from the ISE checkpoint.
    KEN is built at construction when the experts checkpoint exists (so ``--ckpt_path`` checks see its keys), else
    at ``setup``, which stops with a message naming the missing file and the command that writes it.

    Args:
        experts_ckpt: Experts checkpoint (``python main.py fit -c configs/moesr/experts.yaml``); ``{scale}`` filled in.
        ise_ckpt: ISE checkpoint (``python main.py fit -c configs/moesr/ise.yaml``); ``{scale}`` filled in.
        hidden: Width of KEN's two hidden layers (paper: 50).
        init_at_grid_centre: Start KEN's variances at the mean of the grid's and its angle at ``pi/2`` (output
            biases; not in the paper). With PyTorch's default initialisation a variance output that starts below the
            0.01 clamp gets no gradient and never recovers (``nets.moesr.KEN``).
        lr: Maximum learning rate of the one-cycle schedule (paper: 1e-3).
        weight_decay: Adam weight decay (not in the paper: 0).
        buffer_size: Computed ``(errors, kernel)`` pairs kept for re-use (0: none, the paper's recipe).
        updates_per_batch: KEN updates per computed batch, on random minibatches of the buffer (needs
            ``buffer_size`` > 0 when > 1).
        seed: Seed of the buffer minibatches.
        val_max_batch: Most (image, kernel) pairs per expert/ISE call (memory); a runtime option.
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    frozen_parts = ("bank", "ise")

    def __init__(
        self,
        experts_ckpt: str = DEFAULT_CKPTS["experts"],
        ise_ckpt: str = DEFAULT_CKPTS["ise"],
        hidden: int = 50,
        init_at_grid_centre: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        buffer_size: int = 0,
        updates_per_batch: int = 1,
        seed: int = 0,
        val_max_batch: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(experts_ckpt=experts_ckpt, val_max_batch=val_max_batch, **kwargs)
        self.save_hyperparameters(ignore=list(self.runtime_hparams))
        if updates_per_batch < 1 or buffer_size < 0 or (updates_per_batch > 1 and buffer_size == 0):
            raise ValueError(
                f"updates_per_batch ({updates_per_batch}) must be >= 1, and > 1 only with a buffer_size > 0 "
                f"(got {buffer_size})"
            )
        self.ise: ISE | None = None
        self.ken: KEN | None = None
        if Path(self.experts_ckpt_path).is_file():
            self.ken = self._build_ken(experts_spec(self.experts_ckpt_path, self.scale).grid)
        self.automatic_optimization = False  # several KEN updates per computed batch (buffer option)
        self.val_kernel_metrics = make_kernel_metrics(prefix="val/")
        self.val_nearest_kernel_sae = KernelSAE()
        self._buffer: tuple[Tensor, Tensor] | None = None
        self._buffer_fill = 0
        self._buffer_next = 0

    def _build_ken(self, grid: MoESRGrid) -> KEN:
        mid = sum(grid.lambdas) / len(grid.lambdas) if self.hparams.init_at_grid_centre else None
        return KEN(grid.num_kernels, self.hparams.hidden, init_lambda=mid)

    @property
    def ise_ckpt_path(self) -> str:
        """``ise_ckpt`` with ``{scale}`` filled in."""
        return self.hparams.ise_ckpt.format(scale=self.scale)

    def load_frozen(self) -> None:
        """Load and freeze experts and ISE; build KEN for the grid if not built yet (or check its size)."""
        super().load_frozen()
        self.ise = freeze(load_ise(self.ise_ckpt_path, self.scale))
        if self.ken is None:
            self.ken = self._build_ken(self.grid)
        elif self.ken.num_kernels != self.grid.num_kernels:
            raise ValueError(f"KEN was built for {self.ken.num_kernels} kernels, the experts' grid has {self.grid}")

    # ----------------------------------------------------------------------------------------------- forward
    def errors(self, lr: Tensor, return_outputs: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """ISE errors ``(B, N)`` of all grid kernels on ``lr`` (and the SR images ``(B, N, 3, sh, sw)``)."""
        return grid_errors(self.bank, self.ise, self.grid, lr, self.val_max_batch, return_outputs)

    def kernels_of(self, params: Tensor) -> Tensor:
        """``(B, 3)`` KEN output -> ``(B, k, k)`` kernels of the grid's size (Eq. 9's ``K``, differentiable)."""
        return ken_kernels(params, self.grid.kernel_size, self.scale)

    def estimate(self, lr: Tensor) -> Tensor:
        """KEN's ``(lambda1, lambda2, theta)`` ``(B, 3)`` for ``lr``."""
        return self.ken(self.errors(lr))

    def estimate_kernel(self, lr: Tensor) -> Tensor:
        """KEN's kernel ``(B, k, k)``."""
        return self.kernels_of(self.estimate(lr))

    def super_resolve(self, lr: Tensor) -> Tensor:
        """The output of the expert Eq. 12 selects from KEN's estimate (no fine-tuning; per call/tile)."""
        errors, outputs = self.errors(lr, return_outputs=True)
        choice = self.grid.nearest(self.ken(errors))
        return outputs[batch_index(lr), choice]

    # ----------------------------------------------------------------------------------------------- training
    def _push(self, errors: Tensor, kernel: Tensor) -> None:
        size = self.hparams.buffer_size
        if self._buffer is None or self._buffer[0].device != errors.device:
            self._buffer = (errors.new_zeros(size, errors.shape[1]), kernel.new_zeros(size, *kernel.shape[1:]))
            self._buffer_fill = self._buffer_next = 0
        pos = (self._buffer_next + torch.arange(errors.shape[0], device=errors.device)) % size
        self._buffer[0][pos] = errors[-size:] if errors.shape[0] > size else errors
        self._buffer[1][pos] = kernel[-size:] if kernel.shape[0] > size else kernel
        self._buffer_next = int((self._buffer_next + errors.shape[0]) % size)
        self._buffer_fill = min(size, self._buffer_fill + errors.shape[0])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Errors of the fresh batch, then ``updates_per_batch`` KEN updates; logs ``train/loss`` (kernel SAE)."""
        opt = self.optimizers()
        sched = self.lr_schedulers()
        kernel = batch["kernel"]
        with torch.no_grad():
            errors = self.errors(batch["lr"])
        bsz = errors.shape[0]
        updates = self.hparams.updates_per_batch
        if self.hparams.buffer_size > 0:
            self._push(errors, kernel)
            gen = torch.Generator(device=errors.device).manual_seed(self.hparams.seed + self.global_step)
        total = errors.new_zeros(())
        done = 0
        for u in range(updates):
            if u > 0 and self.trainer.max_steps > 0 and self.global_step >= self.trainer.max_steps:
                break
            if u == 0:
                err, k_true = errors, kernel
            else:
                pick = torch.randint(self._buffer_fill, (bsz,), generator=gen, device=errors.device)
                err, k_true = self._buffer[0][pick], self._buffer[1][pick]
            loss = (self.kernels_of(self.ken(err)) - k_true).abs().sum(dim=(-2, -1)).mean()
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()
            if sched.last_epoch < sched.total_steps:
                sched.step()
            total = total + loss.detach()
            done += 1
        mean_loss = total / done
        self.log("train/loss", mean_loss, prog_bar=True, batch_size=bsz)
        return mean_loss

    def configure_optimizers(self) -> dict:
        """Adam on KEN with a one-cycle schedule over all KEN updates."""
        hp, trainer = self.hparams, self.trainer
        total = (
            trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches * hp.updates_per_batch
        )
        return adam_one_cycle(self.ken.parameters(), hp.lr, hp.weight_decay, total)

    # --------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """KEN's kernel against the true one and against the best-ISE grid kernel; Eq. 12's expert for SR."""
        errors, outputs = self.errors(batch["lr"], return_outputs=True)
        params = self.ken(errors)
        choice = self.grid.nearest(params)
        kernel = batch["kernel"]
        bsz = kernel.shape[0]
        self.val_kernel_metrics.update(self.kernels_of(params), kernel)
        self.val_nearest_kernel_sae.update(self.grid_kernels(kernel)[choice], kernel)
        self.log_dict(self.val_kernel_metrics, on_epoch=True, batch_size=bsz, prog_bar=True)
        self.log("val/nearest_kernel_sae", self.val_nearest_kernel_sae, on_epoch=True, batch_size=bsz)
        self.log_grid_validation(batch, errors, outputs, choice)

"""KOALAnet stage 1: the downsampling network alone, learning per-pixel degradation kernels.

Loss (official ``training_stage 1``): ``L1(LR, local_downsample(HR, normalize(k_hat)))`` (the LR reconstructed from
the HR with the predicted per-LR-pixel 20x20 kernels) ``+ L1(mean over pixels of normalize(k_hat), k_gt)`` (the
native 20x20 ground truth of the batch), the first in ``[-1, 1]`` image units, both means over elements, weights 1.
A kernel estimator: ``test`` reports kernel accuracy (``test/kernel_sae``, ``test/kernel_l2``, ...) next to the
mean training kernel's (``test/mean_kernel_*``), ``super_resolve`` refuses (use stage 3).
"""

from __future__ import annotations

from torch import Tensor

from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.koalanet.common import (
    adam_with_decay,
    block_kernel,
    kernel_losses,
    mean_kernel,
    mean_training_kernel,
    pad_to_multiple,
    to_signed,
)
from lightning_modules.metrics import make_kernel_metrics
from lightning_modules.nets.koalanet import KOALADownsamplingNet


class KOALADownsamplingSystem(SRSystem):
    """Trains KOALAnet's downsampling ResU-Net on (HR, LR, kernel) batches of KOALAnet's degradation.

    Args:
        width: Channels of the first level (64; the levels have ``width * (1, 2, 4)``).
        lr: Adam learning rate (1e-4), divided by 10 at 80 % and 90 % of ``max_steps``.
        recon_weight: Weight of the LR reconstruction L1.
        kernel_weight: Weight of the mean-kernel L1.
        **kwargs: ``SRSystem`` arguments (scale, output folder).
    """

    def __init__(
        self, width: int = 64, lr: float = 1e-4, recon_weight: float = 1.0, kernel_weight: float = 1.0, **kwargs
    ) -> None:
        kwargs.setdefault("scale", 4)
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(RUNTIME_HPARAMS))
        self.net = KOALADownsamplingNet(self.scale, width=width)
        self.val_kernel_metrics = make_kernel_metrics(prefix="val/")
        self.test_mean_kernel_metrics = make_kernel_metrics(prefix="test/mean_")
        self.register_buffer("reference_kernel", mean_training_kernel(self.scale), persistent=False)

    def raw_kernels(self, lr: Tensor) -> Tensor:
        """``(B, 3, H, W)`` LR in ``[0, 1]`` -> raw per-pixel kernels ``(B, 400, H, W)`` (padded to 4 px inside)."""
        padded, h, w = pad_to_multiple(to_signed(lr))
        return self.net(padded)[..., :h, :w]

    def estimate_kernel(self, lr: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> the block-centred mean kernel ``(B, 19 + s, 19 + s)`` (the benchmarks' convention)."""
        return block_kernel(self.raw_kernels(lr), self.scale)

    def super_resolve(self, lr: Tensor) -> Tensor:
        """Refused: stage 1 estimates kernels; stage 3 (``configs/koalanet/stage3.yaml``) super-resolves."""
        raise RuntimeError("KOALAnet's stage 1 estimates kernels: test stage 3 (configs/koalanet/stage3.yaml) for SR")

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Reconstruction + kernel L1; logs ``train/loss``, ``train/recon``, ``train/kernel``."""
        terms = kernel_losses(batch, self.net(to_signed(batch["lr"])), self.scale)
        loss = self.hparams.recon_weight * terms["recon"] + self.hparams.kernel_weight * terms["kernel"]
        bsz = batch["lr"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bsz)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Kernel accuracy of the mean kernel on the fixed validation crops (native kernels)."""
        est = mean_kernel(self.net(to_signed(batch["lr"])))
        self.val_kernel_metrics.update(est, batch["kernel"].to(est))
        self.log_dict(self.val_kernel_metrics, on_epoch=True, batch_size=est.shape[0], prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Kernel accuracy on a benchmark with kernels, next to the mean training kernel's (one table row each)."""
        if "kernel" not in batch:
            raise ValueError("stage 1's test needs a set with ground-truth kernels (python -m datamodules.generate "
                             "--protocol koalanet ...)")  # fmt: skip
        est = self.estimate_in_path(batch["lr"])
        rows = [{"name": n} for n in batch.get("name", [f"{batch_idx}_{i}" for i in range(est.shape[0])])]
        self.update_kernel_metrics(est, batch["kernel"], rows)
        gt = batch["kernel"].to(est)
        self.test_mean_kernel_metrics.update(self.reference_kernel.expand(len(gt), -1, -1), gt)
        self.log_dict(self.test_mean_kernel_metrics, on_epoch=True, batch_size=est.shape[0])
        self._add_columns(rows, self.test_mean_kernel_metrics, column_prefix="mean_")
        self._rows.extend(rows)

    def configure_optimizers(self) -> dict:
        """Adam, x0.1 at 80 % and 90 % of the run (official)."""
        return adam_with_decay(self.net.parameters(), self.hparams.lr, self.trainer.estimated_stepping_batches)

"""SingleNetSR: one network trained on the whole kernel distribution (every paper's "one network" baseline)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.optim import adam_one_cycle
from lightning_modules.nets.vdsr import ChainedVDSR


class SingleNetSR(SRSystem):
    """The 12-layer, 64-channel residual VDSR-style net of MoESR's experts, trained on all kernels at once.

    Training: L1 loss between the SR output and the HR crop, Adam and a one-cycle schedule (MoESR's expert recipe:
    max lr 3e-4). x4 is two x2 stages in sequence, as MoESR's x4 experts.

    Args:
        num_layers: Convolutions per stage.
        channels: Feature maps per hidden layer.
        lr: Maximum learning rate of the one-cycle schedule.
        weight_decay: Adam weight decay.
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    def __init__(
        self, num_layers: int = 12, channels: int = 64, lr: float = 3e-4, weight_decay: float = 0.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(RUNTIME_HPARAMS))
        self.net = ChainedVDSR(self.scale, num_layers, channels)

    def super_resolve(self, lr: Tensor) -> Tensor:
        """Run the network on ``lr`` ``(B, 3, H, W)``."""
        return self.net(lr)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """L1 between ``super_resolve(lr)`` and ``hr``; logs ``train/loss``."""
        loss = F.l1_loss(self.super_resolve(batch["lr"]), batch["hr"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["lr"].shape[0])
        return loss

    def configure_optimizers(self) -> dict:
        """Adam with a one-cycle schedule over ``trainer.estimated_stepping_batches``."""
        hp = self.hparams
        return adam_one_cycle(self.parameters(), hp.lr, hp.weight_decay, self.trainer.estimated_stepping_batches)

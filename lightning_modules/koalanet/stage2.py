"""KOALAnet stage 2: the upsampling baseline alone (12 plain residual blocks, per-pixel upsampling filters).

Loss (official ``training_stage 2``): ``L1(HR, SR)`` in ``[-1, 1]`` units. Its convolution and residual-block weights
start stage 3's KOALA upsampling network (``nets.koalanet.load_stage_weights``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.koalanet.common import adam_with_decay, to_signed, to_unit
from lightning_modules.nets.koalanet import KOALABaselineNet


class KOALABaselineSystem(SRSystem):
    """Trains KOALAnet's upsampling baseline (no kernel information) with L1.

    Args:
        num_blocks: Residual blocks (12).
        feat: Feature channels (64).
        lr: Adam learning rate (1e-4), divided by 10 at 80 % and 90 % of ``max_steps``.
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    def __init__(self, num_blocks: int = 12, feat: int = 64, lr: float = 1e-4, **kwargs) -> None:
        kwargs.setdefault("scale", 4)
        kwargs.setdefault("tile_overlap", 32)  # 12 blocks of two 3x3 convs and the heads: 30 LR px
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(RUNTIME_HPARAMS))
        self.net = KOALABaselineNet(self.scale, num_blocks=num_blocks, feat=feat)

    def super_resolve(self, lr: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, sH, sW)`` (the net runs in ``[-1, 1]``)."""
        return to_unit(self.net(to_signed(lr)))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """L1 in ``[-1, 1]`` units; logs ``train/loss``."""
        loss = F.l1_loss(self.net(to_signed(batch["lr"])), to_signed(batch["hr"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["lr"].shape[0])
        return loss

    def configure_optimizers(self) -> dict:
        """Adam, x0.1 at 80 % and 90 % of the run (official)."""
        return adam_with_decay(self.net.parameters(), self.hparams.lr, self.trainer.estimated_stepping_batches)

"""DASR stage 1: a plain MSRResNet trained with L1 on DASR's three-level degradations.

The official DASR run starts from BasicSR's pretrained MSRResNet x4 (``MSRResNet_x4_f64b16_DIV2K_1000k``), which
cannot be downloaded here and was trained on bicubic degradations; we train it on the same degradations as DASR
(``configs/dasr/msrresnet.yaml``), so the copy into DASR's five experts (stage 2) starts from a net of the right
domain, and "DASR vs MSRResNet at equal steps" compares like with like.

Recipe of BasicSR's MSRResNet (``train_MSRResNet_x4.yml``): L1, Adam 2e-4 (0.9, 0.99), cosine annealing with
restarts, batch 16, HR 128 crops. Target: the plain HR by default (``target``): PSNR-oriented like stage 2; the
official USM-sharpened target teaches a sharpening that PSNR against the plain HR penalises (measured: after 1,500
CPU steps with it, validation PSNR-Y 26.83 against bicubic's 27.34).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.dasr.common import Target, training_target
from lightning_modules.nets.dasr import MSRResNet

MSRRESNET_COMMAND = "python main.py fit -c configs/dasr/msrresnet.yaml"


class MSRResNetSystem(SRSystem):
    """Plain MSRResNet (SRResNet without batch norm) trained with L1 on the batches' degradations.

    Args:
        num_feat: Feature channels (64).
        num_block: Residual blocks (16).
        lr: Adam learning rate (BasicSR: 2e-4).
        betas: Adam betas (BasicSR: 0.9, 0.99).
        cosine_period: Steps of one cosine-annealing period (``0``: constant learning rate).
        eta_min: Learning rate at the end of each period.
        target: ``"hr"``: the plain HR (a PSNR-oriented stage), ``"usm"``: the batch's USM-sharpened HR (the
            official GAN training's target).
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    def __init__(
        self,
        num_feat: int = 64,
        num_block: int = 16,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        cosine_period: int = 250_000,
        eta_min: float = 1e-7,
        target: Target = "hr",
        **kwargs,
    ) -> None:
        kwargs.setdefault("tile_overlap", 40)  # receptive-field radius of 16 blocks: 36 LR px
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(RUNTIME_HPARAMS))
        self.net = MSRResNet(num_feat=num_feat, num_block=num_block, scale=self.scale)

    def super_resolve(self, lr: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, 3, sH, sW)``."""
        return self.net(lr)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """L1 to the target; logs ``train/loss``."""
        loss = F.l1_loss(self.net(batch["lr"]), training_target(batch, self.hparams.target))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["lr"].shape[0])
        return loss

    def configure_optimizers(self) -> dict:
        """Adam with cosine annealing with warm restarts every ``cosine_period`` steps (or a constant rate)."""
        hp = self.hparams
        opt = torch.optim.Adam(self.net.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        if hp.cosine_period <= 0:
            return {"optimizer": opt}
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=hp.cosine_period, eta_min=hp.eta_min)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

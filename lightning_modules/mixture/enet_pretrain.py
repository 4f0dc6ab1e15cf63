"""E-Net pre-training on blur-kernel classification (Wang et al. 2020, Sec. 3.3.1, Eq. 11): the mixture's stage 1.

E-Net (Table 1, ``M``-way FC included) plus a classification head of two FC layers on the ``M`` scores, trained end
to end with cross-entropy over the ``K`` seen kernels (labels: ``batch["params"]["kernel_index"]`` of the
``MixtureDegradation`` over the seen kernels). SGD with momentum 0.9, learning rate 1e-2 divided by 10 every 20
epochs (about 60 epochs in the paper), dropout 0.5; gradient clipping to ``[-0.6, 0.6]`` is set in the trainer
(``configs/mixture/enet_pretrain.yaml``). The checkpoint (``checkpoints/mixture/enet_x{scale}/last.ckpt``) holds
``enet.*`` and ``head.*``; the mixture stage (``lightning_modules.mixture.joint.MixtureSR``) reads ``enet.*`` only, so
the head is discarded there.

The network works on the Y channel (``rgb_to_y`` of ``datamodules.degradation.ops``: MATLAB ``rgb2ycbcr`` / 255). As
an ``SRSystem`` its ``super_resolve`` is MATLAB bicubic upsampling, so ``val/psnr_y`` is the bicubic reference; the
stage's own metric is ``val/acc``, the kernel-classification accuracy on the validation crops (chance ``1 / K``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from datamodules.degradation.ops import resize, rgb_to_y
from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.nets.mixture import ENet, KernelClassifierHead


class ENetPretrain(SRSystem):
    """E-Net + 2-layer head trained to classify the blur kernel of LR images (Eq. 11).

    Args:
        num_states: ``M``, E-Net's output size (= the mixture's number of branches; paper: 4).
        num_kernels: ``K``, the number of seen kernels to classify (must equal the degradation's; paper: 29).
        head_hidden: Width of the head's first FC layer (not given in the paper).
        enet_channels: E-Net convolution widths (paper: 32, 64, 128, 256).
        dropout: E-Net dropout (paper: 0.5).
        input_norm: Standardise each LR Y image before E-Net (not in the paper; see ``ENet``). Much faster to
            learn from few steps; the mixture stage must use the same setting (``enet_input_norm``).
        optimizer: ``"sgd"`` (paper: SGD with momentum) or ``"adam"`` (not in the paper; for short CPU budgets,
            where SGD through the ``M``-score bottleneck barely leaves chance in a few thousand steps).
        lr: Initial learning rate (paper: 1e-2 with SGD).
        momentum: SGD momentum (paper: 0.9); Adam's ``beta1`` is left at 0.9.
        weight_decay: SGD weight decay (not in the paper: 0).
        lr_step: Divide the learning rate by 10 every ``lr_step`` epochs (paper: 20) or steps (see
            ``lr_step_interval``); ``0`` keeps it constant.
        lr_step_interval: ``"epoch"`` or ``"step"``.
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    def __init__(
        self,
        num_states: int = 4,
        num_kernels: int = 29,
        head_hidden: int = 64,
        enet_channels: tuple[int, int, int, int] = (32, 64, 128, 256),
        dropout: float = 0.5,
        input_norm: bool = False,
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 1e-2,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        lr_step: int = 20,
        lr_step_interval: Literal["epoch", "step"] = "epoch",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(RUNTIME_HPARAMS))
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        if lr_step_interval not in ("epoch", "step"):
            raise ValueError(f"lr_step_interval must be 'epoch' or 'step', got {lr_step_interval!r}")
        self.enet = ENet(num_states, enet_channels, dropout, input_norm=input_norm)
        self.head = KernelClassifierHead(num_states, num_kernels, head_hidden)
        self.num_kernels = num_kernels
        self.train_acc = MulticlassAccuracy(num_classes=num_kernels, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_kernels, average="micro")

    def setup(self, stage: str) -> None:
        """Check the data scale and that the degradation draws exactly ``num_kernels`` kernels."""
        super().setup(stage)
        degradation = getattr(getattr(self.trainer, "datamodule", None), "degradation", None)
        count = getattr(degradation, "num_kernels", None)
        if count is not None and count != self.num_kernels:
            raise ValueError(
                f"the degradation draws from {count} kernels but the classifier has num_kernels={self.num_kernels}: "
                f"pass --model.init_args.num_kernels {count}"
            )

    def super_resolve(self, lr: Tensor) -> Tensor:
        """MATLAB bicubic upsampling (this stage trains no SR network)."""
        return resize(lr, scale=self.scale, convention="matlab")

    def posterior(self, lr: Tensor) -> Tensor:
        """E-Net's ``q(z | L)`` ``(B, M)`` of RGB LR images (the mixture's prior after pre-training)."""
        return F.softmax(self.enet(rgb_to_y(lr)), dim=1)

    def classify(self, lr: Tensor) -> Tensor:
        """Kernel logits ``(B, K)`` of RGB LR images: head(E-Net scores)."""
        return self.head(self.enet(rgb_to_y(lr)))

    def _labels(self, batch: dict) -> Tensor:
        labels = batch["params"]["kernel_index"]
        if int(labels.max()) >= self.num_kernels:
            raise ValueError(f"kernel label {int(labels.max())} >= num_kernels={self.num_kernels}")
        return labels

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Cross-entropy of Eq. (11); logs ``train/loss`` and ``train/acc``."""
        labels = self._labels(batch)
        logits = self.classify(batch["lr"])
        loss = F.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        bsz = labels.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        self.log("train/acc", self.train_acc, batch_size=bsz)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Bicubic ``val/psnr_y`` (base) and the kernel-classification accuracy ``val/acc``, ``val/loss``."""
        super().validation_step(batch, batch_idx)
        labels = self._labels(batch)
        logits = self.classify(batch["lr"])
        self.val_acc.update(logits, labels)
        bsz = labels.shape[0]
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=bsz)
        self.log("val/loss", F.cross_entropy(logits, labels), on_epoch=True, sync_dist=True, batch_size=bsz)

    def configure_optimizers(self) -> dict:
        """SGD (momentum 0.9) or Adam; learning rate divided by 10 every ``lr_step`` epochs (or steps)."""
        hp = self.hparams
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.lr_step <= 0:
            return {"optimizer": opt}
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.lr_step, gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": hp.lr_step_interval}}

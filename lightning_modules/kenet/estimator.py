"""KENet stage (Cao et al., Sec. 2): a CNN regresses the blur kernel of an LR image, supervised.

Training batches come from ``ClassicalDegradation`` with ``KENetKernelSampler`` (anisotropic Gaussians, standard
deviations ``U(0.2, 4.0)``, ``theta ~ U(0, pi)``, 11x11 at x2 and 21x21 at x4, block-centred, correlated and
decimated from pixel 0): the net's softmax output is compared with ``batch["kernel"]`` in that same convention, so
its estimates are ``"block"`` kernels (``core.two_step``).

Recipe (Sec. 3.1): Adam, batch 64, 96x96 LR crops with 90-degree rotations and flips, lr ``1e-2`` divided by 10
every ``2e5`` of ``6e5`` iterations, loss = the adaptive attention loss (Sec. 2.3) or plain L1 (Table 2's ablation).
Metrics: ``val/kernel_psnr`` (FKP's kernel PSNR, which the paper reports without defining it),
``val/kernel_sae``, ``val/kernel_l2`` (shift-aligned), the same under ``test/`` on benchmark sets with kernels.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.kernel_files import save_estimates
from lightning_modules.losses import KernelLoss
from lightning_modules.metrics import make_kernel_metrics
from lightning_modules.nets.kenet import KENet

KENET_KERNEL_SIZES = {2: 11, 4: 21}
"""The paper's kernel side per scale (Sec. 3.1)."""
KENET_COMMAND = "python main.py fit -c configs/kenet/kenet.yaml"


class KENetSystem(SRSystem):
    """Trains KENet on synthetic LR crops and their kernels; ``test`` / ``predict`` estimate kernels of whole images.

    A kernel estimator, not a super-resolver: ``super_resolve`` refuses (pair KENet with a restorer in
    ``configs/kenet/blind.yaml``). ``test`` writes the per-image table of kernel accuracy (``test_results.csv``),
    ``predict`` the kernels of photos (``<name>_x<s>_kernel.{mat,png}``), both in the run folder (``SRSystem``).

    Args:
        scale: Scale factor of the data (linked from the DataModule's ``scale``).
        kernel_size: Side ``l`` of the estimated kernels (default: 11 at x2, 21 at x4, the paper's); must equal the
            data's kernel size.
        width: Channels of the first stage (the paper's 64; stages have ``width * (1, 2, 3, 4)``).
        fc_width: Width of the two hidden fully connected layers (the paper's 1024).
        loss: ``"attention"`` (Sec. 2.3, the paper's) or ``"l1"`` (Table 2's ablation).
        lambdas: Thresholds ``(lambda1, lambda2)`` of the attention loss, relative to the ground truth's peak.
        rhos: Weights ``(rho0, rho1, rho2)`` of its three terms.
        lr: Initial Adam learning rate (paper: 1e-2).
        lr_step: Iterations between learning-rate divisions (paper: 2e5).
        lr_gamma: Factor of each division (paper: 0.1).
        **kwargs: ``SRSystem`` arguments (scale, output folder).
    """

    def __init__(
        self,
        scale: int = 2,
        kernel_size: int | None = None,
        width: int = 64,
        fc_width: int = 1024,
        loss: Literal["attention", "l1"] = "attention",
        lambdas: tuple[float, float] = (0.01, 0.1),
        rhos: tuple[float, float, float] = (0.01, 0.1, 1.0),
        lr: float = 1e-2,
        lr_step: int = 200_000,
        lr_gamma: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(scale=scale, **kwargs)
        if kernel_size is None:
            if scale not in KENET_KERNEL_SIZES:
                raise ValueError(f"KENet's paper defines x2 and x4; for x{scale} pass --model.init_args.kernel_size")
            kernel_size = KENET_KERNEL_SIZES[scale]
        self.save_hyperparameters(ignore=list(RUNTIME_HPARAMS))
        self.hparams.kernel_size = kernel_size
        self.kernel_size = kernel_size
        self.net = KENet(kernel_size=kernel_size, width=width, fc_width=fc_width)
        self.criterion = KernelLoss(loss, lambdas=lambdas, rhos=rhos)
        self.val_kernel_metrics = make_kernel_metrics(prefix="val/")

    def estimate_kernel(self, lr: Tensor) -> Tensor:
        """``(B, 3, H, W)`` LR in ``[0, 1]`` -> ``(B, l, l)`` block-centred kernels summing to 1."""
        return self.net(lr)

    def super_resolve(self, lr: Tensor) -> Tensor:
        """Refused: KENet estimates kernels; a restorer super-resolves (``configs/kenet/blind.yaml``)."""
        raise RuntimeError(
            "KENet estimates kernels, it does not super-resolve: use python main.py test -c configs/kenet/blind.yaml "
            "(KENet + USRNet) for SR images"
        )

    def _check_kernel(self, kernel: Tensor) -> None:
        if kernel.shape[-1] != self.kernel_size:
            raise ValueError(
                f"the data's kernels are {kernel.shape[-1]}x{kernel.shape[-1]} but KENet estimates "
                f"{self.kernel_size}x{self.kernel_size}: set --model.init_args.kernel_size {kernel.shape[-1]} or use "
                "the KENet kernel sampler's size for this scale"
            )

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Kernel loss between KENet's estimate and ``batch["kernel"]``; logs ``train/loss``."""
        self._check_kernel(batch["kernel"])
        loss = self.criterion(self.estimate_kernel(batch["lr"]), batch["kernel"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["lr"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Kernel accuracy on the fixed validation crops (``val/kernel_psnr``, ``val/kernel_sae``, ...)."""
        self._check_kernel(batch["kernel"])
        self.val_kernel_metrics.update(self.estimate_kernel(batch["lr"]), batch["kernel"])
        self.log_dict(self.val_kernel_metrics, on_epoch=True, batch_size=batch["lr"].shape[0], prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Kernel accuracy on a benchmark set with ground-truth kernels (whole LR images), one table row each."""
        if "kernel" not in batch:
            raise ValueError("KENet's test needs a set with ground-truth kernels (DIV2KRK layout: gt_k_x{s}/)")
        est = self.estimate_in_path(batch["lr"])
        rows = [{"name": n} for n in batch.get("name", [f"{batch_idx}_{i}" for i in range(est.shape[0])])]
        self.update_kernel_metrics(est, batch["kernel"], rows)
        self._rows.extend(rows)

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        """Write ``<name>_x<s>_kernel.mat`` / ``.png`` for each LR image; returns the ``.mat`` paths."""
        est = self.estimate_in_path(batch["lr"])
        return [str(p) for p in save_estimates(self._out_dir() / "predictions", list(batch["name"]), est, self.scale)]

    def on_predict_end(self) -> None:
        """Say where the kernels are."""
        if self.trainer.is_global_zero:
            print(f"[KENetSystem x{self.scale}] kernels: {self._out_dir() / 'predictions'}")

    def configure_optimizers(self) -> dict:
        """Adam, the learning rate divided by ``lr_gamma`` every ``lr_step`` iterations."""
        hp = self.hparams
        opt = torch.optim.Adam(self.net.parameters(), lr=hp.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, hp.lr_step), gamma=hp.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

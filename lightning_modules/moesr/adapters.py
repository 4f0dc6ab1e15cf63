"""MoESR's parts for the two-step system (``kenet.blind.TwoStepSR``): its kernel estimator, its experts.

Both wrap the ``MoESR`` inference system (``moesr.inference``) and its stage checkpoints.

* :class:`MoESRKernelEstimator`: experts + ISE + KEN (Eq. 10-11); returns ``"block"`` kernels ``K(rho*)`` on the
  grid's support (13x13 at x2, 33x33 at x4).
* :class:`MoESRExpertRestorer`: given any block-centred kernel, the expert of the grid kernel nearest to it in kernel
  space (``MoESRGrid.kernel_nearest``, as MoESR's ``use_gt_kernel``), optionally fine-tuned on the image with that
  kernel as the downsampler (``finetune_iters``; 0 = "w/o FT").
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.core.two_step import KernelEstimator, KernelRestorer, TileFn
from lightning_modules.moesr.inference import MoESR
from lightning_modules.moesr.stages import DEFAULT_CKPTS


class MoESRKernelEstimator(KernelEstimator):
    """MoESR's estimation: every expert's output scored by ISE, the error vector mapped to a kernel by KEN.

    Args:
        experts_ckpt: Experts checkpoint (``{scale}`` filled in).
        ise_ckpt: ISE checkpoint.
        ken_ckpt: KEN checkpoint.
        estimate_crop: LR side of the central crop the kernel is estimated on (0: whole image, as the paper).
        max_batch: Most (image, kernel) pairs per expert / ISE call.
    """

    convention = "block"

    def __init__(
        self,
        experts_ckpt: str = DEFAULT_CKPTS["experts"],
        ise_ckpt: str = DEFAULT_CKPTS["ise"],
        ken_ckpt: str = DEFAULT_CKPTS["ken"],
        estimate_crop: int = 0,
        max_batch: int | None = 8,
    ) -> None:
        super().__init__()
        self.paths = {"experts_ckpt": experts_ckpt, "ise_ckpt": ise_ckpt, "ken_ckpt": ken_ckpt}
        self.estimate_crop = estimate_crop
        self.max_batch = max_batch
        self.moesr: MoESR | None = None

    def load(self, scale: int) -> None:
        """Load the three stages for ``scale`` (strictly; a missing file names the command that writes it)."""
        moesr = MoESR(
            scale=scale, finetune_iters=0, estimate_crop=self.estimate_crop, max_batch=self.max_batch,
            progress=False, **self.paths,
        )  # fmt: skip
        moesr.load_stages()
        self.moesr = moesr

    def estimate(self, lr: Tensor, batch: dict) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, k, k)`` block-centred ``K(KEN(E))`` on the grid's support."""
        if self.moesr is None:
            raise RuntimeError("MoESRKernelEstimator: call load(scale) first (the system does it at setup)")
        return self.moesr.estimate_kernel(lr)


class MoESRExpertRestorer(KernelRestorer):
    """The kernel-specific expert nearest to the given kernel, optionally fine-tuned with it (MoESR Sec. 3.3).

    Args:
        experts_ckpt: Experts checkpoint (``{scale}`` filled in).
        finetune_iters: Fine-tuning iterations per image (paper: 1000; 0: the expert as trained).
        finetune_lr: Maximum learning rate of the fine-tuning one-cycle schedule (paper: 1e-5).
        finetune_seed: Seed of the fine-tuning crops.
        progress: Show a per-image progress bar while fine-tuning.
    """

    convention = "block"

    def __init__(
        self,
        experts_ckpt: str = DEFAULT_CKPTS["experts"],
        finetune_iters: int = 0,
        finetune_lr: float = 1e-5,
        finetune_seed: int = 100,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.experts_ckpt = experts_ckpt
        self.finetune = {"finetune_iters": finetune_iters, "finetune_lr": finetune_lr, "finetune_seed": finetune_seed}
        self.progress = progress
        self.moesr: MoESR | None = None

    def load(self, scale: int) -> None:
        """Load the experts for ``scale`` (ISE and KEN are not needed: the kernel is given)."""
        moesr = MoESR(
            scale=scale, experts_ckpt=self.experts_ckpt, use_gt_kernel=True, progress=self.progress, **self.finetune
        )
        moesr.load_stages()
        self.moesr = moesr

    def prepare(self, lr: Tensor, kernel: Tensor, scale: int, names: list[str]) -> TileFn:
        """Choose (and fine-tune) one expert per image on the whole image; the function runs them on tiles."""
        if self.moesr is None:
            raise RuntimeError("MoESRExpertRestorer: call load(scale) first (the system does it at setup)")
        choice = self.moesr.choose(lr, gt_kernel=kernel)
        nets = [self.moesr.adapt(lr[i : i + 1], choice, i, names[i])[0] for i in range(lr.shape[0])]

        def run(tile: Tensor) -> Tensor:
            with torch.no_grad():
                return torch.cat([net(tile[i : i + 1]) for i, net in enumerate(nets)])

        return run

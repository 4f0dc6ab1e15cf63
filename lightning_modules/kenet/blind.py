"""Two-step blind SR (KENet paper Sec. 1, Fig. 1): estimate the kernel, then super-resolve with a non-blind restorer.

The estimator and the restorer are injected by class path (``configs/kenet/blind.yaml``), so any estimator drives any
restorer: ``KENetKernelEstimator``, ``moesr.adapters.MoESRKernelEstimator`` or ``core.two_step.GroundTruthKernel``
(the "GT + X" upper bound) in front of ``USRNetRestorer`` (ours or the official USRNet-tiny weights) or
``moesr.adapters.MoESRExpertRestorer`` (the expert of the nearest grid kernel, with or without test-time
fine-tuning). Each states the convention of its kernels; the estimate is converted once
(``core.two_step.convert_kernel``), and kernel accuracy is measured in the engine's block-centred convention.

Per batch of whole images: estimate, convert, ``restorer.prepare`` (per-image choices and fine-tuning), then the
base class super-resolves tile by tile and writes tables and images. ``test`` reports ``test/psnr_y``,
``test/ssim_y`` (with the bicubic reference) and, for a real estimator on sets with ground truth,
``test/kernel_psnr``, ``test/kernel_sae``, ``test/kernel_l2``; ``predict`` writes ``<name>_x<s>.png`` and
``<name>_x<s>_kernel.{mat,png}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from torch import Tensor

from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.kernel_files import save_estimates
from lightning_modules.core.precision import as_layout
from lightning_modules.core.stages import FrozenParts, freeze
from lightning_modules.core.two_step import KernelEstimator, KernelRestorer, TileFn, convert_kernel


class TwoStepSR(FrozenParts, SRSystem):
    """Kernel estimator + non-blind restorer, each loaded from its own stage; nothing to fit.

    Args:
        estimator: The kernel estimator (``class_path`` + ``init_args``).
        restorer: The non-blind restorer (``class_path`` + ``init_args``).
        save_kernels: With ``save_images``, also write each image's estimated kernel (``.mat`` and PNG).
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    frozen_parts = ("estimator", "restorer")

    def __init__(
        self, estimator: KernelEstimator, restorer: KernelRestorer, save_kernels: bool = True, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=[*RUNTIME_HPARAMS, "estimator", "restorer"])
        self.estimator = estimator
        self.restorer = restorer
        self.save_kernels = save_kernels
        self._tile_fn: TileFn | None = None
        self._loaded = False

    def setup(self, stage: str) -> None:
        """Refuse ``fit``; load both parts for the model's scale (before Lightning moves them to the device)."""
        super().setup(stage)
        if stage == "fit":
            self.training_step(None, 0)
        if not self._loaded:
            self.estimator.load(self.scale)
            self.restorer.load(self.scale)
            freeze(self.estimator)
            freeze(self.restorer)
            self._loaded = True

    def training_step(self, batch: dict | None, batch_idx: int) -> None:
        """Refused: the parts are trained by their own stages."""
        raise RuntimeError(
            "TwoStepSR has nothing to fit: train its parts with configs/kenet/kenet.yaml, configs/kenet/usrnet.yaml "
            "(or MoESR's stages), then use test or predict with configs/kenet/blind.yaml"
        )

    def configure_optimizers(self) -> None:
        """Nothing to fit (``setup`` refuses it)."""
        self.training_step(None, 0)

    # ------------------------------------------------------------------------------------------------ pipeline
    def estimate_kernel(self, lr: Tensor, batch: dict | None = None) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, k, k)`` estimated kernels in the engine's block-centred convention."""
        est = self.estimator.estimate(lr, batch if batch is not None else {"lr": lr})
        return convert_kernel(est, self.estimator.convention, "block", self.scale)

    @contextlib.contextmanager
    def prepared(self, batch: dict) -> Iterator[Tensor]:
        """Estimate and prepare the restorer for ``batch``; while open, ``super_resolve`` uses it. Yields kernels."""
        lr = batch["lr"]
        names = list(batch.get("name") or [str(i) for i in range(lr.shape[0])])
        with self.inference_scope(lr.device):  # estimation and the restorer's preparation (e.g. fine-tuning)
            lr = as_layout(lr, self.inference_path)
            kernel = self.estimate_kernel(lr, batch).float()
            restorer_kernel = convert_kernel(kernel, "block", self.restorer.convention, self.scale)
            self._tile_fn = self.restorer.prepare(lr, restorer_kernel, self.scale, names)
        try:
            yield kernel
        finally:
            self._tile_fn = None

    def super_resolve(self, lr: Tensor) -> Tensor:
        """Within ``prepared``: the restorer on a tile of the batch; otherwise the whole pipeline on ``lr``."""
        if self._tile_fn is not None:
            return self._tile_fn(lr)
        with self.prepared({"lr": lr}):
            return self._tile_fn(lr)

    def sr_function_for(self, batch: dict) -> Callable[[Tensor], Tensor]:
        """The two steps on the LR images of ``batch`` (its kernels serve the ground-truth estimator)."""

        def run(lr: Tensor) -> Tensor:
            with self.prepared({**batch, "lr": lr}):
                return self.super_resolve(lr)

        return run

    # ------------------------------------------------------------------------------------------------- steps
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """``val/psnr_y``, ``val/ssim_y`` of the two steps on the validation crops."""
        with self.prepared(batch):
            sr = self.super_resolve(batch["lr"]).clamp(0, 1)
        self.update_sr_metrics("val", sr, batch["lr"], batch["hr"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Estimate, restore and evaluate (base class); kernel accuracy of a real estimator; kernels saved."""
        gt = batch.get("kernel")
        first = len(self._rows)
        with self.prepared(batch) as kernel:
            super().test_step({k: v for k, v in batch.items() if k != "kernel"}, batch_idx)
        rows = self._rows[first:]
        if gt is not None and not self.estimator.uses_ground_truth:
            self.update_kernel_metrics(kernel, gt, rows)
        if self.save_images and self.save_kernels and not self.estimator.uses_ground_truth:
            save_estimates(self._out_dir() / "test_images", [r["name"] for r in rows], kernel, self.scale)

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        """Estimate, restore, write ``<name>_x<s>.png`` (base class) and ``<name>_x<s>_kernel.{mat,png}``."""
        with self.prepared(batch) as kernel:
            paths = super().predict_step(batch, batch_idx)
        save_estimates(self._out_dir() / "predictions", list(batch["name"]), kernel, self.scale)
        return paths

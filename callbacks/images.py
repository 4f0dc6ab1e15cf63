"""Callbacks that log LR / SR / HR panels and blur-kernel grids from a fixed validation batch.

Both callbacks share one mechanism (:class:`_FixedBatchLogger`):

* **Fixed batch.** The first batch of the first validation dataloader is captured once (during the sanity check
  when there is one, otherwise in the first validation epoch), cut to a few samples, detached and copied to the
  CPU. Validation degradations are fixed, so the same images are shown at every epoch and the panels of
  different epochs compare like with like.
* **When.** At ``on_validation_epoch_end`` of epochs 0, ``n``, ``2n``, ... (``n = every_n_epochs``), never during
  the sanity check. Several validations within one epoch (``val_check_interval < 1``) each log, under their own
  global step.
* **Where.** Only the global-rank-zero process renders, with the module in eval mode, under ``torch.no_grad()``
  and the trainer's precision context. If one of ``trainer.loggers`` is a ``WandbLogger`` the images go to W&B
  (``val/images``, ``val/kernels``) at ``step=trainer.global_step``; otherwise, or in addition when
  ``save_png=True``, they are written as PNG files below the run's own folder (``SRSystem.run_dir``; for other
  modules ``trainer.log_dir``, or ``trainer.default_root_dir`` when that is None).
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch import Tensor

from datamodules.degradation.kernels import pad_centred

__all__ = ["KernelGridLogger", "SRImageLogger"]


def _to_uint8_hwc(image: Tensor) -> np.ndarray:
    """Converts a (C,H,W) float image in [0, 1] to an (H,W,C) uint8 array (values are clamped and rounded)."""
    return (image.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _hstack(panels: list[Tensor]) -> Tensor:
    """Places (C,H,W) images side by side, top-aligned; shorter ones are padded with black at the bottom."""
    height = max(panel.shape[-2] for panel in panels)
    return torch.cat([F.pad(panel, (0, 0, 0, height - panel.shape[-2])) for panel in panels], dim=-1)


def _kernel_grid(rows: list[Tensor], min_cell: int = 64, gap: int = 2) -> np.ndarray:
    """Draws rows of kernels as one grey-scale grid image.

    Every kernel is padded (centred) to the largest kernel size among all rows, divided by its own maximum
    (negative values are shown as black), and enlarged by an integer nearest-neighbour factor so that a cell is at
    least ``min_cell`` pixels wide. Cells are separated by ``gap`` pixels of mid grey.

    Args:
        rows: One (N,h,w) tensor per row; all rows have the same N, sizes may differ between rows.
        min_cell: Minimum cell size in pixels.
        gap: Separator width in pixels.

    Returns:
        The grid as an (H,W,3) uint8 array.
    """
    height = max(row.shape[-2] for row in rows)
    width = max(row.shape[-1] for row in rows)
    factor = max(1, math.ceil(min_cell / max(height, width)))
    cells = []
    for row in rows:
        row = pad_centred(row.detach().float().cpu(), height, width)
        peak = row.amax(dim=(-2, -1), keepdim=True)
        row = torch.where(peak > 0, row / peak.clamp_min(torch.finfo(row.dtype).tiny), torch.zeros_like(row))
        cells.append(row.clamp(0.0, 1.0).repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1))
    n_rows, n_cols = len(cells), cells[0].shape[0]
    cell_h, cell_w = height * factor, width * factor
    grid = torch.full((n_rows * cell_h + (n_rows - 1) * gap, n_cols * cell_w + (n_cols - 1) * gap), 0.5)
    for r, row in enumerate(cells):
        for c in range(n_cols):
            top, left = r * (cell_h + gap), c * (cell_w + gap)
            grid[top : top + cell_h, left : left + cell_w] = row[c]
    return _to_uint8_hwc(grid.unsqueeze(0).expand(3, -1, -1))


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Puts ``module`` in eval mode and afterwards restores every submodule's own train/eval flag."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class _FixedBatchLogger(Callback, ABC):
    """Shared mechanics: fixed-batch capture, rank-zero / no-grad rendering, and the W&B-or-PNG sink.

    Subclasses set ``_key`` (the W&B key), ``_subdir`` (the PNG folder) and implement :meth:`_render`.
    """

    _key: str = ""
    _subdir: str = ""

    def __init__(self, every_n_epochs: int, max_items: int, save_png: bool) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if max_items < 1:
            raise ValueError(f"the number of samples to log must be >= 1, got {max_items}")
        self.every_n_epochs = every_n_epochs
        self.save_png = save_png
        self._max_items = max_items
        self._batch: dict[str, Any] | None = None

    def _capture(self, batch: Any) -> dict[str, Any] | None:
        """Keeps the first ``max_items`` samples of lr / hr / kernel / name, detached copies on the CPU."""
        if not isinstance(batch, dict) or not isinstance(batch.get("lr"), Tensor):
            return None
        n = self._max_items
        kept: dict[str, Any] = {}
        for key in ("lr", "hr", "kernel"):
            value = batch.get(key)
            if isinstance(value, Tensor):
                kept[key] = value.detach()[:n].to("cpu", copy=True)
        names = batch.get("name")
        if isinstance(names, (list, tuple)):
            kept["name"] = [str(name) for name in names[:n]]
        return kept

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Captures the fixed batch: batch 0 of dataloader 0 of the first validation run."""
        if self._batch is None and batch_idx == 0 and dataloader_idx == 0:
            self._batch = self._capture(batch)

    def _due(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    @staticmethod
    def _wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
        return next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Renders the fixed batch on rank zero and sends the images to W&B and/or PNG files."""
        if not self._due(trainer):
            return
        wandb_logger = self._wandb_logger(trainer)
        png_dir = None
        if wandb_logger is None or self.save_png:
            # trainer.log_dir broadcasts from rank zero, so every rank must ask, before the rank-zero check.
            root = trainer.log_dir or trainer.default_root_dir
            root = str(getattr(pl_module, "run_dir", None) or root)  # SRSystem: this run's own folder
            png_dir = os.path.join(root, self._subdir)
        if not trainer.is_global_zero or self._batch is None:
            return
        with _eval_mode(pl_module), torch.no_grad():
            rendered = self._render(trainer, pl_module, self._batch)
        if not rendered:
            return
        images = [image for image, _ in rendered]
        captions = [caption for _, caption in rendered]
        if wandb_logger is not None:
            wandb_logger.log_image(key=self._key, images=images, caption=captions, step=trainer.global_step)
        if png_dir is not None:
            os.makedirs(png_dir, exist_ok=True)
            stem = f"epoch{trainer.current_epoch:04d}_step{trainer.global_step:07d}"
            for image, name in zip(images, self._png_names(stem, len(images)), strict=True):
                Image.fromarray(image).save(os.path.join(png_dir, name))

    def _png_names(self, stem: str, count: int) -> list[str]:
        return [f"{stem}_{i}.png" for i in range(count)]

    @staticmethod
    def _run(trainer: pl.Trainer, pl_module: pl.LightningModule, fn: Callable[[Tensor], Tensor], lr: Tensor) -> Tensor:
        """Calls ``fn`` on the fixed LR batch the way validation would: on the module's device, in its precision."""
        precision = trainer.precision_plugin
        with precision.val_step_context():
            return fn(precision.convert_input(lr.to(pl_module.device))).float()

    @abstractmethod
    def _render(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict[str, Any]
    ) -> list[tuple[np.ndarray, str]]:
        """Returns (HWC uint8 image, caption) pairs to log; an empty list logs nothing."""


class SRImageLogger(_FixedBatchLogger):
    """Logs LR | SR | HR panels of a fixed validation batch.

    For each of the first ``max_images`` samples of the first validation batch, one image is made: the LR input
    enlarged by nearest-neighbour to ``scale`` times its size, the system's ``super_resolve`` output (for non-blind
    systems, ``sr_function_for(batch)``: bound to the batch's kernels) clamped to
    [0, 1], and the HR ground truth, side by side (LR | SR when the batch has no "hr"). With a ``WandbLogger`` the
    images go to the key ``val/images``; without one they are written to
    ``<run folder>/images/epoch{E:04d}_step{S:07d}_{i}.png`` (module docstring).

    Args:
        every_n_epochs: Log at validation epochs 0, n, 2n, ... (never during the sanity check).
        max_images: How many samples of the fixed batch to show.
        save_png: Also write the PNG files when a W&B logger is present.
    """

    _key = "val/images"
    _subdir = "images"

    def __init__(self, every_n_epochs: int = 1, max_images: int = 4, save_png: bool = False) -> None:
        super().__init__(every_n_epochs=every_n_epochs, max_items=max_images, save_png=save_png)
        self.max_images = max_images

    def _render(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict[str, Any]
    ) -> list[tuple[np.ndarray, str]]:
        scale = int(pl_module.scale)
        lr = batch["lr"]
        fn = pl_module.sr_function_for(batch) if hasattr(pl_module, "sr_function_for") else pl_module.super_resolve
        sr = self._run(trainer, pl_module, fn, lr).clamp(0.0, 1.0).cpu()
        lr_up = F.interpolate(lr.float(), scale_factor=scale, mode="nearest")
        hr = batch.get("hr")
        names = batch.get("name") or [f"sample {i}" for i in range(lr.shape[0])]
        layout = f"LR (nearest x{scale}) | SR | HR" if hr is not None else f"LR (nearest x{scale}) | SR"
        rendered = []
        for i in range(lr.shape[0]):
            panels = [lr_up[i], sr[i]] + ([hr[i].float()] if hr is not None else [])
            rendered.append((_to_uint8_hwc(_hstack(panels)), f"{names[i]}: {layout}"))
        return rendered


class KernelGridLogger(_FixedBatchLogger):
    """Logs a grid of the blur kernels of a fixed validation batch, and the system's estimates of them.

    The top row shows the ground-truth kernels (``batch["kernel"]``, (B,k,k)) of the first ``max_kernels`` samples
    of the first validation batch; when the system has ``estimate_kernel(lr) -> (B,k',k')``, a second row shows its
    estimates for the same LR images. Each kernel is scaled to its own maximum (so shapes, not magnitudes, compare),
    padded centred to the larger of the two sizes, and enlarged by nearest-neighbour to cells of at least 64 px.
    Logged under ``val/kernels`` (W&B) or as ``<run folder>/kernels/epoch{E:04d}_step{S:07d}.png``. Batches without
    "kernel" are silently ignored.

    Args:
        every_n_epochs: Log at validation epochs 0, n, 2n, ... (never during the sanity check).
        max_kernels: How many samples of the fixed batch to show (columns of the grid).
        save_png: Also write the PNG file when a W&B logger is present.
    """

    _key = "val/kernels"
    _subdir = "kernels"

    def __init__(self, every_n_epochs: int = 1, max_kernels: int = 8, save_png: bool = False) -> None:
        super().__init__(every_n_epochs=every_n_epochs, max_items=max_kernels, save_png=save_png)
        self.max_kernels = max_kernels

    def _png_names(self, stem: str, count: int) -> list[str]:
        return [f"{stem}.png"]

    def _render(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict[str, Any]
    ) -> list[tuple[np.ndarray, str]]:
        kernels = batch.get("kernel")
        if kernels is None:
            return []
        if kernels.ndim != 3:
            raise ValueError(f"batch['kernel'] must have shape (B,k,k), got {tuple(kernels.shape)}")
        rows = [kernels]
        caption = "ground truth"
        if hasattr(pl_module, "estimate_kernel"):
            estimates = self._run(trainer, pl_module, pl_module.estimate_kernel, batch["lr"]).cpu()
            if estimates.ndim != 3 or estimates.shape[0] != kernels.shape[0]:
                raise ValueError(
                    f"estimate_kernel must return (B,k,k) with B={kernels.shape[0]}, got {tuple(estimates.shape)}"
                )
            rows.append(estimates)
            caption = "top: ground truth, bottom: estimate_kernel"
        return [(_kernel_grid(rows), caption)]

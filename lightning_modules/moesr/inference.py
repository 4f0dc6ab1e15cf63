"""MoESR inference: estimate the kernel with experts + ISE + KEN, pick the expert, fine-tune it, reconstruct.

Per image (paper Sec. 3.2-3.3, Eq. 10-12):

1. ``E_i = mean(ISE(U_i(LR), bicubic(LR))^2)`` for all ``N`` grid kernels (``grid_eval.grid_errors``: batched
   ``ExpertBank`` calls), ``rho* = KEN(E)`` (Eq. 10-11);
2. the grid kernel nearest to ``rho*`` (Eq. 12; ``expert_choice``, by default the official rule
   ``MoESRGrid.nearest``: ``rho*`` made canonical, ``lambda1 >= lambda2``, then each parameter snapped) names a stored
   expert and an input transform; a standalone copy of that expert gets the transform folded into its
   convolution weights (``grid_eval.grid_expert``; the official code rotates/flips weights rather than images), so
   it works on the image as it is;
3. the copy is fine-tuned on the LR image with the kernel ``K(rho*)`` fixed as the downsampler
   (``finetune.finetune``: ``finetune_iters`` iterations, 1000 in the paper; 0 = "MoESR w/o FT");
4. the fine-tuned copy super-resolves the image (tiled by the base class for large images).

``use_gt_kernel`` replaces steps 1-2 by the benchmark's ground-truth kernel (paper Table 2): the expert is that of
the grid kernel with the smallest sum of absolute errors to it (``MoESRGrid.kernel_nearest``; in kernel space, so
the multiplicative kernel noise and the truncation of DIV2KRK kernels do not bias the choice as they would bias
moment estimates), the fine-tuning downsampler is the ground-truth kernel itself, and at x4 the intermediate x2
kernel is the Gaussian of the ground truth's second moments at ``lambda / 5``.

Kernels are block-centred (DESIGN.md; ``moesr/kernels.py``): ``13x13`` at x2, ``33x33`` at x4, as the test
batches; kernel accuracy compares the estimated Gaussian *evaluated* on the ground truth's grid (no interpolation).
Outputs: SR PNGs as every ``SRSystem`` and, beside each, ``<name>_x<s>_kernel.mat`` and ``.png``; the test table
gains the estimated parameters, the grid kernel and expert chosen and the seconds spent estimating and fine-tuning.
The whole per-image work runs in ``inference_path`` (``core.precision``; fine-tuning keeps float32 weights and
runs in ``finetune_path``, the same path unless ``"auto"`` resolves differently for training).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from datamodules.degradation.kernels.moesr import ExpertChoice, MoESRGrid
from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.kernel_files import save_kernel_files
from lightning_modules.core.precision import as_layout, to_layout
from lightning_modules.core.stages import freeze
from lightning_modules.core.tiling import tiled_forward
from lightning_modules.moesr.crops import CROP_SIZE, can_finetune
from lightning_modules.moesr.finetune import NOISE_STD, finetune, progress_bar
from lightning_modules.moesr.grid_eval import grid_errors, grid_expert
from lightning_modules.moesr.group_finetune import finetune_group
from lightning_modules.moesr.kernels import (
    KernelChoice,
    fit_kernel_size,
    gaussians_like,
    ken_kernels,
    kernel_moments,
)
from lightning_modules.moesr.stages import DEFAULT_CKPTS, load_experts, load_ise, load_ken
from lightning_modules.nets.moesr import ISE, ISE_RECEPTIVE_FIELD, KEN, ExpertBank, ken_params

MOESR_RUNTIME_HPARAMS = (
    *RUNTIME_HPARAMS, "finetune_iters", "finetune_lr", "use_gt_kernel", "real", "noise_std", "estimate_crop",
    "max_batch", "finetune_seed", "crop_size", "progress", "expert_choice", "compile_expert", "finetune_group",
)  # fmt: skip


class MoESR(SRSystem):
    """MoESR at test time: kernel estimation by experts + ISE + KEN, expert choice (Eq. 12), fine-tuning, SR.

    ``test`` and ``predict`` (and ``validate`` on synthetic crops); nothing to ``fit`` (the three stages are trained
    by ``configs/moesr/experts.yaml``, ``ise.yaml`` and ``ken.yaml``). The stages are loaded at
    ``setup`` (``weights_only=True``); a missing checkpoint stops with a message naming the file and its command.

    Args:
        experts_ckpt: Experts checkpoint; ``{scale}`` is filled with the model's scale.
        ise_ckpt: ISE checkpoint (not needed with ``use_gt_kernel``).
        ken_ckpt: KEN checkpoint (not needed with ``use_gt_kernel``).
        finetune_iters: Fine-tuning iterations per image (paper: 1000; 0: "MoESR w/o FT").
        finetune_lr: Maximum learning rate of the fine-tuning one-cycle schedule (paper: 1e-5).
        use_gt_kernel: Use the test set's ground-truth kernels instead of estimating them (paper Table 2).
        real: Real photographs: add noise to the synthetic LR during fine-tuning and keep the image border.
        noise_std: Standard deviation of that noise for images in ``[0, 1]`` (paper: 10/255; official 0.04).
        estimate_crop: LR side of the central crop on which the kernel is estimated (0: the whole image, as the
            paper; e.g. 128 on a CPU budget; at least ``ceil(49 / scale)``, ISE's receptive field). The fine-tuning
            and the reconstruction always use the whole image.
        max_batch: Most (image, kernel) pairs per expert / ISE call during estimation (GPU memory; ``None``: one
            call per shape class of transforms, about 43 full-size expert outputs at once).
        finetune_seed: Seed of the fine-tuning crops, rotations and noise (official: 100, the same for every image).
        crop_size: "HR" crop side of fine-tuning, in LR pixels (official: 128).
        progress: Show a per-image progress bar during fine-tuning (when the trainer shows one).
        expert_choice: How KEN's ``rho*`` names a grid kernel (``MoESRGrid.choose``): ``"snap"`` (default, the
            official code: each parameter snapped to its nearest grid value, ``MoESRGrid.nearest``); ``"eq12"``
            (Eq. 12 as written: the grid kernel of least L1 distance in parameters, ``MoESRGrid.nearest_l1``; it
            differs from snapping for 5 % of random ``rho*``); ``"kernel"`` (the grid kernel nearest to ``K(rho*)``
            in pixel L1, 11 %).
        finetune_group: Fine-tune the images of a batch together, their experts as one grouped bank
            (``group_finetune``: the same result as one by one; for GPUs, not CPUs). It needs batches of several
            equal-size images: the Python API (``MoESR._prepare`` / ``test_step`` on such a batch); the CLI's
            ``test``/``predict`` load one image per batch, where it has no effect.
        compile_expert: ``torch.compile`` each stage of the chosen expert for fine-tuning and reconstruction (off by
            default: on 1-2 CPU cores it compiles for ~15 s per image shape and gains under 10 %, README "Speed").
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    def __init__(
        self,
        experts_ckpt: str = DEFAULT_CKPTS["experts"],
        ise_ckpt: str = DEFAULT_CKPTS["ise"],
        ken_ckpt: str = DEFAULT_CKPTS["ken"],
        finetune_iters: int = 1000,
        finetune_lr: float = 1e-5,
        use_gt_kernel: bool = False,
        real: bool = False,
        noise_std: float = NOISE_STD,
        estimate_crop: int = 0,
        max_batch: int | None = 8,
        finetune_seed: int = 100,
        crop_size: int = CROP_SIZE,
        progress: bool = True,
        expert_choice: ExpertChoice = "snap",
        compile_expert: bool = False,
        finetune_group: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(MOESR_RUNTIME_HPARAMS))
        if finetune_iters < 0 or estimate_crop < 0:
            raise ValueError("finetune_iters and estimate_crop must be >= 0")
        self.finetune_iters = finetune_iters
        self.finetune_lr = finetune_lr
        self.use_gt_kernel = use_gt_kernel
        self.real = real
        self.noise_std = noise_std
        self.estimate_crop = estimate_crop
        self.max_batch = max_batch
        self.finetune_seed = finetune_seed
        self.crop_size = crop_size
        self.progress = progress
        if expert_choice not in ("snap", "eq12", "kernel"):
            raise ValueError(f"expert_choice must be 'snap', 'eq12' or 'kernel', got {expert_choice!r}")
        self.expert_choice = expert_choice
        self.compile_expert = compile_expert
        self.finetune_group = finetune_group
        self.bank: ExpertBank | None = None
        self.grid: MoESRGrid | None = None
        self.ise: ISE | None = None
        self.ken: KEN | None = None
        self._prepared: list[nn.Module] | None = None
        self._warned_small = False

    # ------------------------------------------------------------------------------------------------ loading
    def checkpoint_path(self, stage: Literal["experts", "ise", "ken"]) -> str:
        """The configured checkpoint of a stage with ``{scale}`` filled in."""
        return self.hparams[f"{stage}_ckpt"].format(scale=self.scale)

    def load_stages(self) -> None:
        """Load (and freeze) the experts, and ISE and KEN unless ``use_gt_kernel``."""
        bank, grid = load_experts(self.checkpoint_path("experts"), self.scale)
        ise = ken = None
        if not self.use_gt_kernel:
            ise = load_ise(self.checkpoint_path("ise"), self.scale)
            ken = load_ken(self.checkpoint_path("ken"), self.scale, grid.num_kernels)
        self.set_stages(bank, grid, ise, ken)

    def set_stages(self, bank: ExpertBank, grid: MoESRGrid, ise: ISE | None, ken: KEN | None) -> None:
        """Use these (trained or, for timing, random) stages; they are frozen and become submodules."""
        if bank.num_experts != grid.num_experts or bank.scale != grid.scale or grid.scale != self.scale:
            raise ValueError(f"a bank of {bank.num_experts} x{bank.scale} experts does not fit {grid} at x{self.scale}")
        if ken is not None and ken.num_kernels != grid.num_kernels:
            raise ValueError(f"KEN takes {ken.num_kernels} errors but the grid has {grid.num_kernels} kernels")
        self.grid = grid
        self.bank = freeze(bank)
        self.ise = None if ise is None else freeze(ise)
        self.ken = None if ken is None else freeze(ken)

    def setup(self, stage: str) -> None:
        """Check the scale and load the stages (before Lightning moves the model to its device)."""
        super().setup(stage)
        if stage == "fit":
            raise RuntimeError(
                "MoESR has nothing to fit: train its stages with `python main.py fit -c configs/moesr/experts.yaml`, "
                "then configs/moesr/ise.yaml and configs/moesr/ken.yaml; use `test` or `predict` with this config"
            )
        if self.bank is None or (not self.use_gt_kernel and (self.ise is None or self.ken is None)):
            self.load_stages()

    def configure_optimizers(self) -> None:
        """MoESR has no training of its own; ``fit`` is refused."""
        raise RuntimeError("MoESR has nothing to fit: its stages are trained by configs/moesr/{experts,ise,ken}.yaml")

    def _require_stages(self, estimation: bool) -> None:
        if self.bank is None or (estimation and (self.ise is None or self.ken is None)):
            raise RuntimeError("MoESR's stages are not loaded: call load_stages() (Lightning does it at setup)")

    # --------------------------------------------------------------------------------------------- estimation
    def _estimation_input(self, lr: Tensor) -> Tensor:
        """The central ``estimate_crop`` crop of ``lr`` (at least ISE's 49-px receptive field once upsampled)."""
        c = max(self.estimate_crop, math.ceil(ISE_RECEPTIVE_FIELD / self.scale)) if self.estimate_crop > 0 else 0
        h, w = lr.shape[-2:]
        if c <= 0 or (h <= c and w <= c):
            return lr
        ch, cw = min(c, h), min(c, w)
        top, left = (h - ch) // 2, (w - cw) // 2
        return lr[..., top : top + ch, left : left + cw]

    @torch.no_grad()
    def estimate_parameters(self, lr: Tensor) -> Tensor:
        """KEN's kernel parameters ``(B, 3)`` ``(lambda1, lambda2, theta)`` of ``lr`` ``(B, 3, H, W)`` (Eq. 10-11)."""
        self._require_stages(estimation=True)
        errors = grid_errors(self.bank, self.ise, self.grid, self._estimation_input(lr), max_batch=self.max_batch)
        return self.ken(errors)  # float32 inside, under any autocast

    def estimate_kernel(self, lr: Tensor) -> Tensor:
        """``(B, k, k)`` block-centred kernels ``K(KEN(E))`` of ``lr`` ``(B, 3, H, W)`` (13x13 at x2, 33x33 at x4)."""
        return ken_kernels(self.estimate_parameters(lr), self.grid.kernel_size, self.scale)

    def choose(self, lr: Tensor, gt_kernel: Tensor | None = None) -> KernelChoice:
        """Kernels and experts of a batch: estimated (KEN) or, given ``gt_kernel`` ``(B, k', k')``, the ground truth."""
        start = time.perf_counter()
        grid, size = self.grid, self.grid.kernel_size
        if gt_kernel is None:
            params = self.estimate_parameters(lr)
            kernel = ken_kernels(params, size, self.scale)
            index = grid.choose(params, self.expert_choice).cpu()
        else:
            self._require_stages(estimation=False)
            gt = gt_kernel.to(device=lr.device, dtype=torch.float32)
            kernel = fit_kernel_size(gt, size)
            params = kernel_moments(kernel).to(lr.device)
            index = grid.kernel_nearest(kernel).cpu()
        intermediate = grid.intermediate_kernels(params.to(torch.float32)) if self.scale == 4 else None
        if lr.device.type == "cuda":
            torch.cuda.synchronize(lr.device)
        return KernelChoice(
            kernel=kernel.to(lr.dtype),
            grid_index=index,
            params=params.detach().to("cpu", torch.float64),
            intermediate=None if intermediate is None else intermediate.to(lr.dtype),
            estimated=gt_kernel is None,
            seconds=time.perf_counter() - start,
        )

    # ---------------------------------------------------------------------------------------------- experts
    def expert_for(self, grid_index: int) -> nn.Module:
        """A trainable copy of grid kernel ``grid_index``'s expert, input transform folded in, ``finetune_path``."""
        self._require_stages(estimation=False)
        with torch.inference_mode(False):
            net = to_layout(grid_expert(self.bank, self.grid, grid_index), self.finetune_path)
        net.requires_grad_(True)
        if self.compile_expert:  # stage by stage: fine-tuning indexes the x2 stages of an x4 chain
            for i, stage in enumerate(net):
                net[i] = torch.compile(stage)
        return net

    def adapt(self, lr: Tensor, choice: KernelChoice, i: int = 0, name: str = "") -> tuple[nn.Module, float]:
        """The expert of image ``i`` of ``choice``, fine-tuned on ``lr`` ``(1, 3, H, W)``; returns it and the seconds.

        Images too small to cut crops of the kernel's size are not fine-tuned (a warning says so once).
        """
        net = self.expert_for(int(choice.grid_index[i]))
        iters = self.finetune_iters
        h, w = lr.shape[-2:]
        if iters > 0 and not can_finetune(h, w, self.scale, choice.kernel.shape[-1], self.crop_size, self.real):
            if not self._warned_small:
                rank_zero_warn(
                    f"MoESR: image {name or i} ({w}x{h}) is too small to fine-tune with {choice.kernel.shape[-1]}-px "
                    "kernels; such images use the chosen expert without fine-tuning"
                )
                self._warned_small = True
            iters = 0
        trainer = self._trainer
        bar = trainer is None or (trainer.is_global_zero and trainer.progress_bar_callback is not None)
        lr = as_layout(lr, self.finetune_path)
        start = time.perf_counter()
        with progress_bar(iters, f"MoESR fine-tuning {name}".strip(), self.progress and bar) as report:
            finetune(
                net, lr, choice.kernel[i], self.scale, iterations=iters, lr_max=self.finetune_lr,
                intermediate_kernel=None if choice.intermediate is None else choice.intermediate[i],
                real=self.real, noise_std=self.noise_std, seed=self.finetune_seed, crop_size=self.crop_size,
                progress=report, progress_every=25,
            )  # fmt: skip
        if lr.device.type == "cuda":
            torch.cuda.synchronize(lr.device)
        return to_layout(net.eval(), self.inference_path), time.perf_counter() - start

    def _groupable(self, lr: Tensor, choice: KernelChoice) -> bool:
        """Whether ``finetune_group`` applies: asked for, 2+ images (one size, as a batch has), fine-tuning possible."""
        h, w = lr.shape[-2:]
        size = choice.kernel.shape[-1]
        return (self.finetune_group and lr.shape[0] > 1 and self.finetune_iters > 0
                and can_finetune(h, w, self.scale, size, self.crop_size, self.real))  # fmt: skip

    def adapt_group(self, lr: Tensor, choice: KernelChoice) -> tuple[list[nn.Module], list[float]]:
        """Every image's expert fine-tuned on it, all as one grouped bank; the nets and seconds per image."""
        with torch.inference_mode(False):
            nets = [grid_expert(self.bank, self.grid, int(g)) for g in choice.grid_index]
        start = time.perf_counter()
        mids = None if choice.intermediate is None else list(choice.intermediate)
        lr = as_layout(lr, self.finetune_path)
        tuned = finetune_group(nets, list(lr.split(1)), list(choice.kernel), self.scale, self.finetune_iters,
                               self.finetune_lr, mids, real=self.real, noise_std=self.noise_std,
                               seed=self.finetune_seed, crop_size=self.crop_size)  # fmt: skip
        if lr.device.type == "cuda":
            torch.cuda.synchronize(lr.device)
        seconds = (time.perf_counter() - start) / lr.shape[0]
        return [to_layout(net, self.inference_path) for net in tuned], [seconds] * lr.shape[0]

    # --------------------------------------------------------------------------------------------- pipeline
    def super_resolve(self, lr: Tensor) -> Tensor:
        """Super-resolve ``(B, 3, H, W) -> (B, 3, sH, sW)``.

        Inside ``test``/``predict``: the prepared (fine-tuned) experts on a tile of the batch; otherwise the whole
        pipeline (estimate, choose, fine-tune, reconstruct) on each image.
        """
        if self._prepared is not None:
            return torch.cat([net(lr[i : i + 1]) for i, net in enumerate(self._prepared)])
        choice = self.choose(lr)
        out = []
        for i in range(lr.shape[0]):
            net, _ = self.adapt(lr[i : i + 1], choice, i)
            out.append(self._reconstruct(net, lr[i : i + 1]))
        return torch.cat(out)

    @torch.no_grad()
    def _reconstruct(self, net: nn.Module, lr: Tensor) -> Tensor:
        return tiled_forward(net, lr, self.scale, self.tile_size, self.tile_overlap)

    @contextlib.contextmanager
    def _prepare(self, batch: dict, gt_kernel: Tensor | None) -> Iterator[tuple[KernelChoice, list[float]]]:
        """Choose kernels and fine-tune one expert per image; while open, ``super_resolve`` runs those experts."""
        lr = batch["lr"]
        names = batch.get("name") or [str(i) for i in range(lr.shape[0])]
        nets, seconds = [], []
        with self.inference_scope(lr.device):
            lr = as_layout(lr, self.inference_path)
            choice = self.choose(lr, gt_kernel)
            if self._groupable(lr, choice):
                nets, seconds = self.adapt_group(lr, choice)
            for i in range(len(nets), lr.shape[0]):
                net, sec = self.adapt(lr[i : i + 1], choice, i, names[i])
                nets.append(net)
                seconds.append(sec)
        self._prepared = nets
        try:
            yield choice, seconds
        finally:
            self._prepared = None

    def _rows_info(self, choice: KernelChoice, seconds: list[float]) -> list[dict]:
        bsz = choice.kernel.shape[0]
        rows = []
        params = {name: values.tolist() for name, values in ken_params(choice.params).items()}
        for i in range(bsz):
            g = int(choice.grid_index[i])
            rows.append({
                **{name: values[i] for name, values in params.items()}, "grid_kernel": g,
                "expert": int(self.grid.expert_index[g]), "estimate_s": choice.seconds / bsz, "finetune_s": seconds[i],
            })  # fmt: skip
        return rows

    def _save_kernels(self, choice: KernelChoice, names: list[str], folder: Path) -> None:
        """``<name>_x<s>_kernel.{mat,png}`` in ``folder`` (``core.kernel_files.save_kernel_files``)."""
        pixel = gaussians_like(choice.params, self.grid.kernel_size, "pixel", self.scale).to(torch.float32)
        for i, name in enumerate(names):
            save_kernel_files(folder / f"{name}_x{self.scale}_kernel", pixel[i], choice.kernel[i], choice.params[i])

    # ------------------------------------------------------------------------------------------------- steps
    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Estimate (or take the ground-truth kernel), fine-tune and evaluate through the base class.

        Adds kernel accuracy of the estimate and the per-image choices to the table; saves kernels.
        """
        gt = batch.get("kernel")
        if self.use_gt_kernel and gt is None:
            raise ValueError("use_gt_kernel needs a test set with ground-truth kernels (e.g. DIV2KRK's gt_k_x{s})")
        base_batch = {k: v for k, v in batch.items() if k != "kernel"}  # kernel accuracy is measured below
        with self._prepare(batch, gt if self.use_gt_kernel else None) as (choice, seconds):
            first = len(self._rows)
            super().test_step(base_batch, batch_idx)
        rows = self._rows[first:]
        for row, info in zip(rows, self._rows_info(choice, seconds), strict=True):
            row.update(info)
        if gt is not None and choice.estimated:
            p = choice.params.to(device=self.device, dtype=torch.float64)
            est = gaussians_like(p, gt.shape[-1], "block", self.scale).to(torch.float32)
            self.update_kernel_metrics(est, gt, rows)
        if self.save_images and choice.estimated:
            self._save_kernels(choice, [r["name"] for r in rows], self._out_dir() / "test_images")

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        """Estimate, fine-tune, write the SR PNG (base class) and the kernel ``.mat`` and PNG beside it."""
        with self._prepare(batch, None) as (choice, _):
            paths = super().predict_step(batch, batch_idx)
        self._save_kernels(choice, list(batch["name"]), self._out_dir() / "predictions")
        return paths

"""Fig. 4 of the variational mixture (Wang et al. 2020): PCA of E-Net posteriors under every seen and unseen kernel.

:class:`PosteriorPCALogger` is duck-typed on the system: it needs ``posterior(lr) -> q (N, M)`` (RGB LR in
``[0, 1]``) and skips systems without one, or whose ``enet`` is ``None`` (the averaged ensemble); the data side is
the DataModule's ``MixtureDegradation`` (``split``, ``degrade``). The drawing helpers are plain functions:
:func:`pca_project`, :func:`kernel_colour`, :func:`render_pca_panels` (Pillow; matplotlib is not a dependency).
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from PIL import Image, ImageDraw
from torch import Tensor

from datamodules.degradation.kernels.mixture import mixture_kernels

__all__ = ["PosteriorPCALogger", "kernel_colour", "pca_project", "render_pca_panels"]


def pca_project(x: Tensor, dims: int = 3) -> Tensor:
    """Project the rows of ``x`` ``(N, D)`` onto their first ``dims`` principal components (zero-padded if D < dims)."""
    x = x.double()
    centred = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[:dims].T
    if proj.shape[1] < dims:
        proj = F.pad(proj, (0, dims - proj.shape[1]))
    return proj


def kernel_colour(kernel_id: int, total: int = 52) -> tuple[int, int, int]:
    """A distinct RGB colour per kernel id (hue around the wheel, alternating brightness)."""
    r, g, b = colorsys.hsv_to_rgb((kernel_id * 0.618034) % 1.0, 0.85, 0.95 if kernel_id % 2 else 0.7)
    return int(r * 255), int(g * 255), int(b * 255)


def render_pca_panels(
    points: Tensor, kernel_ids: Tensor, groups: Sequence[tuple[str, Tensor]], panel: int = 220
) -> np.ndarray:
    """Draw 3-D points as three 2-D projections (PC1-PC2, PC1-PC3, PC2-PC3), one row per group, with Pillow.

    Args:
        points: ``(N, 3)`` PCA coordinates.
        kernel_ids: ``(N,)`` global kernel id of each point (its colour).
        groups: ``(title, mask (N,) bool)`` per row (e.g. seen / unseen kernels); axes are shared by all rows.
        panel: Side of one panel in pixels.

    Returns:
        ``(H, W, 3)`` uint8 image.
    """
    pairs = ((0, 1), (0, 2), (1, 2))
    margin, title_h = 12, 16
    width = len(pairs) * (panel + margin) + margin
    height = len(groups) * (panel + margin + title_h) + margin
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    lo = points.min(dim=0).values
    span = (points.max(dim=0).values - lo).clamp_min(1e-6)  # components at rounding level stay flat
    for r, (title, mask) in enumerate(groups):
        top = margin + r * (panel + margin + title_h)
        for c, (a, b) in enumerate(pairs):
            left = margin + c * (panel + margin)
            draw.text((left, top), f"{title}: PC{a + 1} vs PC{b + 1}", fill=(0, 0, 0))
            box = (left, top + title_h, left + panel, top + title_h + panel)
            draw.rectangle(box, outline=(160, 160, 160))
            for i in torch.nonzero(mask).flatten().tolist():
                x = left + 4 + float((points[i, a] - lo[a]) / span[a]) * (panel - 8)
                y = top + title_h + panel - 4 - float((points[i, b] - lo[b]) / span[b]) * (panel - 8)
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=kernel_colour(int(kernel_ids[i])))
    return np.asarray(img)


class PosteriorPCALogger(Callback):
    """Fig. 4: E-Net posteriors of validation crops under every seen and unseen kernel, PCA to 3-D, coloured by kernel.

    The HR crops of the first validation batch (first ``max_images``) are degraded with every kernel of each group
    by the DataModule's ``MixtureDegradation`` (``degrade``); the system's ``posterior(lr) -> (N, M)`` gives
    ``q``; all posteriors are projected on their first 3 principal components (SVD), and the 3-D embedding is drawn
    as three pairwise 2-D scatter plots per group. Logged to W&B as ``val/posterior_pca`` when a ``WandbLogger`` is
    present and always saved as ``<run folder>/posterior_pca/epoch{E:04d}_step{S:07d}.png`` (``SRSystem.run_dir``);
    the coordinates go to a ``.npz`` beside it (``q``, ``pca``, ``kernel_id``, ``group``). Runs on rank zero at
    validation epochs 0, n, 2n, ..., never in the sanity check; does nothing for systems without ``posterior`` (or
    with ``enet = None``, the averaged ensemble) or data without a ``MixtureDegradation``.

    Args:
        every_n_epochs: Render every n-th validation epoch.
        max_images: Validation crops used (each is degraded with every kernel).
        groups: Kernel groups, one row each (``"seen"``, ``"unseen"``, ``"all"``).
    """

    def __init__(self, every_n_epochs: int = 1, max_images: int = 8, groups: Sequence[str] = ("seen", "unseen")):
        super().__init__()
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.groups = tuple(groups)
        self._hr: Tensor | None = None
        self.last_png: str | None = None

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Keep the HR crops of the first validation batch (CPU copy)."""
        if self._hr is None and batch_idx == 0 and dataloader_idx == 0 and isinstance(batch, dict) and "hr" in batch:
            self._hr = batch["hr"][: self.max_images].detach().to("cpu", copy=True)

    @torch.no_grad()
    def posteriors(self, pl_module: pl.LightningModule, degradation: Any) -> tuple[Tensor, Tensor, Tensor]:
        """``(q (N, M), kernel ids (N,), group index (N,))`` for the kept crops under every kernel of each group."""
        hr = self._hr.to(pl_module.device).float()
        qs, ids, which = [], [], []
        for g, group in enumerate(self.groups):
            kid = torch.tensor(degradation.split.ids(group), dtype=torch.long)
            bank = mixture_kernels(kid).to(hr)
            n, k = hr.shape[0], bank.shape[0]
            lr = degradation.degrade(hr.repeat_interleave(k, dim=0), bank.repeat(n, 1, 1))
            qs.append(pl_module.posterior(lr).float().cpu())
            ids.append(kid.repeat(n))
            which.append(torch.full((n * k,), g))
        return torch.cat(qs), torch.cat(ids), torch.cat(which)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Render and log the PCA plot (rank zero)."""
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        root = trainer.log_dir or trainer.default_root_dir  # every rank asks (it broadcasts)
        root = str(getattr(pl_module, "run_dir", None) or root)  # SRSystem: this run's own folder
        degradation = getattr(getattr(trainer, "datamodule", None), "degradation", None)
        if not trainer.is_global_zero or self._hr is None or not hasattr(pl_module, "posterior"):
            return
        if getattr(pl_module, "enet", True) is None or not hasattr(degradation, "split"):
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            q, ids, which = self.posteriors(pl_module, degradation)
        finally:
            pl_module.train(was_training)
        points = pca_project(q)
        rows = [(f"{g} ({int((which == i).sum())} pts)", which == i) for i, g in enumerate(self.groups)]
        image = render_pca_panels(points, ids, rows)
        out_dir = os.path.join(root, "posterior_pca")
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, f"epoch{trainer.current_epoch:04d}_step{trainer.global_step:07d}")
        Image.fromarray(image).save(stem + ".png")
        np.savez(stem + ".npz", q=q.numpy(), pca=points.numpy(), kernel_id=ids.numpy(), group=which.numpy())
        self.last_png = stem + ".png"
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/posterior_pca", images=[image], caption=["E-Net posteriors, PCA (Fig. 4)"],
                                 step=trainer.global_step)  # fmt: skip

"""Variational mixture of networks (Wang et al., Pattern Recognition 2020): joint ELBO training and mixture inference.

Model (Sec. 3): a latent ``z in {1..M}`` stands for the unknown blur kernel; E-Net gives ``q(z | L) = softmax(s)``;
branch ``z`` predicts ``F(L, z) = bicubic(L) + R(L, z)``. Joint training minimises Eq. (12) per LR/HR pair::

    E_q[ ||H - F(L, z)||^2 ] + lambda * KL( q(z | L) || q_hat(z | L) )

where ``q_hat`` is the posterior of the **frozen pre-trained E-Net** (the prior ``p(z | L)``). The pre-training
(``lightning_modules.mixture.enet_pretrain``) trains the whole E-Net, including its M-way FC layer, end to end with a
2-layer head on top of the M scores; the head is discarded and the pre-trained E-Net with its M-way layer *is* the
prior (Sec. 3.3.2: "We feed each LR image into the pre-trained E-Net to obtain the score vector s = [s_1..s_M] and
the normalized posterior ..."). It also initialises the trainable E-Net. Inference is Eq. (10):
``H* = sum_z q_z R(L, z) + bicubic(L)``.

Pure functions, used by the system and tested on their own: :func:`branch_errors`, :func:`expected_reconstruction`,
:func:`kl_categorical`, :func:`soft_mixture`, :func:`hard_mixture`.

Conventions
-----------
* **Y channel.** The systems take RGB in ``[0, 1]`` and work on Y of MATLAB ``rgb2ycbcr`` divided by 255 (so Y lies
  in ``[16/255, 235/255]``, the official code's skimage ``rgb2ycbcr`` with ``input_range = 1``). The returned RGB
  image is the SR Y combined with the bicubic-upsampled Cb/Cr of the LR, converted back with the exact inverse
  transform, so the evaluation's Y of the output is the network's Y (up to clamping RGB to ``[0, 1]``).
* **Bicubic.** ``ops.resize(convention="matlab")`` (Keys ``a = -0.5``), which equals the official code's PIL bicubic
  upsampling up to Pillow's 8-bit arithmetic.
* **Reconstruction term.** ``||H - F||^2`` is the per-image *sum* of squared Y errors (``reduction="sum"``, Eq. 12 as
  written; with ``lambda = 0.05`` this is the scale on which the KL weight makes sense), averaged over the batch;
  ``reduction="mean"`` uses the per-pixel mean instead.
* **Optimiser** (Sec. 3.3.3): SGD, momentum 0.9, two parameter groups (branches 1e-2, E-Net 1e-4), both divided by
  10 when the validation loss stops improving (``ReduceLROnPlateau`` on ``val/loss``, stepped after each
  validation). Gradient clipping to ``[-0.6, 0.6]`` is the trainer's ``gradient_clip_val: 0.6`` with
  ``gradient_clip_algorithm: value`` (set in ``configs/mixture/joint.yaml``). The paper cites VDSR's *adjustable*
  clipping (range divided by the learning rate) but states a fixed range; we clip at the stated fixed range.

Variants (Sec. 4.2.2, Table 3) are values of ``variant``:

* ``"ours"``: Eq. (12) with the pre-trained prior, soft mixture (Eq. 10).
* ``"average"`` (Averaged Ensemble): no E-Net; ``q`` is uniform, so the training loss is the mean of the branch
  errors (each branch trained on all data) and the output their average. With ``num_branches=1`` this is the
  single-network baseline (one Table-2 network trained on all seen kernels, the paper's "FSRCNN-SK"-like row).
* ``"no_pretrain"`` (Without Pre-training): E-Net trained from scratch; the prior is uniform, ``p(z | L) = 1/M``.
* ``"hard"`` (Hard Selection): trained as ``"ours"``; at test time only the branch of maximum posterior is used.
  A model trained as ``"ours"`` can be evaluated this way without retraining: ``--model.init_args.inference hard``.
* ``"hard_alternating"`` (Hard Selection with Training): E-Net initialised from pre-training; training alternates
  every ``alternate_every`` steps between (1) E-Net fixed, branches trained on the MSE of the branch of maximum
  posterior and (2) branches fixed, E-Net trained on the first term of Eq. (12); hard selection at test time.
  Each phase leaves one part without gradients: under DDP use ``--trainer.strategy ddp_find_unused_parameters_true``.

``PosteriorPCALogger`` renders Fig. 4: E-Net posteriors of validation crops degraded with every seen and unseen
kernel, projected to 3-D by PCA, coloured by kernel.
"""

from __future__ import annotations

import colorsys
import copy
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from PIL import Image, ImageDraw
from torch import Tensor
from torchmetrics import MeanMetric

from datamodules.degradation.ops import resize
from datamodules.degradation.pipelines.mixture import mixture_kernels
from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.stages import CheckpointError, check_state_dict, read_checkpoint
from lightning_modules.core.tiling import tiled_forward
from lightning_modules.nets.mixture import ENet, MixtureBranches

Variant = Literal["ours", "average", "no_pretrain", "hard", "hard_alternating"]
Inference = Literal["auto", "soft", "hard", "average"]
PRETRAIN_COMMAND = "python main.py fit -c configs/mixture/enet_pretrain.yaml"
# Runtime options of MixtureSR kept out of the checkpoint's hyper-parameters (see base.RUNTIME_HPARAMS).
MIXTURE_RUNTIME_HPARAMS = (*RUNTIME_HPARAMS, "inference")

# ----------------------------------------------------------------------------------------------------------------
# Y channel
# ----------------------------------------------------------------------------------------------------------------

_YCC = torch.tensor(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=torch.float64
)
_YCC_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64)


def rgb_to_ycbcr(x: Tensor) -> Tensor:
    """MATLAB ``rgb2ycbcr`` divided by 255: ``(B, 3, H, W)`` RGB in ``[0, 1]`` -> YCbCr, Y in ``[16, 235] / 255``."""
    m = (_YCC / 255).to(x)
    return torch.einsum("ij,bjhw->bihw", m, x) + (_YCC_OFFSET / 255).to(x).view(1, 3, 1, 1)


def ycbcr_to_rgb(x: Tensor) -> Tensor:
    """Exact inverse of :func:`rgb_to_ycbcr` (not clamped)."""
    inv = torch.linalg.inv(_YCC / 255).to(x)
    return torch.einsum("ij,bjhw->bihw", inv, x - (_YCC_OFFSET / 255).to(x).view(1, 3, 1, 1))


def rgb_to_y(x: Tensor) -> Tensor:
    """The Y channel ``(B, 1, H, W)`` of :func:`rgb_to_ycbcr`."""
    return rgb_to_ycbcr(x)[:, :1]


# ----------------------------------------------------------------------------------------------------------------
# The ELBO's parts and the mixtures (pure functions)
# ----------------------------------------------------------------------------------------------------------------


def branch_errors(outputs: Tensor, target: Tensor, reduction: Literal["sum", "mean"] = "sum") -> Tensor:
    """Squared error of every branch: ``||H - F(L, z)||^2`` per image and branch.

    Args:
        outputs: ``(B, M, H, W)`` branch predictions ``F(L, z)``.
        target: ``(B, 1, H, W)`` HR Y.
        reduction: ``"sum"`` over pixels (the squared norm of Eq. 12) or ``"mean"``.

    Returns:
        ``(B, M)``.
    """
    sq = (outputs - target).square()
    return sq.sum(dim=(-2, -1)) if reduction == "sum" else sq.mean(dim=(-2, -1))


def expected_reconstruction(q: Tensor, errors: Tensor) -> Tensor:
    """First term of Eq. (12): ``E_q[||H - F(L, z)||^2] = sum_z q_z err_z``, ``(B, M), (B, M) -> (B,)``."""
    return (q * errors).sum(dim=-1)


def kl_categorical(log_q: Tensor, log_p: Tensor) -> Tensor:
    """``KL(q || p) = sum_z q_z (log q_z - log p_z)`` from log-probabilities ``(B, M)`` -> ``(B,)``.

    Exactly zero when ``log_q == log_p``; terms with ``q_z = 0`` contribute zero.
    """
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(dim=-1)


def soft_mixture(q: Tensor, residuals: Tensor, base: Tensor) -> Tensor:
    """Eq. (10): ``sum_z q_z R(L, z) + bicubic(L)``; ``q (B, M)``, ``residuals (B, M, H, W)``, ``base (B, 1, H, W)``."""
    return base + (q[:, :, None, None] * residuals).sum(dim=1, keepdim=True)


def hard_mixture(q: Tensor, residuals: Tensor, base: Tensor) -> Tensor:
    """Hard selection: the residual of the branch of maximum posterior, plus ``base``."""
    idx = q.argmax(dim=1)
    return base + residuals[torch.arange(q.shape[0], device=q.device), idx][:, None]


# ----------------------------------------------------------------------------------------------------------------
# The system
# ----------------------------------------------------------------------------------------------------------------


class MixtureSR(SRSystem):
    """Joint training of E-Net and ``M`` Table-2 branches with the ELBO of Eq. (12); Eq. (10) at inference.

    Args:
        variant: ``"ours"``, ``"average"``, ``"no_pretrain"``, ``"hard"`` or ``"hard_alternating"`` (the paper's
            ablation variants, see the module docstring).
        inference: How test/validation outputs combine the branches: ``"auto"`` (the variant's own: soft for
            ours/no_pretrain, hard for hard/hard_alternating, average for average), ``"soft"``, ``"hard"``,
            ``"average"``. A runtime option (not stored in checkpoints).
        num_branches: ``M``, the number of branches and latent states (paper: 4).
        enet_ckpt: Pre-trained E-Net checkpoint (``configs/mixture/enet_pretrain.yaml``); ``{scale}`` is filled with the
            model's scale. Read at the start of ``fit`` for ``ours``, ``hard`` and ``hard_alternating``.
        kl_weight: ``lambda`` of Eq. (12) (paper: 0.05).
        reduction: ``"sum"``: ``||H - F||^2`` summed over the pixels of each image (Eq. 12); ``"mean"``: averaged.
        optimizer: ``"sgd"`` (paper) or ``"adam"`` (not in the paper; for short CPU budgets). Both use the two
            parameter groups and the plateau schedule.
        lr_branches: Learning rate of the branches (paper: 1e-2 with SGD).
        lr_enet: Learning rate of E-Net (paper: 1e-4 with SGD).
        momentum: SGD momentum (paper: 0.9).
        weight_decay: SGD weight decay (not in the paper: 0).
        plateau_patience: Validations without improvement of ``val/loss`` before both learning rates are divided
            by 10; ``None``: constant learning rates.
        alternate_every: Steps per phase of ``hard_alternating``.
        channels: Feature maps of a branch (paper: 64).
        mapping_layers: Mapping convolutions of a branch (paper: 9).
        recon_channels: Transposed-convolution outputs of a branch (paper: 8).
        enet_channels: E-Net convolution widths (paper: 32, 64, 128, 256).
        dropout: E-Net dropout (paper: 0.5).
        enet_input_norm: Standardise each LR Y image before E-Net (not in the paper); must be what the E-Net was
            pre-trained with (``input_norm`` of ``ENetPretrain``; checked when the checkpoint is read).
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    def __init__(
        self,
        variant: Variant = "ours",
        inference: Inference = "auto",
        num_branches: int = 4,
        enet_ckpt: str = "checkpoints/mixture/enet_x{scale}/last.ckpt",
        kl_weight: float = 0.05,
        reduction: Literal["sum", "mean"] = "sum",
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr_branches: float = 1e-2,
        lr_enet: float = 1e-4,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        plateau_patience: int | None = 5,
        alternate_every: int = 100,
        channels: int = 64,
        mapping_layers: int = 9,
        recon_channels: int = 8,
        enet_channels: tuple[int, int, int, int] = (32, 64, 128, 256),
        dropout: float = 0.5,
        enet_input_norm: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(MIXTURE_RUNTIME_HPARAMS))
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        if variant not in ("ours", "average", "no_pretrain", "hard", "hard_alternating"):
            raise ValueError(f"unknown variant {variant!r}")
        if inference == "auto":
            inference = {"ours": "soft", "no_pretrain": "soft", "average": "average"}.get(variant, "hard")
        if variant == "average" and inference != "average":
            raise ValueError("the averaged ensemble has no E-Net: its inference can only be 'average'")
        self.variant = variant
        self.inference = inference
        self.num_branches = num_branches
        self.branches = MixtureBranches(self.scale, num_branches, channels, mapping_layers, recon_channels)
        self.enet = (
            None if variant == "average" else ENet(num_branches, enet_channels, dropout, input_norm=enet_input_norm)
        )
        self.uses_pretraining = variant in ("ours", "hard", "hard_alternating")
        self.prior = copy.deepcopy(self.enet) if variant in ("ours", "hard") else None
        if self.prior is not None:
            self.prior.requires_grad_(False).eval()
        self.val_loss = MeanMetric()
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None
        self._stash: tuple[Tensor, dict[str, Tensor]] | None = None
        self._keep_parts = False

    # ------------------------------------------------------------------------------------------ set-up, modes
    @property
    def enet_ckpt_path(self) -> str:
        """``enet_ckpt`` with ``{scale}`` filled in."""
        return self.hparams.enet_ckpt.format(scale=self.scale)

    def load_pretrained_enet(self, path: str | None = None) -> None:
        """Initialise E-Net (and the frozen prior) from a pre-training checkpoint; stops if it is missing."""
        path = path or self.enet_ckpt_path
        command = PRETRAIN_COMMAND + ("" if self.scale == 2 else f" --data.init_args.scale {self.scale}")
        ckpt = read_checkpoint(path, command)
        theirs = ckpt.get("hyper_parameters", {})
        if "input_norm" in theirs and bool(theirs["input_norm"]) != self.hparams.enet_input_norm:
            raise CheckpointError(
                f"checkpoint {path} was pre-trained with input_norm={theirs['input_norm']} but this model has "
                f"enet_input_norm={self.hparams.enet_input_norm}: pass --model.init_args.enet_input_norm "
                f"{str(bool(theirs['input_norm'])).lower()}"
            )
        self.enet.load_state_dict(check_state_dict(self.enet, ckpt["state_dict"], path, command, "enet."))
        if self.prior is not None:
            self.prior.load_state_dict(self.enet.state_dict())

    def setup(self, stage: str) -> None:
        """Check the data scale; at the start of a fresh ``fit``, load the pre-trained E-Net if the variant needs it."""
        super().setup(stage)
        resuming = getattr(self.trainer, "ckpt_path", None) is not None
        if stage == "fit" and self.uses_pretraining and not resuming:
            self.load_pretrained_enet()

    def train(self, mode: bool = True) -> MixtureSR:
        """As ``nn.Module.train``, but the prior E-Net always stays in eval mode (no dropout, fixed BN statistics)."""
        super().train(mode)
        if self.prior is not None:
            self.prior.eval()
        return self

    # ----------------------------------------------------------------------------------------------- forward
    def log_posterior(self, y_lr: Tensor) -> Tensor:
        """``log q(z | L)`` ``(B, M)`` from LR Y (uniform for the averaged ensemble)."""
        if self.enet is None:
            return y_lr.new_full((y_lr.shape[0], self.num_branches), -math.log(self.num_branches))
        return F.log_softmax(self.enet(y_lr), dim=1)

    def log_prior(self, y_lr: Tensor) -> Tensor:
        """``log p(z | L)`` ``(B, M)``: the frozen pre-trained E-Net, or uniform (no pre-training)."""
        if self.prior is None:
            return y_lr.new_full((y_lr.shape[0], self.num_branches), -math.log(self.num_branches))
        with torch.no_grad():
            return F.log_softmax(self.prior(y_lr), dim=1)

    def posterior(self, lr: Tensor) -> Tensor:
        """``q(z | L)`` ``(B, M)`` of RGB LR images."""
        return self.log_posterior(rgb_to_y(lr)).exp()

    def upsample(self, x: Tensor) -> Tensor:
        """MATLAB-convention bicubic upsampling by ``scale`` (the residual base, and Cb/Cr of the output)."""
        return resize(x, scale=self.scale, convention="matlab")

    def _parts(self, lr: Tensor, q: Tensor | None = None) -> dict[str, Tensor]:
        ycc = rgb_to_ycbcr(lr)
        y = ycc[:, :1]
        log_q = self.log_posterior(y) if q is None else q.clamp_min(1e-30).log()
        return {"ycc": ycc, "y": y, "q": log_q.exp(), "log_q": log_q, "base": self.upsample(y),
                "residuals": self.branches(y)}  # fmt: skip

    def _combine(self, parts: dict[str, Tensor]) -> Tensor:
        q, res, base = parts["q"], parts["residuals"], parts["base"]
        if self.inference == "hard":
            y_sr = hard_mixture(q, res, base)
        elif self.inference == "average":
            y_sr = soft_mixture(torch.full_like(q, 1 / q.shape[1]), res, base)
        else:
            y_sr = soft_mixture(q, res, base)
        cbcr = self.upsample(parts["ycc"][:, 1:])
        return ycbcr_to_rgb(torch.cat([y_sr, cbcr], dim=1))

    def super_resolve(self, lr: Tensor, q: Tensor | None = None) -> Tensor:
        """``(B, 3, H, W)`` RGB LR -> RGB SR: Eq. (10) (or hard / average) on Y, bicubic Cb/Cr.

        Args:
            lr: RGB LR in ``[0, 1]``.
            q: Optional posterior ``(B, M)`` to use instead of E-Net's on ``lr`` (tiling uses the whole image's).
        """
        parts = self._parts(lr, q)
        if self._keep_parts:
            self._stash = (lr, parts)
        return self._combine(parts)

    def _tiled(self, lr: Tensor) -> Tensor:
        """Tiled inference with E-Net's posterior of the *whole* image (E-Net pools globally, tiles would not)."""
        q = self.posterior(lr)
        return tiled_forward(lambda t: self.super_resolve(t, q), lr, self.scale, self.tile_size, self.tile_overlap)

    # ------------------------------------------------------------------------------------------------ losses
    def elbo_terms(self, parts: dict[str, Tensor], y_hr: Tensor, log_q: Tensor | None = None) -> dict[str, Tensor]:
        """Per-image terms of Eq. (12): ``recon`` (expected reconstruction), ``kl`` and ``errors`` ``(B, M)``."""
        errors = branch_errors(parts["base"] + parts["residuals"], y_hr, self.hparams.reduction)
        if log_q is None:
            log_q = self.log_posterior(parts["y"])
        recon = expected_reconstruction(log_q.exp(), errors)
        if self.enet is None or self.variant == "hard_alternating":  # no KL term in these objectives
            kl = torch.zeros_like(recon)
        else:
            kl = kl_categorical(log_q, self.log_prior(parts["y"]))
        return {"recon": recon, "kl": kl, "errors": errors, "log_q": log_q}

    def alternating_phase(self) -> str:
        """``"branches"`` or ``"enet"``: the current phase of ``hard_alternating``."""
        return "branches" if (self.global_step // self.hparams.alternate_every) % 2 == 0 else "enet"

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Eq. (12) (or the variant's objective) on Y; logs ``train/loss``, ``train/recon``, ``train/kl``."""
        y_hr = rgb_to_y(batch["hr"])
        bsz = y_hr.shape[0]
        if self.variant == "hard_alternating":
            loss = self._alternating_loss(batch["lr"], y_hr)
        else:
            ycc = rgb_to_ycbcr(batch["lr"])
            y = ycc[:, :1]
            parts = {"ycc": ycc, "y": y, "base": self.upsample(y), "residuals": self.branches(y)}
            terms = self.elbo_terms(parts, y_hr)
            loss = (terms["recon"] + self.hparams.kl_weight * terms["kl"]).mean()
            q = terms["log_q"].exp()
            self.log("train/recon", terms["recon"].mean(), batch_size=bsz)
            self.log("train/kl", terms["kl"].mean(), batch_size=bsz)
            self.log("train/q_max", q.max(dim=1).values.mean(), batch_size=bsz)
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        return loss

    def _alternating_loss(self, lr: Tensor, y_hr: Tensor) -> Tensor:
        y = rgb_to_y(lr)
        base = self.upsample(y)
        if self.alternating_phase() == "branches":
            with torch.no_grad():
                idx = self.enet(y).argmax(dim=1)
            errors = branch_errors(base + self.branches(y), y_hr, self.hparams.reduction)
            loss = errors.gather(1, idx[:, None]).mean()
        else:
            with torch.no_grad():
                errors = branch_errors(base + self.branches(y), y_hr, self.hparams.reduction)
            q = self.log_posterior(y).exp()
            loss = expected_reconstruction(q, errors).mean()
        self.log("train/phase_enet", float(self.alternating_phase() == "enet"), batch_size=y.shape[0])
        return loss

    # -------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Base metrics (``val/psnr_y``, ...) plus ``val/loss``, the Eq. (12) objective (drives the lr decay)."""
        self._stash, self._keep_parts = None, True
        try:
            super().validation_step(batch, batch_idx)
        finally:
            self._keep_parts = False
        if self._stash is not None and self._stash[0] is batch["lr"]:
            parts = self._stash[1]
        else:
            parts = self._parts(batch["lr"])
        self._stash = None
        terms = self.elbo_terms(parts, rgb_to_y(batch["hr"]), log_q=parts["log_q"])
        self.val_loss.update(terms["recon"] + self.hparams.kl_weight * terms["kl"])

    def on_validation_epoch_end(self) -> None:
        """Log ``val/loss`` (synced over processes) and step the plateau schedule on it (not in the sanity check)."""
        value = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", value)
        if self._plateau is not None and not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self._plateau.step(float(value))
            for group in self._plateau.optimizer.param_groups:
                self.log(f"train/lr_{group.get('name', 'group')}", group["lr"])

    # ------------------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD (momentum 0.9) or Adam with two parameter groups: branches (``lr_branches``), E-Net (``lr_enet``)."""
        hp = self.hparams
        groups = [{"params": list(self.branches.parameters()), "lr": hp.lr_branches, "name": "branches"}]
        if self.enet is not None:
            groups.append({"params": list(self.enet.parameters()), "lr": hp.lr_enet, "name": "enet"})
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(groups, lr=hp.lr_branches, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(groups, lr=hp.lr_branches, momentum=hp.momentum, weight_decay=hp.weight_decay)
        self._plateau = None
        if hp.plateau_patience is not None:
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=0.1, patience=hp.plateau_patience
            )
            if self._plateau_state is not None:
                self._plateau.load_state_dict(self._plateau_state)
        return opt

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the plateau schedule's state (it is stepped by this module, not by Lightning)."""
        if self._plateau is not None:
            checkpoint["mixture_plateau"] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the plateau schedule's state when the optimiser is made."""
        self._plateau_state = checkpoint.get("mixture_plateau")


# ----------------------------------------------------------------------------------------------------------------
# Fig. 4: PCA of E-Net posteriors
# ----------------------------------------------------------------------------------------------------------------


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
    as three pairwise 2-D scatter plots per group (Pillow; matplotlib is not a dependency). Logged to W&B as
    ``val/posterior_pca`` when a ``WandbLogger`` is present and always saved as
    ``<log_dir>/posterior_pca/epoch{E:04d}_step{S:07d}.png``; the coordinates go to a ``.npz`` beside it.
    Runs on rank zero at validation epochs 0, n, 2n, ..., never in the sanity check; does nothing for systems
    without ``posterior`` (the averaged ensemble) or data without a ``MixtureDegradation``.

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

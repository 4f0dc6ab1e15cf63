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

The ELBO's parts and the two mixtures are pure functions in ``lightning_modules.mixture.elbo``.

Conventions
-----------
* **Y channel.** The systems take RGB in ``[0, 1]`` and work on Y of MATLAB ``rgb2ycbcr`` divided by 255 (so Y lies
  in ``[16/255, 235/255]``, the official code's skimage ``rgb2ycbcr`` with ``input_range = 1``): ``rgb_to_y``,
  ``rgb_to_ycbcr`` and ``ycbcr_to_rgb`` of ``datamodules.degradation.ops``. The returned RGB image is the SR Y
  combined with the bicubic-upsampled Cb/Cr of the LR, converted back with the exact inverse transform, so the
  evaluation's Y of the output is the network's Y (up to clamping RGB to ``[0, 1]``).
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
  every ``alternate_every`` steps between (1) E-Net fixed (it selects in eval mode: no dropout, running BatchNorm
  statistics neither used from the batch nor updated), branches trained on the MSE of the branch of maximum
  posterior and (2) branches fixed, E-Net trained on the first term of Eq. (12); hard selection at test time.
  Each phase leaves one part without gradients: under DDP use ``--trainer.strategy ddp_find_unused_parameters_true``.

Fig. 4 (PCA of E-Net posteriors under every seen and unseen kernel) is ``callbacks.posterior_pca.PosteriorPCALogger``,
which calls :meth:`MixtureSR.posterior`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from datamodules.degradation.ops import resize, rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.stages import (
    CheckpointError,
    FrozenParts,
    check_state_dict,
    freeze,
    read_checkpoint,
    stage_hparams,
)
from lightning_modules.core.tiling import tiled_forward
from lightning_modules.mixture.elbo import (
    branch_errors,
    expected_reconstruction,
    hard_mixture,
    kl_categorical,
    soft_mixture,
)
from lightning_modules.mixture.rng import ResumableRNG
from lightning_modules.nets.mixture import ENet, MixtureBranches

Variant = Literal["ours", "average", "no_pretrain", "hard", "hard_alternating"]
Inference = Literal["auto", "soft", "hard", "average"]
PRETRAIN_COMMAND = "python main.py fit -c configs/mixture/enet_pretrain.yaml"
# Runtime options of MixtureSR kept out of the checkpoint's hyper-parameters (see base.RUNTIME_HPARAMS).
MIXTURE_RUNTIME_HPARAMS = (*RUNTIME_HPARAMS, "inference")


class MixtureSR(ResumableRNG, FrozenParts, SRSystem):
    """Joint training of E-Net and ``M`` Table-2 branches with the ELBO of Eq. (12); Eq. (10) at inference.

    Args:
        variant: ``"ours"``, ``"average"``, ``"no_pretrain"``, ``"hard"`` or ``"hard_alternating"`` (the paper's
            ablation variants, see the module docstring).
        inference: How test/validation outputs combine the branches: ``"auto"`` (the variant's own: soft for
            ours/no_pretrain, hard for hard/hard_alternating, average for average), ``"soft"``, ``"hard"``,
            ``"average"``. A runtime option (not stored in checkpoints).
        num_branches: ``M``, the number of branches and latent states (paper: 4).
        enet_ckpt: Pre-trained E-Net checkpoint (``configs/mixture/enet_pretrain.yaml``); ``{scale}`` is filled with the
            model's scale. Read at the start of a fresh ``fit`` for ``ours``, ``hard`` and ``hard_alternating``;
            a fit resumed with ``--ckpt_path`` takes E-Net and the prior from its checkpoint and does not need it.
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

    frozen_parts = ("prior",)  # the frozen pre-trained E-Net stays in eval mode (no dropout, fixed BN statistics)

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
        self.prior = freeze(copy.deepcopy(self.enet)) if variant in ("ours", "hard") else None
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
        """Initialise E-Net (and the frozen prior) from a pre-training checkpoint; stops if it is missing or differs.

        The checkpoint must be ``ENetPretrain``'s (``input_norm`` among its hyper-parameters) at this model's scale,
        pre-trained with ``input_norm == enet_input_norm``, with E-Net weights ``enet.*`` of the same widths.
        """
        path = path or self.enet_ckpt_path
        command = PRETRAIN_COMMAND + ("" if self.scale == 2 else f" --data.init_args.scale {self.scale}")
        ckpt = read_checkpoint(path, command)
        theirs = stage_hparams(ckpt, path, ("input_norm",), command, scale=self.scale)
        if bool(theirs["input_norm"]) != self.hparams.enet_input_norm:
            raise CheckpointError(
                f"checkpoint {path} was pre-trained with input_norm={theirs['input_norm']} but this model has "
                f"enet_input_norm={self.hparams.enet_input_norm}: pass --model.init_args.enet_input_norm "
                f"{str(bool(theirs['input_norm'])).lower()}"
            )
        self.enet.load_state_dict(check_state_dict(self.enet, ckpt["state_dict"], path, command, "enet."))
        if self.prior is not None:
            self.prior.load_state_dict(self.enet.state_dict())

    def on_fit_start(self) -> None:
        """A fresh ``fit`` loads the pre-trained E-Net (if the variant needs it); a resumed one does not read that file.

        Not in ``setup``: Lightning sets ``trainer.ckpt_path`` after ``setup``, when it restores the checkpoint, which
        it does before ``on_fit_start``. (Strategies that restore after set-up, such as DeepSpeed, restore after
        ``on_fit_start``: there a resume still reads the pre-training file, then the checkpoint overwrites it.)
        """
        super().on_fit_start()
        if self.uses_pretraining and self.trainer.ckpt_path is None:
            self.load_pretrained_enet()

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

    def tiled_super_resolve(self, lr: Tensor) -> Tensor:
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
        if self.alternating_phase() == "branches":  # E-Net fixed: eval mode (no dropout, BN statistics untouched)
            idx = self._fixed_enet_scores(y).argmax(dim=1)
            errors = branch_errors(base + self.branches(y), y_hr, self.hparams.reduction)
            loss = errors.gather(1, idx[:, None]).mean()
        else:
            with torch.no_grad():
                errors = branch_errors(base + self.branches(y), y_hr, self.hparams.reduction)
            q = self.log_posterior(y).exp()
            loss = expected_reconstruction(q, errors).mean()
        self.log("train/phase_enet", float(self.alternating_phase() == "enet"), batch_size=y.shape[0])
        return loss

    @torch.no_grad()
    def _fixed_enet_scores(self, y: Tensor) -> Tensor:
        """E-Net's scores with E-Net held fixed: eval mode (running BN statistics, no dropout), no gradient."""
        mode = self.enet.training
        self.enet.eval()
        try:
            return self.enet(y)
        finally:
            self.enet.train(mode)

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
        """Keep the plateau schedule's state (it is stepped by this module, not by Lightning) and the RNG state."""
        super().on_save_checkpoint(checkpoint)
        if self._plateau is not None:
            checkpoint["mixture_plateau"] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the plateau schedule's state when the optimiser is made, and the RNG state (``ResumableRNG``)."""
        super().on_load_checkpoint(checkpoint)
        self._plateau_state = checkpoint.get("mixture_plateau")

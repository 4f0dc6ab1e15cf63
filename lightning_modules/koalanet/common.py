"""What KOALAnet's three stages share: the [-1, 1] range at the networks' edges, kernel estimates, the recipe.

Images are ``[0, 1]`` between modules (DESIGN.md); the official code feeds its networks ``[-1, 1]``
(``to_signed``/``to_unit`` here, inside the systems only). Its L1 losses are taken in that range too (twice the
``[0, 1]`` values), as here.

Kernels: the downsampling network predicts raw per-LR-pixel 20x20 kernels ``(B, 400, H, W)``; the system's kernel
estimate is the per-pixel normalised kernels averaged over the pixels, ``(B, 20, 20)``, centred on the middle of the
grid (KOALAnet's native kernels, what the training batches carry). Benchmark sets carry block-centred kernels
(``(19 + s)`` square): ``estimate_kernel`` returns those (``koala_to_block_centre``, exact zero padding), so the
systems keep the base class's ``kernel_centre = "block"``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.degradation.koala_sampler import KOALAKernelSampler, koala_to_block_centre
from lightning_modules.core.stages import check_state_dict, read_checkpoint, stage_hparams
from lightning_modules.nets.koalanet import KOALABaselineNet, KOALADownsamplingNet, KOALAUpsamplingNet
from lightning_modules.nets.layers import kernel_normalize, local_downsample

logger = logging.getLogger(__name__)

KERNEL_SIZE = 20
STAGE_COMMANDS = {
    1: "python main.py fit -c configs/koalanet/stage1.yaml",
    2: "python main.py fit -c configs/koalanet/stage2.yaml",
    3: "python main.py fit -c configs/koalanet/stage3.yaml",
}


def command(stage: int, scale: int) -> str:
    """The command that writes stage ``stage``'s checkpoint at ``scale`` (the configs default to x4)."""
    return STAGE_COMMANDS[stage] + ("" if scale == 4 else f" --data.init_args.scale {scale}")


def to_signed(x: Tensor) -> Tensor:
    """``[0, 1]`` -> ``[-1, 1]``."""
    return x * 2 - 1


def to_unit(x: Tensor) -> Tensor:
    """``[-1, 1]`` -> ``[0, 1]`` (not clamped)."""
    return (x + 1) / 2


def mean_kernel(raw: Tensor) -> Tensor:
    """Raw ``(B, 400, H, W)`` kernels -> ``(B, 20, 20)``: per-pixel normalised, averaged over the pixels."""
    return kernel_normalize(raw, KERNEL_SIZE).mean(dim=(-2, -1)).unflatten(-1, (KERNEL_SIZE, KERNEL_SIZE))


def block_kernel(raw: Tensor, scale: int) -> Tensor:
    """Raw ``(B, 400, H, W)`` kernels -> the block-centred ``(B, 19 + s, 19 + s)`` mean kernel of the benchmarks."""
    return koala_to_block_centre(mean_kernel(raw), scale)


def kernel_losses(batch: dict, raw: Tensor, scale: int) -> dict[str, Tensor]:
    """Stage 1's L1 terms of raw kernels ``raw`` ``(B, 400, H, W)`` for ``batch`` (means over elements).

    ``"recon"``: the LR against ``local_downsample(HR, normalize(raw))`` in ``[-1, 1]`` image units; ``"kernel"``:
    the mean normalised kernel against the batch's native 20x20 kernel (kernel units).
    """
    kernel = batch["kernel"]
    if kernel.shape[-1] != KERNEL_SIZE:
        raise ValueError(
            f"KOALAnet learns its native {KERNEL_SIZE}x{KERNEL_SIZE} kernels, the batch has "
            f"{kernel.shape[-1]}x{kernel.shape[-1]}: use the KOALA kernel sampler with centre 'pixel' "
            "(configs/koalanet/stage1.yaml)"
        )
    recon = local_downsample(to_signed(batch["hr"]), kernel_normalize(raw, KERNEL_SIZE), KERNEL_SIZE, scale)
    return {
        "recon": F.l1_loss(recon, to_signed(batch["lr"])),
        "kernel": F.l1_loss(mean_kernel(raw), kernel.to(raw)),
    }


def decay_milestones(total_steps: int) -> list[int]:
    """The official schedule: x0.1 at 80 % and 90 % of training (epochs 1600 and 1800 of 2000)."""
    return [max(1, int(0.8 * total_steps)), max(2, int(0.9 * total_steps))]


def adam_with_decay(params, lr: float, total_steps: int) -> dict:
    """Adam (official: 1e-4) and the two x0.1 decays of ``decay_milestones``, stepped every iteration."""
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=decay_milestones(total_steps), gamma=0.1)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def load_downsampling_net(path: str, scale: int) -> KOALADownsamplingNet:
    """Stage 1's network from its checkpoint (strict; a missing or foreign file names the command that makes it)."""
    cmd = command(1, scale)
    ckpt = read_checkpoint(path, cmd)
    stage_hparams(ckpt, path, ("width",), cmd, scale)
    net = KOALADownsamplingNet(scale, width=int(ckpt["hyper_parameters"]["width"]))
    net.load_state_dict(check_state_dict(net, ckpt["state_dict"], path, cmd, "net."), strict=True)
    return net


def read_baseline_state(path: str, scale: int) -> dict[str, Tensor]:
    """Stage 2's upsampling baseline weights (``net.*`` of its checkpoint, checked against the baseline net)."""
    cmd = command(2, scale)
    ckpt = read_checkpoint(path, cmd)
    hp = stage_hparams(ckpt, path, ("num_blocks", "feat"), cmd, scale)
    net = KOALABaselineNet(scale, num_blocks=int(hp["num_blocks"]), feat=int(hp["feat"]))
    return check_state_dict(net, ckpt["state_dict"], path, cmd, "net.")


def pad_to_multiple(x: Tensor, multiple: int = 4) -> tuple[Tensor, int, int]:
    """Replicate-pad ``(B, C, H, W)`` at the bottom/right to sides divisible by ``multiple``; returns ``(x, H, W)``.

    The downsampling U-Net pools twice, so its input sides must be divisible by 4; the official code trims test
    images instead (which changes the benchmark), we pad and crop the outputs back (a deviation).
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


def mean_training_kernel(scale: int, count: int = 20_000, seed: int = 0) -> Tensor:
    """The mean of ``count`` kernels of KOALAnet's training distribution, block-centred ``(19 + s, 19 + s)``.

    The best constant guess in the L2 sense, known before seeing any image: the reference of ``test/mean_kernel_*``.
    """
    sampler = KOALAKernelSampler()
    params = sampler.sample(count, torch.Generator().manual_seed(seed), "cpu")
    return koala_to_block_centre(sampler.kernels(params, scale).mean(0), scale)


def load_stage_weights(koala: KOALAUpsamplingNet, baseline_state: dict[str, Tensor]) -> None:
    """Copy a trained ``KOALABaselineNet``'s tensors into ``koala`` by name (stage 2 -> stage 3), strictly.

    Every baseline tensor must find a same-shaped tensor in ``koala``, and every tensor of ``koala`` that is not
    KOALA-only (``koala.koala_only_keys()``: kernel features, ``mul``, ``filt``) must be given. The KOALA-only tensors
    keep their initialisation and are reported as new (logged at INFO).

    Args:
        koala: The stage-3 upsampling net, modified in place.
        baseline_state: ``KOALABaselineNet.state_dict()`` (without any Lightning prefix).

    Raises:
        ValueError: Listing the missing, unexpected and mis-shaped tensors, if there are any.
    """
    target = koala.state_dict()
    new = koala.koala_only_keys()
    unexpected = sorted(set(baseline_state) - set(target))
    missing = sorted(set(target) - set(baseline_state) - set(new))
    mismatched = [
        f"{key}: {tuple(value.shape)} vs {tuple(target[key].shape)}"
        for key, value in baseline_state.items()
        if key in target and value.shape != target[key].shape
    ]
    if unexpected or missing or mismatched:
        raise ValueError(
            "baseline weights do not fit the KOALA upsampling net: "
            f"missing {missing}, unexpected {unexpected}, mis-shaped {mismatched} "
            f"({len(new)} KOALA-only tensors are new and need no baseline weights)"
        )
    koala.load_state_dict({**target, **baseline_state}, strict=True)
    logger.info("loaded %d baseline tensors; new (KOALA-only, initialised): %s", len(baseline_state), new)

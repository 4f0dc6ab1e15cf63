"""Shared pieces of the KENet tests: a real HR crop, PSNR, tiny Lightning-style checkpoints of the KENet stages."""

from pathlib import Path

import lightning
import numpy as np
import torch

from lightning_modules.nets.kenet import KENet
from lightning_modules.nets.usrnet import USRNet

TINY_KENET = {"width": 4, "fc_width": 16}
TINY_USRNET = {"n_iter": 2, "h_nc": 8, "nc": [4, 4, 4, 4], "nb": 1}


def real_hr(size: int, index: int = 0) -> torch.Tensor:
    """A ``(1, 3, size, size)`` centre crop in ``[0, 1]`` of a built-in photo (scikit-image's samples)."""
    import skimage.data

    photo = [skimage.data.astronaut, skimage.data.chelsea, skimage.data.coffee][index]()
    h, w = photo.shape[:2]
    crop = np.ascontiguousarray(photo[(h - size) // 2 : (h + size) // 2, (w - size) // 2 : (w + size) // 2])
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two tensors in ``[0, 1]`` (all pixels)."""
    return float(10 * torch.log10(1 / (a - b).square().mean()))


def _save(path: Path, state: dict, prefix: str, hp: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {prefix + k: v for k, v in state.items()},
            "pytorch-lightning_version": lightning.__version__,
            "hyper_parameters": hp,
        },
        path,
    )


def write_kenet_checkpoint(template: Path, scale: int, seed: int = 0) -> str:
    """A random tiny ``KENetSystem``-style checkpoint at ``template`` (``{scale}`` filled); returns the template."""
    torch.manual_seed(seed)
    size = {2: 11, 4: 21}[scale]
    net = KENet(kernel_size=size, **TINY_KENET)
    _save(Path(str(template).format(scale=scale)), net.state_dict(), "net.",
          {"scale": scale, "kernel_size": size, **TINY_KENET})  # fmt: skip
    return str(template)


def write_usrnet_checkpoint(template: Path, scale: int, seed: int = 0) -> str:
    """A random tiny ``USRNetSystem``-style checkpoint at ``template`` (``{scale}`` filled); returns the template."""
    torch.manual_seed(seed)
    net = USRNet(**{**TINY_USRNET, "nc": tuple(TINY_USRNET["nc"])})
    _save(Path(str(template).format(scale=scale)), net.state_dict(), "net.", {"scale": scale, **TINY_USRNET})
    return str(template)

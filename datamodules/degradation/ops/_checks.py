"""Shape checks and the float32 context shared by the operators."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def check_image(x: Tensor, name: str = "input") -> None:
    """Raise ``ValueError`` unless ``x`` is an image batch ``(B, C, H, W)``."""
    if x.dim() != 4:
        raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(x.shape)}")


def exact(x: Tensor) -> tuple[contextlib.AbstractContextManager, Tensor]:
    """``(context, x)``: an autocast switched off on ``x``'s device and ``x`` in at least float32.

    For fixed operators computed as matrix products (MATLAB resize, colour conversion), which a bfloat16 autocast
    (the ``bf16`` inference path) would otherwise round. Devices without autocast (``meta``) get a null context.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if x.device.type not in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return contextlib.nullcontext(), x
    return torch.autocast(x.device.type, enabled=False), x

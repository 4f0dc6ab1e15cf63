"""Shape checks shared by the operators."""

from __future__ import annotations

from torch import Tensor


def check_image(x: Tensor, name: str = "input") -> None:
    """Raise ``ValueError`` unless ``x`` is an image batch ``(B, C, H, W)``."""
    if x.dim() != 4:
        raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(x.shape)}")

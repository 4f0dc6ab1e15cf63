"""The residual VDSR-style SR network that MoESR uses for its kernel-specific experts.

One stage: PyTorch bicubic upsampling (``F.interpolate``, ``a = -0.75``, ``align_corners=False``, as MoESR's
official code), then ``num_layers`` 3x3 convolutions (``3 -> C``, ``(L - 2) x (C -> C)``, ``C -> 3``) with ReLU after
all but the last, and a global residual: ``out = up + body(up)``. Kaiming-normal initialisation (fan-in, ReLU).
x4 in MoESR is two x2 stages in sequence (the paper found it faster and better than one direct x4 stage).

Parameter count of one 12-layer, 64-channel stage: 372,803.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class VDSR(nn.Module):
    """One residual stage on a bicubic upsample: ``(B, 3, H, W) -> (B, 3, sH, sW)``.

    Args:
        scale: Upsampling factor of this stage.
        num_layers: Number of 3x3 convolutions (MoESR: 12).
        channels: Feature maps per hidden layer (MoESR: 64).
    """

    def __init__(self, scale: int = 2, num_layers: int = 12, channels: int = 64) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers must be >= 2, got {num_layers}")
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(num_layers - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels, 3, 3, padding=1))
        self.body = nn.Sequential(*layers)
        for m in self.body.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, lr: Tensor) -> Tensor:
        """Super-resolve ``lr`` ``(B, 3, H, W)`` in ``[0, 1]`` (output not clamped)."""
        up = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False) if self.scale > 1 else lr
        return up + self.body(up)


class ChainedVDSR(nn.Sequential):
    """Stages in sequence, e.g. x4 = two x2 ``VDSR`` stages (MoESR's x4 experts).

    Args:
        scale: Total factor; 4 and 8 are built from x2 stages, 2 and 3 are one stage.
        num_layers: Convolutions per stage.
        channels: Feature maps per hidden layer.
    """

    def __init__(self, scale: int = 2, num_layers: int = 12, channels: int = 64) -> None:
        factors = {2: [2], 3: [3], 4: [2, 2], 8: [2, 2, 2]}.get(scale)
        if factors is None:
            raise ValueError(f"ChainedVDSR supports x2, x3, x4 and x8, got x{scale}")
        super().__init__(*(VDSR(f, num_layers, channels) for f in factors))
        self.scale = scale

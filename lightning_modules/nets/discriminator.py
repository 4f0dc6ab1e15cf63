"""Real-ESRGAN's U-Net discriminator with spectral normalisation (Wang et al. 2021), the one DASR trains against.

``(B, C, H, W)`` image -> ``(B, 1, H, W)`` per-pixel real/fake logits (no sigmoid), with ``H`` and ``W`` multiples
of 8. Layers (``w`` = ``width``, LeakyReLU(0.2) after every convolution except the last):

* ``conv0``: 3x3, ``C -> w``, with bias, **no** spectral norm;
* encoder, 4x4 stride-2 convolutions without bias: ``conv1`` ``w -> 2w`` (1/2), ``conv2`` ``2w -> 4w`` (1/4),
  ``conv3`` ``4w -> 8w`` (1/8);
* decoder, each step a 2x bilinear upsampling (``align_corners=False``) then a 3x3 convolution without bias:
  ``conv4`` ``8w -> 4w`` (+ ``x2``), ``conv5`` ``4w -> 2w`` (+ ``x1``), ``conv6`` ``2w -> w`` (+ ``x0``); the skip sum
  (``skip_connection``) is added after the activation;
* ``conv7``, ``conv8``: 3x3 ``w -> w`` without bias; ``conv9``: 3x3 ``w -> 1`` with bias, **no** spectral norm.

``conv1`` to ``conv8`` are wrapped in ``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration per
training forward pass). PyTorch's default initialisation, as Real-ESRGAN. At ``width=64``: 4,376,897 parameters.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["UNetDiscriminatorSN"]


class UNetDiscriminatorSN(nn.Module):
    """U-Net discriminator with spectral norm: ``(B, C, H, W) -> (B, 1, H, W)`` logits.

    Args:
        in_ch: Input channels ``C`` (RGB: 3).
        width: Channels of the first level ``w``; the encoder goes to ``2w``, ``4w``, ``8w`` (Real-ESRGAN: 64).
        skip_connection: Whether decoder levels add the encoder features of the same resolution.
    """

    def __init__(self, in_ch: int = 3, width: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        self.skip_connection = skip_connection
        w = width
        self.conv0 = nn.Conv2d(in_ch, w, 3, padding=1)
        self.conv1 = spectral_norm(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(4 * w, 8 * w, 4, stride=2, padding=1, bias=False))
        self.conv4 = spectral_norm(nn.Conv2d(8 * w, 4 * w, 3, padding=1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(4 * w, 2 * w, 3, padding=1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(2 * w, w, 3, padding=1, bias=False))
        self.conv7 = spectral_norm(nn.Conv2d(w, w, 3, padding=1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(w, w, 3, padding=1, bias=False))
        self.conv9 = nn.Conv2d(w, 1, 3, padding=1)

    def _up(self, x: Tensor, conv: nn.Module, skip: Tensor) -> Tensor:
        out = F.leaky_relu(conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)), 0.2)
        return out + skip if self.skip_connection else out

    def forward(self, x: Tensor) -> Tensor:
        """Score every pixel.

        Args:
            x: ``(B, C, H, W)`` images (HR or SR), ``H`` and ``W`` multiples of 8.

        Returns:
            ``(B, 1, H, W)`` logits (real > fake; no sigmoid).

        Raises:
            ValueError: If ``x`` is not 4-D or ``H``, ``W`` are not multiples of 8 (three 2x downsamplings).
        """
        if x.ndim != 4 or x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"expected (B, C, H, W) with H, W multiples of 8, got shape {tuple(x.shape)}")
        x0 = F.leaky_relu(self.conv0(x), 0.2)
        x1 = F.leaky_relu(self.conv1(x0), 0.2)
        x2 = F.leaky_relu(self.conv2(x1), 0.2)
        x3 = F.leaky_relu(self.conv3(x2), 0.2)
        out = self._up(self._up(self._up(x3, self.conv4, x2), self.conv5, x1), self.conv6, x0)
        out = F.leaky_relu(self.conv8(F.leaky_relu(self.conv7(out), 0.2)), 0.2)
        return self.conv9(out)

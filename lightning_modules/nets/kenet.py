"""KENet, the kernel estimation network of Cao et al. (Sec. 2.2, Fig. 1, Eq. 4-6).

``(B, C, H, W)`` LR in ``[0, 1]`` -> ``(B, l, l)`` blur kernel, non-negative and summing to 1 (softmax):

* ``f0 = RB(ReLU(Conv(lr)))`` with ``width`` (64) channels;
* ``f_i = RB(ReLU(Conv(MaxPool2(f_{i-1}))))`` for ``i = 1, 2, 3``, the ``s``-th convolution having ``64 s`` output
  channels (the paper: "All convolutional layers ... 3x3 with 64s output channels, where s represents the sth Conv
  operation"), so 128, 192 and 256;
* global average pooling, ``FC(256 -> 1024)``, ReLU, ``FC(1024 -> 1024)``, ReLU, ``FC(1024 -> l*l)``, softmax over the
  ``l*l`` outputs, reshaped to ``(B, l, l)``.

A residual block is ``x + Conv(ReLU(Conv(x)))`` (two 3x3 convolutions with a ReLU in between, identity skip, no
activation after the sum: the paper names none). Every convolution is 3x3 with bias and padding 1; PyTorch's default
initialisation (the paper states none).

Kernel convention: the network predicts whatever its training kernels are. Trained on
``datamodules.degradation.samplers.KENetKernelSampler`` batches, its output is **block-centred** (mean at
``l // 2 + 0.5 * (s - 1)``) and applied by **correlation** with decimation from pixel 0, as the training data.

Parameter count at the paper's size (``width=64, fc_width=1024``): 4,389,561 for ``l = 11`` (x2), 4,717,561 for
``l = 21`` (x4); ``kenet_parameter_count`` gives it for any size.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["KENet", "KENetResidualBlock", "kenet_parameter_count"]

NUM_DOWNSAMPLINGS = 3
"""Max-pooling stages of Eq. (5); the input must be at least ``2 ** 3 = 8`` px on each side."""


class KENetResidualBlock(nn.Module):
    """``x + Conv3x3(ReLU(Conv3x3(x)))``, ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: Input = output channels ``C``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Identity skip around the two convolutions (no activation after the sum)."""
        return x + self.body(x)


class KENet(nn.Module):
    """Kernel estimation network: LR image ``(B, C, H, W)`` -> kernel ``(B, l, l)`` summing to 1.

    Args:
        kernel_size: Side ``l`` of the estimated kernel (the paper: 11 at x2, 21 at x4).
        in_channels: Channels ``C`` of the LR input (RGB: 3).
        width: Channels of the first stage; the ``s``-th stage has ``width * s`` (the paper: 64).
        fc_width: Width of the two hidden fully connected layers (the paper: 1024).
    """

    def __init__(self, kernel_size: int = 11, in_channels: int = 3, width: int = 64, fc_width: int = 1024) -> None:
        super().__init__()
        if min(kernel_size, in_channels, width, fc_width) < 1:
            raise ValueError(
                f"sizes must be positive, got kernel_size={kernel_size}, in_channels={in_channels}, "
                f"width={width}, fc_width={fc_width}"
            )
        self.kernel_size = kernel_size
        stages: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True), KENetResidualBlock(width))
        ]
        for s in range(2, NUM_DOWNSAMPLINGS + 2):
            stages.append(
                nn.Sequential(
                    nn.MaxPool2d(2),
                    nn.Conv2d(width * (s - 1), width * s, 3, padding=1),
                    nn.ReLU(inplace=True),
                    KENetResidualBlock(width * s),
                )
            )
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Linear(width * (NUM_DOWNSAMPLINGS + 1), fc_width),
            nn.ReLU(inplace=True),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=True),
            nn.Linear(fc_width, kernel_size * kernel_size),
        )

    def forward(self, lr: Tensor) -> Tensor:
        """Estimate one kernel per image.

        Args:
            lr: ``(B, C, H, W)`` LR images in ``[0, 1]``, ``H, W >= 8``.

        Returns:
            ``(B, l, l)`` kernels (softmax over the ``l * l`` taps: positive, summing to 1), block-centred and applied
            by correlation when trained on ``KENetKernelSampler`` data.

        Raises:
            ValueError: If ``lr`` is not 4-D or is smaller than 8 px on a side (three 2x max-poolings).
        """
        if lr.ndim != 4:
            raise ValueError(f"KENet expects (B, C, H, W) images, got shape {tuple(lr.shape)}")
        if min(lr.shape[-2:]) < 2**NUM_DOWNSAMPLINGS:
            raise ValueError(f"KENet needs inputs of at least 8x8 px (3 max-poolings), got {tuple(lr.shape[-2:])}")
        logits = self.head(self.pool(self.features(lr)).flatten(1))
        return logits.softmax(dim=-1).view(-1, self.kernel_size, self.kernel_size)


def kenet_parameter_count(kernel_size: int = 11, in_channels: int = 3, width: int = 64, fc_width: int = 1024) -> int:
    """Trainable parameters of ``KENet(kernel_size, in_channels, width, fc_width)``, in closed form.

    A 3x3 convolution ``a -> b`` with bias has ``9ab + b`` parameters, a fully connected layer ``a -> b`` has
    ``ab + b``; each stage ``s = 1..4`` has one convolution into ``width * s`` channels and a residual block of two
    ``width * s -> width * s`` convolutions.
    """

    def conv(a: int, b: int) -> int:
        return 9 * a * b + b

    def fc(a: int, b: int) -> int:
        return a * b + b

    total = 0
    for s in range(1, NUM_DOWNSAMPLINGS + 2):
        c_in = in_channels if s == 1 else width * (s - 1)
        total += conv(c_in, width * s) + 2 * conv(width * s, width * s)
    last = width * (NUM_DOWNSAMPLINGS + 1)
    return total + fc(last, fc_width) + fc(fc_width, fc_width) + fc(fc_width, kernel_size * kernel_size)

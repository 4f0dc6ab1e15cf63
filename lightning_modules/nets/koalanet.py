"""KOALAnet (Kim, Sim, Kim, CVPR 2021, Sec. 3, Fig. 2): downsampling ResU-Net and KOALA upsampling network.

Layer order, widths and names follow the official TF code (hjSim/KOALAnet, ``koalanet.py``/``ops.py``). Images are in
whatever range the system feeds (the official: ``[-1, 1]``; the system converts at its edges). Every convolution is
``"same"`` with bias, 3x3 unless noted; all are initialised as the official ``xavier_initializer(uniform=False)``: a
normal truncated at two standard deviations with ``std = sqrt(1.3 * 2 / (fan_in + fan_out))`` (variance of Glorot
normal), zero bias. A residual block is **pre-activation**: ``x + conv(ReLU(conv(ReLU(x))))``.

* ``KOALADownsamplingNet`` (scope ``SISR_DDF``): LR ``(B, 3, H, W)`` -> raw per-LR-pixel kernels ``(B, 400, H, W)``
  (20x20, tap ``i*20 + j`` row-major). enc1: conv -> 64, 2 res-blocks, ReLU, skip, max-pool 2; enc2: the same at 128;
  bottleneck: conv -> 256, res-block, ReLU; dec2: 4x4 stride-2 transposed conv -> 128, concat ``[up, skip]``,
  conv -> 128, 2 res-blocks, ReLU; dec1: the same at 64; conv 64 + ReLU; conv -> 400. ``H`` and ``W`` must be
  divisible by 4 (two poolings, concatenated skips): otherwise a ``ValueError`` (the official trims test images).
  ``degrade(hr, raw)`` is the official LR reconstruction ``local_conv_ds(hr, normalize(raw))``.
* ``KOALAUpsamplingNet`` (scope ``SISR_DUF``): kernel features ``3 x (conv 400 -> 64 -> 64 -> 64, ReLU)`` of the raw
  kernels; ``conv_in`` LR -> 64; 12 blocks, the first 5 ``KOALABlock``s, the rest res-blocks; ReLU; kernel head
  ``conv 128 + ReLU -> conv -> 25 s^2`` per-pixel upsampling filters, normalised per sub-pixel (the official
  ``local_conv_us`` normalises inside) in the ``local_upsample`` layout (channel ``tap * s^2 + dy * s + dx``, the
  official layout); residual head ``conv 128 + ReLU -> PixelShuffle 2`` (32 ch), at x4 ``conv 64 + ReLU ->
  PixelShuffle 2`` (16 ch), ``conv -> 3`` (at x2 from 32 channels: the official; the neverx3gu port's x2 head expecting
  16 is wrong). Output = ``local_upsample(lr, filters) + residual``. PyTorch's ``PixelShuffle`` orders channels CRD,
  TF's ``depth_to_space`` DCR: porting TF weights needs the output channels of the convolution before each shuffle
  permuted; trained from scratch it is only a relabelling.
* ``KOALABlock``: ``n = conv2(ReLU(conv1(ReLU(x))))``; ``m = conv(ReLU(conv(f_d)))`` (64 ch, no sigmoid); ``k =
  normalize(conv1x1(ReLU(conv1x1(f_d, 64)), 49))``; ``out = x + local_filter(n * m, k, 7)`` (one 7x7 filter per pixel,
  shared by the 64 channels).
* ``KOALABaselineNet``: the stage-2 upsampling baseline, 12 res-blocks and no kernel branch, with the same module
  names (``conv_in``, ``blocks.{i}.conv1/conv2``, ``kernel_head``, ``residual_head``);
  ``koalanet.common.load_stage_weights`` copies all of it into the KOALA net (the official restores
  ``SISR_DUF/conv2d*`` and ``SISR_DUF/Residual_block0*``: every baseline variable, heads included).

Parameter counts (a 3x3 conv ``a -> b`` has ``9ab + b``, a 4x4 transposed conv ``16ab + b``, a 1x1 ``ab + b``; RB(c)
is a res-block, ``2 (9c^2 + c)``):

* downsampling net (any scale): enc1 1,792 + 2 RB(64) 147,712; enc2 73,856 + 2 RB(128) 590,336; bottleneck 295,168 +
  RB(256) 1,180,160; dec2 deconv 524,416 + conv 256 -> 128 295,040 + 590,336; dec1 deconv 131,136 + conv 128 -> 64
  73,792 + 147,712; conv 64 -> 64 36,928; conv 64 -> 400 230,800: **4,319,184**.
* upsampling net: kernel features 230,464 + 2 x 36,928 = 304,320; conv_in 1,792; 12 RB(64) 886,272; KOALA extras
  5 x (m: 2 x 36,928 + k: 4,160 + 3,185) = 406,005; kernel head 73,856 + (9 x 128 x 25 s^2 + 25 s^2) = 115,300 (x2)
  / 461,200 (x4); residual head 73,856 + (x4: 18,496 + 435; x2: 867): **1,862,268** (x2), **2,226,232** (x4).
* KOALAnet: **6,181,452** (x2) and **6,545,416** (x4), against the paper's 6.09 M and 6.45 M. The scale difference
  (363,964; paper 0.36 M) is exactly the scale-dependent layers; the constant ~0.09 M excess lies in the
  scale-independent part, where every layer matches the official ``ops.py``/``koalanet.py`` and none has that size
  (biases total 7,064): the paper presumably counted a slightly different variant. Tests assert our numbers.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets.layers import kernel_normalize, local_downsample, local_filter, local_upsample

__all__ = [
    "KOALABaselineNet",
    "KOALABlock",
    "KOALADownsamplingNet",
    "KOALAResBlock",
    "KOALAUpsamplingNet",
]


SCALES = (2, 4)
UP_KERNEL = 5
"""Side of the per-pixel upsampling filters."""
KOALA_KERNEL = 7
"""Side of the per-pixel feature filters of a KOALA module."""


@torch.no_grad()
def _official_init_(module: nn.Module) -> None:
    """TF ``xavier_initializer(uniform=False)`` on every (transposed) convolution of ``module``, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            receptive = m.weight[0, 0].numel()
            std = math.sqrt(1.3 * 2.0 / ((m.weight.shape[0] + m.weight.shape[1]) * receptive))
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                m.bias.zero_()


def _conv(in_ch: int, out_ch: int, size: int = 3) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, size, padding=size // 2)


def _check_scale(scale: int) -> None:
    if scale not in SCALES:
        raise ValueError(f"KOALAnet is defined for scales {SCALES} (x2 and x4 residual heads), got {scale}")


class KOALAResBlock(nn.Module):
    """Pre-activation residual block ``x + conv2(ReLU(conv1(ReLU(x))))``, ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: Input = output channels ``C``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels)
        self.conv2 = _conv(channels, channels)

    def residual(self, x: Tensor) -> Tensor:
        """``conv2(ReLU(conv1(ReLU(x))))``, the branch before the skip."""
        return self.conv2(F.relu(self.conv1(F.relu(x))))

    def forward(self, x: Tensor) -> Tensor:
        """Identity skip around the pre-activated convolutions."""
        return x + self.residual(x)


class KOALABlock(KOALAResBlock):
    """KOALA module: a res-block whose branch is scaled by ``m`` and locally filtered by ``k``, both from ``f_d``.

    ``conv1``/``conv2`` are named as in ``KOALAResBlock`` so that baseline weights load; ``mul`` (two 3x3 convs, ReLU
    between, no sigmoid) and ``filt`` (two 1x1 convs, ReLU between, ``k*k`` outputs) are new.

    Args:
        channels: Feature channels ``C`` (64).
        kernel_channels: Channels of the kernel features ``f_d`` (64).
        k_size: Side of the per-pixel feature filters (7).
    """

    def __init__(self, channels: int, kernel_channels: int, k_size: int = KOALA_KERNEL) -> None:
        super().__init__(channels)
        self.k_size = k_size
        self.mul = nn.Sequential(_conv(kernel_channels, channels), nn.ReLU(), _conv(channels, channels))
        self.filt = nn.Sequential(_conv(kernel_channels, channels, 1), nn.ReLU(), _conv(channels, k_size * k_size, 1))

    @torch.no_grad()
    def identity_init_(self) -> None:
        """Start as the plain res-block: ``m = 1`` and ``k`` = the centre tap (last convs zero, biases 1 / one-hot).

        ``kernel_normalize`` maps the one-hot centre to itself, so the block equals ``KOALAResBlock`` until training
        moves the last convs (they still receive gradients; the layers before them follow once those are non-zero).
        """
        nn.init.zeros_(self.mul[-1].weight)
        nn.init.ones_(self.mul[-1].bias)
        nn.init.zeros_(self.filt[-1].weight)
        nn.init.zeros_(self.filt[-1].bias)
        self.filt[-1].bias[(self.k_size * self.k_size) // 2] = 1.0

    def forward(self, x: Tensor, kernel_features: Tensor) -> Tensor:  # type: ignore[override]
        """``x + local_filter(n * m, normalize(k), 7)``.

        Args:
            x: ``(B, C, H, W)`` features.
            kernel_features: ``(B, kernel_channels, H, W)`` features of the degradation kernels.

        Returns:
            ``(B, C, H, W)``.
        """
        n = self.residual(x) * self.mul(kernel_features)
        filters = kernel_normalize(self.filt(kernel_features), self.k_size)
        return x + local_filter(n, filters, self.k_size)


class _EncoderLevel(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_blocks: int) -> None:
        super().__init__()
        self.conv = _conv(in_ch, out_ch)
        self.blocks = nn.Sequential(*(KOALAResBlock(out_ch) for _ in range(num_blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.blocks(self.conv(x)))


class _DecoderLevel(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)  # TF "same": exactly 2x
        self.conv = _conv(2 * out_ch, out_ch)
        self.blocks = nn.Sequential(KOALAResBlock(out_ch), KOALAResBlock(out_ch))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return F.relu(self.blocks(self.conv(torch.cat([self.up(x), skip], dim=1))))


class KOALADownsamplingNet(nn.Module):
    """Downsampling ResU-Net: LR ``(B, C, H, W)`` -> raw per-pixel ``K x K`` kernels ``(B, K*K, H, W)``.

    Args:
        scale: SR scale ``s`` (2 or 4); used by ``degrade``, the architecture does not depend on it.
        in_ch: Image channels ``C``.
        kernel_size: Kernel side ``K`` (20).
        width: Channels of the first level ``w`` (64); the others have ``2w`` and ``4w``.
    """

    def __init__(self, scale: int, in_ch: int = 3, kernel_size: int = 20, width: int = 64) -> None:
        super().__init__()
        _check_scale(scale)
        if min(in_ch, kernel_size, width) < 1:
            raise ValueError(f"sizes must be positive, got in_ch={in_ch}, kernel_size={kernel_size}, width={width}")
        self.scale, self.kernel_size = scale, kernel_size
        self.enc1 = _EncoderLevel(in_ch, width, 2)
        self.enc2 = _EncoderLevel(width, 2 * width, 2)
        self.bottleneck = _EncoderLevel(2 * width, 4 * width, 1)
        self.dec2 = _DecoderLevel(4 * width, 2 * width)
        self.dec1 = _DecoderLevel(2 * width, width)
        self.head = nn.Sequential(_conv(width, width), nn.ReLU(), _conv(width, kernel_size * kernel_size))
        _official_init_(self)

    def forward(self, lr: Tensor) -> Tensor:
        """Predict the raw (un-normalised) kernels.

        Args:
            lr: ``(B, C, H, W)`` LR images, ``H`` and ``W`` divisible by 4.

        Returns:
            ``(B, K*K, H, W)`` raw kernels, tap ``i*K + j`` row-major (``kernel_normalize`` them to sum to 1).

        Raises:
            ValueError: If ``lr`` is not 4-D or a side is not divisible by 4.
        """
        if lr.ndim != 4 or lr.shape[-2] % 4 or lr.shape[-1] % 4:
            raise ValueError(
                "KOALADownsamplingNet needs (B, C, H, W) LR images with H and W divisible by 4 (two 2x poolings); "
                f"got shape {tuple(lr.shape)}: crop them (as the official code trims test images) or pad"
            )
        skip1 = self.enc1(lr)
        skip2 = self.enc2(F.max_pool2d(skip1, 2))
        x = self.bottleneck(F.max_pool2d(skip2, 2))
        return self.head(self.dec1(self.dec2(x, skip2), skip1))

    def degrade(self, hr: Tensor, raw_kernels: Tensor) -> Tensor:
        """Reconstruct the LR from the HR with the normalised kernels (official ``local_conv_ds``, zero padding).

        Args:
            hr: ``(B, C, sH, sW)`` HR images.
            raw_kernels: ``(B, K*K, H, W)`` output of ``forward``.

        Returns:
            ``(B, C, H, W)``.
        """
        kernels = kernel_normalize(raw_kernels, self.kernel_size)
        return local_downsample(hr, kernels, self.kernel_size, self.scale)


class _UpsamplingNet(nn.Module):
    """Shared trunk input, heads and reconstruction of the baseline and the KOALA upsampling nets."""

    def __init__(self, scale: int, num_blocks: int, feat: int, in_ch: int) -> None:
        super().__init__()
        _check_scale(scale)
        if min(num_blocks, feat, in_ch) < 1 or feat % 4:
            raise ValueError(
                f"need num_blocks, in_ch >= 1 and feat divisible by 4, got {num_blocks}, {in_ch} and {feat}"
            )
        self.scale, self.in_ch = scale, in_ch
        self.conv_in = _conv(in_ch, feat)
        self.kernel_head = nn.Sequential(
            _conv(feat, 2 * feat), nn.ReLU(), _conv(2 * feat, UP_KERNEL * UP_KERNEL * scale * scale)
        )
        residual: list[nn.Module] = [_conv(feat, 2 * feat), nn.ReLU(), nn.PixelShuffle(2)]
        if scale == 4:
            residual += [_conv(feat // 2, feat), nn.ReLU(), nn.PixelShuffle(2)]
        residual.append(_conv(feat // 2 if scale == 2 else feat // 4, in_ch))
        self.residual_head = nn.Sequential(*residual)

    def _check_lr(self, lr: Tensor) -> None:
        if lr.ndim != 4 or lr.shape[1] != self.in_ch:
            raise ValueError(f"lr must be (B, {self.in_ch}, H, W), got shape {tuple(lr.shape)}")

    def upsampling_filters(self, features: Tensor) -> Tensor:
        """The normalised per-pixel upsampling filters from the final (ReLU-ed) features.

        Args:
            features: ``(B, feat, H, W)`` trunk output after the ReLU.

        Returns:
            ``(B, 25 s^2, H, W)``, channel ``tap * s^2 + dy * s + dx``; each sub-pixel's 25 taps sum to 1.
        """
        raw = self.kernel_head(features)
        batch, _, height, width = raw.shape
        taps = UP_KERNEL * UP_KERNEL
        return kernel_normalize(raw.view(batch, taps, -1, height, width), UP_KERNEL).view_as(raw)

    def _reconstruct(self, lr: Tensor, features: Tensor) -> Tensor:
        features = F.relu(features)
        filters = self.upsampling_filters(features)
        return local_upsample(lr, filters, UP_KERNEL, self.scale) + self.residual_head(features)


class KOALAUpsamplingNet(_UpsamplingNet):
    """Upsampling network with KOALA modules: ``(lr, raw kernels) -> SR``.

    Args:
        scale: SR scale ``s`` (2 or 4).
        num_blocks: Blocks of the trunk (12).
        num_koala: How many of the first blocks are KOALA modules (5).
        feat: Feature channels (64).
        kernel_channels: Channels of the raw kernels, ``K*K`` (400).
        in_ch: Image channels (3).
        koala_init: ``"official"`` (Xavier-normal everywhere, as the TF code) or ``"identity"`` (a deviation: each
            KOALA module starts as the plain res-block, ``KOALABlock.identity_init_``, so stage 3 starts exactly at
            stage 2's output instead of perturbing it with random multiplicative maps and filters).
    """

    def __init__(
        self,
        scale: int,
        num_blocks: int = 12,
        num_koala: int = 5,
        feat: int = 64,
        kernel_channels: int = 400,
        in_ch: int = 3,
        koala_init: Literal["official", "identity"] = "official",
    ) -> None:
        super().__init__(scale, num_blocks, feat, in_ch)
        if not 0 <= num_koala <= num_blocks or kernel_channels < 1:
            raise ValueError(f"need 0 <= num_koala <= num_blocks, got {num_koala} of {num_blocks}")
        self.kernel_channels, self.num_koala = kernel_channels, num_koala
        self.kernel_features = nn.Sequential(
            _conv(kernel_channels, feat), nn.ReLU(), _conv(feat, feat), nn.ReLU(), _conv(feat, feat), nn.ReLU()
        )
        self.blocks = nn.ModuleList(
            [KOALABlock(feat, feat) for _ in range(num_koala)]
            + [KOALAResBlock(feat) for _ in range(num_blocks - num_koala)]
        )
        _official_init_(self)
        if koala_init not in ("official", "identity"):
            raise ValueError(f"koala_init must be 'official' or 'identity', got {koala_init!r}")
        if koala_init == "identity":
            for block in self.blocks[:num_koala]:
                block.identity_init_()

    def koala_only_keys(self) -> list[str]:
        """Keys the baseline lacks: the kernel-feature branch and the ``mul``/``filt`` of each KOALA module."""
        prefixes = ["kernel_features."] + [
            f"blocks.{i}.{part}." for i in range(self.num_koala) for part in ("mul", "filt")
        ]
        return [key for key in self.state_dict() if key.startswith(tuple(prefixes))]

    def forward(self, lr: Tensor, raw_kernels: Tensor) -> Tensor:
        """Super-resolve with the degradation kernels of the downsampling net.

        Args:
            lr: ``(B, C, H, W)`` LR images.
            raw_kernels: ``(B, K*K, H, W)`` raw (un-normalised) kernels, as ``KOALADownsamplingNet`` outputs them.

        Returns:
            ``(B, C, sH, sW)`` SR images.

        Raises:
            ValueError: If the shapes do not match.
        """
        self._check_lr(lr)
        if raw_kernels.shape != (lr.shape[0], self.kernel_channels, *lr.shape[-2:]):
            raise ValueError(
                f"raw_kernels must be (B, {self.kernel_channels}, H, W) on the LR grid {tuple(lr.shape[-2:])}, "
                f"got shape {tuple(raw_kernels.shape)}"
            )
        kernel_features = self.kernel_features(raw_kernels)
        x = self.conv_in(lr)
        for block in self.blocks:
            x = block(x, kernel_features) if isinstance(block, KOALABlock) else block(x)
        return self._reconstruct(lr, x)


class KOALABaselineNet(_UpsamplingNet):
    """Stage-2 baseline: the upsampling network with plain res-blocks only, no kernel input.

    Args:
        scale: SR scale ``s`` (2 or 4).
        num_blocks: Res-blocks of the trunk (12).
        feat: Feature channels (64).
        in_ch: Image channels (3).
    """

    def __init__(self, scale: int, num_blocks: int = 12, feat: int = 64, in_ch: int = 3) -> None:
        super().__init__(scale, num_blocks, feat, in_ch)
        self.blocks = nn.ModuleList(KOALAResBlock(feat) for _ in range(num_blocks))
        _official_init_(self)

    def forward(self, lr: Tensor, raw_kernels: Tensor | None = None) -> Tensor:
        """Super-resolve; ``raw_kernels`` is accepted (so both nets are called alike) and ignored.

        Args:
            lr: ``(B, C, H, W)`` LR images.
            raw_kernels: Ignored.

        Returns:
            ``(B, C, sH, sW)`` SR images.
        """
        self._check_lr(lr)
        x = self.conv_in(lr)
        for block in self.blocks:
            x = block(x)
        return self._reconstruct(lr, x)

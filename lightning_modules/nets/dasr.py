"""DASR networks (Liang, Zeng and Zhang, ECCV 2022, Sec. 3.1, Fig. 1): predictor, weighting module, mixed experts.

``(B, 3, H, W)`` LR in ``[0, 1]`` -> ``(B, 3, sH, sW)`` SR and the ``(B, 33)`` predicted degradation vector:

* ``DegradationPredictor`` ``P``: six 5x5 convolutions (3 -> 64 -> 64 -> 64 -> 64 with stride 2 -> 64 -> 33, padding
  2), LeakyReLU(0.2) after **every** one including the last, global average pooling -> ``v_hat`` ``(B, 33)``;
* ``WeightingModule`` ``A``: ``Linear(33, 15) -> Linear(15, 5)``, no activation and no softmax, as the official
  ``MappingNet`` (the paper's Fig. 4(c) ablation found a sigmoid no better) -> routing ``a`` ``(B, 5)``;
* ``MSRResNetDynamic``: BasicSR's MSRResNet in which every convolution is a ``DynamicConv2d`` with 5 banks, mixed
  per sample by ``a`` (Eq. 3: ``W^C = sum_i a_i W_i^C``); one adapted network runs per image.

``MSRResNet`` (one expert, the plain SRResNet of BasicSR): ``conv_first`` + LeakyReLU(0.1); ``num_block`` residual
blocks ``x + conv(ReLU(conv(x)))`` without BN (residual scale 1); upsampling: x4 two ``(conv 64 -> 256,
PixelShuffle(2), LeakyReLU(0.1))``, x2 / x3 one ``(conv 64 -> 64 s^2, PixelShuffle(s), LeakyReLU(0.1))`` (BasicSR
applies the LeakyReLU at every scale); ``conv_hr`` + LeakyReLU(0.1); ``conv_last``; plus the bilinearly upsampled
input (``align_corners=False``). Every convolution is 3x3 with bias; all are initialised as BasicSR's
``default_init_weights(..., 0.1)``: Kaiming-normal (fan-in, gain sqrt 2) times 0.1, zero bias. Module names are
BasicSR's (``conv_first``, ``body.{i}.conv1``, ``upconv1``, ``upconv2``, ``conv_hr``, ``conv_last``), so BasicSR's
``MSRResNet_x4`` weights load with ``strict=True`` and ``copy_into_experts`` replicates them into all five experts
(the official initialisation of DASR). The dynamic generator's banks are each initialised as one MSRResNet
(independently); the official leaves them random and always loads the pretrained MSRResNet.

Parameter counts at x4, ``num_feat=64``, ``num_block=16`` (a 3x3 conv ``a -> b`` has ``9ab + b``):

* MSRResNet: conv_first 1,792; 32 body convs 32 x 36,928 = 1,181,696; upconv1 + upconv2 2 x 147,712 = 295,424;
  conv_hr 36,928; conv_last 1,731 -> **1,517,571** (paper, Table 2: 1.52 M). At x2: 1,369,859.
* DegradationPredictor: 4,864 + 4 x 102,464 + 52,833 = 467,553; WeightingModule: 510 + 80 = 590; together
  468,143 (paper: 0.47 M).
* DASRNet: 5 x 1,517,571 + 468,143 = **8,055,998**, i.e. 8.06 M; the paper prints 8.07 M, which is the sum of its
  rounded figures 5 x 1.52 M + 0.47 M = 8.07 M. The official ``Dynamic_conv2d`` banks have exactly our shapes
  (``(5, out, in, 3, 3)`` and ``(5, out)``), so there is no missing layer behind the 0.014 M.

Cost (``FlopCounterMode`` FLOPs / 2 = multiply-accumulates, which is what the paper's thop/ptflops "FLOPs" count) on
the paper's 256x256 **LR** input (x4, 1024x1024 output): MSRResNet 2,536,128 MACs per LR pixel -> 166.2 G (paper
166 G); predictor 274,000 per LR pixel -> 17.96 G (paper: predictor + weighting 18 G); DASR 184.2 G (paper 184 G);
the mixing einsums add ~7.6 M MACs per image, independent of its size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets.layers import DynamicConv2d

__all__ = [
    "DASRNet",
    "DegradationPredictor",
    "MSRResNet",
    "MSRResNetDynamic",
    "WeightingModule",
    "copy_into_experts",
]

SCALES = (2, 3, 4)
INIT_SCALE = 0.1
"""BasicSR's ``default_init_weights`` scale for every MSRResNet convolution."""


@torch.no_grad()
def _basicsr_init_(weight: Tensor, bias: Tensor | None, scale: float = INIT_SCALE) -> None:
    """Kaiming-normal (fan-in, leaky-ReLU gain with slope 0 = sqrt 2) times ``scale``, zero bias, in place."""
    nn.init.kaiming_normal_(weight)
    weight.mul_(scale)
    if bias is not None:
        bias.zero_()


def _check_scale(scale: int) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale}")


class _ResidualBlock(nn.Module):
    """``x + conv2(ReLU(conv1(x)))``, 3x3 convs with bias, no BN, ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Identity skip, residual scale 1."""
        return x + self.conv2(F.relu(self.conv1(x)))


class _DynamicResidualBlock(nn.Module):
    """``_ResidualBlock`` with both convolutions dynamic; ``(B, C, H, W), (B, K) -> (B, C, H, W)``."""

    def __init__(self, num_feat: int, num_experts: int) -> None:
        super().__init__()
        self.conv1 = DynamicConv2d(num_feat, num_feat, 3, num_experts)
        self.conv2 = DynamicConv2d(num_feat, num_feat, 3, num_experts)

    def forward(self, x: Tensor, routing: Tensor) -> Tensor:
        """Identity skip, residual scale 1."""
        return x + self.conv2(F.relu(self.conv1(x, routing)), routing)


class MSRResNet(nn.Module):
    """BasicSR's modified SRResNet (no BN), one DASR expert: ``(B, 3, H, W) -> (B, 3, sH, sW)``.

    Args:
        num_feat: Feature channels (the paper: 64).
        num_block: Residual blocks (the paper: 16).
        scale: Upscaling factor, 2, 3 or 4.
    """

    def __init__(self, num_feat: int = 64, num_block: int = 16, scale: int = 4) -> None:
        super().__init__()
        _check_scale(scale)
        self.scale = scale
        self.conv_first = nn.Conv2d(3, num_feat, 3, padding=1)
        self.body = nn.Sequential(*(_ResidualBlock(num_feat) for _ in range(num_block)))
        shuffle = 2 if scale == 4 else scale
        self.upconv1 = nn.Conv2d(num_feat, num_feat * shuffle**2, 3, padding=1)
        self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, padding=1) if scale == 4 else None
        self.pixel_shuffle = nn.PixelShuffle(shuffle)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _basicsr_init_(m.weight, m.bias)

    def forward(self, lr: Tensor) -> Tensor:
        """Super-resolve.

        Args:
            lr: ``(B, 3, H, W)`` LR images in ``[0, 1]``.

        Returns:
            ``(B, 3, sH, sW)`` SR images (not clamped).
        """
        out = self.body(F.leaky_relu(self.conv_first(lr), 0.1))
        for conv in (self.upconv1, self.upconv2):
            if conv is not None:
                out = F.leaky_relu(self.pixel_shuffle(conv(out)), 0.1)
        out = self.conv_last(F.leaky_relu(self.conv_hr(out), 0.1))
        return out + F.interpolate(lr, scale_factor=self.scale, mode="bilinear", align_corners=False)


class MSRResNetDynamic(nn.Module):
    """MSRResNet with every convolution a ``DynamicConv2d`` of ``num_experts`` banks (DASR's generator).

    Args:
        num_feat: Feature channels (the paper: 64).
        num_block: Residual blocks (the paper: 16).
        num_experts: Experts ``K`` mixed per sample (the paper: 5).
        scale: Upscaling factor, 2, 3 or 4.
    """

    def __init__(self, num_feat: int = 64, num_block: int = 16, num_experts: int = 5, scale: int = 4) -> None:
        super().__init__()
        _check_scale(scale)
        self.scale = scale
        self.num_experts = num_experts
        k = num_experts
        self.conv_first = DynamicConv2d(3, num_feat, 3, k)
        self.body = nn.ModuleList(_DynamicResidualBlock(num_feat, k) for _ in range(num_block))
        shuffle = 2 if scale == 4 else scale
        self.upconv1 = DynamicConv2d(num_feat, num_feat * shuffle**2, 3, k)
        self.upconv2 = DynamicConv2d(num_feat, num_feat * 4, 3, k) if scale == 4 else None
        self.pixel_shuffle = nn.PixelShuffle(shuffle)
        self.conv_hr = DynamicConv2d(num_feat, num_feat, 3, k)
        self.conv_last = DynamicConv2d(num_feat, 3, 3, k)
        for m in self.modules():
            if isinstance(m, DynamicConv2d):
                for e in range(k):  # each expert initialised as one MSRResNet
                    _basicsr_init_(m.weight[e], None if m.bias is None else m.bias[e])

    def forward(self, lr: Tensor, routing: Tensor) -> Tensor:
        """Super-resolve each image with its own mixture of the experts.

        Args:
            lr: ``(B, 3, H, W)`` LR images in ``[0, 1]``.
            routing: ``(B, K)`` mixing coefficients (any real values; the same for every layer).

        Returns:
            ``(B, 3, sH, sW)`` SR images (not clamped).
        """
        out = F.leaky_relu(self.conv_first(lr, routing), 0.1)
        for block in self.body:
            out = block(out, routing)
        for conv in (self.upconv1, self.upconv2):
            if conv is not None:
                out = F.leaky_relu(self.pixel_shuffle(conv(out, routing)), 0.1)
        out = self.conv_last(F.leaky_relu(self.conv_hr(out, routing), 0.1), routing)
        return out + F.interpolate(lr, scale_factor=self.scale, mode="bilinear", align_corners=False)


class DegradationPredictor(nn.Module):
    """DASR's degradation prediction network ``P``: ``(B, C, H, W)`` LR -> ``(B, n)`` degradation vector.

    Six 5x5 convolutions with padding 2 (the fourth with stride 2), each followed by LeakyReLU(0.2), the last one
    included, so predicted entries are >= -0.2 times their magnitude; then global average pooling. PyTorch's default
    initialisation (as the official).

    Args:
        in_ch: Input channels ``C`` (RGB: 3).
        width: Hidden channels (the paper: 64).
        num_params: Length ``n`` of the degradation vector (the paper: 33).
    """

    def __init__(self, in_ch: int = 3, width: int = 64, num_params: int = 33) -> None:
        super().__init__()
        chans = [in_ch, width, width, width, width, width, num_params]
        layers: list[nn.Module] = []
        for i in range(6):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 5, stride=2 if i == 3 else 1, padding=2), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)

    def forward(self, lr: Tensor) -> Tensor:
        """Predict the degradation vector.

        Args:
            lr: ``(B, C, H, W)`` LR images in ``[0, 1]``.

        Returns:
            ``(B, n)`` predicted (normalised) degradation parameters.
        """
        return self.body(lr).mean(dim=(-2, -1))


class WeightingModule(nn.Module):
    """DASR's weighting module ``A``: ``(B, n)`` degradation vector -> ``(B, K)`` expert coefficients.

    Two fully connected layers, ``Linear(n, hidden) -> Linear(hidden, K)``, with **no activation between them and no
    softmax or sigmoid at the end**, exactly as the official ``MappingNet``: the coefficients are unconstrained
    (any sign, any sum), which the parameter-space mixture allows. PyTorch's default initialisation.

    Args:
        num_params: Length ``n`` of the degradation vector (the paper: 33).
        hidden: Width of the hidden layer (the official: 15).
        num_experts: Number of experts ``K`` (the paper: 5).
    """

    def __init__(self, num_params: int = 33, hidden: int = 15, num_experts: int = 5) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(num_params, hidden), nn.Linear(hidden, num_experts))

    def uniform_init_(self) -> WeightingModule:
        """Start at coefficients ``1 / K`` for every vector (last layer: zero weights, bias ``1 / K``); returns self.

        Not the official initialisation: with identical experts (an MSRResNet copied into all), coefficients summing
        to 1 make DASR start as exactly that MSRResNet, where the default initialisation scales every mixed weight by
        a random sum of coefficients.
        """
        last = self.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, 1.0 / last.out_features)
        return self

    def forward(self, vector: Tensor) -> Tensor:
        """Map degradation vectors to routing coefficients.

        Args:
            vector: ``(B, n)`` degradation vectors (predicted or user-set).

        Returns:
            ``(B, K)`` routing coefficients.
        """
        return self.layers(vector)


class DASRNet(nn.Module):
    """The whole DASR network: predictor ``P``, weighting module ``A`` and the dynamic generator.

    Args:
        num_feat: Generator feature channels (the paper: 64).
        num_block: Generator residual blocks (the paper: 16).
        num_experts: Experts ``K`` (the paper: 5).
        scale: Upscaling factor, 2, 3 or 4 (the paper: 4).
        num_params: Length ``n`` of the degradation vector (the paper: 33).
    """

    def __init__(
        self, num_feat: int = 64, num_block: int = 16, num_experts: int = 5, scale: int = 4, num_params: int = 33
    ) -> None:
        super().__init__()
        self.scale = scale
        self.predictor = DegradationPredictor(3, 64, num_params)
        self.weighting = WeightingModule(num_params, 15, num_experts)
        self.generator = MSRResNetDynamic(num_feat, num_block, num_experts, scale)

    def predict_vector(self, lr: Tensor) -> Tensor:
        """``P(lr)``: ``(B, 3, H, W)`` LR -> ``(B, n)`` predicted degradation vector."""
        return self.predictor(lr)

    def routing(self, vector: Tensor) -> Tensor:
        """``A(v)``: ``(B, n)`` degradation vector -> ``(B, K)`` expert coefficients."""
        return self.weighting(vector)

    def restore(self, lr: Tensor, vector: Tensor) -> Tensor:
        """Super-resolve with a given degradation vector (user control at inference).

        Args:
            lr: ``(B, 3, H, W)`` LR images in ``[0, 1]``.
            vector: ``(B, n)`` degradation vectors, predicted or edited.

        Returns:
            ``(B, 3, sH, sW)`` SR images (not clamped).
        """
        return self.generator(lr, self.routing(vector))

    def forward(self, lr: Tensor) -> tuple[Tensor, Tensor]:
        """Predict the degradation, mix the experts, super-resolve.

        Args:
            lr: ``(B, 3, H, W)`` LR images in ``[0, 1]``.

        Returns:
            ``sr`` ``(B, 3, sH, sW)`` (not clamped) and the predicted vector ``(B, n)`` (for the regression loss).
        """
        vector = self.predict_vector(lr)
        return self.restore(lr, vector), vector


@torch.no_grad()
def copy_into_experts(dynamic: nn.Module, plain_state: dict[str, Tensor]) -> None:
    """Fill every bank of every ``DynamicConv2d`` in ``dynamic`` with the matching plain convolution's weights.

    DASR's official initialisation: a pretrained ``MSRResNet`` replicated into all ``K`` experts of
    ``MSRResNetDynamic`` (whose module names equal MSRResNet's, so ``conv_hr.weight`` fills ``conv_hr.weight[k]`` for
    every ``k``). Afterwards the generator equals the plain network for any routing summing to 1. Pass the bare state
    dict (a BasicSR checkpoint keeps it under ``"params"``).

    Args:
        dynamic: A module whose parameters all belong to ``DynamicConv2d`` layers (``MSRResNetDynamic``).
        plain_state: State dict of the plain network, ``name.weight`` ``(out, in, kh, kw)`` and ``name.bias``
            ``(out,)`` for each dynamic layer ``name``.

    Raises:
        ValueError: If a bank has no tensor in ``plain_state`` (missing), a tensor of ``plain_state`` fills no bank
            (unexpected), a shape differs, or ``dynamic`` has parameters outside dynamic convolutions; nothing is
            copied then.
    """
    targets: dict[str, Tensor] = {}
    for name, module in dynamic.named_modules():
        if isinstance(module, DynamicConv2d):
            prefix = f"{name}." if name else ""
            targets[prefix + "weight"] = module.weight
            if module.bias is not None:
                targets[prefix + "bias"] = module.bias
    others = [n for n, p in dynamic.named_parameters() if all(p is not t for t in targets.values())]
    if others:
        raise ValueError(f"parameters outside dynamic convolutions cannot be filled: {others}")
    missing = sorted(set(targets) - set(plain_state))
    unexpected = sorted(set(plain_state) - set(targets))
    if missing or unexpected:
        raise ValueError(f"plain state does not match the dynamic banks: missing {missing}, unexpected {unexpected}")
    wrong = [
        f"{n}: {tuple(plain_state[n].shape)} vs bank {tuple(t.shape[1:])}"
        for n, t in targets.items()
        if plain_state[n].shape != t.shape[1:]
    ]
    if wrong:
        raise ValueError(f"shape mismatch: {wrong}")
    for name, bank in targets.items():
        bank.copy_(plain_state[name].unsqueeze(0).expand_as(bank))

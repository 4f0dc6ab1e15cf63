"""Networks of the variational mixture of networks (Wang et al., Pattern Recognition 2020): E-Net and the branches.

All networks work on one channel (the Y channel of YCbCr, see ``lightning_modules.mixture.joint``).

**E-Net** (Table 1): four 3x3 convolutions with stride 2 (padding 1) and 32 / 64 / 128 / 256 outputs, each followed
by batch normalisation and LeakyReLU (slope 0.1, as in the official code); global average pooling; dropout 0.5 on the
pooled feature vector (training only); a fully connected layer to ``M`` scores; softmax (``ENet.forward`` returns
the scores ``s``, the posterior ``q = softmax(s)`` is taken by the caller). The official code ends with a 1x1
convolution on the pooled map instead of the paper's FC; the two are the same function, we follow the paper.

**Pre-training head** (Sec. 3.3.1, "two fully-connected layers followed by a Softmax" on top of the score vector):
``Linear(M, hidden) -> ReLU -> Linear(hidden, K)``; ``hidden = 64`` by default (the paper gives no width).

**Branches** (Table 2, FSRCNN-like), one per mixture component:

* layer 1: 3x3 conv ``1 -> C`` (64) + ReLU (feature extraction);
* layers 2-10: nine 3x3 convs ``C -> C``, each ``x <- x + ReLU(conv(x))`` (skip connections between consecutive
  layers);
* layer 11: ``(u+2) x (u+2)`` transposed convolution, stride ``u``, padding 1, ``C -> 8`` + ReLU, applied to the
  mapping output plus the layer-1 features (the official code's long skip); output exactly ``u H x u W``;
* layer 12: 3x3 conv ``8 -> 1``: the residual ``R(L, z)`` over the bicubic upsample (added by the caller).

The ``M`` branches are **one batched computation**: layer 1 is a single ``1 -> M C`` convolution (the branches
share its input), every later layer a grouped convolution with ``groups = M``, so ``MixtureBranches(M)`` holds
exactly ``M`` times the parameters of ``MixtureBranches(1)`` and its output channel ``m`` is branch ``m``.

Initialisation (Sec. 3.3.3): He (Kaiming normal, fan-in) for convolutions and fully connected layers, zero biases;
transposed-convolution filters from ``N(0, 0.01^2)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _he_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ENet(nn.Module):
    """The encoder of Table 1: ``(B, 1, H, W)`` LR Y -> ``(B, M)`` scores ``s`` (softmax gives ``q(z | L)``).

    Args:
        num_states: ``M``, the states of the latent variable (= number of branches).
        channels: Output channels of the four stride-2 convolutions (paper: 32, 64, 128, 256).
        dropout: Dropout rate on the pooled features during training (paper: 0.5).
        in_channels: Input channels (1: Y).
        negative_slope: LeakyReLU slope (official code: 0.1).
        input_norm: Standardise each input image (zero mean, unit variance) first. Not in the paper (default
            False); it makes the kernel classification much faster to learn from few steps, because the raw Y
            input's brightness and contrast vary far more between crops than the blur does.
    """

    def __init__(
        self,
        num_states: int = 4,
        channels: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.5,
        in_channels: int = 1,
        negative_slope: float = 0.1,
        input_norm: bool = False,
    ) -> None:
        super().__init__()
        self.input_norm = input_norm
        if len(channels) != 4:
            raise ValueError(f"E-Net has four convolutions (Table 1), got channels {tuple(channels)}")
        layers: list[nn.Module] = []
        prev = in_channels
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 3, stride=2, padding=1), nn.BatchNorm2d(ch), nn.LeakyReLU(negative_slope)]
            prev = ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(prev, num_states)
        self.num_states = num_states
        _he_init(self)

    def embed(self, y: Tensor) -> Tensor:
        """Pooled feature vector ``(B, C4)`` (before dropout)."""
        if self.input_norm:
            mean = y.mean(dim=(-2, -1), keepdim=True)
            y = (y - mean) / (y - mean).square().mean(dim=(-2, -1), keepdim=True).add(1e-6).sqrt()
        return self.pool(self.features(y)).flatten(1)

    def forward(self, y: Tensor) -> Tensor:
        """Scores ``s`` ``(B, M)``: features, global average pooling, dropout (training), fully connected."""
        return self.fc(self.dropout(self.embed(y)))


class KernelClassifierHead(nn.Module):
    """The pre-training classification module: two FC layers on the ``M`` scores -> ``K`` kernel logits.

    Args:
        num_states: ``M`` (input: the E-Net score vector).
        num_kernels: ``K``, the number of seen kernels (paper: 29).
        hidden: Width of the first FC layer (not given in the paper).
    """

    def __init__(self, num_states: int = 4, num_kernels: int = 29, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_states, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_kernels))
        _he_init(self)

    def forward(self, scores: Tensor) -> Tensor:
        """``(B, M)`` scores -> ``(B, K)`` logits (softmax gives ``p(k | L)`` of Eq. 11)."""
        return self.net(scores)


class MixtureBranches(nn.Module):
    """``M`` Table-2 branches as one grouped network: ``(B, 1, H, W)`` -> residuals ``(B, M, uH, uW)``.

    Args:
        scale: Upscaling factor ``u`` (the transposed convolution is ``(u+2) x (u+2)``, stride ``u``, padding 1).
        num_branches: ``M``.
        channels: Feature maps of layers 1-10 per branch (paper: 64).
        mapping_layers: Number of mapping convolutions (paper: 9).
        recon_channels: Outputs of the transposed convolution per branch (paper: 8).
    """

    def __init__(
        self,
        scale: int = 2,
        num_branches: int = 4,
        channels: int = 64,
        mapping_layers: int = 9,
        recon_channels: int = 8,
    ) -> None:
        super().__init__()
        if scale < 2:
            raise ValueError(f"scale must be >= 2, got {scale}")
        m, c = num_branches, channels
        self.scale, self.num_branches, self.channels = scale, num_branches, channels
        self.mapping_layers, self.recon_channels = mapping_layers, recon_channels
        self.head = nn.Conv2d(1, m * c, 3, padding=1)
        self.mapping = nn.ModuleList(nn.Conv2d(m * c, m * c, 3, padding=1, groups=m) for _ in range(mapping_layers))
        self.deconv = nn.ConvTranspose2d(m * c, m * recon_channels, scale + 2, stride=scale, padding=1, groups=m)
        self.tail = nn.Conv2d(m * recon_channels, m, 3, padding=1, groups=m)
        self.act = nn.ReLU(inplace=True)
        _he_init(self)

    def forward(self, y: Tensor) -> Tensor:
        """Residuals ``R(L, z)`` of all branches, ``(B, M, uH, uW)`` (channel ``m`` = branch ``m``)."""
        if y.shape[1] != 1:
            raise ValueError(f"the branches take one (Y) channel, got {tuple(y.shape)}")
        feat = torch.relu(self.head(y))
        x = feat
        for conv in self.mapping:
            x = x + torch.relu(conv(x))
        return self.tail(self.act(self.deconv(x + feat)))

    def _slices(self, i: int) -> list[tuple[Tensor, Tensor]]:
        """(batched parameter slice, single-branch parameter) pairs of branch ``i`` (in ``single``'s order)."""
        c, r = self.channels, self.recon_channels
        out = [(self.head.weight[i * c : (i + 1) * c], self.head.bias[i * c : (i + 1) * c])]
        out += [(conv.weight[i * c : (i + 1) * c], conv.bias[i * c : (i + 1) * c]) for conv in self.mapping]
        out.append((self.deconv.weight[i * c : (i + 1) * c], self.deconv.bias[i * r : (i + 1) * r]))
        out.append((self.tail.weight[i : i + 1], self.tail.bias[i : i + 1]))
        return out

    def branch(self, i: int) -> MixtureBranches:
        """A stand-alone single branch (``num_branches=1``) holding a copy of branch ``i``'s weights."""
        if not 0 <= i < self.num_branches:
            raise IndexError(f"branch {i} of {self.num_branches}")
        one = MixtureBranches(self.scale, 1, self.channels, self.mapping_layers, self.recon_channels)
        layers = [one.head, *one.mapping, one.deconv, one.tail]
        with torch.no_grad():
            for layer, (w, b) in zip(layers, self._slices(i), strict=True):
                layer.weight.copy_(w)
                layer.bias.copy_(b)
        return one.to(self.head.weight)

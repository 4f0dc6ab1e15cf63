"""USRNet (Zhang, Van Gool, Timofte, CVPR 2020, "Deep unfolding network for image super-resolution").

Non-blind SR by unfolding half-quadratic splitting for ``n_iter`` iterations, each a closed-form FFT data step
(``layers.fft.data_step``) followed by a learned prior (``ResUNet`` denoiser); ``HyPaNet`` maps the noise level and
the scale to the per-iteration weights ``alpha_i`` (data step) and ``beta_i`` (prior, given as a 4th input channel).

Conventions (USRNet's own, as its official weights expect them):
    * ``lr``: ``(B, 3, h, w)`` RGB in ``[0, 1]``; output ``(B, 3, s*h, s*w)``.
    * ``kernel``: ``(B, k, k)`` in USRNet's convention: **convolved** (centre ``k // 2``) with a circular boundary,
      then the upper-left pixel of each ``s x s`` block kept. A block-centred kernel that the degradation engine
      correlates (DIV2KRK, MoESR, ``item["kernel"]`` of the test sets) must be rotated by 180 degrees first
      (``datamodules.degradation.kernels.block_centre_to_usrnet``): forgetting it shifts the result by ``s - 1`` px.
    * ``sigma``: ``(B,)`` noise standard deviation in ``[0, 1]`` units (``x / 255``).

Sizes: ``USRNet()`` is the paper's model (``n_iter=8, h_nc=64, nc=(64, 128, 256, 512), nb=2``; 17,016,016
parameters); ``usrnet_tiny()`` is KAIR's ``usrnet_tiny`` (``n_iter=6, h_nc=32, nc=(16, 32, 64, 64)``; 590,332).
``load_usrnet_tiny`` reads the official tiny weights (``../shared/pretrained/usrnet_tiny.pth``, see its README).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets.layers.fft import data_step, data_terms

DEFAULT_TINY_WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "pretrained" / "usrnet_tiny.pth"
TINY_SIZES = {"n_iter": 6, "h_nc": 32, "nc": (16, 32, 64, 64), "nb": 2}


def _conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)


class ResBlock(nn.Module):
    """``x + conv3x3(relu(conv3x3(x)))``, no biases, ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.conv2 = _conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        return x + self.conv2(F.relu(self.conv1(x)))


class DownLevel(nn.Module):
    """``nb`` residual blocks at ``c_in`` channels, then a 2x2 stride-2 convolution to ``c_out`` (halves H, W)."""

    def __init__(self, c_in: int, c_out: int, nb: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResBlock(c_in) for _ in range(nb)])
        self.down = nn.Conv2d(c_in, c_out, 2, stride=2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, c_in, H, W) -> (B, c_out, H / 2, W / 2)`` (H, W even)."""
        return self.down(self.blocks(x))


class UpLevel(nn.Module):
    """A 2x2 stride-2 transposed convolution ``c_in -> c_out`` (doubles H, W), then ``nb`` residual blocks."""

    def __init__(self, c_in: int, c_out: int, nb: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False)
        self.blocks = nn.Sequential(*[ResBlock(c_out) for _ in range(nb)])

    def forward(self, x: Tensor) -> Tensor:
        """``(B, c_in, H, W) -> (B, c_out, 2H, 2W)``."""
        return self.blocks(self.up(x))


class ResUNet(nn.Module):
    """USRNet's prior: a bias-free residual U-Net with three levels and additive skips.

    ``x1 = head(x)``, ``x2 = encoder[0](x1)``, ``x3 = encoder[1](x2)``, ``x4 = encoder[2](x3)``;
    ``out = tail(decoder[0](decoder[1](decoder[2](body(x4) + x4) + x3) + x2) + x1)``. The input is replicate-padded
    at the bottom/right to a multiple of 8 and the output cropped back, so any size works.

    Args:
        in_nc: Input channels (image + noise-level map).
        out_nc: Output channels.
        nc: Channels of the four levels.
        nb: Residual blocks per level.
    """

    def __init__(self, in_nc: int = 4, out_nc: int = 3, nc: Sequence[int] = (64, 128, 256, 512), nb: int = 2) -> None:
        super().__init__()
        if len(nc) != 4:
            raise ValueError(f"nc must give the channels of 4 levels, got {tuple(nc)}")
        self.head = _conv3x3(in_nc, nc[0])
        self.encoder = nn.ModuleList(DownLevel(nc[i], nc[i + 1], nb) for i in range(3))
        self.body = nn.Sequential(*[ResBlock(nc[3]) for _ in range(nb)])
        self.decoder = nn.ModuleList(UpLevel(nc[i + 1], nc[i], nb) for i in range(3))
        self.tail = _conv3x3(nc[0], out_nc)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_nc, H, W) -> (B, out_nc, H, W)``."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 8, 0, -h % 8), mode="replicate")
        skips = [self.head(x)]
        for level in self.encoder:
            skips.append(level(skips[-1]))
        x = self.body(skips[-1])
        for level, skip in zip(reversed(self.decoder), reversed(skips[1:]), strict=True):
            x = level(x + skip)
        return self.tail(x + skips[0])[..., :h, :w]


class HyPaNet(nn.Module):
    """Hyper-parameter net: ``(sigma, scale)`` -> ``n_iter`` alphas and ``n_iter`` betas, all positive.

    Three 1x1 convolutions ``2 -> h_nc -> h_nc -> 2 * n_iter`` with ReLU, ReLU, Softplus, plus ``1e-6``.

    Args:
        n_iter: Unfolding iterations.
        h_nc: Hidden channels.
    """

    def __init__(self, n_iter: int = 8, h_nc: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, h_nc, 1)
        self.conv2 = nn.Conv2d(h_nc, h_nc, 1)
        self.conv3 = nn.Conv2d(h_nc, 2 * n_iter, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 2, 1, 1)`` = ``(sigma, scale)`` -> ``(B, 2 * n_iter, 1, 1)``: alphas first, then betas."""
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.softplus(self.conv3(x)) + 1e-6


class USRNet(nn.Module):
    """Deep unfolding network for non-blind SR (module docstring for the conventions).

    Args:
        n_iter: Unfolding iterations (data step + prior).
        h_nc: Hidden channels of the hyper-parameter net.
        nc: Channels of the prior's four levels.
        nb: Residual blocks per level of the prior.
        in_nc: Prior input channels (3 image + 1 beta map).
        out_nc: Output channels.
    """

    def __init__(
        self,
        n_iter: int = 8,
        h_nc: int = 64,
        nc: Sequence[int] = (64, 128, 256, 512),
        nb: int = 2,
        in_nc: int = 4,
        out_nc: int = 3,
    ) -> None:
        super().__init__()
        self.n_iter = n_iter
        self.prior = ResUNet(in_nc, out_nc, nc, nb)
        self.hyper = HyPaNet(n_iter, h_nc)

    def forward(self, lr: Tensor, kernel: Tensor, scale: int, sigma: Tensor | float = 0.0) -> Tensor:
        """Super-resolve ``lr`` blurred by ``kernel`` (USRNet's convention) and decimated by ``scale``.

        Args:
            lr: ``(B, 3, h, w)`` in ``[0, 1]``.
            kernel: ``(B, k, k)`` (or ``(k, k)``, shared) convolution kernels, ``k <= s*h, s*w``.
            scale: Integer scale factor ``s``.
            sigma: ``(B,)`` (or ``(B, 1, 1, 1)``, as KAIR) noise std in ``[0, 1]`` units, or one number for all.

        Returns:
            ``(B, 3, s*h, s*w)``.
        """
        if lr.dim() != 4:
            raise ValueError(f"lr must be (B, C, h, w), got shape {tuple(lr.shape)}")
        bsz = lr.shape[0]
        exact = torch.autocast(lr.device.type, enabled=False)  # FFT data steps and hyper-parameters in float32
        with exact:
            lr, kernel = _wide(lr), _wide(kernel)
            terms = data_terms(lr, kernel, scale)
            x = F.interpolate(lr, scale_factor=scale, mode="nearest")
            sigma = torch.as_tensor(sigma, dtype=x.dtype, device=lr.device).reshape(-1).expand(bsz)
            hyper_in = torch.stack([sigma, torch.full_like(sigma, float(scale))], dim=1)[..., None, None]
            weights = self.hyper(hyper_in)
        alphas, betas = weights[:, : self.n_iter], weights[:, self.n_iter :]
        for i in range(self.n_iter):
            with exact:
                x = data_step(_wide(x), terms, alphas[:, i : i + 1], scale)
            beta_map = betas[:, i : i + 1].expand(-1, -1, *x.shape[-2:])
            x = self.prior(torch.cat([x, beta_map], dim=1))
        return x


def usrnet_tiny() -> USRNet:
    """KAIR's ``usrnet_tiny``: ``n_iter=6, h_nc=32, nc=(16, 32, 64, 64), nb=2``, 590,332 parameters."""
    return USRNet(**TINY_SIZES)


_ENC = re.compile(r"^p\.m_down([123])\.(\d+)\.(res\.[02]\.)?weight$")
_DEC = re.compile(r"^p\.m_up([123])\.(\d+)\.(res\.[02]\.)?weight$")
_BODY = re.compile(r"^p\.m_body\.(\d+)\.res\.([02])\.weight$")
_ENDS = re.compile(r"^p\.m_(head|tail)\.weight$")
_HYPER = re.compile(r"^h\.mlp\.([024])\.(weight|bias)$")
_CONV = {"res.0.": "conv1", "res.2.": "conv2", "0": "conv1", "2": "conv2"}


def kair_key(key: str, nb: int = 2) -> str:
    """Our parameter name for a KAIR ``USRNet`` state-dict key (table in ``load_kair_state_dict``).

    Args:
        key: A KAIR key, e.g. ``"p.m_down1.2.weight"``.
        nb: Residual blocks per level (the index of the stride-2 convolution in ``m_down{L}``).

    Raises:
        ValueError: ``key`` is not a KAIR USRNet key (the message names it).
    """
    if m := _ENC.match(key):
        level, idx, res = m.groups()
        head = f"prior.encoder.{int(level) - 1}"
        if res:
            return f"{head}.blocks.{idx}.{_CONV[res]}.weight"
        if int(idx) == nb:
            return f"{head}.down.weight"
    if m := _DEC.match(key):
        level, idx, res = m.groups()
        head = f"prior.decoder.{int(level) - 1}"
        if res:
            return f"{head}.blocks.{int(idx) - 1}.{_CONV[res]}.weight"
        if idx == "0":
            return f"{head}.up.weight"
    if m := _BODY.match(key):
        return f"prior.body.{m.group(1)}.{_CONV[m.group(2)]}.weight"
    if m := _ENDS.match(key):
        return f"prior.{m.group(1)}.weight"
    if m := _HYPER.match(key):
        return f"hyper.conv{int(m.group(1)) // 2 + 1}.{m.group(2)}"
    raise ValueError(f"unexpected key {key!r}: not a parameter of KAIR's USRNet (p.m_*, h.mlp.*)")


def load_kair_state_dict(model: USRNet, state_dict: Mapping[str, Tensor]) -> None:
    """Load a KAIR ``network_usrnet(_v1).USRNet`` state dict into ``model``, strictly.

    Key mapping (``L`` = level 1..3 from the finest, ``j < nb``; ``m_up3``, the deepest, runs first, as ``decoder.2``):

    =====================================  =============================================
    KAIR                                   ours
    =====================================  =============================================
    ``p.m_head.weight``                    ``prior.head.weight``
    ``p.m_down{L}.{j}.res.0.weight``       ``prior.encoder.{L-1}.blocks.{j}.conv1.weight``
    ``p.m_down{L}.{j}.res.2.weight``       ``prior.encoder.{L-1}.blocks.{j}.conv2.weight``
    ``p.m_down{L}.{nb}.weight``            ``prior.encoder.{L-1}.down.weight``
    ``p.m_body.{j}.res.{0,2}.weight``      ``prior.body.{j}.conv{1,2}.weight``
    ``p.m_up{L}.0.weight``                 ``prior.decoder.{L-1}.up.weight``
    ``p.m_up{L}.{j+1}.res.{0,2}.weight``   ``prior.decoder.{L-1}.blocks.{j}.conv{1,2}.weight``
    ``p.m_tail.weight``                    ``prior.tail.weight``
    ``h.mlp.{0,2,4}.{weight,bias}``        ``hyper.conv{1,2,3}.{weight,bias}``
    =====================================  =============================================

    Args:
        model: The network to fill (its sizes must match the weights).
        state_dict: KAIR keys -> tensors (e.g. ``torch.load("usrnet_tiny.pth", weights_only=True)``).

    Raises:
        ValueError: A key is not a KAIR USRNet key, a parameter of ``model`` has no tensor, a mapped key does not
            exist in ``model``, or a tensor's shape differs; the message names the KAIR and our key (and shapes).
    """
    ours = model.state_dict()
    nb = len(model.prior.body)
    mapped: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    for key, value in state_dict.items():
        name = kair_key(key, nb)
        if name in mapped:
            raise ValueError(f"keys {source[name]!r} and {key!r} both map to {name!r}")
        if name not in ours:
            raise ValueError(f"unexpected key {key!r} (-> {name!r}): the model has no such parameter (sizes differ?)")
        if tuple(value.shape) != tuple(ours[name].shape):
            raise ValueError(
                f"shape mismatch for {key!r} (-> {name!r}): file {tuple(value.shape)}, model {tuple(ours[name].shape)}"
            )
        mapped[name], source[name] = value, key
    missing = [name for name in ours if name not in mapped]
    if missing:
        raise ValueError(f"missing key(s): the state dict has no tensor for {', '.join(missing)}")
    model.load_state_dict(mapped, strict=True)


def load_usrnet_tiny(path: str | Path = DEFAULT_TINY_WEIGHTS) -> USRNet:
    """``usrnet_tiny()`` with the official weights (``torch.load(weights_only=True)``, strict loading), in eval mode.

    Args:
        path: The ``.pth`` state dict; by default ``../shared/pretrained/usrnet_tiny.pth`` beside the repository.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is truncated, not a state dict, or not the tiny USRNet's weights.
    """
    path = Path(path).expanduser()
    origin = "the file comes from ../shared/pretrained/ (see its README.md: usrnet_tiny.pth, KAIR's usrnet_tiny)"
    if not path.is_file():
        raise FileNotFoundError(f"USRNet-tiny weights {path} not found; {origin}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle errors, ...: all mean a broken file
        raise ValueError(f"cannot read USRNet-tiny weights {path} ({type(err).__name__}: {err}); {origin}") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a plain state dict of tensors (got {type(state).__name__}); {origin}")
    model = usrnet_tiny()
    try:
        load_kair_state_dict(model, state)
    except ValueError as err:
        raise ValueError(f"{path} does not hold USRNet-tiny weights: {err}; {origin}") from err
    return model.eval()


def _wide(x: Tensor) -> Tensor:
    """``x`` in at least float32 (a bfloat16 prior output, under the bf16 inference path)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()

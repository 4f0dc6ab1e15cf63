"""What every test-set writer shares: the output folder (never mixing two runs), the HR crop, the 8-bit LR PNG.

Images are ``(H, W, 3) uint8`` arrays (``datamodules.io.load_rgb``) or ``(3, H, W)`` float tensors in ``[0, 1]``;
PNG and ``.mat`` files are written by ``datamodules.io``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datamodules.io import save_png


def prepare_out(out: Path, owned: Mapping[str, re.Pattern[str]], files: Sequence[str], overwrite: bool) -> None:
    """Create ``out``'s folders; refuse to write over an earlier run unless ``overwrite``, then delete its files.

    Args:
        out: The output folder.
        owned: ``{subfolder: pattern}``: the files of an earlier run are those of each subfolder whose name matches.
        files: Files directly in ``out`` that a run writes (e.g. ``README.txt``).
        overwrite: Delete an earlier run's files instead of raising.

    Raises:
        FileExistsError: ``out`` holds an earlier run's files and ``overwrite`` is False (names one of them).
    """
    folders = {out / name: pattern for name, pattern in owned.items()}
    own = [p for f, pattern in folders.items() if f.is_dir() for p in f.iterdir() if pattern.match(p.name)]
    own += [out / name for name in files if (out / name).is_file()]
    if own and not overwrite:
        raise FileExistsError(f"{out} already holds a generated set (e.g. {own[0]}); pass --overwrite to replace it")
    for path in own:
        path.unlink()
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)


def crop_to_multiple(arr: np.ndarray, multiple: int) -> np.ndarray:
    """Top-left crop of an ``(H, W, C)`` image to sides that are multiples of ``multiple`` (C-contiguous)."""
    h, w = (arr.shape[0] // multiple) * multiple, (arr.shape[1] // multiple) * multiple
    return np.ascontiguousarray(arr[:h, :w])


def save_lr_png(lr: Tensor, path: Path) -> np.ndarray:
    """Write a ``(3, H, W)`` LR in ``[0, 1]`` as 8-bit PNG (``round(255 x)``); returns the ``(H, W, 3) uint8`` image."""
    lr8 = (lr.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu().permute(1, 2, 0).numpy()
    save_png(lr8, path)
    return lr8

"""Do MoESR's experts specialise? A 5x5 PSNR-Y matrix: 5 experts, each trained on one of 5 grid kernels (issue 3 #1).

    python -m benchmarks.moesr_specialisation [--data ../shared/data/train/T91] [--steps 600] [--layers 6]
        [--channels 16] [--patch 20] [--batch 6] [--lr 1e-3] [--threads 1]

Five very distinct kernels of the official x2 grid (isotropic 0.85 and 4.37; 4.37/0.85 at 11, 79 and 146 degrees)
train the five experts of one ``ExpertBank`` at once (``specialisation.train_experts_on_kernels``: every batch of HR
crops degraded with every kernel, each expert its own L1 loss, Adam + one-cycle). Every fourth image of the data is
held out; their central crops, degraded with each kernel, give the matrix (``specialisation.specialisation_matrix``):
row = expert, column = kernel of the test images, value = mean PSNR-Y (shave 2). The diagonal wins a column when
the expert trained on that kernel is the best on its images. Experts start as bicubic (``zero_last``), which a CPU
budget needs. Prints the matrix (and bicubic on each column), then one JSON line
``{"diagonal_wins": ..., "matrix": ...}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from datamodules.degradation import ops
from datamodules.degradation.kernels.moesr import THETA_UNIT, MoESRGrid
from datamodules.images import find_images
from datamodules.io import load_rgb, to_tensor
from lightning_modules.metrics import psnr_y
from lightning_modules.moesr.specialisation import (
    degrade,
    diagonal_wins,
    specialisation_matrix,
    train_experts_on_kernels,
)
from lightning_modules.nets.moesr import ExpertBank

# (lambda1, lambda2, theta in units of pi/16): isotropic 0.85, isotropic 4.37, 4.37/0.85 at 11, 79 and 146 degrees
KERNELS = ((0.85, 0.85, 0), (4.37, 4.37, 0), (4.37, 0.85, 1), (4.37, 0.85, 7), (4.37, 0.85, 13))
DEFAULT_DATA = "../shared/data/train/T91"


def grid_kernels(grid: MoESRGrid, rows=KERNELS) -> torch.Tensor:
    """The grid kernels named by ``(lambda1, lambda2, theta / (pi/16))``, ``(len(rows), k, k)``."""
    units = (grid.params[:, 2] / THETA_UNIT).round()
    index = []
    for a, b, u in rows:
        hit = ((grid.params[:, 0] == a) & (grid.params[:, 1] == b) & (units == u)).nonzero().flatten()
        if hit.numel() != 1:
            raise ValueError(f"({a}, {b}, {u}pi/16) is not a kernel of {grid}")
        index.append(int(hit))
    return grid.kernels()[index]


def load_images(data: str, min_side: int) -> tuple[list[torch.Tensor], str]:
    """Float ``(3, H, W)`` images of ``data`` (or the built-in photos if it does not exist) at least ``min_side``."""
    source = data if data == "builtin" or Path(data).exists() else "builtin"
    images = [to_tensor(load_rgb(p)).float() / 255 for p in find_images(source)]
    return [im for im in images if min(im.shape[-2:]) >= min_side], source


def central_crops(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """``(N, 3, size, size)`` central crops."""
    crops = []
    for im in images:
        top, left = (im.shape[-2] - size) // 2, (im.shape[-1] - size) // 2
        crops.append(im[:, top : top + size, left : left + size])
    return torch.stack(crops)


def run(args: argparse.Namespace) -> dict:
    """Train the five experts and measure the matrix; returns the headline figures."""
    torch.manual_seed(args.seed)
    grid = MoESRGrid(2)
    kernels = grid_kernels(grid)
    images, source = load_images(args.data, max(args.patch * 2, args.eval_size))
    held_out, train = images[::4], [im for i, im in enumerate(images) if i % 4]
    if not held_out or not train:
        raise ValueError(f"need at least 2 images of {args.eval_size}+ px in {source}")
    bank = ExpertBank(len(kernels), 2, args.layers, args.channels, zero_last=True)
    t0 = time.perf_counter()
    losses = train_experts_on_kernels(bank, kernels, train, args.steps, args.patch, args.batch, args.lr, args.seed)
    seconds = time.perf_counter() - t0
    hr = central_crops(held_out, args.eval_size)
    matrix = specialisation_matrix(bank, kernels, hr)
    lr = degrade(hr, kernels, 2)  # (B, K, 3, h, w)
    up = ops.resize(lr.flatten(0, 1), scale=2, convention="matlab").clamp(0, 1)
    target = hr[:, None].expand(-1, len(kernels), -1, -1, -1).flatten(0, 1)
    bicubic = psnr_y(up, target, 2).reshape(hr.shape[0], len(kernels)).mean(dim=0).tolist()
    names = [f"{a}/{b}@{round(u * 180 / 16)}deg" if a != b else f"iso {a}" for a, b, u in KERNELS]
    print(f"data: {source} ({len(train)} training / {len(held_out)} held-out images), {args.steps} steps in "
          f"{seconds:.0f} s, final loss {sum(losses[-10:]) / min(10, len(losses)):.4f}")  # fmt: skip
    print("PSNR-Y (dB), rows: expert trained on, columns: kernel of the test images")
    print(" " * 24 + "".join(f"{n:>18}" for n in names))
    for name, row in zip(names, matrix.tolist(), strict=True):
        print(f"{'expert ' + name:>24}" + "".join(f"{v:18.2f}" for v in row))
    print(f"{'bicubic':>24}" + "".join(f"{v:18.2f}" for v in bicubic))
    wins = diagonal_wins(matrix)
    result = {
        "diagonal_wins": wins,
        "kernels": names,
        "matrix": [[round(v, 3) for v in row] for row in matrix.tolist()],
        "bicubic": [round(v, 3) for v in bicubic],
        "train_seconds": round(seconds, 1),
        "data": source,
    }
    print(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments and run the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.moesr_specialisation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"HR image folder (default {DEFAULT_DATA}; "
                        "the built-in photos if it does not exist, or 'builtin')")  # fmt: skip
    parser.add_argument("--steps", type=int, default=600, help="training steps (default: 600)")
    parser.add_argument("--layers", type=int, default=6, help="convolutions per expert (default: 6; paper: 12)")
    parser.add_argument("--channels", type=int, default=16, help="feature maps (default: 16; paper: 64)")
    parser.add_argument("--patch", type=int, default=20, help="LR training patch side (default: 20)")
    parser.add_argument("--batch", type=int, default=6, help="HR crops per step (default: 6)")
    parser.add_argument("--lr", type=float, default=1e-3, help="maximum one-cycle learning rate (default: 1e-3)")
    parser.add_argument("--eval-size", type=int, default=96, help="HR side of the held-out crops (default: 96)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and crops (default: 0)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return run(args)


if __name__ == "__main__":
    main()

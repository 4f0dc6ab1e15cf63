"""Kernel estimation on held-out images and kernels of KENet's protocol: KENet(s) vs a constant vs MoESR's KEN.

    python -m benchmarks.kenet_estimation --kenet checkpoints/kenet/kenet_x2/last.ckpt [--kenet OTHER.ckpt ...]
        [--moesr checkpoints/moesr] [--images ../shared/data/train/Kodak24] [--scale 2] [--crop 96] [--crops 4]

Every image of ``--images`` (default Kodak24, on which no stage trains) gives ``--crops`` LR crops of ``--crop`` px
(HR ``crop * scale`` on a regular grid), each degraded by its own kernel of KENet's protocol
(``KENetKernelSampler``: standard deviations ``U(0.2, 4)``, ``theta ~ U(0, pi)``, block-centred, 11x11 / 21x21,
seed ``--seed``), decimated from pixel 0 and rounded to 8 bit (``ClassicalDegradation``). Estimators:

* each ``--kenet`` checkpoint (a ``KENetSystem``: the attention-loss run, the L1 run, ...);
* ``constant``: the mean kernel of 20,000 kernels of the training distribution (another seed): the best constant
  in the L2 / kernel-PSNR sense, known before seeing any test image;
* ``moesr``: MoESR's experts + ISE + KEN from ``--moesr`` (``experts_x{s}``, ``ise_x{s}``, ``ken_x{s}``), trained on
  the DIV2KRK protocol (variances 0.6-5, i.e. standard deviations 0.77-2.24): out of its range on part of this set.

Reported per estimator (means over all crops; estimates and truths zero-padded to a common size, centres kept):
kernel PSNR (FKP's definition), SAE, KOALAnet's shift-aligned L2. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import grid_crops
from datamodules.degradation.pipelines import ClassicalDegradation
from datamodules.degradation.samplers import KENetKernelSampler
from datamodules.images import find_images
from datamodules.io import load_rgb, to_tensor
from lightning_modules.core.two_step import KernelEstimator
from lightning_modules.kenet.components import KENetKernelEstimator
from lightning_modules.metrics import kernel_psnr, kernel_sae, kernel_shift_aligned_l2
from lightning_modules.moesr.adapters import MoESRKernelEstimator

REPO = Path(__file__).resolve().parents[1]


def held_out_set(images: str, scale: int, crop: int, crops: int, seed: int) -> dict[str, torch.Tensor]:
    """``{"lr": (N, 3, crop, crop), "kernel": (N, k, k)}`` from the images' grid crops (module docstring)."""
    hr = [c for p in find_images(images) for c in grid_crops(to_tensor(load_rgb(p)).float() / 255, crop * scale, crops)]
    deg = ClassicalDegradation(scale, kernel_sampler=KENetKernelSampler())
    batch = deg(torch.stack(hr), torch.Generator().manual_seed(seed))
    return {"lr": batch["lr"], "kernel": batch["kernel"]}


def mean_kernel(scale: int, seed: int, count: int = 20_000) -> torch.Tensor:
    """The mean of ``count`` kernels of KENet's training distribution, ``(k, k)``."""
    sampler = KENetKernelSampler()
    params = sampler.sample(count, torch.Generator().manual_seed(seed), "cpu")
    return sampler.kernels(params, scale).mean(dim=0)


def scores(est: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Mean kernel PSNR, SAE and shift-aligned L2 of ``(N, k, k)`` estimates."""
    return {
        "kernel_psnr": float(kernel_psnr(est, gt).mean()),
        "kernel_sae": float(kernel_sae(est, gt).mean()),
        "kernel_l2": float(kernel_shift_aligned_l2(est, gt).mean()),
    }


@torch.no_grad()
def run(estimator: KernelEstimator, lr: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Block-centred estimates for every LR crop, ``chunk`` crops per call."""
    return torch.cat([estimator.estimate(lr[i : i + chunk], {}) for i in range(0, lr.shape[0], chunk)])


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; returns the headline figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kenet_estimation", description=__doc__.split("\n")[0])
    parser.add_argument("--kenet", action="append", default=[], metavar="CKPT", help="KENetSystem checkpoint(s)")
    parser.add_argument("--moesr", metavar="DIR", help="folder with MoESR's experts_x{s}/ ise_x{s}/ ken_x{s}/last.ckpt")
    parser.add_argument("--images", default=str(REPO.parent / "shared/data/train/Kodak24"), help="held-out HR images")
    parser.add_argument("--scale", type=int, default=2, choices=[2, 4], help="scale factor (default: 2)")
    parser.add_argument("--crop", type=int, default=96, help="LR crop side in px (default: 96, the paper's)")
    parser.add_argument("--crops", type=int, default=4, help="crops per image (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test kernels (default: 0)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    data = held_out_set(args.images, args.scale, args.crop, args.crops, args.seed)
    gt = data["kernel"]
    results = {"constant": scores(mean_kernel(args.scale, args.seed + 1)[None].expand_as(gt), gt)}
    for path in args.kenet:
        est = KENetKernelEstimator(path)
        est.load(args.scale)
        results[f"kenet:{path}"] = scores(run(est, data["lr"]), gt)
    if args.moesr:
        root = Path(args.moesr)
        est = MoESRKernelEstimator(
            **{f"{s}_ckpt": str(root / f"{s}_x{{scale}}" / "last.ckpt") for s in ("experts", "ise", "ken")}
        )
        est.load(args.scale)
        results["moesr_ken"] = scores(run(est, data["lr"]), gt)
    print(f"x{args.scale}: {gt.shape[0]} LR crops of {args.crop} px, {gt.shape[-1]}x{gt.shape[-1]} kernels, "
          f"images {args.images}, seed {args.seed}")  # fmt: skip
    print(f"{'estimator':<60} {'kernel PSNR':>11} {'SAE':>8} {'L2':>10}")
    for name, r in results.items():
        print(f"{name:<60} {r['kernel_psnr']:>11.2f} {r['kernel_sae']:>8.4f} {r['kernel_l2']:>10.6f}")
    summary = {"scale": args.scale, "crops": int(gt.shape[0]), "results": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

"""MoESR kernel estimation on held-out images and kernels (issue 3, item 2): ISE's choice and KEN's regression.

    python -m benchmarks.moesr_estimation [--images ../shared/data/train/Kodak24] [--crop 48] [--kernels 4]

Every image of ``--images`` (default Kodak24, which no MoESR stage trains on) gives ``--crops`` HR crops of
``crop * scale`` px on a regular grid; each crop is degraded with ``--kernels`` kernels drawn uniformly from MoESR's
continuous space (``MoESRKernelDegradation``, seed ``--seed``: held out, off the grid). For every LR crop all ``N``
grid experts run, ISE scores them (Eq. 10) and KEN regresses the kernel (Eq. 11). Reported:

* ``ise_top1``: ISE's best grid kernel is the grid kernel nearest (SAE) to the true one, against chance ``1/N``;
  ``ise_top3`` (the nearest is among ISE's three best); ``oracle_top1``: the expert of the lowest *true* error is
  the nearest grid kernel's (how well the experts themselves separate the kernels: ISE's ceiling for ``ise_top1``);
  ``ise_best_expert``: ISE's best is the lowest-true-error expert; ``rank_corr``: Spearman correlation of ISE and
  true errors over the grid;
* kernel SAE (sum of absolute errors, block-centred kernels on the grid's support) of KEN's estimate, of ISE's best
  grid kernel, of the nearest grid kernel (the best any grid choice does), of a random grid kernel, and of the best
  constant (the single grid kernel of lowest mean SAE over this whole set, chosen with hindsight);
* PSNR-Y of the expert Eq. 12 picks from KEN's estimate, of ISE's best expert, of the lowest-true-error expert, of
  bicubic.

ISE scores the experts' unclamped outputs, as training, inference and the official code do; PSNR is measured on
the outputs clamped to ``[0, 1]``. The expert of KEN's estimate is the official rule (``MoESRGrid.nearest``).

Prints a table, then one JSON line with the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import grid_crops
from datamodules.degradation import ops
from datamodules.degradation.pipelines.moesr import MoESRKernelDegradation
from datamodules.images import find_images
from datamodules.io import load_rgb, to_tensor
from lightning_modules.metrics import psnr_y
from lightning_modules.moesr.grid_eval import batch_index, grid_outputs, ise_errors, rank_correlation, upsample
from lightning_modules.moesr.kernels import ken_kernels
from lightning_modules.moesr.stages import DEFAULT_CKPTS, load_stages

REPO = Path(__file__).resolve().parents[1]


def sae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of absolute differences of ``(..., k, k)`` kernels -> ``(...)``."""
    return (a - b).abs().sum(dim=(-2, -1))


@torch.no_grad()
def evaluate(stages, hr: torch.Tensor, seed: int, kernels_per_crop: int, max_batch: int = 8) -> dict[str, torch.Tensor]:
    """Per-sample results for HR crops ``(B, 3, sH, sW)``, each degraded with ``kernels_per_crop`` random kernels."""
    bank, grid, ise, ken = stages.bank, stages.grid, stages.ise, stages.ken
    scale = grid.scale
    degradation = MoESRKernelDegradation(scale)  # the supported space, as the ISE and KEN train on
    gen = torch.Generator().manual_seed(seed)
    hr = hr.repeat_interleave(kernels_per_crop, dim=0)
    batch = degradation(hr, gen)
    lr, kernel = batch["lr"], batch["kernel"]
    grid_k = grid.kernels(lr.dtype)
    rows: dict[str, list[torch.Tensor]] = {}
    for s in range(0, lr.shape[0], max_batch):
        part_lr, part_hr, part_k = lr[s : s + max_batch], hr[s : s + max_batch], kernel[s : s + max_batch]
        # ISE sees the experts' unclamped outputs, as in training (MoESRISE, MoESRKEN), in inference
        # (grid_eval.grid_errors) and in the official code (MoESR.estimate_kernel); only PSNR sees clamped images.
        out = grid_outputs(bank, grid, part_lr)  # (b, N, 3, sh, sw)
        errors = ise_errors(ise, out, upsample(part_lr, scale))
        true = (out - part_hr[:, None]).square().mean(dim=(2, 3, 4))  # as ISE's labels and val/ise_rank_corr
        params = ken(errors)
        ken_k = ken_kernels(params, grid.kernel_size, scale)
        nearest = grid.kernel_nearest(part_k)
        best_ise, best_true = errors.argmin(dim=1), true.argmin(dim=1)
        chosen = grid.nearest(params)
        idx = batch_index(part_lr)
        psnr_all = psnr_y(out.clamp(0, 1).flatten(0, 1), part_hr[:, None].expand_as(out).flatten(0, 1), shave=scale)
        psnr_all = psnr_all.reshape(true.shape)
        bicubic = ops.resize(part_lr, scale=scale, convention="matlab").clamp(0, 1)
        new = {
            "ise_top1": (best_ise == nearest).float(),
            "ise_top3": (errors.topk(3, dim=1, largest=False).indices == nearest[:, None]).any(dim=1).float(),
            "oracle_top1": (best_true == nearest).float(),
            "ise_best_expert": (best_ise == best_true).float(),
            "rank_corr": rank_correlation(errors, true).float(),
            "sae_ken": sae(ken_k, part_k),
            "sae_ise": sae(grid_k[best_ise], part_k),
            "sae_nearest": sae(grid_k[nearest], part_k),
            "sae_all": sae(grid_k[None], part_k[:, None]),  # (b, N): random and best-constant choices
            "psnr_ken": psnr_all[idx, chosen],
            "psnr_ise": psnr_all[idx, best_ise],
            "psnr_oracle": psnr_all[idx, best_true],
            "psnr_bicubic": psnr_y(bicubic, part_hr, shave=scale),
        }
        for key, value in new.items():
            rows.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(value) for key, value in rows.items()}


def summarise(rows: dict[str, torch.Tensor], num_kernels: int) -> dict[str, float]:
    """Means of the per-sample rows, plus chance, random and best-constant SAE."""
    out = {key: float(value.double().mean()) for key, value in rows.items() if key != "sae_all"}
    out["chance_top1"] = 1.0 / num_kernels
    out["chance_top3"] = 3.0 / num_kernels
    out["sae_random"] = float(rows["sae_all"].double().mean())
    out["sae_constant"] = float(rows["sae_all"].double().mean(dim=0).min())
    out["samples"] = int(rows["ise_top1"].numel())
    return out


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, evaluate, print the table and the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.moesr_estimation", description=__doc__.split("\n")[0])
    parser.add_argument("--experts", default=DEFAULT_CKPTS["experts"], help="experts checkpoint ({scale} is filled)")
    parser.add_argument("--ise", default=DEFAULT_CKPTS["ise"], help="ISE checkpoint ({scale} is filled)")
    parser.add_argument("--ken", default=DEFAULT_CKPTS["ken"], help="KEN checkpoint ({scale} is filled)")
    parser.add_argument("--scale", type=int, default=2, choices=(2, 4), help="SR scale of the checkpoints")
    parser.add_argument("--images", default=str(REPO.parent / "shared/data/train/Kodak24"), help="HR image folder")
    parser.add_argument("--crop", type=int, default=48, help="LR crop side (HR crops are crop * scale)")
    parser.add_argument("--crops", type=int, default=2, help="crops per image")
    parser.add_argument("--kernels", type=int, default=4, help="random kernels per crop")
    parser.add_argument("--max-images", type=int, default=0, help="use the first N images only (0: all)")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the held-out kernels")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = load_stages(args.experts, args.ise, args.ken, args.scale)
    paths = find_images(args.images)
    paths = paths[: args.max_images] if args.max_images else paths
    size = args.crop * args.scale
    crops = [c for p in paths for c in grid_crops(to_tensor(load_rgb(p)).float() / 255, size, args.crops)]
    if not crops:
        raise SystemExit(f"no {size}x{size} crop fits in the images of {args.images}")
    rows = evaluate(stages, torch.stack(crops), args.seed, args.kernels)
    res = summarise(rows, stages.grid.num_kernels)
    print(f"{res['samples']} LR crops of {args.crop} px ({len(paths)} images x {args.crops} crops x {args.kernels} "
          f"held-out kernels), grid of {stages.grid.num_kernels} kernels, x{args.scale}")  # fmt: skip
    print("| choice | top-1 (nearest grid kernel) | kernel SAE | PSNR-Y |")
    print("|---|---|---|---|")
    print(f"| KEN (Eq. 11-12) | - | {res['sae_ken']:.4f} | {res['psnr_ken']:.2f} |")
    print(f"| ISE's best grid kernel | {res['ise_top1']:.3f} (top-3 {res['ise_top3']:.3f}) | {res['sae_ise']:.4f} "
          f"| {res['psnr_ise']:.2f} |")  # fmt: skip
    print(f"| lowest true error (oracle) | {res['oracle_top1']:.3f} | - | {res['psnr_oracle']:.2f} |")
    print(f"| nearest grid kernel | 1 | {res['sae_nearest']:.4f} | - |")
    print(f"| best constant grid kernel | - | {res['sae_constant']:.4f} | - |")
    print(f"| random grid kernel (chance) | {res['chance_top1']:.3f} (top-3 {res['chance_top3']:.3f}) "
          f"| {res['sae_random']:.4f} | - |")  # fmt: skip
    print(f"| bicubic | - | - | {res['psnr_bicubic']:.2f} |")
    print(f"ISE: best = lowest-true-error expert {res['ise_best_expert']:.3f}, rank correlation {res['rank_corr']:.3f}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()

"""The composition table: every kernel estimator x every non-blind restorer, on DIV2KRK-layout sets.

    python -m benchmarks.two_step --sets ../shared/data/test/DIV2KRK_sample data_local/kenet/Set5 --scale 2 \
        --kenet checkpoints/kenet/kenet_x2/last.ckpt --moesr checkpoints/moesr \
        --usrnet checkpoints/kenet/usrnet_x2/last.ckpt --usrnet-tiny ../shared/pretrained/usrnet_tiny.pth \
        [--finetune-iters 100] [--limit N]

Rows (estimators, each loaded once): ``KENet`` (``--kenet``, repeatable with labels: ``--kenet KENet-L1=PATH``),
``MoESR-KEN`` (experts + ISE + KEN from ``--moesr``),
``GT`` (the set's own kernel). Columns (restorers): ``USRNet`` (ours, ``--usrnet``), ``USRNet-tiny`` (the official
weights, ``--usrnet-tiny``), ``expert`` (MoESR's expert of the nearest grid kernel, w/o fine-tuning) and
``expert+FT`` (fine-tuned ``--finetune-iters`` iterations with the estimated kernel). A part whose file is not given
is left out. Each cell is the mean PSNR-Y / SSIM-Y (the project's protocol: MATLAB Y, ``scale`` px shaved, Gaussian
SSIM) over the set's images; next to it the estimators' kernel PSNR / SAE / L2 and MATLAB bicubic.

The same code path as ``configs/kenet/blind.yaml`` (``core.two_step.convert_kernel``, the parts' ``prepare``), run
here pair by pair on whole images so that each part is loaded and each kernel estimated once. Prints one table per
set, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from datamodules.degradation.ops import resize
from datamodules.test_sets import open_benchmark
from lightning_modules.core.two_step import GroundTruthKernel, KernelEstimator, KernelRestorer, convert_kernel
from lightning_modules.kenet.components import KENetKernelEstimator, USRNetRestorer
from lightning_modules.metrics import kernel_psnr, kernel_sae, kernel_shift_aligned_l2, psnr_y, ssim_y
from lightning_modules.moesr.adapters import MoESRExpertRestorer, MoESRKernelEstimator


def parts(args: argparse.Namespace) -> tuple[dict[str, KernelEstimator], dict[str, KernelRestorer]]:
    """The estimators and restorers whose files were given, loaded for ``args.scale``."""
    estimators: dict[str, KernelEstimator] = {}
    restorers: dict[str, KernelRestorer] = {}
    for spec in args.kenet:
        label, _, path = spec.rpartition("=")
        estimators[label or "KENet"] = KENetKernelEstimator(path)
    if args.moesr:
        root = Path(args.moesr)
        stage = {f"{s}_ckpt": str(root / f"{s}_x{{scale}}" / "last.ckpt") for s in ("experts", "ise", "ken")}
        estimators["MoESR-KEN"] = MoESRKernelEstimator(**stage, estimate_crop=args.estimate_crop)
        restorers["expert"] = MoESRExpertRestorer(stage["experts_ckpt"], finetune_iters=0, progress=False)
        if args.finetune_iters > 0:
            restorers["expert+FT"] = MoESRExpertRestorer(
                stage["experts_ckpt"], finetune_iters=args.finetune_iters, progress=False
            )
    estimators["GT"] = GroundTruthKernel()
    if args.usrnet:
        restorers["USRNet"] = USRNetRestorer(args.usrnet)
    if args.usrnet_tiny:
        restorers["USRNet-tiny"] = USRNetRestorer(pretrained=args.usrnet_tiny)
    for part in (*estimators.values(), *restorers.values()):
        part.load(args.scale)
    return estimators, restorers


def evaluate_set(path: str, args: argparse.Namespace, estimators: dict, restorers: dict) -> dict:
    """Mean metrics of every (estimator, restorer) pair on one set, plus kernel accuracy and bicubic."""
    data = open_benchmark(path, args.scale)
    n = len(data) if args.limit is None else min(args.limit, len(data))
    s = args.scale
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def add(key: str, value: float) -> None:
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0) + 1

    for i in range(n):
        item = data[i]
        lr = item["lr"][None].float() / 255
        hr = item["hr"][None].float() / 255
        batch = {"lr": lr, "kernel": item["kernel"][None].float(), "name": [item["name"]]}
        bic = resize(lr, scale=s, convention="matlab").clamp(0, 1)
        add("bicubic/psnr_y", float(psnr_y(bic, hr, s)))
        add("bicubic/ssim_y", float(ssim_y(bic, hr, s)))
        for e_name, est in estimators.items():
            kernel = convert_kernel(est.estimate(lr, batch), est.convention, "block", s)
            if not est.uses_ground_truth:
                for m_name, fn in (("kernel_psnr", kernel_psnr), ("kernel_sae", kernel_sae),
                                   ("kernel_l2", kernel_shift_aligned_l2)):  # fmt: skip
                    add(f"{e_name}/{m_name}", float(fn(kernel, batch["kernel"])))
            for r_name, rest in restorers.items():
                start = time.perf_counter()
                tile_fn = rest.prepare(lr, convert_kernel(kernel, "block", rest.convention, s), s, batch["name"])
                with torch.no_grad():
                    sr = tile_fn(lr).clamp(0, 1)
                add(f"{e_name}+{r_name}/psnr_y", float(psnr_y(sr, hr, s)))
                add(f"{e_name}+{r_name}/ssim_y", float(ssim_y(sr, hr, s)))
                add(f"{e_name}+{r_name}/seconds", time.perf_counter() - start)
        print(f"  {path} {i + 1}/{n} {item['name']}", flush=True)
    return {k: sums[k] / counts[k] for k in sums}


def print_table(name: str, means: dict, estimators: dict, restorers: dict) -> None:
    """One row per estimator, one column per restorer, ``PSNR/SSIM``; then kernel accuracy."""
    print(f"\n{name}: bicubic {means['bicubic/psnr_y']:.2f}/{means['bicubic/ssim_y']:.4f}")
    print(f"{'estimator':<12}" + "".join(f"{r:>18}" for r in restorers) + f"{'kernel PSNR':>13}{'SAE':>8}")
    for e in estimators:
        cells = "".join(f"{means[f'{e}+{r}/psnr_y']:>10.2f}/{means[f'{e}+{r}/ssim_y']:.4f}" for r in restorers)
        kern = (f"{means[f'{e}/kernel_psnr']:>13.2f}{means[f'{e}/kernel_sae']:>8.3f}"
                if f"{e}/kernel_psnr" in means else f"{'-':>13}{'-':>8}")  # fmt: skip
        print(f"{e:<12}{cells}{kern}")


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; returns the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.two_step", description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", required=True, metavar="DIR", help="DIV2KRK-layout test sets")
    parser.add_argument("--scale", type=int, default=2, help="scale factor (default: 2)")
    parser.add_argument(
        "--kenet", action="append", default=[], metavar="[LABEL=]CKPT",
        help="KENetSystem checkpoint, optionally labelled (repeat for several rows, e.g. KENet-L1=...)",
    )  # fmt: skip
    parser.add_argument("--moesr", metavar="DIR", help="folder with MoESR's experts_x{s}/ ise_x{s}/ ken_x{s}/last.ckpt")
    parser.add_argument("--usrnet", metavar="CKPT", help="USRNetSystem checkpoint (ours)")
    parser.add_argument("--usrnet-tiny", metavar="PTH", help="the official USRNet-tiny weights (KAIR state dict)")
    parser.add_argument("--finetune-iters", type=int, default=100, help="MoESR expert fine-tuning (0: no FT column)")
    parser.add_argument("--estimate-crop", type=int, default=128, help="MoESR's estimation crop (0: whole image)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of each set")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    estimators, restorers = parts(args)
    results = {}
    for path in args.sets:
        results[path] = evaluate_set(path, args, estimators, restorers)
        print_table(path, results[path], estimators, restorers)
    summary = {"scale": args.scale, "finetune_iters": args.finetune_iters, "results": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

"""Spatially-variant blur: KOALAnet, MoESR, a single network and bicubic on a set whose kernel changes per pixel.

    python -m benchmarks.spatially_variant --set data_local/sv/Set14_defocus --scale 4 \
        --koalanet checkpoints/koalanet/stage3_x4/last.ckpt [--moesr checkpoints/moesr] \
        [--single checkpoints/baseline/kenet_x4/last.ckpt] [--picture sv.png] [--limit N]

The set comes from ``python -m datamodules.generate --protocol spatially_variant`` (per-LR-pixel kernel field).
Reported per method: PSNR-Y / SSIM-Y (the standard protocol); for KOALAnet also the per-pixel kernel error of its
normalised per-pixel kernels against the field's (SAE and KOALAnet's shift-aligned L2, mean over LR pixels), next
to the mean training kernel's at every pixel (the constant reference). MoESR estimates one kernel per image (ISE +
KEN) and super-resolves with the nearest grid kernel's expert (no fine-tuning). ``--picture``: the first image's LR,
per-pixel kernel error map of KOALAnet and SR, side by side, as PNG. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datamodules.degradation.koala_sampler import KOALAKernelSampler
from datamodules.degradation.ops import resize
from datamodules.sv_sets import SpatiallyVariantDataset
from lightning_modules.core.stages import check_state_dict, read_checkpoint, stage_hparams
from lightning_modules.core.two_step import convert_kernel
from lightning_modules.koalanet.common import KERNEL_SIZE, pad_to_multiple, to_signed
from lightning_modules.koalanet.stage3 import KOALAnetSystem, load_koalanet
from lightning_modules.metrics import psnr_y, ssim_y
from lightning_modules.metrics.kernel_map import kernel_error_maps
from lightning_modules.moesr.adapters import MoESRExpertRestorer, MoESRKernelEstimator
from lightning_modules.nets.layers import kernel_normalize
from lightning_modules.nets.vdsr import ChainedVDSR

SINGLE_COMMAND = "python main.py fit -c configs/baselines/single_net.yaml"


def koalanet_kernels(model: KOALAnetSystem, lr: torch.Tensor) -> torch.Tensor:
    """Normalised per-pixel native kernels ``(B, 400, H, W)`` of KOALAnet's downsampling net."""
    padded, h, w = pad_to_multiple(to_signed(lr))
    return kernel_normalize(model.down(padded)[..., :h, :w], KERNEL_SIZE)


def load_single_net(path: str, scale: int) -> ChainedVDSR:
    """The network of a ``SingleNetSR`` checkpoint (sizes from its hyper-parameters), strictly, in eval mode."""
    ckpt = read_checkpoint(path, SINGLE_COMMAND)
    hp = stage_hparams(ckpt, path, ("num_layers", "channels"), SINGLE_COMMAND, scale)
    net = ChainedVDSR(scale, int(hp["num_layers"]), int(hp["channels"]))
    net.load_state_dict(check_state_dict(net, ckpt["state_dict"], path, SINGLE_COMMAND, "net."), strict=True)
    return net.eval()


def error_picture(lr: torch.Tensor, error: torch.Tensor, sr: torch.Tensor, scale: int) -> np.ndarray:
    """``[LR (nearest-upscaled) | kernel SAE map (grey, 0..max) | SR]`` as an ``(sH, 3 sW, 3)`` uint8 array."""
    big = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")
    err = error[None, None].float() / max(float(error.max()), 1e-8)
    err = torch.nn.functional.interpolate(err, scale_factor=scale, mode="nearest").expand(-1, 3, -1, -1)
    row = torch.cat([big, err, sr.clamp(0, 1)], dim=-1)[0]
    return (row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def main() -> None:
    """Evaluate every given method on the set; print the table and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", required=True, help="spatially-variant set folder")
    p.add_argument("--scale", type=int, default=4, help="SR factor")
    p.add_argument("--koalanet", help="KOALAnet stage-3 checkpoint")
    p.add_argument("--moesr", help="folder of MoESR's stage checkpoints (experts_x{s}, ise_x{s}, ken_x{s})")
    p.add_argument("--single", help="single-network baseline checkpoint (SingleNetSR)")
    p.add_argument("--picture", help="PNG of the first image: LR | KOALAnet's kernel error | KOALAnet's SR")
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--wandb", action="store_true", help="also log the table and the picture to W&B (project blindsr, "
                   "group koalanet; offline in runs/wandb unless W&B is configured)")  # fmt: skip
    args = p.parse_args()
    torch.set_grad_enabled(False)
    s = args.scale
    data = SpatiallyVariantDataset(args.set, s)
    methods = {"bicubic": lambda lr: resize(lr, scale=s, convention="matlab")}
    koala = None
    if args.koalanet:
        koala = load_koalanet(args.koalanet, s)
        methods["KOALAnet"] = koala.super_resolve
    if args.single:
        methods["single network"] = load_single_net(args.single, s)
    if args.moesr:
        root = Path(args.moesr)
        stage = {f"{n}_ckpt": str(root / f"{n}_x{{scale}}" / "last.ckpt") for n in ("experts", "ise", "ken")}
        moesr_est = MoESRKernelEstimator(**stage)
        moesr_rest = MoESRExpertRestorer(stage["experts_ckpt"], finetune_iters=0)
        moesr_est.load(s)
        moesr_rest.load(s)

        def moesr(lr: torch.Tensor) -> torch.Tensor:
            kernel = convert_kernel(moesr_est.estimate(lr, {}), moesr_est.convention, moesr_rest.convention, s)
            return moesr_rest.prepare(lr, kernel, s, ["image"])(lr)

        methods["MoESR w/o FT"] = moesr
    n = len(data) if args.limit is None else min(args.limit, len(data))
    sums: dict[str, float] = {}
    mean_kernel = None
    for i in range(n):
        item = data[i]
        lr, hr = item["lr"][None].float() / 255, item["hr"][None].float() / 255
        sr_koala = None
        for name, fn in methods.items():
            sr = fn(lr).clamp(0, 1)
            sums[f"{name}/psnr_y"] = sums.get(f"{name}/psnr_y", 0.0) + float(psnr_y(sr, hr, s))
            sums[f"{name}/ssim_y"] = sums.get(f"{name}/ssim_y", 0.0) + float(ssim_y(sr, hr, s))
            if name == "KOALAnet":
                sr_koala = sr
        if koala is not None:
            gt = item["kernel_map"][None]
            kernel_map = koalanet_kernels(koala, lr)
            sae, l2 = kernel_error_maps(kernel_map, gt)
            if mean_kernel is None:
                mean_kernel = mean_native_kernel(s)
            c_sae, c_l2 = kernel_error_maps(mean_kernel, gt)
            for key, v in (("sae", sae), ("l2", l2), ("const_sae", c_sae), ("const_l2", c_l2)):
                sums[f"kernel/{key}"] = sums.get(f"kernel/{key}", 0.0) + float(v.mean())
            if i == 0 and args.picture:
                Image.fromarray(error_picture(lr, sae[0], sr_koala, s)).save(args.picture)
        print(f"  {i + 1}/{n} {item['name']}", flush=True)
    means = {k: v / n for k, v in sums.items()}
    print(f"\n{args.set} x{s}, {n} images (PSNR-Y / SSIM-Y, standard protocol)")
    print("| method | PSNR-Y / SSIM-Y |\n|---|---|")
    for name in methods:
        print(f"| {name} | {means[f'{name}/psnr_y']:.2f} / {means[f'{name}/ssim_y']:.4f} |")
    if koala is not None:
        print(
            f"per-pixel kernel error, KOALAnet: SAE {means['kernel/sae']:.3f}, L2 {means['kernel/l2']:.5f}; mean "
            f"training kernel: SAE {means['kernel/const_sae']:.3f}, L2 {means['kernel/const_l2']:.5f}"
        )
    print(json.dumps({"images": n, **{k: round(v, 5) for k, v in means.items()}}))
    if args.wandb:
        log_to_wandb(args, methods, means)


def log_to_wandb(args: argparse.Namespace, methods: dict, means: dict[str, float]) -> None:
    """One W&B run (``job_type spatially_variant``): the PSNR/SSIM table, kernel errors and the picture."""
    import wandb

    from lightning_modules.core.cli import wandb_configured

    run = wandb.init(project="blindsr", group="koalanet", job_type="spatially_variant", dir="runs",
                     mode=None if wandb_configured() else "offline", config=vars(args))  # fmt: skip
    rows = [[name, means[f"{name}/psnr_y"], means[f"{name}/ssim_y"]] for name in methods]
    payload = {"spatially_variant/results": wandb.Table(columns=["method", "psnr_y", "ssim_y"], data=rows)}
    payload.update({f"spatially_variant/{k}": v for k, v in means.items() if k.startswith("kernel/")})
    if args.picture:
        payload["spatially_variant/picture"] = wandb.Image(args.picture, caption="LR | KOALAnet per-pixel SAE | SR")
    run.log(payload)
    run.finish()


def mean_native_kernel(scale: int, count: int = 20_000, seed: int = 0) -> torch.Tensor:
    """The mean native 20x20 kernel of KOALAnet's training distribution (the constant reference)."""
    sampler = KOALAKernelSampler()
    return sampler.kernels(sampler.sample(count, torch.Generator().manual_seed(seed), "cpu"), scale).mean(0)


if __name__ == "__main__":
    main()

"""Kernel-classification accuracy of a pre-trained E-Net (``configs/mixture/enet_pretrain.yaml``) on held-out images.

    python -m benchmarks.enet_accuracy [--ckpt checkpoints/mixture/enet_x2/last.ckpt] [--images DIR] [--crop 64]

Every image of ``--images`` (default: Kodak24, which the pre-training never sees) gives ``--crops`` HR crops of
``crop * scale`` pixels on a fixed grid; each crop is degraded with **every** seen kernel by the training
degradation (``MixtureDegradation``: symmetric border, PIL-NEAREST phase, 8-bit), and E-Net + head classify it.
Reports top-1 and top-3 accuracy against chance ``1/K``, and the accuracy per kernel. Prints a table, then one
JSON line ``{"top1": ..., "top3": ..., "chance": ..., "samples": ...}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import grid_crops
from datamodules.degradation.kernels.mixture import mixture_kernels
from datamodules.degradation.pipelines.mixture import MixtureDegradation
from datamodules.images import find_images
from datamodules.io import load_rgb, to_tensor
from lightning_modules.core.stages import read_checkpoint
from lightning_modules.mixture.enet_pretrain import ENetPretrain

REPO = Path(__file__).resolve().parents[1]
PRODUCED_BY = "python main.py fit -c configs/mixture/enet_pretrain.yaml"


@torch.no_grad()
def evaluate(system: ENetPretrain, degradation: MixtureDegradation, hr_crops: torch.Tensor) -> dict:
    """Top-1/top-3 accuracy of ``system`` on ``hr_crops`` ``(N, 3, sh, sw)`` x every kernel of ``degradation``."""
    bank = mixture_kernels(degradation.ids.tolist())
    k = bank.shape[0]
    correct1 = torch.zeros(k)
    correct3 = torch.zeros(k)
    for hr in hr_crops.split(8):
        lr = degradation.degrade(hr.repeat_interleave(k, dim=0), bank.repeat(hr.shape[0], 1, 1))
        labels = torch.arange(k).repeat(hr.shape[0])
        logits = system.classify(lr)
        top3 = logits.topk(3, dim=1).indices
        correct1 += torch.zeros(k).index_add_(0, labels, (top3[:, 0] == labels).float())
        correct3 += torch.zeros(k).index_add_(0, labels, (top3 == labels[:, None]).any(1).float())
    n = hr_crops.shape[0]
    return {"per_kernel": (correct1 / n).tolist(), "top1": float(correct1.sum() / (n * k)),
            "top3": float(correct3.sum() / (n * k)), "samples": n * k}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, evaluate, print the table and the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.enet_accuracy", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="checkpoints/mixture/enet_x2/last.ckpt", help="E-Net pre-training checkpoint")
    parser.add_argument("--images", default=str(REPO.parent / "shared/data/train/Kodak24"), help="held-out HR images")
    parser.add_argument("--crop", type=int, default=64, help="LR crop side (HR crops are crop * scale)")
    parser.add_argument("--crops", type=int, default=4, help="crops per image")
    parser.add_argument("--split-file", default="checkpoints/mixture/kernel_split.json", help="the saved kernel split")
    args = parser.parse_args(argv)

    ckpt = read_checkpoint(args.ckpt, PRODUCED_BY)
    hp = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    system = ENetPretrain(**hp)
    system.load_state_dict(ckpt["state_dict"], strict=True)
    system.eval()
    scale = system.scale
    degradation = MixtureDegradation(scale, "seen", split_file=args.split_file)
    if degradation.num_kernels != system.num_kernels:
        raise SystemExit(f"{args.ckpt} has {system.num_kernels} classes, the split {degradation.num_kernels} kernels")
    paths = find_images([args.images])
    crops = [c for p in paths for c in grid_crops(to_tensor(load_rgb(p)).float() / 255, args.crop * scale, args.crops)]
    result = evaluate(system, degradation, torch.stack(crops))
    chance = 1 / degradation.num_kernels
    k = degradation.num_kernels
    print(f"E-Net {args.ckpt}: {len(paths)} images x {args.crops} crops of {args.crop} px x {k} kernels")
    print("kernel id : " + " ".join(f"{i:4d}" for i in degradation.ids.tolist()))
    print("top-1     : " + " ".join(f"{a:4.2f}" for a in result["per_kernel"]))
    print(f"top-1 {result['top1']:.3f}, top-3 {result['top3']:.3f}, chance {chance:.3f} ({result['samples']} samples)")
    line = {"top1": round(result["top1"], 4), "top3": round(result["top3"], 4), "chance": round(chance, 4),
            "samples": result["samples"], "ckpt": args.ckpt}  # fmt: skip
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()

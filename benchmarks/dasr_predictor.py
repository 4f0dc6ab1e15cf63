"""DASR's degradation predictor on held-out images: L1 error of the 33-number vector vs predicting a constant.

    python -m benchmarks.dasr_predictor --dasr checkpoints/dasr/dasr_psnr_x4/last.ckpt [--dasr LABEL=PATH ...]
        [--images ../shared/data/train/Kodak24] [--scale 4] [--crop 32] [--crops 4] [--seed 0]

Every image of ``--images`` (default Kodak24, on which no stage trains) gives ``--crops`` HR grid crops of
``crop * scale`` px, degraded at each level (I weak, II standard, III severe) by ``DASRDegradation`` in batches of 8
(level, resize scales and modes are drawn per batch, as the official code), from the generator seeded ``--seed``.
Reported per level and over all three: the mean absolute error of each predictor's vector against the true one, and
that of two constants known before seeing any test image, from 20,000 draws of the three-level training distribution
(another seed): the mean vector, and the per-entry median (the best constant under L1). Prints a table, then one
JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import grid_crops
from datamodules.degradation.dasr_params import DASRSampler
from datamodules.degradation.dasr_vector import dasr_vector
from datamodules.degradation.pipelines import DASRDegradation
from datamodules.images import find_images
from datamodules.io import load_rgb, to_tensor
from lightning_modules.dasr.psnr import load_dasr_net

LEVELS = ("I", "II", "III")


def held_out(images: str, scale: int, crop: int, crops: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """``{level: {"lr": (N, 3, crop, crop), "vector": (N, 33)}}`` (module docstring)."""
    hr = torch.stack(
        [c for p in find_images(images) for c in grid_crops(to_tensor(load_rgb(p)).float() / 255, crop * scale, crops)]
    )
    out = {}
    for level, name in enumerate(LEVELS):
        deg = DASRDegradation(scale, level=level, sharpen_target=False, degrade_sharpened=False)
        gen = torch.Generator().manual_seed(seed + level)
        parts = [deg(hr[i : i + 8], gen) for i in range(0, len(hr), 8)]
        out[name] = {k: torch.cat([p[k] for p in parts]) for k in ("lr", "vector")}
    return out


def constants(seed: int, count: int = 20_000) -> dict[str, torch.Tensor]:
    """The mean and the per-entry median of ``count`` vectors of the three-level training distribution."""
    vectors = torch.cat(
        [
            dasr_vector(DASRSampler().sample(100, torch.Generator().manual_seed(seed + i), "cpu"))
            for i in range(count // 100)
        ]
    )
    return {"mean vector": vectors.mean(0), "median vector": vectors.median(0).values}


def main() -> None:
    """Parse arguments, score every predictor and both constants per level, print the table and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dasr", action="append", required=True, help="DASR checkpoint (PSNR or GAN stage), LABEL=PATH")
    p.add_argument("--images", default="../shared/data/train/Kodak24", help="held-out HR images")
    p.add_argument("--scale", type=int, default=4, help="SR factor of the checkpoints")
    p.add_argument("--crop", type=int, default=32, help="LR crop side")
    p.add_argument("--crops", type=int, default=4, help="crops per image")
    p.add_argument("--seed", type=int, default=0, help="seed of the test degradations (the constants use seed+1000)")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    data = held_out(args.images, args.scale, args.crop, args.crops, args.seed)
    rows: dict[str, dict[str, float]] = {}
    for name, const in constants(args.seed + 1000).items():
        rows[name] = {lv: float((d["vector"] - const).abs().mean()) for lv, d in data.items()}
    for spec in args.dasr:
        label, _, path = spec.rpartition("=")
        net = load_dasr_net(path, args.scale).eval()
        rows[label or path] = {
            lv: float((net.predict_vector(d["lr"]) - d["vector"]).abs().mean()) for lv, d in data.items()
        }
    n = len(next(iter(data.values()))["lr"])
    print(f"vector L1 (mean absolute error of 33 entries), {n} held-out crops per level, x{args.scale}")
    print(f"| predictor | {' | '.join(LEVELS)} | all |\n|---|---|---|---|---|")
    for label, r in rows.items():
        r["all"] = sum(r[lv] for lv in LEVELS) / len(LEVELS)
        print(f"| {label} | " + " | ".join(f"{r[k]:.4f}" for k in (*LEVELS, "all")) + " |")
    print(json.dumps({"crops_per_level": n, **{k: round(v["all"], 5) for k, v in rows.items()}}))


if __name__ == "__main__":
    main()

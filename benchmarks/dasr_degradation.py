"""Throughput of DASR's three-level degradation: the batched pipeline vs a per-sample loop of the same ops.

    python -m benchmarks.dasr_degradation [--batch 32] [--size 256] [--scale 4] [--repeats 3] [--devices cpu]
    python -m benchmarks.dasr_degradation --grid dasr_grid.png     # also write a picture of HR and LR per level

Per level, one draw of parameters (``DASRDegradation.sample`` with that level forced) is applied to the batch at
once (the training path, ``forward``: the same draw, noise drawn for the batch) and sample by sample (``apply`` on
each ``hr[i:i+1]`` with its own parameters: the same ops, one Python call per patch, as dataloader-side degradation
code does). Both without the USM-sharpened target (``sharpen_target=False``): ``ops.unsharp_mask`` (a separable
101-tap Gaussian, twice) is timed on its own, once. The three-level figures weight the levels' times
by DASR's probabilities 0.3 / 0.3 / 0.4. Calls are timed in interleaved rounds, median reported. Prints a table,
then one JSON line of headline figures (first device).

``--grid PATH`` writes a PNG: one row per image (Set5 from ``../shared/data/test/Set5`` if present, else the
built-in photos), columns HR, then the LR of Level-I, II and III (nearest-neighbour enlarged to the HR size).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import time_interleaved
from datamodules.degradation import ops
from datamodules.degradation.dasr_params import LEVEL_NAMES, OFFICIAL_LEVEL_PROBS
from datamodules.degradation.pipelines.dasr import DASRDegradation
from datamodules.images import find_images
from datamodules.io import load_rgb, save_png, to_tensor
from lightning_modules.core.runtime import keep_freed_memory

SET5 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "test" / "Set5"


def run(device: torch.device, batch: int, size: int, scale: int, repeats: int) -> dict:
    """Time the batched pipeline and the per-sample loop at every level on ``device``; returns the table row."""
    hr = torch.rand(batch, 3, size, size, device=device)
    fns, row = {}, {"device": str(device)}
    for level in range(3):
        deg = DASRDegradation(scale, level=level, sharpen_target=False)
        params = deg.sample(hr.shape, torch.Generator(device=device).manual_seed(level), device)
        singles = [{k: v[i : i + 1] for k, v in params.items()} for i in range(batch)]
        # the training path (``forward``: the same draw, noise drawn batched) against ``apply`` one sample at a time
        fns[f"batched_{level}"] = lambda d=deg, lv=level: d(hr, torch.Generator(device=device).manual_seed(lv))["lr"]
        fns[f"loop_{level}"] = lambda d=deg, s=singles: torch.cat(
            [d.apply(hr[i : i + 1], one)["lr"] for i, one in enumerate(s)]
        )
    with torch.no_grad():
        t = time_interleaved(fns, device, repeats)
        usm_batch = min(batch, 4)
        start = time.perf_counter()
        ops.unsharp_mask(hr[:usm_batch])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        usm_s = (time.perf_counter() - start) / usm_batch * batch
    for level in range(3):
        row[f"batched_{level}_s"] = t[f"batched_{level}"]
        row[f"loop_{level}_s"] = t[f"loop_{level}"]
    mean_batched = sum(p * t[f"batched_{lv}"] for lv, p in enumerate(OFFICIAL_LEVEL_PROBS))
    mean_loop = sum(p * t[f"loop_{lv}"] for lv, p in enumerate(OFFICIAL_LEVEL_PROBS))
    row.update(
        batched_s=mean_batched, loop_s=mean_loop, usm_s=usm_s, patches_per_s=batch / mean_batched,
        loop_patches_per_s=batch / mean_loop, speedup_vs_loop=mean_loop / mean_batched,
        with_usm_patches_per_s=batch / (mean_batched + usm_s),
    )  # fmt: skip
    return row


def grid(path: str, scale: int, size: int = 192, images: int = 4, seed: int = 0) -> Path:
    """Write the HR / Level-I / II / III picture (module docstring); returns its path."""
    sources = find_images(SET5) if SET5.is_dir() else find_images("builtin")
    crops = []
    for src in sources:
        arr = load_rgb(src)
        h, w = arr.shape[:2]
        if min(h, w) >= size:
            top, left = (h - size) // 2, (w - size) // 2
            crops.append(to_tensor(arr[top : top + size, left : left + size]).float() / 255)
        if len(crops) == images:
            break
    hr = torch.stack(crops)
    columns = [hr]
    for level in range(3):
        deg = DASRDegradation(scale, level=level, sharpen_target=False)
        lr = deg(hr, torch.Generator().manual_seed(seed + level))["lr"]
        columns.append(lr.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3))
    gap = 4
    canvas = torch.ones(3, len(crops) * (size + gap) - gap, len(columns) * (size + gap) - gap)
    for r in range(len(crops)):
        for c, column in enumerate(columns):
            y, x = r * (size + gap), c * (size + gap)
            canvas[:, y : y + size, x : x + size] = column[r]
    out = Path(path)
    save_png((canvas * 255).round().byte().permute(1, 2, 0).numpy().astype(np.uint8), out)
    print(f"grid: {out} (rows: {len(crops)} images; columns: HR, LR Level-{', Level-'.join(LEVEL_NAMES)}, x{scale})")
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (and optionally write the grid); print the table and the JSON line; return the headline."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dasr_degradation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="HR patches per batch (default: 32)")
    parser.add_argument("--size", type=int, default=256, help="HR patch side in pixels (default: 256)")
    parser.add_argument("--scale", type=int, default=4, choices=[2, 4], help="scale factor (default: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions, median reported (default: 3)")
    parser.add_argument("--devices", nargs="+", default=["cpu"], help="devices to time (default: cpu)")
    parser.add_argument("--grid", metavar="PNG", help="also write a picture of HR and LR at each level")
    args = parser.parse_args(argv)
    if args.grid:
        grid(args.grid, args.scale)
    allocator = "glibc, freed memory kept" if keep_freed_memory() else "default allocator"
    rows = [run(torch.device(d), args.batch, args.size, args.scale, args.repeats) for d in args.devices]
    print(
        f"DASR x{args.scale} degradation, batch {args.batch} of {args.size}x{args.size} HR, "
        f"{torch.get_num_threads()} threads, {allocator}; seconds per batch (median of {args.repeats})"
    )
    head = [f"{kind} {name}" for name in LEVEL_NAMES for kind in ("batch", "loop")]
    head += ["batch 3-lv", "loop 3-lv", "patches/s", "loop p/s", "vs loop", "USM s", "p/s w. USM"]
    print(f"{'device':8} " + " ".join(f"{h:>11}" for h in head))
    for r in rows:
        cells = [r[f"{kind}_{lv}_s"] for lv in range(3) for kind in ("batched", "loop")]
        cells += [r["batched_s"], r["loop_s"], r["patches_per_s"], r["loop_patches_per_s"], r["speedup_vs_loop"]]
        cells += [r["usm_s"], r["with_usm_patches_per_s"]]
        print(f"{r['device']:8} " + " ".join(f"{c:11.3f}" for c in cells))
    first = rows[0]
    headline = {
        "device": first["device"],
        "patches_per_s": round(first["patches_per_s"], 1),
        "loop_patches_per_s": round(first["loop_patches_per_s"], 1),
        "speedup_vs_loop": round(first["speedup_vs_loop"], 2),
        **{
            f"level_{name}_patches_per_s": round(args.batch / first[f"batched_{i}_s"], 1)
            for i, name in enumerate(LEVEL_NAMES)
        },
        "with_usm_patches_per_s": round(first["with_usm_patches_per_s"], 1),
    }
    print(json.dumps(headline))
    return headline


if __name__ == "__main__":
    main()

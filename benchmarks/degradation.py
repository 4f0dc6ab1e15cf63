"""Throughput of the DIV2KRK-protocol degradation pipeline: batched engine vs a per-sample Python loop.

    python -m benchmarks.degradation [--batch 64] [--size 128] [--scale 2] [--repeats 5] [--devices cpu cuda]

Both paths call the same pipeline (``ClassicalDegradation``: sample an anisotropic Gaussian with kernel noise,
block-centred; blur and decimate in one strided convolution; quantise to 8 bit); the loop calls it one sample at a
time, as CPU dataloader-side degradation code does. The "unfused" columns time the textbook form (Kornia
``filter2d`` over the whole image, then decimation), batched and per sample, to show what fusing saves. Calls are
timed in interleaved rounds and the median is reported, so load changes on a shared machine hit every column
alike. Prints a table, then one JSON line of headline figures (CPU).
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import time_interleaved
from datamodules.degradation import ops
from datamodules.degradation.pipelines import ClassicalDegradation
from datamodules.degradation.samplers import DIV2KRKKernelSampler
from lightning_modules.core.runtime import keep_freed_memory


def run(device: torch.device, batch: int, size: int, scale: int, repeats: int) -> dict:
    """Time the batched pipeline and the per-sample loops on ``device``; returns the row of the table."""
    deg = ClassicalDegradation(scale, DIV2KRKKernelSampler())
    hr = torch.rand(batch, 3, size, size, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def unfused(x: torch.Tensor) -> torch.Tensor:
        params = deg.sample(x.shape, generator, device)
        kernel = deg.kernel_sampler.kernels(params, scale)
        return ops.quantize(ops.decimate(ops.blur(x, kernel), scale, deg.phase))

    fns = {
        "batched": lambda: deg(hr, generator)["lr"],
        "unfused": lambda: unfused(hr),
        "loop": lambda: torch.cat([deg(hr[i : i + 1], generator)["lr"] for i in range(batch)]),
        "loop_unfused": lambda: torch.cat([unfused(hr[i : i + 1]) for i in range(batch)]),
    }
    with torch.no_grad():
        t = time_interleaved(fns, device, repeats)
    return {
        "device": str(device),
        **{f"{name}_s": value for name, value in t.items()},
        "patches_per_s": batch / t["batched"],
        "loop_patches_per_s": batch / t["loop"],
        "speedup_vs_loop": t["loop"] / t["batched"],
        "speedup_vs_unfused_loop": t["loop_unfused"] / t["batched"],
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table and the JSON line; return the headline figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.degradation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="HR patches per batch (default: 64)")
    parser.add_argument("--size", type=int, default=128, help="HR patch side in pixels (default: 128)")
    parser.add_argument("--scale", type=int, default=2, choices=[2, 4], help="DIV2KRK scale (default: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions, median reported (default: 5)")
    parser.add_argument(
        "--devices", nargs="+", default=None, help="devices to time (default: cpu, plus cuda when available)"
    )
    args = parser.parse_args(argv)
    allocator = "glibc, freed memory kept" if keep_freed_memory() else "default allocator"
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = [run(torch.device(d), args.batch, args.size, args.scale, args.repeats) for d in devices]
    print(
        f"DIV2KRK x{args.scale} pipeline, batch {args.batch} of {args.size}x{args.size} HR, "
        f"{torch.get_num_threads()} threads, {allocator} (lightning_modules/core/runtime.py, as main.py)"
    )
    head = ["batched s", "unfused s", "loop s", "loop unf. s", "patches/s", "vs loop", "vs unf. loop"]
    print(f"{'device':8} " + " ".join(f"{h:>12}" for h in head))
    for r in rows:
        times = " ".join(f"{r[k]:12.4f}" for k in ("batched_s", "unfused_s", "loop_s", "loop_unfused_s"))
        ratios = f"{r['speedup_vs_loop']:12.1f} {r['speedup_vs_unfused_loop']:12.1f}"
        print(f"{r['device']:8} {times} {r['patches_per_s']:12.1f} {ratios}")
    cpu = next(r for r in rows if r["device"] == "cpu") if any(r["device"] == "cpu" for r in rows) else rows[0]
    headline = {
        "speedup_vs_loop": round(cpu["speedup_vs_loop"], 2),
        "speedup_vs_unfused_loop": round(cpu["speedup_vs_unfused_loop"], 2),
        "patches_per_s": round(cpu["patches_per_s"], 1),
    }
    for r in rows:
        if r["device"] != cpu["device"]:
            headline[f"{r['device']}_patches_per_s"] = round(r["patches_per_s"], 1)
            headline[f"{r['device']}_speedup_vs_loop"] = round(r["speedup_vs_loop"], 2)
    print(json.dumps(headline))
    return headline


if __name__ == "__main__":
    main()

"""MoESR inference per image: estimation, fine-tuning and reconstruction times, peak memory; batched experts vs loop.

    python -m benchmarks.moesr [--scale 2] [--images DIR] [--images-limit N] [--finetune-iters 1000]
                               [--estimate-crop 0] [--compare-crop 64] [--repeats 3] [--device auto]
    # CPU, a few minutes:
    python -m benchmarks.moesr --finetune-iters 20 --estimate-crop 128 --images-limit 1 --compare-crop 24

Full-size networks (25 experts of 12 layers x 64 channels, ISE 64-64-128-256-512, KEN 85-50-50-3) with their
initial (random) weights: the time and memory of every step do not depend on the weight values (no step stops
early, the image sizes and iteration counts are fixed), so no trained checkpoint is needed. Images: the DIV2KRK
sample of the shared data folder (``lr_x{scale}``) or any folder of LR images.

Per image (``MoESR.choose`` / ``adapt`` / base-class tiled reconstruction, with a device synchronisation after each):

* estimate: ISE errors of all 85 grid kernels' experts on the whole LR image (or its central ``--estimate-crop``
  crop) and KEN, i.e. Eq. 10-12;
* fine-tune: ``--finetune-iters`` iterations; when fewer than the paper's 1000, the time of 1000 is extrapolated as
  ``setup + 1000 * per-iteration time`` (setup = building the crop plan, bicubic image and mask, timed on its own;
  per-iteration = (measured - setup) / iterations), and the table says which numbers are extrapolated;
* reconstruct: the fine-tuned expert on the whole image (tiled, 256-px LR tiles).

Peak memory: ``torch.cuda.max_memory_allocated`` per phase on a GPU; on the CPU the process's resident set size
sampled every 5 ms during each phase (``/proc/self/statm``), and the lifetime peak ``ru_maxrss``.

Batched vs loop: the 85 grid kernels' expert outputs on a central ``--compare-crop`` LR crop, (a) with
``grid_eval.grid_outputs`` (one ``ExpertBank`` call per input transform: 4 grouped-convolution passes) and (b) with
a Python loop over the 85 grid kernels running standalone ``ChainedVDSR`` copies of their experts (the official
code's procedure). Timed in interleaved rounds, medians reported; ``batched_vs_loop`` = loop time / batched time
(> 1: batched is faster). Both give the same images (max difference printed).

Prints a table, then one JSON line of headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import threading
import time
from pathlib import Path

import torch

from benchmarks.common import time_interleaved
from datamodules.degradation.kernels.moesr import MoESRGrid, apply_transform, invert_transform
from datamodules.images import LRFolderDataset
from datamodules.test_sets import DIV2KRKDataset
from lightning_modules.core.runtime import keep_freed_memory
from lightning_modules.moesr.finetune import FinetuneObjective
from lightning_modules.moesr.grid_eval import grid_outputs
from lightning_modules.moesr.inference import MoESR
from lightning_modules.nets.moesr import ISE, KEN, ExpertBank

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SET = REPO.parent / "shared/data/test/DIV2KRK_sample"
PAPER_ITERS = 1000
GIB = 2**30


class PeakMemory:
    """Peak memory of a phase: CUDA allocator peak on a GPU, sampled resident set size on the CPU (bytes)."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device = device
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss() -> int:
        """Current resident set size of this process in bytes."""
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self.rss()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(scale: int, device: torch.device, iters: int, estimate_crop: int, max_batch: int | None) -> MoESR:
    """MoESR with full-size stages at their initial (random) weights, on ``device``."""
    torch.manual_seed(0)
    grid = MoESRGrid(scale)
    model = MoESR(
        scale=scale, finetune_iters=iters, estimate_crop=estimate_crop, max_batch=max_batch, progress=False
    )  # fmt: skip
    model.set_stages(ExpertBank(grid.num_experts, scale, 12, 64), grid, ISE(), KEN(grid.num_kernels))
    return model.to(device).eval()


def load_images(path: Path, scale: int, limit: int) -> list[tuple[str, torch.Tensor]]:
    """``(name, (1, 3, h, w) float)`` LR images of a DIV2KRK-layout set (``lr_x{scale}``) or a folder."""
    data = DIV2KRKDataset(path, scale) if (path / f"lr_x{scale}").is_dir() else LRFolderDataset(path)
    items = [data[i] for i in range(min(limit, len(data)) if limit > 0 else len(data))]
    return [(item["name"], item["lr"][None].float() / 255) for item in items]


def time_image(model: MoESR, lr: torch.Tensor, name: str, iters: int) -> dict:
    """Estimate, fine-tune and reconstruct one image; seconds and peak memory of each phase."""
    device = lr.device
    row: dict = {"name": name, "size": f"{lr.shape[-1]}x{lr.shape[-2]}"}
    with PeakMemory(device) as mem, torch.no_grad():
        choice = model.choose(lr)
    row["estimate_s"], row["estimate_mem"] = choice.seconds, mem.peak
    # the fine-tuning set-up alone (crop plan, whole-image bicubic and mask), for the extrapolation to 1000
    _sync(device)
    t0 = time.perf_counter()
    FinetuneObjective(lr, choice.kernel[0], model.scale, max(iters, 1), intermediate_kernel=None
                      if choice.intermediate is None else choice.intermediate[0])  # fmt: skip
    _sync(device)
    row["setup_s"] = time.perf_counter() - t0
    with PeakMemory(device) as mem:
        net, seconds = model.adapt(lr, choice, 0, name)
    row["finetune_measured_s"], row["finetune_mem"] = seconds, mem.peak
    per_iter = max(seconds - row["setup_s"], 0.0) / iters if iters > 0 else 0.0
    row["per_iter_s"] = per_iter
    row["finetune_s"] = row["setup_s"] + PAPER_ITERS * per_iter if iters != PAPER_ITERS else seconds
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        sr = model._reconstruct(net, lr)
        _sync(device)
        row["reconstruct_s"] = time.perf_counter() - t0
    row["reconstruct_mem"] = mem.peak
    assert sr.shape[-2:] == (lr.shape[-2] * model.scale, lr.shape[-1] * model.scale)
    row["total_s"] = row["estimate_s"] + row["finetune_s"] + row["reconstruct_s"]
    return row


def compare_batched_loop(model: MoESR, lr: torch.Tensor, crop: int, repeats: int) -> dict:
    """Median seconds of the 85 grid outputs: one ExpertBank call per transform vs a loop over grid kernels."""
    h, w = lr.shape[-2:]
    c = min(crop, h, w)
    x = lr[..., (h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c]
    bank, grid = model.bank, model.grid
    nets = [bank.expert(e).eval() for e in range(bank.num_experts)]
    transforms, experts = grid.transform.tolist(), grid.expert_index.tolist()

    def loop() -> torch.Tensor:
        outs = [invert_transform(nets[e](apply_transform(x, t)), t) for t, e in zip(transforms, experts, strict=True)]
        return torch.stack(outs, dim=1)

    def batched() -> torch.Tensor:
        return grid_outputs(bank, grid, x)

    with torch.no_grad():
        diff = float((loop() - batched()).abs().max())
        t = time_interleaved({"batched": batched, "loop": loop}, lr.device, repeats)
    return {"crop": c, "batched_s": t["batched"], "loop_s": t["loop"], "ratio": t["loop"] / t["batched"], "diff": diff}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table and the JSON line; return the headline figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.moesr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=2, choices=[2, 4], help="SR factor (default: 2)")
    parser.add_argument("--images", type=Path, default=DEFAULT_SET, help="DIV2KRK-layout set or folder of LR images")
    parser.add_argument("--images-limit", type=int, default=0, help="first N images only (default: all)")
    parser.add_argument("--finetune-iters", type=int, default=PAPER_ITERS, help="iterations run (default: 1000)")
    parser.add_argument("--estimate-crop", type=int, default=0, help="LR crop of kernel estimation (0: whole image)")
    parser.add_argument("--max-batch", type=int, default=8, help="(image, kernel) pairs per expert/ISE call")
    parser.add_argument("--compare-crop", type=int, default=64, help="LR crop of the batched-vs-loop comparison")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the comparison (median)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    args = parser.parse_args(argv)
    allocator = "glibc, freed memory kept" if keep_freed_memory() else "default allocator"
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    model = build_model(args.scale, device, args.finetune_iters, args.estimate_crop, args.max_batch)
    images = load_images(args.images, args.scale, args.images_limit)
    rows = [time_image(model, lr.to(device), name, args.finetune_iters) for name, lr in images]
    cmp = compare_batched_loop(model, images[0][1].to(device), args.compare_crop, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"

    extrapolated = args.finetune_iters != PAPER_ITERS
    crop = f"central {args.estimate_crop}-px crop" if args.estimate_crop else "whole image"
    print(f"MoESR x{args.scale} inference on {name}, random full-size weights, {allocator}")
    note = f", * = {PAPER_ITERS} extrapolated (setup + {PAPER_ITERS} x per-iteration)" if extrapolated else ""
    print(f"estimate: {crop}; fine-tune: {args.finetune_iters} iterations measured{note}")
    mem_unit = "GPU peak GiB" if device.type == "cuda" else "RSS peak GiB"
    ft_head = f"ft {PAPER_ITERS} it"
    print(
        f"{'image':8} {'LR size':>10} {'estimate s':>11} {'ft setup s':>11} {'ft s/iter':>10} {'ft measured':>12} "
        f"{ft_head:>11}  {'recon s':>8} {'total s':>9}   {mem_unit}: est/ft/rec"
    )
    for r in rows:
        mems = "/".join(f"{r[k] / GIB:.2f}" for k in ("estimate_mem", "finetune_mem", "reconstruct_mem"))
        print(
            f"{r['name']:8} {r['size']:>10} {r['estimate_s']:11.2f} {r['setup_s']:11.3f} {r['per_iter_s']:10.4f} "
            f"{r['finetune_measured_s']:12.2f} {r['finetune_s']:11.1f}{'*' if extrapolated else ' '}"
            f"{r['reconstruct_s']:9.2f} {r['total_s']:9.1f}   {mems}"
        )
    print(
        f"grid outputs (85 kernels, {cmp['crop']}-px LR crop): batched {cmp['batched_s']:.3f} s "
        f"(4 ExpertBank calls), loop {cmp['loop_s']:.3f} s (85 expert calls): loop/batched = {cmp['ratio']:.2f}, "
        f"max |difference| {cmp['diff']:.1e}"
    )
    if device.type == "cpu":
        print(f"process peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    headline = {
        "s_per_image": round(mean("total_s"), 2),
        "estimate_s": round(mean("estimate_s"), 2),
        "finetune_s": round(mean("finetune_s"), 2),
        "reconstruct_s": round(mean("reconstruct_s"), 2),
        "finetune_s_per_iter": round(mean("per_iter_s"), 4),
        "finetune_iters_measured": args.finetune_iters,
        "finetune_extrapolated_to": PAPER_ITERS if extrapolated else None,
        "estimate_crop": args.estimate_crop,
        "peak_mem_gib": round(max(max(r[k] for k in r if k.endswith("_mem")) for r in rows) / GIB, 2),
        "batched_vs_loop": round(cmp["ratio"], 2),
        "images": len(rows),
        "scale": args.scale,
        "device": name,
    }
    print(json.dumps(headline))
    return headline


if __name__ == "__main__":
    main()

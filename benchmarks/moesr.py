"""MoESR inference per image in each inference path, against the in-run convolution peak and an official-style flow.

    python -m benchmarks.moesr [--scale 2] [--images DIR] [--images-limit N] [--finetune-iters 1000]
                               [--paths fp32,auto] [--estimate-crop 0] [--reference] [--compare-crop 64] ...
    # CPU, a few minutes:
    python -m benchmarks.moesr --finetune-iters 20 --estimate-crop 128 --images-limit 1 --compare-crop 24

Full-size networks (25 experts of 12 layers x 64 channels, ISE 64-64-128-256-512, KEN 85-50-50-3) with their
initial (random) weights: the time and memory of every step do not depend on the weight values (no step stops
early, the image sizes and iteration counts are fixed), so no trained checkpoint is needed. Images: the DIV2KRK
sample of the shared data folder (``lr_x{scale}``) or any folder of LR images.

Per image and inference path (``--paths``; ``core.precision``: ``fp32`` is this release's default, ``bf16`` the
channels-last bfloat16 path, ``auto`` the path ``resolve_path`` picks on this device: bf16 where bfloat16 is native,
else channels_last on CPUs with NCHW fp32 fine-tuning; rows are named by the choice, the JSON line's ``runs`` says
what each ran; ``MoESR.choose`` / ``adapt`` / tiled reconstruction, device synchronised after each):

* estimate: ISE errors of all 85 grid kernels' experts on the whole LR image (or its central ``--estimate-crop``
  crop) and KEN, i.e. Eq. 10-12;
* fine-tune: ``--finetune-iters`` iterations; when fewer than the paper's 1000, the time of 1000 is extrapolated as
  ``setup + 1000 * per-iteration time`` (setup = building the crop plan, bicubic image and mask, timed on its own;
  per-iteration = (measured - setup) / iterations), and the table says which numbers are extrapolated;
* reconstruct: the fine-tuned expert on the whole image (tiled, 256-px LR tiles).

Each phase's FLOPs are counted once per image (``FlopCounterMode``, multiply-add = 2; a separate, untimed pass:
estimation and reconstruction whole, fine-tuning one iteration with its backward pass) and its GFLOP/s is given as a
fraction of the **peak measured in the same run**: a 3x3 64 -> 64 convolution on a 256x256 map in every path
(``benchmarks.common.measure_peak``, as ``benchmarks.throughput``).

Official-style reference (``--reference``, on by default): the estimation written the way the official code works,
one expert at a time over the 85 grid kernels, the LR image rotated/flipped for each and the output turned back,
then ISE on it, all NCHW float32; its fine-tuning and reconstruction are the same computation as this release's
``fp32`` path (the official code rotates weights, not images, and fine-tunes one expert), so those times are taken
from the ``fp32`` row. ``vs reference`` = reference total / path total.

Peak memory: ``torch.cuda.max_memory_allocated`` per phase on a GPU; on the CPU the process's resident set size
sampled every 5 ms during each phase (``/proc/self/statm``), and the lifetime peak ``ru_maxrss``.

Batched vs loop: the 85 grid kernels' expert outputs on a central ``--compare-crop`` LR crop, (a) with
``grid_eval.grid_outputs`` (one ``ExpertBank`` call per shape class of transforms; on a CPU each expert's slots as one
batch of plain convolutions), (a') the same forced to grouped convolutions (the GPU form) and (b) with a Python loop
over the 85 grid kernels running standalone ``ChainedVDSR`` copies of their experts, all in each of ``--paths``.
Timed in interleaved rounds, medians reported; ``batched_vs_loop`` = loop time / (a) time (> 1: (a) is faster),
``grouped_vs_loop`` likewise for (a').

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
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import describe_device, measure_peak, time_interleaved
from datamodules.degradation.kernels.moesr import MoESRGrid, apply_transform, invert_transform
from datamodules.images import LRFolderDataset
from datamodules.test_sets import DIV2KRKDataset
from lightning_modules.core.precision import PATH_CHOICES, as_layout, resolve_path, to_layout
from lightning_modules.core.runtime import keep_freed_memory
from lightning_modules.moesr.finetune import FinetuneObjective
from lightning_modules.moesr.grid_eval import grid_outputs, upsample
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


def use_path(model: MoESR, path: str) -> None:
    """Switch ``model`` to inference path ``path`` (weights and the bank's grouped convolutions in its layout)."""
    model.inference_path = path
    model.apply_inference_layout()


def time_image(model: MoESR, lr: torch.Tensor, name: str, iters: int, path: str) -> dict:
    """Estimate, fine-tune and reconstruct one image in ``path``; seconds and peak memory of each phase."""
    device = lr.device
    use_path(model, path)
    lr = as_layout(lr, model.inference_path)
    row: dict = {"name": name, "size": f"{lr.shape[-1]}x{lr.shape[-2]}", "path": path}
    with torch.no_grad(), model.inference_scope(device):  # warm-up: the path's kernels chosen before timing
        model.choose(lr[..., :64, :64])
    with PeakMemory(device) as mem, torch.no_grad(), model.inference_scope(device):
        choice = model.choose(lr)
    row["estimate_s"], row["estimate_mem"] = choice.seconds, mem.peak
    row["grid_kernel"] = int(choice.grid_index[0])
    # the fine-tuning set-up alone (crop plan, whole-image bicubic and mask), for the extrapolation to 1000
    _sync(device)
    t0 = time.perf_counter()
    mid = None if choice.intermediate is None else choice.intermediate[0]
    FinetuneObjective(as_layout(lr, model.finetune_path), choice.kernel[0], model.scale, max(iters, 1), mid)
    _sync(device)
    row["setup_s"] = time.perf_counter() - t0
    with PeakMemory(device) as mem, model.inference_scope(device):
        net, seconds = model.adapt(lr, choice, 0, name)
    row["finetune_measured_s"], row["finetune_mem"] = seconds, mem.peak
    per_iter = max(seconds - row["setup_s"], 0.0) / iters if iters > 0 else 0.0
    row["per_iter_s"] = per_iter
    row["finetune_s"] = row["setup_s"] + PAPER_ITERS * per_iter if iters != PAPER_ITERS else seconds
    with PeakMemory(device) as mem, model.inference_scope(device):
        t0 = time.perf_counter()
        sr = model._reconstruct(net, lr)
        _sync(device)
        row["reconstruct_s"] = time.perf_counter() - t0
    row["reconstruct_mem"] = mem.peak
    assert sr.shape[-2:] == (lr.shape[-2] * model.scale, lr.shape[-1] * model.scale)
    row["total_s"] = row["estimate_s"] + row["finetune_s"] + row["reconstruct_s"]
    return row


def count_phase_flops(model: MoESR, lr: torch.Tensor, iters: int) -> dict[str, float]:
    """FLOPs of estimation, of 1000 (or ``iters``) fine-tuning iterations and of reconstruction (untimed pass)."""
    use_path(model, "fp32")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        choice = model.choose(lr)
    est = counter.get_total_flops()
    net = model.expert_for(int(choice.grid_index[0]))
    objective = FinetuneObjective(lr, choice.kernel[0], model.scale, 1, intermediate_kernel=None
                                  if choice.intermediate is None else choice.intermediate[0])  # fmt: skip
    with FlopCounterMode(display=False) as counter, torch.enable_grad():
        objective.losses(net.train(), 0)["total"].backward()
    per_iter = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model._reconstruct(net.eval(), lr)
    return {"estimate": est, "finetune": per_iter * PAPER_ITERS, "per_iter": per_iter,
            "reconstruct": counter.get_total_flops()}  # fmt: skip


def reference_estimate(model: MoESR, lr: torch.Tensor) -> float:
    """Seconds of the official-style estimation: one expert at a time, images transformed, NCHW float32."""
    use_path(model, "fp32")
    bank, grid, ise, ken = model.bank, model.grid, model.ise, model.ken
    x = model._estimation_input(lr)
    nets = [bank.expert(e).eval() for e in range(bank.num_experts)]  # held in memory, as the official code
    _sync(lr.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        up = upsample(x, model.scale)
        errors = []
        for t, e in zip(grid.transform.tolist(), grid.expert_index.tolist(), strict=True):
            sr = invert_transform(nets[e](apply_transform(x, t)), t)
            errors.append(ise(sr, up).square().mean(dim=(1, 2, 3)))
        ken(torch.stack(errors, dim=1))
    _sync(lr.device)
    return time.perf_counter() - t0


def compare_batched_loop(model: MoESR, lr: torch.Tensor, crop: int, repeats: int, path: str) -> dict:
    """Median seconds of the 85 grid outputs in ``path``: one ExpertBank call per shape class vs a loop over kernels."""
    h, w = lr.shape[-2:]
    c = min(crop, h, w)
    use_path(model, path)
    path = model.inference_path
    x = as_layout(lr[..., (h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c], path)
    bank, grid = model.bank, model.grid
    nets = [to_layout(bank.expert(e).eval(), path) for e in range(bank.num_experts)]
    transforms, experts = grid.transform.tolist(), grid.expert_index.tolist()

    def loop() -> torch.Tensor:
        with model.inference_scope(x.device):
            outs = [
                invert_transform(nets[e](apply_transform(x, t)), t) for t, e in zip(transforms, experts, strict=True)
            ]
        return torch.stack(outs, dim=1).float()

    def batched(per_expert: bool | None = None) -> torch.Tensor:
        with model.inference_scope(x.device):
            return grid_outputs(bank, grid, x, per_expert=per_expert).float()

    with torch.no_grad():
        diff = float((loop() - batched()).abs().max())
        fns = {"batched": batched, "grouped": lambda: batched(False), "loop": loop}
        t = time_interleaved(fns, lr.device, repeats)
    return {"crop": c, "batched_s": t["batched"], "grouped_s": t["grouped"], "loop_s": t["loop"],
            "ratio": t["loop"] / t["batched"], "grouped_ratio": t["loop"] / t["grouped"], "diff": diff}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table and the JSON line; return the headline figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.moesr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=2, choices=[2, 4], help="SR factor (default: 2)")
    parser.add_argument("--images", type=Path, default=DEFAULT_SET, help="DIV2KRK-layout set or folder of LR images")
    parser.add_argument("--images-limit", type=int, default=0, help="first N images only (default: all)")
    parser.add_argument("--finetune-iters", type=int, default=PAPER_ITERS, help="iterations run (default: 1000)")
    parser.add_argument("--paths", default="fp32,auto",
                        help=f"inference paths to time, comma-separated ({', '.join(PATH_CHOICES)}; default: "
                             "fp32,auto: the release default and this device's fast path, bf16 where bfloat16 is "
                             "native, else channels_last with fp32 fine-tuning on CPUs)")  # fmt: skip
    parser.add_argument("--estimate-crop", type=int, default=0, help="LR crop of kernel estimation (0: whole image)")
    parser.add_argument("--max-batch", type=int, default=8, help="(image, kernel) pairs per expert/ISE call")
    parser.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the official-style estimation (one expert at a time; default: on)",
    )
    parser.add_argument("--compare-crop", type=int, default=64,
                        help="LR crop of the batched-vs-loop comparison (0: skip it)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the comparison and the peak (median)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    args = parser.parse_args(argv)
    choices = [p.strip() for p in args.paths.split(",") if p.strip()]
    for p in choices:
        if p not in PATH_CHOICES:
            parser.error(f"unknown path {p!r} in --paths; choose from {', '.join(PATH_CHOICES)}")
    allocator = "glibc, freed memory kept" if keep_freed_memory() else "default allocator"
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    runs = {p: (resolve_path(p, device), resolve_path(p, device, training=True)) for p in choices}
    paths = [p for i, p in enumerate(choices) if runs[p] not in [runs[q] for q in choices[:i]]]  # distinct runs
    peak = measure_peak(256, device, args.repeats)
    model = build_model(args.scale, device, args.finetune_iters, args.estimate_crop, args.max_batch)
    images = load_images(args.images, args.scale, args.images_limit)
    rows, flops, reference = [], {}, {}
    for name, lr in images:
        lr = lr.to(device)
        flops[name] = count_phase_flops(model, lr, args.finetune_iters)
        for p in paths:
            rows.append(time_image(model, lr, name, args.finetune_iters, p))
        if args.reference:
            reference[name] = reference_estimate(model, lr)
    cmp = {p: compare_batched_loop(model, images[0][1].to(device), args.compare_crop, args.repeats, p)
           for p in paths} if args.compare_crop > 0 else {}  # fmt: skip
    dev = describe_device(device)
    for r in rows:
        f = flops[r["name"]]
        for phase in ("estimate", "finetune", "reconstruct"):
            r[f"{phase}_peak"] = f[phase] / r[f"{phase}_s"] / 1e9 / peak["peak_gflops"]
    print_table(args, rows, flops, reference, peak, cmp, dev, allocator, device)
    if "auto" in paths:
        inf, ft = runs["auto"]
        print(f"auto on this device: {inf}" + (f" (fine-tuning {ft})" if ft != inf else ""))
    return headline(args, rows, reference, peak, cmp, dev, paths, runs)


def print_table(args, rows, flops, reference, peak, cmp, dev, allocator, device) -> None:
    """The per-image, per-path table with the peak fractions, the reference and the comparison."""
    extrapolated = args.finetune_iters != PAPER_ITERS
    crop = f"central {args.estimate_crop}-px crop" if args.estimate_crop else "whole image"
    print(f"MoESR x{args.scale} inference on {dev}, random full-size weights, {allocator}")
    print(f"in-run peak: 3x3 64->64 conv, {peak['peak_gflops']:.0f} GFLOP/s ({peak['peak_path']}); "
          + ", ".join(f"{p} {g:.0f}" for p, g in peak["gflops"].items()))  # fmt: skip
    note = f", * = {PAPER_ITERS} extrapolated (setup + {PAPER_ITERS} x per-iteration)" if extrapolated else ""
    print(f"estimate: {crop}; fine-tune: {args.finetune_iters} iterations measured{note}")
    mem_unit = "GPU peak GiB" if device.type == "cuda" else "RSS peak GiB"
    print(f"{'image':8} {'LR size':>10} {'path':>13} {'estimate s':>11} {'ft s/iter':>10} {'ft 1000 it':>11}  "
          f"{'recon s':>8} {'total s':>9}  {'peak fraction est/ft/rec':>24}  {mem_unit}: est/ft/rec")  # fmt: skip
    for r in rows:
        mems = "/".join(f"{r[k] / GIB:.2f}" for k in ("estimate_mem", "finetune_mem", "reconstruct_mem"))
        fr = "/".join(f"{r[k]:.2f}" for k in ("estimate_peak", "finetune_peak", "reconstruct_peak"))
        print(f"{r['name']:8} {r['size']:>10} {r['path']:>13} {r['estimate_s']:11.2f} {r['per_iter_s']:10.4f} "
              f"{r['finetune_s']:11.1f}{'*' if extrapolated else ' '}{r['reconstruct_s']:9.2f} {r['total_s']:9.1f}  "
              f"{fr:>24}  {mems}")  # fmt: skip
    for name, f in flops.items():
        print(f"{name}: GFLOP estimate {f['estimate'] / 1e9:.0f}, fine-tune {f['per_iter'] / 1e9:.1f} per iteration, "
              f"reconstruct {f['reconstruct'] / 1e9:.0f}")  # fmt: skip
    for name, sec in reference.items():
        fp32 = next((r for r in rows if r["name"] == name and r["path"] == "fp32"), None)
        ref = sec + fp32["finetune_s"] + fp32["reconstruct_s"] if fp32 else None
        total = f"; total with the fp32 fine-tuning and reconstruction {ref:.1f} s" if fp32 else ""  # noqa: E501
        print(f"{name}: official-style estimation (85 expert calls, NCHW fp32) {sec:.2f} s{total}")
    for p, c in cmp.items():
        print(f"grid outputs (85 kernels, {c['crop']}-px LR crop, {p}): grid_outputs {c['batched_s']:.3f} s, "
              f"all-grouped {c['grouped_s']:.3f} s, loop {c['loop_s']:.3f} s (85 expert calls): loop/grid_outputs "
              f"= {c['ratio']:.2f}, loop/grouped = {c['grouped_ratio']:.2f}, max |diff| {c['diff']:.1e}")  # fmt: skip
    if device.type == "cpu":
        print(f"process peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


def headline(args, rows, reference, peak, cmp, dev, paths, runs) -> dict:
    """The JSON line: per path the mean seconds per image and phase, peak fractions; ratios to fp32 and reference."""

    def mean(path: str, key: str) -> float:
        return statistics.fmean(r[key] for r in rows if r["path"] == path)

    out: dict = {"scale": args.scale, "images": len({r["name"] for r in rows}), "device": dev,
                 "peak_gflops": round(peak["peak_gflops"], 1), "peak_path": peak["peak_path"],
                 "runs": {p: {"inference": runs[p][0], "finetune": runs[p][1]} for p in paths}}  # fmt: skip
    for p in paths:
        out[p] = {k: round(mean(p, k), 3) for k in ("total_s", "estimate_s", "finetune_s", "reconstruct_s",
                  "per_iter_s", "estimate_peak", "finetune_peak", "reconstruct_peak")}  # fmt: skip
        out[p]["peak_mem_gib"] = round(max(max(r[k] for k in r if k.endswith("_mem")) for r in rows if r["path"] == p)
                                       / GIB, 2)  # fmt: skip
    if "fp32" in paths:
        for p in paths:
            out[p]["speedup_vs_fp32"] = round(out["fp32"]["total_s"] / out[p]["total_s"], 2)
        if reference:
            ref = statistics.fmean(reference.values()) + out["fp32"]["finetune_s"] + out["fp32"]["reconstruct_s"]
            out["reference_s"] = round(ref, 2)
            for p in paths:
                out[p]["vs_reference"] = round(ref / out[p]["total_s"], 2)
    if len(paths) > 1:
        kernels = {}
        for r in rows:
            kernels.setdefault(r["name"], set()).add(r["grid_kernel"])
        out["choice_differs"] = sum(len(v) > 1 for v in kernels.values())
    out.update({"finetune_iters_measured": args.finetune_iters, "estimate_crop": args.estimate_crop,
                "batched_vs_loop": {p: round(c["ratio"], 2) for p, c in cmp.items()},
                "grouped_vs_loop": {p: round(c["grouped_ratio"], 2) for p, c in cmp.items()}})  # fmt: skip
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

"""Helpers several benchmarks share (timing, crops); itself not a benchmark."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.core.cli import device_name
from lightning_modules.core.precision import (
    INFERENCE_PATHS,
    as_layout,
    inference_context,
    native_bf16,
    to_layout,
)

PEAK_CHANNELS = 64
PEAK_PATHS = (*INFERENCE_PATHS, "bf16_nchw")  # bf16_nchw: for information (NCHW weights and input under autocast)


def describe_device(device: torch.device) -> str:
    """One line naming what a benchmark ran on (``core.cli.device_name``), CPU threads and ISA, bfloat16 support."""
    bf16 = "bfloat16 native" if native_bf16(device) else "bfloat16 emulated"
    if device.type == "cuda":
        return f"{device_name(device)}, {bf16}"
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{device_name(device)}, {torch.get_num_threads()} threads, torch ISA {isa}, {bf16}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds (load changes hit all alike)."""
    for fn in fns.values():  # warm-up
        fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def grid_crops(img: torch.Tensor, size: int, count: int) -> list[torch.Tensor]:
    """Up to ``count`` non-overlapping ``size`` x ``size`` crops of ``(3, H, W)`` on a regular grid."""
    _, h, w = img.shape
    ys = range(0, h - size + 1, size)
    xs = range(0, w - size + 1, size)
    crops = [img[:, y : y + size, x : x + size] for y in ys for x in xs]
    step = max(1, len(crops) // count)
    return crops[::step][:count]


def rand_on(*shape: int, device: torch.device, seed: int = 0) -> Tensor:
    """Seeded uniform ``[0, 1)`` tensor (drawn on the CPU, the same on every device), moved to ``device``."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(device)


def make_call(net: nn.Module, inputs: tuple, layout: str, precision: str, device: torch.device) -> Callable[[], object]:
    """A call of a copy of ``net``, weights and 4-D inputs in ``layout``'s format, under ``precision``'s autocast."""
    net = to_layout(copy.deepcopy(net), layout)
    args = tuple(as_layout(a, layout) if isinstance(a, Tensor) else a for a in inputs)

    def call() -> object:
        with torch.inference_mode(), inference_context(precision, device):
            return net(*args)

    return call


def count_flops(call: Callable[[], object]) -> tuple[int, object]:
    """FLOPs of one call as ``FlopCounterMode`` counts them (multiply-add = 2), and its output."""
    with FlopCounterMode(display=False) as counter:
        out = call()
    return counter.get_total_flops(), out


def peak_paths(device: torch.device) -> tuple[str, ...]:
    """The peak convolution's paths: every inference path, plus bf16 NCHW where bfloat16 is native.

    Where bfloat16 is emulated, one bf16 NCHW call takes ~15 s on 2 AVX2 cores (0.3 GFLOP/s) and says nothing new.
    """
    return PEAK_PATHS if native_bf16(device) else INFERENCE_PATHS


def measure_peak(size: int, device: torch.device, repeats: int, paths: tuple[str, ...] | None = None) -> dict:
    """GFLOP/s of a 3x3 64 -> 64 convolution on ``(1, 64, size, size)`` per path (``peak_paths``); peak = the best."""
    torch.manual_seed(0)
    conv = nn.Conv2d(PEAK_CHANNELS, PEAK_CHANNELS, 3, padding=1).to(device).eval()
    x = rand_on(1, PEAK_CHANNELS, size, size, device=device)
    flops = 2 * PEAK_CHANNELS * PEAK_CHANNELS * 9 * size * size
    calls = {
        p: make_call(conv, (x,), "fp32" if p == "bf16_nchw" else p, "bf16" if p == "bf16_nchw" else p, device)
        for p in (paths or peak_paths(device))
    }
    counted, _ = count_flops(calls["fp32"])
    seconds = time_interleaved(calls, device, repeats)
    gflops = {p: flops / t / 1e9 for p, t in seconds.items()}
    best = max(gflops, key=gflops.__getitem__)
    return {"size": size, "flops": flops, "flops_counted": counted, "seconds": seconds, "gflops": gflops,
            "peak_gflops": gflops[best], "peak_path": best}  # fmt: skip

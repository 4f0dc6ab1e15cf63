"""Helpers several benchmarks share (timing, crops); itself not a benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


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

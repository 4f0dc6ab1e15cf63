"""KOALAnet's per-pixel local filtering: ours (a loop over taps) vs the straightforward ``F.unfold`` form; inference.

    python -m benchmarks.koalanet [--repeats 3] [--devices cpu cuda] [--skip-net]

Cases, at the paper's sizes (a 100x100 LR, batch 1, float32):

* ``down_x4``: 20x20 per-LR-pixel kernels applied to the 400x400 HR with stride 4 (``local_downsample``);
* ``up_x4``: 5x5 per-pixel filters for each of the 16 sub-pixels, pixel-shuffled (``local_upsample``);
* ``feat_7x7``: a 7x7 per-pixel filter shared by 64 feature channels (``local_filter``, the KOALA module);
* ``koalanet_x4``: full inference, downsampling + upsampling net (the paper: 0.45 s per 100x100 LR on a Titan RTX).

Each op is run forward (``no_grad``) and forward + backward (``out.sum().backward()``). Every measurement runs in its
own process. CPU peak: the kernel's resident high-water mark ``VmHWM`` is reset to the current resident size just
before the call (``5`` written to ``/proc/self/clear_refs``), and the peak is ``VmHWM`` after the call minus the
resident size before it: the extra memory the call needed beyond its inputs. (``ru_maxrss`` would not do: Linux
carries the parent's high-water mark across ``fork``/``exec``.) CUDA: ``max_memory_allocated`` minus the memory
allocated before the call. Peaks are also given as multiples of the op's output size. Time: median of ``--repeats``
calls after the measured one. The unfold outputs are checked against ours first (largest difference 1.5e-4 on
sums of up to 400 products of values in [0, 1]: float32 rounding). Prints a table, then one JSON line of headline
figures (per device; CPU keys unprefixed).

Measured (1 CPU thread, OMP_NUM_THREADS=1, with background training on the other core; peak extra MB, forward /
forward + backward; output sizes 0.11, 1.83 and 2.44 MB):

* ``down_x4``: ours 1.8 / 22 MB (16 x / 192 x the output; the backward's 16 MB is the kernels' own gradient), unfold
  92 / 153 MB; ours 0.010 / 0.042 s, unfold 0.060 / 0.127 s;
* ``up_x4``: ours 3.7 / 28 MB, unfold 50 / 104 MB; ours 0.0045 / 0.016 s, unfold 0.028 / 0.086 s;
* ``feat_7x7``: ours 5.1 / 31 MB, unfold 241 / 364 MB; ours 0.0055 / 0.032 s, unfold 0.154 / 0.294 s;
* ``koalanet_x4`` inference of a 100x100 LR: 0.40 s, 105 MB above the weights and input.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_modules.nets.koalanet import KOALADownsamplingNet, KOALAUpsamplingNet
from lightning_modules.nets.layers import local_downsample, local_filter, local_upsample

REPO = Path(__file__).resolve().parents[1]
LR_SIDE = 100
OPS = ("down_x4", "up_x4", "feat_7x7")


def _unfold_filter(x: torch.Tensor, f: torch.Tensor, k: int, stride: int, pad: int) -> torch.Tensor:
    """The textbook form: ``(B, C k^2, H W)`` columns times the per-pixel filters, summed over the taps."""
    b, c = x.shape[:2]
    cols = F.unfold(F.pad(x, (pad,) * 4), k, stride=stride)
    return (cols.view(b, c, k * k, *f.shape[-2:]) * f.unsqueeze(1)).sum(2)


def _unfold_upsample(lr: torch.Tensor, f: torch.Tensor, k: int, s: int) -> torch.Tensor:
    b, c, h, w = lr.shape
    cols = F.unfold(F.pad(lr, (k // 2,) * 4), k).view(b, c, k * k, 1, h, w)
    out = (cols * f.view(b, 1, k * k, s * s, h, w)).sum(2)
    return F.pixel_shuffle(out.reshape(b, c * s * s, h, w), s)


def _inputs(case: str, side: int, device: torch.device, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = {
        "down_x4": ((1, 3, 4 * side, 4 * side), (1, 400, side, side)),
        "up_x4": ((1, 3, side, side), (1, 400, side, side)),
        "feat_7x7": ((1, 64, side, side), (1, 49, side, side)),
    }[case]
    return tuple(torch.rand(s, generator=gen).to(device).requires_grad_(grad) for s in shapes)  # type: ignore[return-value]


def _op(case: str, impl: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    ours = {
        "down_x4": lambda x, f: local_downsample(x, f, 20, 4),
        "up_x4": lambda x, f: local_upsample(x, f, 5, 4),
        "feat_7x7": lambda x, f: local_filter(x, f, 7),
    }
    unfold = {
        "down_x4": lambda x, f: _unfold_filter(x, f, 20, 4, 8),
        "up_x4": lambda x, f: _unfold_upsample(x, f, 5, 4),
        "feat_7x7": lambda x, f: _unfold_filter(x, f, 7, 1, 3),
    }
    return (ours if impl == "ours" else unfold)[case]


def _status_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process from ``/proc/self/status``, in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _child(case: str, impl: str, mode: str, device_name: str, repeats: int) -> dict:
    """Measure one call in this (fresh) process; returns peak extra MB, output MB and median seconds."""
    device = torch.device(device_name)
    grad = mode == "train"
    if case == "koalanet_x4":
        down, up = KOALADownsamplingNet(4).to(device).eval(), KOALAUpsamplingNet(4).to(device).eval()
        lr = torch.rand(1, 3, LR_SIDE, LR_SIDE, device=device)

        def call() -> torch.Tensor:
            with torch.no_grad():
                return up(lr, down(lr))

        with torch.no_grad():
            up(lr[..., :8, :8], down(lr[..., :8, :8]))  # warm-up
    else:
        op = _op(case, impl)
        op(*_inputs(case, 4, device, grad))  # warm-up on a tiny input
        x, f = _inputs(case, LR_SIDE, device, grad)

        def call() -> torch.Tensor:
            with torch.set_grad_enabled(grad):
                out = op(x, f)
                if grad:
                    out.sum().backward()
                    x.grad = f.grad = None
            return out

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        _reset_peak()
        before = _status_mb("VmRSS")
    out = call()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20 - before
    else:
        peak = _status_mb("VmHWM") - before
    out_mb = out.numel() * out.element_size() / 2**20
    del out
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"peak_mb": peak, "out_mb": out_mb, "s": statistics.median(times)}


def _measure(case: str, impl: str, mode: str, device: str, repeats: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.koalanet", "--child", case, impl, mode, device, "--repeats", str(repeats)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_agreement() -> float:
    """Largest absolute difference between ours and the unfold form over the three ops (paper sizes, CPU)."""
    worst = 0.0
    with torch.no_grad():
        for case in OPS:
            x, f = _inputs(case, LR_SIDE, torch.device("cpu"), False)
            worst = max(worst, (_op(case, "ours")(x, f) - _op(case, "unfold")(x, f)).abs().max().item())
    return worst


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table and the JSON line; return the headline figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.koalanet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the measured one (default: 3)")
    parser.add_argument("--devices", nargs="+", default=None, help="devices (default: cpu, plus cuda if available)")
    parser.add_argument("--skip-net", action="store_true", help="skip the full-network inference case")
    parser.add_argument("--child", nargs=4, metavar=("CASE", "IMPL", "MODE", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = _child(*args.child, repeats=args.repeats)
        print(json.dumps(result))
        return result

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    diff = _check_agreement()
    print(f"KOALAnet local filtering on a {LR_SIDE}x{LR_SIDE} LR, batch 1, float32, {torch.get_num_threads()} threads")
    print(f"ours vs unfold, largest absolute difference: {diff:.2e}")
    print(f"{'device':7} {'case':12} {'mode':6} {'impl':7} {'time s':>9} {'peak MB':>9} {'x output':>9}")
    rows = []
    cases = [(c, i, m) for c in OPS for m in ("fwd", "train") for i in ("ours", "unfold")]
    if not args.skip_net:
        cases.append(("koalanet_x4", "ours", "fwd"))
    for device in devices:
        for case, impl, mode in cases:
            r = {
                "device": device,
                "case": case,
                "impl": impl,
                "mode": mode,
                **_measure(case, impl, mode, device, args.repeats),
            }
            rows.append(r)
            ratio = r["peak_mb"] / r["out_mb"]
            print(f"{device:7} {case:12} {mode:6} {impl:7} {r['s']:9.4f} {r['peak_mb']:9.1f} {ratio:9.1f}", flush=True)
    headline: dict = {"max_abs_diff_vs_unfold": float(f"{diff:.2e}")}
    for r in rows:
        prefix = "" if r["device"] == "cpu" else f"{r['device']}_"
        key = f"{prefix}{r['case']}_{r['mode']}_{r['impl']}"
        headline[f"{key}_peak_mb"] = round(r["peak_mb"], 1)
        headline[f"{key}_s"] = round(r["s"], 4)
    print(json.dumps(headline))
    return headline


if __name__ == "__main__":
    main()

"""Cost of DASR against one SRResNet expert (MSRResNet): FLOPs, parameters and latency, next to the paper's Table 2.

    python -m benchmarks.dasr_cost [--height 339] [--width 510] [--size N] [--repeats 5] [--flops-size 256]
                                   [--threads T] [--devices cpu cuda] [--skip-latency]

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors (exact counts, nothing computed) for one
  ``--flops-size`` square **LR** input at x4; reported as multiply-accumulates (FLOPs / 2), which is what the
  paper's "FLOPs" are (thop/ptflops; Table 2 uses 256x256 inputs: MSRResNet 166 G, DASR 184 G, of which the
  predictor and weighting module 18 G).
* Parameters: trainable parameters (paper: 1.52 M and 8.07 M; ours 8.056 M, the paper adding its rounded parts).
* Latency: median of ``--repeats`` timed calls (interleaved rounds, after a warm-up) on one ``--height`` x
  ``--width`` LR image (the paper: DIV2K validation, "most LR inputs 510x339", V100: DASR 142 ms vs SRResNet
  113 ms, ratio 1.26) under ``torch.inference_mode``. ``dasr`` is the whole network (predictor, weighting module,
  mixing, generator); ``generator`` the dynamic generator with a precomputed routing. Randomly initialised weights
  (the cost does not depend on their values).

Prints a table, then one JSON line of headline figures (the first device timed).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import time_interleaved
from lightning_modules.core.runtime import keep_freed_memory
from lightning_modules.nets.dasr import DASRNet, DegradationPredictor, MSRResNet, WeightingModule

SCALE = 4
PAPER = {
    "msrresnet": {"gmacs": 166.0, "mparams": 1.52, "latency_ms": 113.0},
    "dasr": {"gmacs": 184.0, "mparams": 8.07, "latency_ms": 142.0},
    "predictor+weighting": {"gmacs": 18.0, "mparams": 0.47, "latency_ms": 18.0},
}


def _gmacs(build, side: int) -> float:
    """Multiply-accumulates (G) of one forward pass of ``build()`` on a ``(1, 3, side, side)`` input, on meta."""
    with torch.device("meta"):
        net = build()
        with FlopCounterMode(display=False) as counter:
            net(torch.empty(1, 3, side, side))
    return counter.get_total_flops() / 2 / 1e9


def cost_table(flops_side: int) -> dict[str, dict[str, float]]:
    """GMACs at ``flops_side`` and parameters (M) of MSRResNet, DASR and its predictor + weighting module (x4)."""
    builders = {
        "msrresnet": lambda: MSRResNet(scale=SCALE),
        "dasr": lambda: DASRNet(scale=SCALE),
        "predictor+weighting": lambda: nn.Sequential(DegradationPredictor(), WeightingModule()),
    }
    rows = {}
    for name, build in builders.items():
        with torch.device("meta"):
            params = sum(p.numel() for p in build().parameters())
        rows[name] = {"gmacs": _gmacs(build, flops_side), "mparams": params / 1e6}
    return rows


def latency(device: torch.device, height: int, width: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per call of DASR, its generator alone, and MSRResNet on one LR image."""
    torch.manual_seed(0)
    dasr = DASRNet(scale=SCALE).to(device).eval()
    plain = MSRResNet(scale=SCALE).to(device).eval()
    lr = torch.rand(1, 3, height, width, device=device)
    with torch.inference_mode():
        routing = dasr.routing(dasr.predict_vector(lr))
        fns = {
            "dasr": lambda: dasr(lr),
            "generator": lambda: dasr.generator(lr, routing),
            "msrresnet": lambda: plain(lr),
        }
        seconds = time_interleaved(fns, device, repeats)
    return {f"{name}_ms": 1e3 * s for name, s in seconds.items()}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table and the JSON line; return the headline figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dasr_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=339, help="LR height for the latency (default: 339)")
    parser.add_argument("--width", type=int, default=510, help="LR width for the latency (default: 510)")
    parser.add_argument("--size", type=int, default=None, help="square LR side, overrides --height/--width")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions, median reported (default: 5)")
    parser.add_argument("--flops-size", type=int, default=256, help="square LR side for FLOPs (default: 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--devices", nargs="+", default=None, help="devices to time (default: cpu, plus cuda when available)"
    )
    parser.add_argument("--skip-latency", action="store_true", help="only FLOPs and parameters")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (args.size, args.size) if args.size else (args.height, args.width)
    allocator = "glibc, freed memory kept" if keep_freed_memory() else "default allocator"

    costs = cost_table(args.flops_size)
    print(f"x{SCALE}, FLOPs as multiply-accumulates on one {args.flops_size}x{args.flops_size} LR input (paper: 256)")
    print(f"{'network':22} {'GMACs':>9} {'paper':>7} {'M params':>9} {'paper':>7}")
    for name, row in costs.items():
        paper = PAPER[name]
        print(f"{name:22} {row['gmacs']:9.2f} {paper['gmacs']:7.0f} {row['mparams']:9.3f} {paper['mparams']:7.2f}")
    headline: dict = {
        "dasr_gmacs": round(costs["dasr"]["gmacs"], 2),
        "msrresnet_gmacs": round(costs["msrresnet"]["gmacs"], 2),
        "dasr_mparams": round(costs["dasr"]["mparams"], 3),
        "msrresnet_mparams": round(costs["msrresnet"]["mparams"], 3),
        "flops_side": args.flops_size,
    }

    if not args.skip_latency:
        devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
        print(
            f"\nlatency, one {width}x{height} LR image (W x H), median of {args.repeats}, "
            f"{torch.get_num_threads()} CPU threads, {allocator}; paper (V100, 510x339): DASR 142 ms, SRResNet 113 ms"
        )
        print(f"{'device':8} {'dasr ms':>10} {'gen. ms':>10} {'msrres. ms':>10} {'ratio':>7} {'paper':>7}")
        for i, dev in enumerate(devices):
            t = latency(torch.device(dev), height, width, args.repeats)
            ratio = t["dasr_ms"] / t["msrresnet_ms"]
            paper_ratio = PAPER["dasr"]["latency_ms"] / PAPER["msrresnet"]["latency_ms"]
            print(
                f"{dev:8} {t['dasr_ms']:10.1f} {t['generator_ms']:10.1f} {t['msrresnet_ms']:10.1f} "
                f"{ratio:7.2f} {paper_ratio:7.2f}"
            )
            prefix = "" if i == 0 else f"{dev}_"
            headline.update(
                {
                    f"{prefix}dasr_ms": round(t["dasr_ms"], 1),
                    f"{prefix}msrresnet_ms": round(t["msrresnet_ms"], 1),
                    f"{prefix}latency_ratio": round(ratio, 3),
                }
            )
        headline["latency_size"] = [height, width]
    print(json.dumps(headline))
    return headline


if __name__ == "__main__":
    main()

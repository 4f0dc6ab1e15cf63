"""Inference throughput of every network: FLOPs per pixel, GFLOP/s in each inference path, fraction of an in-run peak.

    python -m benchmarks.throughput [--scale 2] [--networks expert_bank,ise,...] [--repeats 3] [--threads N]
                                    [--device auto] [--peak-size 256] [--bank-size 64] [--expert-size 128] ...
    # one CPU thread:
    OMP_NUM_THREADS=1 python -m benchmarks.throughput --threads 1

FLOPs: what ``torch.utils.flop_counter.FlopCounterMode`` counts in one fp32 call, a multiply-add counting as **2**
FLOPs (a 3x3 ``Cin -> Cout`` convolution: ``2 Cin Cout 9`` per output position). It counts convolutions (transposed
and grouped too), matrix products and einsums; element-wise work (activations, additions, biases, bicubic
interpolation, softmax, FFTs, KOALAnet's per-pixel filtering loops) is **not** counted, so the GFLOP/s of a network
spending time there understates its busy time. Per pixel: the call's FLOPs over its output pixels (``per = out px``:
batch x H x W of the SR output, every slot of the expert bank, one SR image for the mixture branches) or, for
networks whose output is not an image, over its input pixels (``in px``) or samples (KEN).

Inference paths (``lightning_modules.core.precision``): ``fp32`` (NCHW), ``channels_last`` (fp32 NHWC) and ``bf16``
(channels-last under a bfloat16 autocast), entered exactly as the systems do (``to_layout``, ``as_layout``,
``inference_context``, ``torch.inference_mode``); ``--paths`` picks them (default: all three where bfloat16 is
native, else fp32 and channels_last: emulated bfloat16 runs at a tenth of fp32's speed, and the peak shows it).
Each network is built at the paper's size with random weights (``torch.manual_seed(0)``, eval mode: speed does not
depend on the weights), one copy per path; the paths are timed in interleaved rounds
(``benchmarks.common.time_interleaved``, median of ``--repeats``), GFLOP/s = FLOPs / seconds. A path that raises is
reported as ``n/a (reason)``.

Peak: a 3x3 64 -> 64 convolution (padding 1) on a ``(1, 64, S, S)`` map (``--peak-size``, 256), 2 * 64 * 64 * 9 * S^2
FLOPs (checked against ``FlopCounterMode``), timed in the three paths and, where bfloat16 is native, bf16 NCHW; the
peak is the best of them.
``best/peak`` = a network's best path GFLOP/s over it: the share of this machine's attainable convolution speed that
the network reaches (above 1 where its layers, e.g. wider convolutions, run more efficiently than the reference).

Prints the tables, then one JSON line of headline figures (``main`` returns it with the per-network details).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from benchmarks.common import (
    PEAK_CHANNELS,
    count_flops,
    describe_device,
    make_call,
    measure_peak,
    time_interleaved,
)
from benchmarks.common import rand_on as _rand
from datamodules.degradation.kernels.moesr import MoESRGrid
from lightning_modules.core.precision import INFERENCE_PATHS, native_bf16
from lightning_modules.core.runtime import keep_freed_memory
from lightning_modules.kenet.estimator import KENET_KERNEL_SIZES
from lightning_modules.nets.dasr import DASRNet, MSRResNet
from lightning_modules.nets.kenet import KENet
from lightning_modules.nets.koalanet import KOALADownsamplingNet, KOALAUpsamplingNet
from lightning_modules.nets.mixture import ENet, MixtureBranches
from lightning_modules.nets.moesr import ISE, KEN, ExpertBank
from lightning_modules.nets.usrnet import USRNet

DASR_SCALE = 4  # configs/dasr/*.yaml and the paper
KOALA_SCALE = 4  # the paper's timing (100x100 LR, x4)
KOALA_KERNEL = 20


@dataclass
class Case:
    """One network: ``build()`` -> (module, call arguments); ``per``: ``"out px"``, ``"in px"`` or ``"sample"``."""

    build: Callable[[], tuple[nn.Module, tuple]]
    input: str
    per: str = "out px"


def cases(args: argparse.Namespace, device: torch.device) -> dict[str, Case]:
    """Every network at the paper's size with its realistic input (built lazily)."""
    s, dev = args.scale, device
    n, b = args.slots, args.bank_size
    lr_side, kenet_k = args.lr_size, KENET_KERNEL_SIZES[s]

    def bank() -> tuple[nn.Module, tuple]:
        lr = _rand(1, 3, b, b, device=dev)
        return ExpertBank(25, s, 12, 64), (lr[:, None].expand(1, n, 3, b, b), torch.arange(n, device=dev) % 25)

    def expert() -> tuple[nn.Module, tuple]:
        return ExpertBank(25, s, 12, 64).expert(0), (_rand(1, 3, args.expert_size, args.expert_size, device=dev),)

    def ise() -> tuple[nn.Module, tuple]:
        shape = (args.ise_batch, 3, args.ise_size, args.ise_size)
        return ISE(), (_rand(*shape, device=dev), _rand(*shape, device=dev, seed=1))

    def ken() -> tuple[nn.Module, tuple]:
        num = MoESRGrid(s).num_kernels
        return KEN(num), (_rand(args.ise_batch, num, device=dev),)

    def usrnet() -> tuple[nn.Module, tuple]:
        k = _rand(1, kenet_k, kenet_k, device=dev, seed=1)
        side = args.usrnet_size
        return USRNet(8, 64, (64, 128, 256, 512), 2), (_rand(1, 3, side, side, device=dev), k / k.sum(), s, 0.0)

    def koala_up() -> tuple[nn.Module, tuple]:
        side = args.koala_size
        raw = _rand(1, KOALA_KERNEL**2, side, side, device=dev, seed=1)
        return KOALAUpsamplingNet(KOALA_SCALE), (_rand(1, 3, side, side, device=dev), raw)

    def single(net: Callable[[], nn.Module], shape: tuple[int, ...]) -> Callable[[], tuple[nn.Module, tuple]]:
        return lambda: (net(), (_rand(*shape, device=dev),))

    lr, y = (1, 3, lr_side, lr_side), (1, 1, lr_side, lr_side)
    dasr = (1, 3, args.dasr_size, args.dasr_size)
    koala = (1, 3, args.koala_size, args.koala_size)
    return {
        "expert_bank": Case(bank, f"{n} slots x 3x{b}x{b}, x{s}"),
        "expert": Case(expert, f"1x3x{args.expert_size}x{args.expert_size}, x{s}"),
        "ise": Case(ise, f"2 x {args.ise_batch}x3x{args.ise_size}x{args.ise_size}", "in px"),
        "ken": Case(ken, f"{args.ise_batch}x{MoESRGrid(s).num_kernels} errors", "sample"),
        "enet": Case(single(lambda: ENet(4, (32, 64, 128, 256)), y), _shape(y), "in px"),
        "branches": Case(single(lambda: MixtureBranches(s, 4, 64, 9, 8), y), f"{_shape(y)}, x{s}"),
        "kenet": Case(single(lambda: KENet(kenet_k, 3, 64, 1024), lr), _shape(lr), "in px"),
        "usrnet": Case(usrnet, f"1x3x{args.usrnet_size}x{args.usrnet_size} + {kenet_k}x{kenet_k} kernel, x{s}"),
        "dasr": Case(single(lambda: DASRNet(64, 16, 5, DASR_SCALE), dasr), f"{_shape(dasr)}, x{DASR_SCALE}"),
        "msrresnet": Case(single(lambda: MSRResNet(64, 16, DASR_SCALE), dasr), f"{_shape(dasr)}, x{DASR_SCALE}"),
        "koala_down": Case(single(lambda: KOALADownsamplingNet(KOALA_SCALE), koala), _shape(koala), "in px"),
        "koala_up": Case(koala_up, f"{_shape(koala)} + 400 kernels, x{KOALA_SCALE}"),
    }


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _reason(exc: BaseException) -> str:
    msg = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {msg[:70]}"


def default_paths(device: torch.device) -> tuple[str, ...]:
    """Every inference path where bfloat16 is native, else fp32 and channels_last.

    Where bfloat16 is emulated the peak convolution still shows its cost; every network in it took 10 of the 11
    minutes of a run on 2 AVX2 cores.
    """
    return INFERENCE_PATHS if native_bf16(device) else ("fp32", "channels_last")


def measure_network(case: Case, device: torch.device, repeats: int, paths: tuple[str, ...] = INFERENCE_PATHS) -> dict:
    """FLOPs (fp32 call), pixels, and seconds / GFLOP/s per path of ``paths`` (``error`` where a path raises)."""
    torch.manual_seed(0)
    net, inputs = case.build()
    net = net.to(device).eval()
    calls = {p: make_call(net, inputs, p, p, device) for p in dict.fromkeys(("fp32", *paths))}
    del net
    flops, out = count_flops(calls["fp32"])
    out = out[0] if isinstance(out, tuple) else out
    first = inputs[0]
    if case.per == "out px":
        pixels = out.numel() // out.shape[-3]
    elif case.per == "in px":
        pixels = first.numel() // first.shape[-3]
    else:
        pixels = first.shape[0]
    errors: dict[str, str] = {}
    for p in list(calls)[1:]:  # fp32 ran above; a failing path is left out of the timing
        try:
            calls[p]()
        except Exception as exc:  # noqa: BLE001 - reported as n/a, the benchmark goes on
            errors[p] = _reason(exc)
    seconds = time_interleaved({p: c for p, c in calls.items() if p not in errors}, device, repeats)
    gflops = {p: flops / t / 1e9 for p, t in seconds.items()}
    best = max(gflops, key=gflops.__getitem__)
    return {"input": case.input, "flops": flops, "pixels": pixels, "per": case.per, "flops_per_pixel": flops / pixels,
            "seconds": seconds, "gflops": gflops, "errors": errors, "best_path": best,
            "best_gflops": gflops[best]}  # fmt: skip


def _width(path: str) -> int:
    return max(10, len(path) + 2)


def _cell(row: dict, path: str) -> str:
    if path in row["errors"]:
        return f"{'n/a (' + row['errors'][path].split(':')[0] + ')':>{_width(path) + 10}}"
    return f"{row['seconds'][path]:{_width(path)}.4f} {row['gflops'][path]:9.1f}"


def _print_tables(peak: dict, rows: dict[str, dict], header: str, measured: tuple[str, ...]) -> None:
    print(header)
    print(f"peak: 3x3 {PEAK_CHANNELS}->{PEAK_CHANNELS} conv on 1x{PEAK_CHANNELS}x{peak['size']}x{peak['size']}, "
          f"{peak['flops'] / 1e9:.3f} GFLOP (FlopCounterMode: {peak['flops_counted'] / 1e9:.3f})")  # fmt: skip
    print("  " + "  ".join(f"{p}: {t:.4f} s {peak['gflops'][p]:.1f} GFLOP/s" for p, t in peak["seconds"].items()))
    print(f"  peak {peak['peak_gflops']:.1f} GFLOP/s ({peak['peak_path']})")
    paths = "".join(f" {p + ' s':>{_width(p)}} {'GFLOP/s':>9}" for p in measured)
    print(f"{'network':12} {'input':38} {'GFLOP':>8} {'FLOP/px':>10} {'per':>6}{paths}  {'best':13} {'best/peak':>9}")
    for name, r in rows.items():
        cells = " ".join(_cell(r, p) for p in measured)
        print(f"{name:12} {r['input']:38} {r['flops'] / 1e9:8.3f} {r['flops_per_pixel']:10.4g} {r['per']:>6} "
              f"{cells}  {r['best_path']:13} {r['peak_fraction']:9.3f}")  # fmt: skip
    for name, r in rows.items():
        for p, why in r["errors"].items():
            print(f"  {name} {p}: n/a ({why})")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the tables and the JSON line; return the headline figures and details."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=2, choices=[2, 4],
                        help="SR factor of MoESR, the mixture branches, KENet and USRNet (default: 2); DASR and "
                             "KOALAnet run at x4, their papers' timing scale")  # fmt: skip
    parser.add_argument("--networks", default="all",
                        help="comma-separated subset of the networks (default: all); names: expert_bank, expert, ise, "
                             "ken, enet, branches, kenet, usrnet, dasr, msrresnet, koala_down, koala_up")  # fmt: skip
    parser.add_argument("--paths", default=None,
                        help=f"comma-separated inference paths to time ({', '.join(INFERENCE_PATHS)}; fp32 always; "
                             "default: all where bfloat16 is native, else fp32,channels_last)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds per network (median; 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: leave torch's default)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="cpu, cuda or auto (default)")
    parser.add_argument("--peak-size", type=int, default=256, help="side S of the peak convolution's map (256)")
    parser.add_argument("--slots", type=int, default=8, help="expert bank slots per call (estimation's max_batch, 8)")
    parser.add_argument("--bank-size", type=int, default=64, help="LR side of the expert bank's input (64)")
    parser.add_argument("--expert-size", type=int, default=128, help="LR side of the single expert's input (128)")
    parser.add_argument("--ise-size", type=int, default=128, help="side of ISE's SR/bicubic inputs (128, >= 49)")
    parser.add_argument("--ise-batch", type=int, default=8, help="batch of ISE and KEN (8)")
    parser.add_argument("--lr-size", type=int, default=128, help="LR side for E-Net, the mixture branches, KENet (128)")
    parser.add_argument("--usrnet-size", type=int, default=64, help="LR side of USRNet's input (64)")
    parser.add_argument("--dasr-size", type=int, default=64, help="LR side of DASR's and MSRResNet's input (64)")
    parser.add_argument("--koala-size", type=int, default=100, help="LR side of KOALAnet's input (100, divisible by 4)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    allocator = "glibc, freed memory kept" if keep_freed_memory() else "default allocator"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    available = cases(args, device)
    names = list(available) if args.networks == "all" else [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown network(s) {', '.join(unknown)}; choose from {', '.join(available)}")

    paths = default_paths(device) if args.paths is None else tuple(p.strip() for p in args.paths.split(","))
    if bad := [p for p in paths if p not in INFERENCE_PATHS]:
        parser.error(f"unknown path(s) {', '.join(bad)} in --paths; choose from {', '.join(INFERENCE_PATHS)}")
    measured = tuple(dict.fromkeys(("fp32", *paths)))

    peak = measure_peak(args.peak_size, device, args.repeats)
    rows = {name: measure_network(available[name], device, args.repeats, measured) for name in names}
    for r in rows.values():
        r["peak_fraction"] = r["best_gflops"] / peak["peak_gflops"]
    threads = torch.get_num_threads()
    dev_name = describe_device(device)
    _print_tables(peak, rows, f"Inference throughput on {dev_name}, random full-size weights, {allocator}, "
                              f"median of {args.repeats} interleaved rounds", measured)  # fmt: skip

    headline: dict = {
        "peak_gflops": round(peak["peak_gflops"], 2),
        "peak_path": peak["peak_path"],
        **{f"{name}_peak_fraction": round(r["peak_fraction"], 4) for name, r in rows.items()},
        **{f"{name}_best_path": r["best_path"] for name, r in rows.items()},
        "failed": {f"{name}/{p}": why for name, r in rows.items() for p, why in r["errors"].items()},
        "threads": threads,
        "device": dev_name,
        "native_bf16": native_bf16(device),
        "paths": list(measured),
        "scale": args.scale,
    }
    print(json.dumps(headline))
    return {**headline, "peak": peak, "networks": rows}


if __name__ == "__main__":
    main()

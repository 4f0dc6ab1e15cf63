"""USRNet-tiny (the official KAIR weights) with ground-truth kernels on DIV2KRK-layout sets: the kernel convention.

    python -m benchmarks.usrnet_tiny [--sets DIR ...] [--scales 2 4] [--limit N] [--sigma 0] [--pad 32]
                                     [--weights PATH] [--threads 2] [--device auto]

Each item's kernel is the block-centred kernel that made its LR image as the engine applies it (correlated,
decimated from pixel 0; ``datamodules.test_sets``). Methods, on the shipped LR files, full size:

* ``bicubic``: MATLAB bicubic (``ops.resize(lr, scale=s, convention="matlab")``);
* ``usrnet``: the correct convention, ``kernels.block_centre_to_usrnet(k)`` (rot180);
* ``no_flip``: ``k`` given as it is (each block sampled ``s - 1`` px off);
* ``flip_shift``: rot180 and then also shifted by the DIV2KRK/USRNet centre difference, ``-(s - 1)`` px in both
  axes (``kernels.shift_kernel``): the double correction, off by ``s - 1`` px the other way. (Shifting **instead**
  of flipping gives the right answer for centrally symmetric kernels, i.e. Gaussians; see
  ``kernels.block_centre_to_usrnet``.)

USRNet's data step assumes a circular boundary, DIV2KRK's LR images were not made so, and with sigma 0 its near-exact
inversion rings at the borders where the periodic extension jumps (DIV2KRK im_3 x2, a wide kernel: 26.1 dB with no
padding, 40.2 dB with 32 px, while the interior beyond 64 px stays at 41.6-41.7 dB). ``--pad P`` mirrors ``P`` LR
pixels on each side before the network and crops ``s * P`` HR pixels after; default 32 (``--pad 0``: the official
code, which evaluates on circularly blurred images only). ``--sigma``: the noise level given to the network; the
tiny weights do best with 0 even on 8-bit LR images (Set5 crops, circular blur: 38.91 / 38.81 / 38.49 dB at
sigma 0 / 1 / 2 (x255), x2).
Metric protocol: PSNR-Y / SSIM-Y (``lightning_modules.metrics``: MATLAB Y, 8-bit quantised, shave = scale).
Prints per-image rows, a summary table, then one JSON line of headline figures.

Measured on the DIV2KRK sample (8 full images, 2 CPU cores, ~100 s per USRNet-tiny forward), PSNR-Y in dB for
bicubic / usrnet / no_flip / flip_shift: pad 32: x2 30.71 / 35.88 / 26.97 / 27.45, x4 26.88 / 30.97 / 22.97 / 23.16;
pad 0: x2 30.71 / 29.81 / 25.06 / 25.60, x4 26.88 / 23.69 / 20.72 / 20.72.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from datamodules.degradation import kernels as K
from datamodules.degradation import ops
from datamodules.test_sets import open_benchmark
from lightning_modules.kenet.usrnet import restore_padded
from lightning_modules.metrics import psnr_y, ssim_y
from lightning_modules.nets.usrnet import DEFAULT_TINY_WEIGHTS, USRNet, load_usrnet_tiny

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SET = REPO.parent / "shared/data/test/DIV2KRK_sample"
METHODS = ("bicubic", "usrnet", "no_flip", "flip_shift")


def usrnet_kernels(kernel: Tensor, scale: int) -> dict[str, Tensor]:
    """The ``(1, k, k)`` kernel given to USRNet by each USRNet method, from a block-centred ``(1, k, k)`` kernel."""
    flipped = K.block_centre_to_usrnet(kernel)
    shifted = K.shift_kernel(flipped, -(scale - 1), -(scale - 1))
    return {"usrnet": flipped, "no_flip": kernel, "flip_shift": shifted / shifted.sum(dim=(-2, -1), keepdim=True)}


def super_resolve(net: USRNet, lr: Tensor, kernel: Tensor, scale: int, sigma: float, pad: int) -> Tensor:
    """USRNet on ``(1, 3, h, w)`` LR, ``pad`` LR pixels mirrored first; ``(1, 3, s*h, s*w)`` clamped to [0, 1]."""
    with torch.no_grad():
        return restore_padded(net, lr, kernel, scale, sigma, pad, mode="reflect").clamp(0, 1)


def evaluate_set(net: USRNet, root: Path, scale: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Per-image and mean PSNR-Y / SSIM-Y of every method on one set at one scale; prints a row per image."""
    dataset = open_benchmark(root, scale)
    if not (dataset.has_hr and dataset.has_kernels):
        raise FileNotFoundError(f"{root} (x{scale}) lacks HR images or kernels: this benchmark needs both")
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    scores: dict[str, list[tuple[float, float]]] = {m: [] for m in METHODS}
    seconds: list[float] = []
    print(f"\n{root.name} x{scale}: {count} images, sigma {args.sigma}, pad {args.pad}; PSNR-Y per image (dB)")
    print(f"{'image':10} " + " ".join(f"{m:>11}" for m in METHODS) + f" {'s/forward':>10}")
    for index in range(count):
        item = dataset[index]
        lr = (item["lr"][None].float() / 255).to(device)
        hr = (item["hr"][None].float() / 255).to(device)
        outputs: dict[str, Callable[[], Tensor]] = {
            "bicubic": lambda lr=lr: ops.resize(lr, scale=scale, convention="matlab")
        }
        for name, kernel in usrnet_kernels(item["kernel"][None].to(device), scale).items():
            outputs[name] = lambda lr=lr, k=kernel: super_resolve(net, lr, k, scale, args.sigma, args.pad)
        for name in METHODS:
            t0 = time.perf_counter()
            sr = outputs[name]()
            if name != "bicubic":
                seconds.append(time.perf_counter() - t0)
            scores[name].append((psnr_y(sr, hr, scale).item(), ssim_y(sr, hr, scale).item()))
        row = " ".join(f"{scores[m][-1][0]:11.2f}" for m in METHODS)
        print(f"{item['name']:10} {row} {sum(seconds[-3:]) / 3:10.1f}", flush=True)
    mean = {m: [sum(v[i] for v in scores[m]) / count for i in (0, 1)] for m in METHODS}
    per_forward = sum(seconds) / len(seconds)
    return {"set": root.name, "scale": scale, "images": count, "mean": mean, "s_per_forward": per_forward}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the tables and the JSON line; return the headline figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.usrnet_tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", type=Path, default=[DEFAULT_SET], help=f"DIV2KRK-layout (or paired) "
                        f"folders with HR images and kernels (default: {DEFAULT_SET})")  # fmt: skip
    parser.add_argument("--scales", nargs="+", type=int, default=[2, 4], help="scale factors (default: 2 4)")
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set only (default: all)")
    parser.add_argument("--sigma", type=float, default=0.0, help="noise level given to USRNet, in [0, 1] (default 0)")
    parser.add_argument("--pad", type=int, default=32, help="LR pixels mirrored on each side (default: 32)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_TINY_WEIGHTS, help="usrnet_tiny.pth (default: "
                        "../shared/pretrained/usrnet_tiny.pth)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu' or 'cuda'")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    net = load_usrnet_tiny(args.weights).to(device)
    results = [evaluate_set(net, root, s, args, device) for root in args.sets for s in args.scales]
    print(f"\nmean PSNR-Y / SSIM-Y (shave = scale), device {device}, {torch.get_num_threads()} threads")
    print(f"{'set':24} {'x':>2} {'n':>3} " + " ".join(f"{m:>17}" for m in METHODS))
    for r in results:
        cells = " ".join(f"{r['mean'][m][0]:8.2f} / {r['mean'][m][1]:.4f}" for m in METHODS)
        print(f"{r['set']:24} {r['scale']:2d} {r['images']:3d} {cells}")
    headline: dict = {"sigma": args.sigma, "pad": args.pad, "device": str(device)}
    for r in results:
        tag = f"{r['set']}_x{r['scale']}"
        headline[tag] = {m: {"psnr_y": round(r["mean"][m][0], 3), "ssim_y": round(r["mean"][m][1], 4)} for m in METHODS}
        headline[tag]["images"] = r["images"]
        headline[tag]["usrnet_minus_bicubic_db"] = round(r["mean"]["usrnet"][0] - r["mean"]["bicubic"][0], 3)
        headline[tag]["usrnet_minus_no_flip_db"] = round(r["mean"]["usrnet"][0] - r["mean"]["no_flip"][0], 3)
        headline[tag]["s_per_forward"] = round(r["s_per_forward"], 2)
    print(json.dumps(headline))
    return headline


if __name__ == "__main__":
    main()

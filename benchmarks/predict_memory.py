"""Peak memory and time of ``main.py predict`` on large photos, tiled and untiled, and the tiled-vs-untiled error.

    python -m benchmarks.predict_memory [--ckpt checkpoints/baseline/x2/last.ckpt] [--photo PATH] [--scale 4]

Each measured run is the real command line
(``python main.py predict -c configs/baselines/single_net.yaml ...``) in its own
process, so its peak resident memory (``ru_maxrss`` of the child) is its own. Cases:

* ``photo``: a 2040x1356 input photo (default: a DIV2K HR image of the DIV2KRK sample, or the largest built-in
  photo resized to 2040x1356) super-resolved x4 to 8160x5424, tiled; untiled only where it fits ``--max-gib``.
* ``div2krk``: its 510x339 x4 LR (as DIV2KRK's size) -> 2040x1356, tiled and untiled, and the maximum absolute
  difference between the two PNGs and between the two float outputs.

Without a checkpoint the network has its initial (random) weights: memory, time and tiling error do not depend
on the weights. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datamodules.degradation.ops import resize
from datamodules.images import builtin_photo_paths
from datamodules.io import load_rgb, to_tensor
from lightning_modules.baselines.single_net import SingleNetSR
from lightning_modules.core.tiling import tiled_forward

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO = REPO.parent / "shared/data/test/DIV2KRK_sample/gt/im_2.png"


def predict_run(image_dir: Path, out_dir: Path, scale: int, tile: int, ckpt: str | None) -> dict:
    """Run ``main.py predict`` in a child process; returns wall seconds and the child's peak RSS in GiB."""
    args = [
        sys.executable, str(REPO / "main.py"), "predict", "-c", str(REPO / "configs/baselines/single_net.yaml"),
        f"--data.init_args.scale={scale}", f"--data.init_args.predict_dir={image_dir}",
        "--data.init_args.num_workers=0",
        f"--model.init_args.tile_size={tile}", f"--model.init_args.output_dir={out_dir}", "--trainer.logger=false",
        "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={out_dir}",
    ]  # fmt: skip
    if ckpt:
        args.append(f"--ckpt_path={ckpt}")
    log = out_dir.parent / f"{out_dir.name}.log"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(
            args, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "disabled"}
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"predict failed:\n{log.read_text()[-3000:]}")
    peak_kib = usage.ru_maxrss
    return {"seconds": wall, "peak_gib": peak_kib / 2**20}


def make_inputs(photo: Path, work: Path, scale: int) -> tuple[Path, Path]:
    """Write the 2040x1356 photo and its x``scale`` MATLAB-bicubic LR into their own folders."""
    arr = load_rgb(photo) if photo.is_file() else load_rgb(max(builtin_photo_paths(), key=lambda p: p.stat().st_size))
    img = to_tensor(arr)[None].float() / 255
    if img.shape[-2:] != (1356, 2040):
        img = resize(img, size=(1356, 2040), convention="matlab").clamp(0, 1)
    lr = resize(img, scale=1 / scale, convention="matlab").clamp(0, 1)
    dirs = []
    for name, t in (("photo", img), ("div2krk", lr)):
        d = work / f"in_{name}"
        d.mkdir(parents=True)
        Image.fromarray((t[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(d / "img.png")
        dirs.append(d)
    return dirs[0], dirs[1]


def float_tiling_error(lr_png: Path, scale: int, ckpt: str | None, tile: int, overlap: int) -> float:
    """Max |tiled - untiled| of the float network output (before 8-bit rounding) on ``lr_png``."""
    model = SingleNetSR(scale=scale)
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    model.eval()
    lr = to_tensor(load_rgb(lr_png))[None].float() / 255
    with torch.no_grad():
        full = model.super_resolve(lr)
        tiled = tiled_forward(model.super_resolve, lr, scale, tile, overlap)
    return float((full - tiled).abs().max())


def main(argv: list[str] | None = None) -> dict:
    """Run the cases; print the table and the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.predict_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=None, help="baseline checkpoint at --scale (default: initial weights)")
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="input photo, resized to 2040x1356")
    parser.add_argument("--scale", type=int, default=4, choices=[2, 4], help="SR factor (default: 4)")
    parser.add_argument("--tile", type=int, default=256, help="LR tile side of the tiled runs (default: 256)")
    parser.add_argument("--max-gib", type=float, default=20.0, help="skip untiled runs estimated above this")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photo_dir, lr_dir = make_inputs(args.photo, work, args.scale)
        for case, in_dir in (("div2krk", lr_dir), ("photo", photo_dir)):
            h, w = np.asarray(Image.open(in_dir / "img.png")).shape[:2]
            # untiled float32 activations: ~3 live maps of 64 channels at the output size (the last stage)
            untiled_gib = 3 * 64 * 4 * h * w * args.scale**2 / 2**30
            outs = {}
            for mode, tile in (("tiled", args.tile), ("untiled", 0)):
                if mode == "untiled" and untiled_gib > args.max_gib:
                    rows.append(
                        {"case": case, "mode": mode, "input": f"{w}x{h}", "note": f"skipped (~{untiled_gib:.0f} GiB)"}
                    )
                    continue
                out = work / f"out_{case}_{mode}"
                r = predict_run(in_dir, out, args.scale, tile, args.ckpt)
                outs[mode] = np.asarray(Image.open(out / "predictions" / f"img_x{args.scale}.png")).astype(np.int16)
                rows.append({"case": case, "mode": mode, "input": f"{w}x{h}", **r})
            if len(outs) == 2:
                rows[-1]["png_max_diff"] = int(np.abs(outs["tiled"] - outs["untiled"]).max())
                rows[-1]["float_max_diff"] = float_tiling_error(
                    lr_dir / "img.png", args.scale, args.ckpt, args.tile, 24
                )
    print(f"predict x{args.scale}, tile {args.tile} LR px, {torch.get_num_threads()} threads")
    print(f"{'case':8} {'mode':8} {'input':10} {'seconds':>8} {'peak GiB':>9}  notes")
    for r in rows:
        notes = r.get("note", "")
        if "png_max_diff" in r:
            notes = (
                f"tiled vs untiled: PNG max diff {r['png_max_diff']} levels, float max diff {r['float_max_diff']:.2e}"
            )
        secs = f"{r['seconds']:8.1f}" if "seconds" in r else f"{'-':>8}"
        peak = f"{r['peak_gib']:9.2f}" if "peak_gib" in r else f"{'-':>9}"
        print(f"{r['case']:8} {r['mode']:8} {r['input']:10} {secs} {peak}  {notes}")
    photo_tiled = next(r for r in rows if r["case"] == "photo" and r["mode"] == "tiled")
    cmp = next((r for r in rows if "float_max_diff" in r), {})
    headline = {
        "photo_tiled_s": round(photo_tiled["seconds"], 1),
        "photo_tiled_peak_gib": round(photo_tiled["peak_gib"], 2),
        "tiled_vs_untiled_max_abs_diff": cmp.get("float_max_diff"),
        "tiled_vs_untiled_png_max_diff": cmp.get("png_max_diff"),
    }
    print(json.dumps(headline))
    return headline


if __name__ == "__main__":
    main()

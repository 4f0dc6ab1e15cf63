"""The spatially-variant writer: any folder of HR images -> a set blurred by a smoothly varying kernel field.

Usage::

    python -m datamodules.generate --protocol spatially_variant --hr /path/Set14 --out /path/Set14_sv --scale 4

Beyond the KOALAnet paper, which motivates spatially-variant kernels by depth of field but tests on uniform ones:

* images in sorted order, numbered from 1; image ``N`` draws its field from ``image_generator(seed, N)`` (a seed per
  image: ``--limit`` gives the same images as a full run); ``--field defocus`` or ``two_region``
  (``datamodules.degradation.spatially_variant``), widths in ``[sigma_min, sigma_max]``;
* HR cropped top-left to a multiple of ``s``; each LR pixel is the HR image correlated with its own KOALAnet kernel
  (``field_blur_decimate``: symmetric border, decimation phase of the native 20x20 kernel), computed in float64,
  rounded to 8 bit; no noise;
* the field is stored as float32 (``field_x{s}/field_N.npy``) and the kernels are built from exactly those values, so
  ``spatially_variant.field_kernels`` rebuilds them; ``datamodules.sv_sets`` has the layout and the reader.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from datamodules.degradation import ops
from datamodules.degradation.koala_sampler import KOALA_KERNEL_SIZE
from datamodules.degradation.spatially_variant import FIELDS, field_blur_decimate
from datamodules.generate.common import crop_to_multiple, prepare_out, save_lr_png
from datamodules.generate.div2krk import OWN_FILES, image_generator
from datamodules.images import find_images
from datamodules.io import ImageReadError, load_rgb, save_png, to_tensor
from datamodules.sv_sets import FIELD_FILE, SV_FORMAT, field_dir, kernel_convention, save_field, save_width_picture

SV_FILES = ("README.txt", "kernels.json")


def generate_spatially_variant(
    hr: str | Sequence[str],
    out: str | Path,
    scale: int = 4,
    field: str = "defocus",
    seed: int = 0,
    sigma_range: tuple[float, float] = (0.2, 4.0),
    limit: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    command: str | None = None,
) -> int:
    """Write a spatially-variant set (module docstring, layout in ``datamodules.sv_sets``); prints one line per image.

    Args:
        hr: HR folder(s) / files / ``"builtin"`` (``images.find_images``).
        out: Output folder.
        scale: 2 or 4.
        field: Field family, a key of ``spatially_variant.FIELDS`` (``"defocus"``, ``"two_region"``).
        seed: Non-negative base seed.
        sigma_range: ``(sigma_min, sigma_max)`` of the standard deviations, HR pixels.
        limit: Only the first ``limit`` images.
        device: Device that blurs (fields are drawn on the CPU).
        overwrite: Replace an earlier run's files in ``out``.
        command: The command line recorded in ``README.txt`` (default: reconstructed from the arguments).

    Returns:
        The number of images written.

    Raises:
        FileNotFoundError: An HR folder is missing or holds no image (named).
        ImageReadError: An HR file cannot be read or is too small (named).
        FileExistsError: ``out`` holds an earlier run and ``overwrite`` is False.
        ValueError: An argument is out of range.
    """
    if scale not in (2, 4):
        raise ValueError(f"the spatially-variant protocol is defined for scales 2 and 4, got {scale}")
    if field not in FIELDS:
        raise ValueError(f"field must be one of {sorted(FIELDS)}, got {field!r}")
    lo, hi = sigma_range
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < sigma-min <= sigma-max, got {tuple(sigma_range)}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    paths = find_images(hr)[:limit]
    out = Path(out).expanduser()
    dev = torch.device(device)
    owned = {"gt": OWN_FILES, f"lr_x{scale}": OWN_FILES, field_dir(out, scale).name: FIELD_FILE}
    prepare_out(out, owned, SV_FILES, overwrite)
    sources: list[str] = []
    start = time.perf_counter()
    print(f"writing {len(paths)} image(s) x{scale}, field {field}, to {out}", flush=True)
    with torch.no_grad():
        for n, path in enumerate(paths, start=1):
            arr = load_rgb(path)
            hr8 = crop_to_multiple(arr, scale)
            h, w = hr8.shape[:2]
            if min(h, w) < KOALA_KERNEL_SIZE:
                raise ImageReadError(
                    f"image {path} is {arr.shape[1]}x{arr.shape[0]} px; the protocol needs at least "
                    f"{KOALA_KERNEL_SIZE} px after cropping to a multiple of {scale}"
                )
            values = FIELDS[field](h // scale, w // scale, image_generator(seed, n), (lo, hi)).to(torch.float32)
            hr64 = to_tensor(hr8)[None].to(device=dev, dtype=torch.float64) / 255
            lr = field_blur_decimate(hr64, values[None].to(dev), scale)
            save_png(hr8, out / "gt" / f"im_{n}.png")
            save_lr_png(ops.quantize(lr)[0], out / f"lr_x{scale}" / f"im_{n}.png")
            save_field(values, field_dir(out, scale) / f"field_{n}.npy")
            save_width_picture(values, field_dir(out, scale) / f"width_{n}.png", (lo, hi))
            width = (values[0] * values[1]).sqrt()
            sources.append(f"im_{n}\t{path}\t{w}x{h}\t{width.min().item():.2f}..{width.max().item():.2f}")
            print(f"{n}/{len(paths)} {path.name} -> im_{n} (HR {w}x{h}, width {sources[-1].split()[-1]})", flush=True)
    meta = {
        "format": SV_FORMAT,
        "protocol": "spatially_variant",
        "field": field,
        "scale": scale,
        "seed": seed,
        "sigma_range": [lo, hi],
        "images": len(paths),
        "field_files": f"{field_dir(out, scale).name}/field_N.npy: (H, W, 3) float32 on the LR grid",
        "channels": ["sigma_x (std, HR px)", "sigma_y (std, HR px)", "theta (rad, sigma_x axis from the x axis)"],
        "kernel": kernel_convention(scale),
    }
    (out / "kernels.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    _write_readme(out, hr, scale, field, seed, (lo, hi), limit, command, sources)
    print(f"done: {len(paths)} image(s) in {time.perf_counter() - start:.1f} s -> {out}", flush=True)
    return len(paths)


def _write_readme(
    out: Path,
    hr: str | Sequence[str],
    scale: int,
    field: str,
    seed: int,
    sigma_range: tuple[float, float],
    limit: int | None,
    command: str | None,
    sources: Sequence[str],
) -> None:
    """``README.txt``: the command, the protocol, the files, which source became which ``im_N``."""
    hr_list = [hr] if isinstance(hr, (str, Path)) else list(hr)
    lo, hi = sigma_range
    if command is None:
        args = ["--protocol", "spatially_variant", "--hr", *map(str, hr_list), "--out", str(out)]
        args += ["--scale", str(scale), "--field", field, "--seed", str(seed), "--sigma-min", str(lo)]
        args += ["--sigma-max", str(hi)] + ([] if limit is None else ["--limit", str(limit)])
        command = "python -m datamodules.generate " + shlex.join(args)
    text = [
        "spatially-variant test set written by blindsr (python -m datamodules.generate)",
        "",
        f"command: {command}",
        f"seed: {seed}",
        f"field: {field}; widths in [{lo}, {hi}] HR px; scale: x{scale}",
        f"images: {len(sources)}",
        "",
        "protocol: image N (sorted source order, from 1) draws its kernel field from a torch.Generator seeded from",
        f"(seed, N). HR cropped top-left to a multiple of {scale}. LR pixel (r, c) = HR correlated with its own",
        "KOALAnet kernel (15x15 Gaussian of the field's sigma_x, sigma_y, theta at (r, c), convolved with the 20x20",
        "non-antialiased bicubic kernel; mean on the middle of the grid), symmetric border, every s-th pixel from",
        "the phase in kernels.json, computed in float64, rounded to 8 bit. No noise.",
        "",
        f"files: gt/im_N.png  lr_x{scale}/im_N.png  field_x{scale}/field_N.npy ((H, W, 3) float32: sigma_x, sigma_y,",
        f"theta per LR pixel)  field_x{scale}/width_N.png (picture of sqrt(sigma_x sigma_y))  kernels.json",
        "Read with datamodules.sv_sets.SpatiallyVariantDataset (kernels rebuilt from the field); SR metrics also",
        "with datamodules.test_sets.open_benchmark.",
        "",
        "name\tsource\tHR size (after crop)\tkernel width range",
        *sources,
        "",
    ]
    (out / "README.txt").write_text("\n".join(text), encoding="utf-8")

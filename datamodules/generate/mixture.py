"""The mixture-of-networks writer (Wang et al. 2020): every HR image x every kernel of a group, "paired" layout.

Usage::

    python -m datamodules.generate --protocol mixture --hr /path/Set5 --out /path/Set5_unseen_x2 --kernels unseen

Each HR image (``.png .bmp .jpg .jpeg .tif`` directly in the folder, sorted by path) is cropped top-left to a multiple
of ``scale`` and degraded by ``MixtureDegradation.degrade`` with every kernel of the group at once: correlation with
the 11x11 pixel-centred kernel (symmetric border), decimation from pixel ``scale // 2``, 8-bit rounding.

Output (``out/``): ``HR_full/<stem>.png`` (the cropped HR), ``HR/<stem>_k<id>.png`` (hard links to it, copies where
links fail), ``LR/<stem>_k<id>.png``, ``kernels/<stem>_k<id>.mat`` (``Kernel``: float64, as applied with decimation
phase ``s // 2``; ``KernelAsApplied``: the same kernel moved ``s // 2`` px so that decimation from pixel 0 gives the
same LR, the degradation engine's convention that test batches carry) and
``split.json``; ``<id>`` is the kernel's global id (``kernels.mixture.distinct_kernel_params``).
``datamodules.test_sets.open_benchmark(out, scale)`` reads it (layout ``"paired"``); a test's mean over its items is
the paper's average over images x kernels.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from datamodules.degradation.kernels.mixture import IsotropicPolicy, KernelGroup, mixture_kernels
from datamodules.degradation.pipelines.mixture import MixtureDegradation
from datamodules.generate.common import crop_to_multiple, prepare_out, save_lr_png
from datamodules.io import APPLIED_KERNEL_KEY, load_rgb, save_kernel_mat, save_png

HR_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif")
_PER_KERNEL = re.compile(r"^.+_k\d+\.(?:png|mat)$")
OWN_FILES = {"HR_full": re.compile(r"^.+\.png$"), "HR": _PER_KERNEL, "LR": _PER_KERNEL, "kernels": _PER_KERNEL}
"""``{subfolder: names}`` of the files a run writes (``--overwrite`` deletes only these, and ``split.json``)."""


def write_mixture_set(
    hr_dir: str | Path,
    out: str | Path,
    scale: int = 2,
    kernels: KernelGroup = "unseen",
    split_seed: int = 0,
    split_file: str | None = None,
    isotropic: IsotropicPolicy = "unseen",
    kernels_per_image: int | None = None,
    max_images: int | None = None,
    overwrite: bool = False,
) -> int:
    """Write a test set: every HR image blurred and decimated with every kernel of a group (module docstring).

    Args:
        hr_dir: Folder of HR images (not searched recursively).
        out: Output folder.
        scale: Downscaling factor.
        kernels: The group: ``"seen"``, ``"unseen"`` or ``"all"`` (52).
        split_seed: Seed of the seen / unseen split.
        split_file: JSON split read if it exists (and checked against ``split_seed``); never written here.
        isotropic: Where the 4 isotropic kernels go (``kernels.mixture.make_split``).
        kernels_per_image: For small budgets (the paper uses every kernel): image ``i`` (sorted order) gets only the
            kernels at positions ``(i * n + j) mod K``, ``j < n``, of the group, so consecutive images cycle through
            all ``K``; ``None`` or 0: every kernel.
        max_images: Only the first images (sorted order); ``None`` or 0: all.
        overwrite: Replace an earlier run's files in ``out``.

    Returns:
        The number of LR images written.

    Raises:
        FileNotFoundError: ``hr_dir`` is missing or holds no image.
        FileExistsError: ``out`` holds an earlier run and ``overwrite`` is False.
        ValueError: The split file does not match the arguments.
    """
    hr_dir, out = Path(hr_dir), Path(out)
    deg = MixtureDegradation(scale, kernels, split_seed=split_seed, isotropic=isotropic, split_file=split_file)
    files = sorted(p for p in hr_dir.iterdir() if p.suffix.lower() in HR_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {hr_dir}")
    files = files[:max_images] if max_images else files
    prepare_out(out, OWN_FILES, ("split.json",), overwrite)
    deg.split.save(out / "split.json")
    all_ids, all_kernels = deg.ids, mixture_kernels(deg.ids.tolist())
    per_image = len(all_ids) if not kernels_per_image else min(kernels_per_image, len(all_ids))
    count = 0
    for index, path in enumerate(files):
        pick = (index * per_image + torch.arange(per_image)) % len(all_ids)
        ids, bank = all_ids[pick], all_kernels[pick]
        arr = crop_to_multiple(load_rgb(path), scale)
        full = out / "HR_full" / f"{path.stem}.png"
        save_png(arr, full)
        hr = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
        lrs = deg.degrade(hr.expand(len(bank), -1, -1, -1), bank)  # every kernel in one batched pass
        for kid, kernel, lr in zip(ids.tolist(), bank, lrs, strict=True):
            name = f"{path.stem}_k{kid:02d}"
            save_lr_png(lr, out / "LR" / f"{name}.png")
            link = out / "HR" / f"{name}.png"
            link.unlink(missing_ok=True)
            try:
                os.link(full, link)
            except OSError:
                save_png(arr, link)
            kernels = {"Kernel": kernel, APPLIED_KERNEL_KEY: from_phase(kernel, scale)}
            save_kernel_mat(out / "kernels" / f"{name}.mat", {k: v.double().numpy() for k, v in kernels.items()})
            count += 1
    return count


def from_phase(kernel: Tensor, scale: int) -> Tensor:
    """``(k, k)`` kernel decimated from pixel ``s // 2`` -> the ``(k + 2p, k + 2p)`` one decimated from pixel 0.

    Exact (an integer move of ``p = s // 2`` px, no interpolation): correlating with the result and keeping every
    ``s``-th pixel from pixel 0 equals correlating with ``kernel`` and keeping them from pixel ``p``.
    """
    p = scale // 2
    return torch.nn.functional.pad(kernel, (2 * p, 0, 2 * p, 0))

"""The DIV2KRK-protocol writer: any folder of HR images -> a DIV2KRK-layout set (BSD100 -> "BSD100RK", ...).

Usage (``--protocol div2krk`` is the default)::

    python -m datamodules.generate --hr /path/BSD100 --out /path/BSD100RK --scales 2 4 --seed 0

The protocol is DIV2KRK's (KernelGAN, NeurIPS 2019), as MoESR applied it to BSD100 and Urban100:

* Images are taken in sorted order and numbered from 1; image ``N`` gets its own ``torch.Generator`` (on the CPU,
  whatever ``--device``) seeded from ``(seed, N)``, so adding images to the folder or ``--limit`` never changes
  the earlier ones, and a run is reproducible.
* One x2 kernel per image (``DIV2KRKKernelSampler``): an ``kernel_size`` anisotropic Gaussian with covariance
  eigenvalues ``lambda1, lambda2 ~ U(lambda_min, lambda_max)``, angle ``theta ~ U(0, pi)``, per-pixel multiplicative
  noise ``U(-n, n)`` with ``n ~ U(0, max_kernel_noise)``, centred on the block centre. The x4 kernel is that x2
  kernel applied twice (``3k - 2`` = 31 for 11), built from the same parameters.
* The HR image is cropped (top-left) to a multiple of the lcm of the scales; each LR image is the HR image
  correlated with the block-centred kernel (symmetric border: scipy's "reflect"), decimated from pixel 0, rounded to
  8 bit (``ClassicalDegradation.apply``). No noise, no bicubic.

Kernel files follow the DIV2KRK release's convention so that a generated set reads exactly like DIV2KRK: the
``Kernel`` variable holds the kernel shifted to the middle pixel (``-0.5 * (s - 1)`` px with
``kernels.shift_kernel``, renormalised), as the released ``.mat`` files are, although the LR was made with the
block-centred kernel. ``kernels.div2krk_kernel_to_block_centre`` undoes the shift up to the bilinear
interpolation's slight extra blur; the exact kernel that made the LR is stored as well, under
``KernelBlockCentred``. Both are float64.

Output (``out/``): ``gt/im_N.png``, ``lr_x{s}/im_N.png``, ``gt_k_x{s}/kernel_N.mat`` and ``README.txt`` (the
command, seed, source folder, protocol and which source file became which ``im_N``). Two runs with the same
arguments write byte-identical PNG and ``.mat`` files (same device and library versions: the ``.mat`` header
holds a fixed text instead of scipy's time stamp).

Everything but the kernel draw is shared with the other protocols in this layout (``--protocol kenet``,
``datamodules.generate.kenet``): ``write_kernel_set`` takes the sampler and a ``KernelSetProtocol`` that names the
protocol and describes its kernels in ``README.txt``.
"""

from __future__ import annotations

import math
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datamodules.degradation.kernels import block_centre_to_div2krk_kernel
from datamodules.degradation.pipelines import ClassicalDegradation
from datamodules.degradation.samplers import DIV2KRKKernelSampler, KENetKernelSampler
from datamodules.generate.common import crop_to_multiple, prepare_out, save_lr_png
from datamodules.images import find_images
from datamodules.io import ImageReadError, load_rgb, save_kernel_mat, save_png, to_tensor

OWN_FILES = re.compile(r"^(?:im_\d+\.png|kernel_\d+\.mat)$")
"""Names of the files a run writes in ``gt/``, ``lr_x{s}/`` and ``gt_k_x{s}/`` (``--overwrite`` deletes only these)."""


@dataclass(frozen=True)
class KernelSetProtocol:
    """What distinguishes one protocol of the DIV2KRK layout: its name, its own options, its kernels' description.

    Args:
        name: Name in messages and ``README.txt``'s title (``"DIV2KRK"``, ``"KENet"``).
        protocol_args: Command-line arguments that select it (``()`` for the default, div2krk).
        options: Its own options with their values, as ``README.txt`` records them when no command is given.
        kernel_lines: ``README.txt`` lines describing the kernel draw.
    """

    name: str
    protocol_args: tuple[str, ...]
    options: tuple[str, ...]
    kernel_lines: tuple[str, ...]


def image_generator(seed: int, index: int) -> torch.Generator:
    """The CPU ``torch.Generator`` of image ``index`` (1-based), seeded from ``(seed, index)`` via ``SeedSequence``."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state % (2**63)))


def generate(
    hr: str | Sequence[str],
    out: str | Path,
    scales: Sequence[int] = (2, 4),
    seed: int = 0,
    kernel_size: int = 11,
    lambda_range: tuple[float, float] = (0.6, 5.0),
    max_kernel_noise: float = 0.25,
    limit: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    command: str | None = None,
) -> int:
    """Write a DIV2KRK-protocol set (see the module docstring); prints ``N/total name`` per image.

    Args:
        hr: HR folder(s) / files / ``"builtin"`` (``images.find_images``).
        out: Output folder.
        scales: Subset of ``(2, 4)``.
        seed: Non-negative base seed.
        kernel_size: Odd side of the x2 kernel.
        lambda_range: ``(lambda_min, lambda_max)`` of the covariance eigenvalues.
        max_kernel_noise: Upper bound of the kernel-noise level.
        limit: Only the first ``limit`` images.
        device: Device that blurs (kernels are drawn on the CPU, so the set does not depend on it).
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
    if not 0 < lambda_range[0] <= lambda_range[1]:
        raise ValueError(f"need 0 < lambda-min <= lambda-max, got {lambda_range}")
    if not 0 <= max_kernel_noise < 1:
        raise ValueError(f"max-kernel-noise must be in [0, 1), got {max_kernel_noise}")
    sampler = DIV2KRKKernelSampler(
        kernel_size=kernel_size, lambda_range=lambda_range, max_kernel_noise=max_kernel_noise
    )
    protocol = KernelSetProtocol(
        name="DIV2KRK",
        protocol_args=(),
        options=(
            "--kernel-size",
            str(kernel_size),
            "--lambda-min",
            str(lambda_range[0]),
            "--lambda-max",
            str(lambda_range[1]),
            "--max-kernel-noise",
            str(max_kernel_noise),
        ),
        kernel_lines=(
            f"x2 kernel: {kernel_size}x{kernel_size} anisotropic Gaussian, variances U({lambda_range[0]}, "
            f"{lambda_range[1]}), theta U(0, pi), multiplicative noise up to {max_kernel_noise}; x4 = x2 applied twice",
        ),
    )
    return write_kernel_set(hr, out, sampler, protocol, scales, seed, limit, device, overwrite, command)


def write_kernel_set(
    hr: str | Sequence[str],
    out: str | Path,
    sampler: DIV2KRKKernelSampler | KENetKernelSampler,
    protocol: KernelSetProtocol,
    scales: Sequence[int] = (2, 4),
    seed: int = 0,
    limit: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    command: str | None = None,
) -> int:
    """Write a set in the DIV2KRK layout with kernels from ``sampler`` (one draw per image, every scale).

    Image ``N`` draws its kernel parameters once from ``image_generator(seed, N)``; each scale's
    ``ClassicalDegradation`` builds its kernel from that draw (block-centred, decimation from pixel 0).

    Args:
        hr: HR folder(s) / files / ``"builtin"`` (``images.find_images``).
        out: Output folder.
        sampler: A block-centred kernel sampler defined at x2 and x4.
        protocol: Name, options and kernel description for messages and ``README.txt``.
        scales: Subset of ``(2, 4)``.
        seed: Non-negative base seed.
        limit: Only the first ``limit`` images.
        device: Device that blurs (kernels are drawn on the CPU, so the set does not depend on it).
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
    scales = sorted(set(int(s) for s in scales))
    if not scales or any(s not in (2, 4) for s in scales):
        raise ValueError(f"the {protocol.name} protocol is defined for scales 2 and 4, got {scales}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    paths = find_images(hr)
    if limit is not None:
        paths = paths[:limit]
    out = Path(out).expanduser()
    dev = torch.device(device)
    # One sampler, one draw of parameters per image; each scale's pipeline builds its kernel from that draw.
    degradations = {s: ClassicalDegradation(scale=s, kernel_sampler=sampler) for s in scales}
    for s, deg in degradations.items():
        if deg.phase != 0:  # block-centred odd kernels always give 0; DIV2KRK decimates from pixel 0
            raise ValueError(f"x{s}: expected decimation from pixel 0, the pipeline aligns at phase {deg.phase}")
    multiple = math.lcm(*scales)
    min_side = max(multiple, *(sampler.kernel_size(s) for s in scales))
    owned = {name: OWN_FILES for name in ["gt"] + [f"lr_x{s}" for s in scales] + [f"gt_k_x{s}" for s in scales]}
    prepare_out(out, owned, ("README.txt",), overwrite)
    total = len(paths)
    sources: list[str] = []
    start = time.perf_counter()
    print(f"writing {total} image(s) x{'/x'.join(map(str, scales))} to {out}", flush=True)
    with torch.no_grad():
        for n, path in enumerate(paths, start=1):
            arr = load_rgb(path)
            hr8 = crop_to_multiple(arr, multiple)
            h, w = hr8.shape[:2]
            if min(h, w) < min_side:
                raise ImageReadError(
                    f"image {path} is {arr.shape[1]}x{arr.shape[0]} px; the protocol needs at least {min_side} px "
                    f"after cropping to a multiple of {multiple}"
                )
            params = sampler.sample(1, image_generator(seed, n), "cpu")
            hr_float = to_tensor(hr8)[None].to(device=dev, dtype=torch.float32) / 255
            save_png(hr8, out / "gt" / f"im_{n}.png")
            sizes = []
            for s, deg in degradations.items():
                result = deg.apply(hr_float, {k: v.to(dev) for k, v in params.items()})
                lr = save_lr_png(result["lr"][0], out / f"lr_x{s}" / f"im_{n}.png")
                exact = result["kernel"].detach().to("cpu", torch.float64)
                stored = block_centre_to_div2krk_kernel(exact, s)
                save_kernel_mat(
                    out / f"gt_k_x{s}" / f"kernel_{n}.mat",
                    {"Kernel": stored[0].numpy(), "KernelBlockCentred": exact[0].numpy()},
                )
                sizes.append(f"x{s} {lr.shape[1]}x{lr.shape[0]} k{exact.shape[-1]}")
            sources.append(f"im_{n}\t{path}\t{w}x{h}")
            print(f"{n}/{total} {path.name} -> im_{n} (HR {w}x{h}; {', '.join(sizes)})", flush=True)
    sizes_by_scale = {s: sampler.kernel_size(s) for s in scales}
    _write_readme(out, hr, scales, seed, sizes_by_scale, protocol, limit, command, sources)
    print(f"done: {total} image(s) in {time.perf_counter() - start:.1f} s -> {out}", flush=True)
    return total


def _write_readme(
    out: Path,
    hr: str | Sequence[str],
    scales: Sequence[int],
    seed: int,
    kernel_sizes: dict[int, int],
    protocol: KernelSetProtocol,
    limit: int | None,
    command: str | None,
    sources: Sequence[str],
) -> None:
    hr_list = [hr] if isinstance(hr, (str, Path)) else list(hr)
    if command is None:
        args = [
            *protocol.protocol_args,
            "--hr",
            *map(str, hr_list),
            "--out",
            str(out),
            "--scales",
            *map(str, scales),
            "--seed",
            str(seed),
            *protocol.options,
        ]
        if limit is not None:
            args += ["--limit", str(limit)]
        command = "python -m datamodules.generate " + shlex.join(args)
    text = "\n".join(
        [
            f"{protocol.name}-protocol test set written by blindsr (python -m datamodules.generate)",
            "",
            f"command: {command}",
            f"seed: {seed}",
            f"source: {', '.join(str(Path(p).expanduser().resolve()) if str(p) != 'builtin' else p for p in hr_list)}",
            f"images: {len(sources)}",
            f"scales: {', '.join(f'x{s} (kernel {kernel_sizes[s]}x{kernel_sizes[s]})' for s in scales)}",
            *protocol.kernel_lines,
            "",
            "protocol: image N (sorted source order, from 1) uses a torch.Generator seeded from (seed, N). HR cropped",
            f"top-left to a multiple of {math.lcm(*scales)}. LR = HR correlated with the block-centred kernel",
            "(symmetric border: scipy's 'reflect'), every s-th pixel from 0, rounded to 8 bit. No noise, no bicubic.",
            "",
            "kernels: gt_k_x{s}/kernel_N.mat, float64. 'Kernel' is centred on the middle pixel, as the DIV2KRK",
            "release stores its kernels (the block-centred kernel shifted by -0.5*(s-1) px, bilinear, renormalised);",
            "'KernelBlockCentred' is the exact kernel that made the LR image. Evaluate on the LR files; compare",
            "estimated kernels with 'Kernel' after aligning centres, as for DIV2KRK.",
            "",
            "files: gt/im_N.png  lr_x{s}/im_N.png  gt_k_x{s}/kernel_N.mat",
            "",
            "name\tsource\tHR size (after crop)",
            *sources,
            "",
        ]
    )
    (out / "README.txt").write_text(text, encoding="utf-8")

"""The KOALAnet-protocol writer: any folder of HR images -> KOALAnet's "random anisotropic Gaussian" test sets.

Usage::

    python -m datamodules.generate --protocol koalanet --hr /path/Set5 --out /path/Set5_koala --scales 2 4 --seed 0

KOALAnet (Kim et al., CVPR 2021, Sec. 4) tests on Set5, Set14, BSD100, Urban100, Manga109 and DIV2K-val degraded
like its training data, "assigning different random seed values" to different images. This writes such a set:

* images in sorted order, numbered from 1; image ``N`` draws ``sigma_x, sigma_y ~ U(sigma_min, sigma_max)``
  (standard deviations, independent) and ``theta ~ U(0, pi/2)`` once, from ``image_generator(seed, N)`` (a seed per
  image, so ``--limit`` gives the same images as a full run); the official code seeds image ``n`` of its validation
  set with ``3n, 3n + 1, 3n + 2`` in numpy, which we do not reproduce;
* kernel: the 15x15 Gaussian convolved with the 20x20 non-antialiased bicubic kernel (``KOALAKernelSampler``); the
  same draw serves x2 and x4;
* HR cropped top-left to a multiple of the lcm of the scales; LR = the official degradation (symmetric padding by
  ``(20 - s) / 2``, stride-``s`` correlation), rounded to 8 bit; no noise.

The layout, seeding and files are the div2krk protocol's (``write_kernel_set`` of ``datamodules.generate.div2krk``
does the writing), with the KOALAnet kernel expressed block-centred (``KOALAKernelSampler(centre="block")``: zero-padded
by ``s - 1`` rows and columns at the top and left to 21x21 at x2 and 23x23 at x4, which gives the same LR decimated
from pixel 0). So ``KernelBlockCentred`` in each ``.mat`` file is the exact kernel that ``datamodules.test_sets`` hands
out, in the convention of every other set; ``block_centre_to_koala`` crops it back to KOALAnet's native 20x20 kernel
(exact), the ground truth of KOALAnet's Table 4. ``Kernel`` is stored the DIV2KRK way (moved to the middle pixel by a
bilinear shift), as in every set of this layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datamodules.degradation.koala_sampler import KOALAKernelSampler
from datamodules.generate.div2krk import KernelSetProtocol, write_kernel_set


def generate_koalanet(
    hr: str | Sequence[str],
    out: str | Path,
    scales: Sequence[int] = (2, 4),
    seed: int = 0,
    sigma_range: tuple[float, float] = (0.2, 4.0),
    limit: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    command: str | None = None,
) -> int:
    """Write a KOALAnet-protocol set (see the module docstring); prints ``N/total name`` per image.

    Args:
        hr: HR folder(s) / files / ``"builtin"`` (``images.find_images``).
        out: Output folder.
        scales: Subset of ``(2, 4)``.
        seed: Non-negative base seed.
        sigma_range: ``(sigma_min, sigma_max)`` of both standard deviations, in HR pixels.
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
    lo, hi = sigma_range
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < sigma-min <= sigma-max, got {tuple(sigma_range)}")
    sampler = KOALAKernelSampler(sigma_range=(lo, hi), centre="block")
    protocol = KernelSetProtocol(
        name="KOALAnet",
        protocol_args=("--protocol", "koalanet"),
        options=("--sigma-min", str(lo), "--sigma-max", str(hi)),
        kernel_lines=(
            f"kernel draw: 15x15 anisotropic Gaussian, standard deviations sigma_x, sigma_y ~ U({lo}, {hi}) drawn",
            "independently, theta ~ U(0, pi/2), convolved with the 20x20 non-antialiased bicubic kernel (KOALAnet,",
            "Kim et al. CVPR 2021, Sec. 4). One draw per image serves x2 and x4. The LR equals KOALAnet's",
            "degradation (symmetric padding by (20-s)/2, stride-s correlation). The block-centred kernel is the",
            "native 20x20 kernel zero-padded by s-1 rows and columns at the top and left (21x21 at x2, 23x23 at",
            "x4); datamodules.degradation.koala_sampler.block_centre_to_koala crops it back (exact).",
        ),
    )
    return write_kernel_set(hr, out, sampler, protocol, scales, seed, limit, device, overwrite, command)

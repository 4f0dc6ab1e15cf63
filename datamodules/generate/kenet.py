"""The KENet-protocol writer: any folder of HR images -> a DIV2KRK-layout set with KENet's kernels (x2 and x4).

Usage::

    python -m datamodules.generate --protocol kenet --hr /path/Set5 --out /path/Set5_kenet --scales 2 4 --seed 0

KENet (Cao et al., Sec. 3.1) synthesises its data "following" FKP: anisotropic Gaussians with
"kernel widths" ``sigma1, sigma2 in [0.2, 4.0]`` and angle in ``[0, pi]``, 11x11 at x2 and 21x21 at x4. The paper
publishes no test set, so this writes one by that description (``KENetKernelSampler``; its docstring says what is
followed from FKP's generator and what differs):

* images in sorted order, numbered from 1; image ``N`` draws ``sigma1, sigma2 ~ U(sigma_min, sigma_max)`` (standard
  deviations, independent), ``theta ~ U(0, pi)`` once, from ``image_generator(seed, N)`` as the div2krk protocol
  does; the same draw gives the 11x11 x2 kernel and the 21x21 x4 kernel (centre of mass moved onto the block centre of
  each scale, as FKP's ``kernel_shift`` does; no kernel noise);
* HR cropped top-left to a multiple of the lcm of the scales, correlated with the kernel (symmetric border),
  decimated from pixel 0, rounded to 8 bit; no noise.

The layout, the two kernels of each ``.mat`` file (``Kernel`` stored the DIV2KRK way, on the middle pixel;
``KernelBlockCentred``, the exact one) and the reproducibility are those of the div2krk protocol
(``datamodules.generate.div2krk``, whose ``write_kernel_set`` does the writing); ``datamodules.test_sets`` reads the
set like DIV2KRK, handing out the exact block-centred kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datamodules.degradation.samplers import KENetKernelSampler
from datamodules.generate.div2krk import KernelSetProtocol, write_kernel_set


def generate_kenet(
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
    """Write a KENet-protocol set (see the module docstring); prints ``N/total name`` per image.

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
    sampler = KENetKernelSampler(sigma_range=(lo, hi))
    k2, k4 = sampler.kernel_size(2), sampler.kernel_size(4)
    protocol = KernelSetProtocol(
        name="KENet",
        protocol_args=("--protocol", "kenet"),
        options=("--sigma-min", str(lo), "--sigma-max", str(hi)),
        kernel_lines=(
            f"kernel draw: anisotropic Gaussians, standard deviations sigma1, sigma2 ~ U({lo}, {hi}) drawn",
            "independently, theta ~ U(0, pi), centre of mass moved onto the block centre (FKP's kernel_shift), no",
            "kernel noise (KENet, Cao et al., Sec. 3.1; FKP's generator with standard deviations for its",
            f"variances). One draw per image gives the {k2}x{k2} x2 and the {k4}x{k4} x4 kernel (the same",
            "Gaussian, cut by each support).",
        ),
    )
    return write_kernel_set(hr, out, sampler, protocol, scales, seed, limit, device, overwrite, command)

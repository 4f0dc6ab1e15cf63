"""Degradation parameter samplers: draw named per-sample tensors from a ``torch.Generator``; never apply anything.

A kernel sampler has ``sample(batch_size, generator, device) -> params`` (named ``(B, ...)`` tensors),
``kernels(params, scale) -> (B, k, k)`` (deterministic), ``kernel_size(scale)`` and the attribute ``centre``, which
the pipeline needs to align decimation (``kernels.decimation_phase``). The scale belongs to the pipeline (it is
linked from the DataModule's ``scale``), so a sampler's configuration never repeats it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from datamodules.degradation.kernels import (
    Centre,
    Param,
    compose_x2_twice,
    gaussian_kernels,
    kernel_mean,
    parameter_grid,
    recentre_kernels,
)


def uniform(lo: float, hi: float, batch_size: int, generator: torch.Generator | None, device) -> Tensor:
    """``(B,)`` draws from ``U(lo, hi)``."""
    return lo + (hi - lo) * torch.rand(batch_size, generator=generator, device=device)


def gaussian_noise_field(
    shape: Sequence[int], std: Tensor, gray: Tensor, generator: torch.Generator | None, device
) -> Tensor:
    """Additive white Gaussian noise ``(B, C, H, W)`` with per-sample ``std`` (``[0, 1]`` units) ``(B,)``.

    Samples with ``gray`` ``(B,)`` True share one noise plane across channels.
    """
    bsz = shape[0]
    colour = torch.randn(tuple(shape), generator=generator, device=device)
    mono = colour[:, :1].expand_as(colour)
    field = torch.where(gray.view(bsz, 1, 1, 1).to(device), mono, colour)
    return field * std.view(bsz, 1, 1, 1).to(device)


class DIV2KRKKernelSampler:
    """The DIV2KRK protocol (KernelGAN, NeurIPS 2019): random anisotropic Gaussians with multiplicative noise.

    x2: a ``kernel_size`` (11) kernel with variances ``lambda1, lambda2 ~ U(lambda_range)`` (sorted so that
    ``lambda1 >= lambda2``, which leaves the distribution of kernels unchanged because ``theta ~ U(0, pi)``),
    block-centred, times per-pixel multiplicative noise ``1 + U(-n, n)``, then (``recentre``) shifted so that its
    centre of mass is the block centre again, as KernelGAN's generator does (``kernel_shift``; without it the noise and
    the truncated support move the centre of mass by up to 0.11 px), normalised, applied by correlation. x4: that x2
    kernel applied twice (``compose_x2_twice``: 31x31 for 11; its centre of mass is then the x4 block centre).

    The noise level ``n`` is drawn per kernel, ``n ~ U(0, max_kernel_noise)``: our reading of the paper's "up to
    25 %"; the public generator (assafshocher/BlindSR_dataset_generator) uses one fixed level, 0.4, for every kernel.

    Args:
        kernel_size: Side of the x2 kernel (DIV2KRK: 11; MoESR's experts: 13).
        lambda_range: Range of the covariance eigenvalues (the paper's ``(0.6, 5)``).
        max_kernel_noise: Upper bound of the per-kernel noise level ``n`` (the paper's "up to 25 %").
        recentre: Move each x2 kernel's centre of mass to the block centre after the noise
            (``kernels.recentre_kernels``: a linear-interpolation shift, where KernelGAN's ``kernel_shift`` uses
            scipy's cubic spline; a shift ``f`` adds ``f (1 - f)`` px^2 of variance: 0.1 at the largest shift,
            0.11 px, about 0.02 at the mean, 0.02 px). ``False``: the kernels of versions before issue 11.
    """

    centre: Centre = "block"

    def __init__(
        self,
        kernel_size: int = 11,
        lambda_range: tuple[float, float] = (0.6, 5.0),
        max_kernel_noise: float = 0.25,
        recentre: bool = True,
    ) -> None:
        if kernel_size % 2 == 0:
            raise ValueError(f"DIV2KRK kernels are odd-sized, got {kernel_size}")
        self.base_size = kernel_size
        self.lambda_range = lambda_range
        self.max_kernel_noise = max_kernel_noise
        self.recentre = recentre

    def kernel_size(self, scale: int) -> int:
        """Side of the kernels at ``scale``: ``k`` at x2, ``3k - 2`` at x4."""
        if scale not in (2, 4):
            raise ValueError(f"the DIV2KRK protocol is defined for x2 and x4, got x{scale}")
        return self.base_size if scale == 2 else 3 * self.base_size - 2

    def sample(self, batch_size: int, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """Draw ``lambda1, lambda2, theta`` ``(B,)`` and ``kernel_noise`` ``(B, k2, k2)`` for the x2 kernel."""
        lo, hi = self.lambda_range
        l1 = uniform(lo, hi, batch_size, generator, device)
        l2 = uniform(lo, hi, batch_size, generator, device)
        theta = uniform(0.0, math.pi, batch_size, generator, device)
        level = uniform(0.0, self.max_kernel_noise, batch_size, generator, device)
        k = self.base_size
        noise = (2 * torch.rand(batch_size, k, k, generator=generator, device=device) - 1) * level[:, None, None]
        return {
            "lambda1": torch.maximum(l1, l2),
            "lambda2": torch.minimum(l1, l2),
            "theta": theta,
            "kernel_noise": noise,
        }

    def kernels(self, params: dict[str, Tensor], scale: int) -> Tensor:
        """``(B, k, k)`` kernels from ``sample``'s parameters (x4: the x2 kernel composed with itself)."""
        self.kernel_size(scale)
        k2 = gaussian_kernels(
            self.base_size, params["lambda1"], params["lambda2"], params["theta"],
            param="var", centre="block", scale=2, noise=params.get("kernel_noise"),
        )  # fmt: skip
        if self.recentre:
            k2 = recentre_kernels(k2, kernel_mean(self.base_size, 2, "block"))
        return k2 if scale == 2 else compose_x2_twice(k2)


class KernelBankSampler:
    """Uniform draws from a fixed bank of Gaussian kernels (a grid of parameters, computed once).

    Args:
        kernel_size: Kernel side.
        a: First variance (``param="var"``) or standard deviation (``"std"``) of each bank entry, or of each grid
            level when ``product`` is True.
        b: Second variance / standard deviation, same rules.
        theta: Angle in radians, same rules.
        param: ``"var"`` or ``"std"``.
        centre: ``"block"`` or ``"pixel"``.
        product: Take the Cartesian product of ``a x b x theta`` (True) or zip them (False: equal lengths).
    """

    def __init__(
        self,
        kernel_size: int = 11,
        a: Sequence[float] = (0.75, 1.5, 2.25, 3.0),
        b: Sequence[float] = (0.75, 1.5, 2.25, 3.0),
        theta: Sequence[float] = (0.0,),
        param: Param = "var",
        centre: Centre = "block",
        product: bool = True,
    ) -> None:
        if product:
            grid = parameter_grid(a=a, b=b, theta=theta)
        else:
            if not len(a) == len(b) == len(theta):
                raise ValueError(f"zipped bank needs equal lengths, got {len(a)}, {len(b)}, {len(theta)}")
            grid = {n: torch.tensor(list(v), dtype=torch.float32) for n, v in (("a", a), ("b", b), ("theta", theta))}
        self.size = kernel_size
        self.centre = centre
        self.param = param
        self.grid = grid
        self._banks: dict[int, Tensor] = {}
        self._on_device: dict[tuple, Tensor] = {}  # grid and banks copied once per device (no per-batch copies)

    def __len__(self) -> int:
        return self.grid["a"].shape[0]

    def kernel_size(self, scale: int) -> int:
        """Side of the bank's kernels (the same at every scale)."""
        return self.size

    def bank(self, scale: int) -> Tensor:
        """The ``(N, k, k)`` bank for ``scale`` (computed once per scale: block centres depend on it)."""
        if scale not in self._banks:
            g = self.grid
            self._banks[scale] = gaussian_kernels(
                self.size, g["a"], g["b"], g["theta"], param=self.param, centre=self.centre, scale=scale
            )
        return self._banks[scale]

    def _on(self, key: str | int, device: torch.device) -> Tensor:
        """The grid column ``key`` (str) or the bank of scale ``key`` (int), copied to ``device`` once."""
        cache_key = (key, torch.device(device))
        if cache_key not in self._on_device:
            value = self.grid[key] if isinstance(key, str) else self.bank(key)
            self._on_device[cache_key] = value.to(device)
        return self._on_device[cache_key]

    def sample(self, batch_size: int, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """Draw ``kernel_index`` ``(B,)`` uniformly; also return the entry's named parameters (all on ``device``)."""
        idx = torch.randint(len(self), (batch_size,), generator=generator, device=device)
        names = ("lambda1", "lambda2") if self.param == "var" else ("sigma_x", "sigma_y")
        return {
            "kernel_index": idx,
            names[0]: self._on("a", idx.device)[idx],
            names[1]: self._on("b", idx.device)[idx],
            "theta": self._on("theta", idx.device)[idx],
        }

    def kernels(self, params: dict[str, Tensor], scale: int) -> Tensor:
        """``(B, k, k)`` bank entries for ``params["kernel_index"]``."""
        idx = params["kernel_index"]
        return self._on(scale, idx.device)[idx]


RECENTRE_ITERATIONS = 10
"""Passes of ``recentre_kernels`` in ``KENetKernelSampler(recentre=True)`` (2 leave 0.36 px at x2, sigma 4)."""


class KENetKernelSampler:
    """KENet's training kernels (Cao et al., Sec. 3.1): anisotropic Gaussians, 11x11 at x2, 21x21 at x4.

    Standard deviations ``sigma1, sigma2 ~ U(sigma_range)`` drawn independently (not sorted), angle
    ``theta ~ U(0, pi)`` of the ``sigma1`` axis from the x (column) axis, the Gaussian's mean on the block centre
    ``k // 2 + 0.5 * (s - 1)`` (``centre = "block"``), normalised to sum 1 and applied by correlation with
    decimation from pixel 0, so a bicubic-upsampled LR lines up with its HR. One draw serves every scale: the
    kernel side and block centre follow the scale.

    Followed from FKP (JingyunLiang/FKP ``data/prepare_dataset.py``, the generator KENet cites as [10]): two
    independent widths, ``theta ~ U(0, pi)``, no kernel noise by default (its ``--noise_ker`` defaults to 0), a kernel
    centred so that the LR aligns. FKP builds the Gaussian on the block centre, then (``kernel_shift``) moves its centre
    of mass to ``(k - s) / 2``, the mirror of the block centre, and blurs with ``F.conv2d``, which is a correlation:
    its LR is shifted by ``s - 1`` px against a bicubic upsample. We keep the aligned block-centred convention; our
    kernel is FKP's rotated by 180 degrees (the same Gaussian, point-symmetric about its mean; up to FKP's
    recentring of kernels cut by the support, below).

    Differs from FKP: FKP's widths are covariance eigenvalues (variances) in ``[0.175 s, min(2.5 s, 10)]``; KENet
    states "kernel width" ``sigma in [0.2, 4.0]``, which we read as standard deviations. FKP's ``kernel_shift`` also
    moves the centre of mass of every kernel exactly onto its target, which for wide kernels cut by the support
    (``sigma`` near 4 at 11x11) compensates the truncation; here the Gaussian's *mean* is on the block centre and the
    centre of mass of such a kernel lies nearer the middle pixel, unless ``recentre`` is set. Measured over 20,000
    draws: within 0.04 px of the block centre while both sigmas are <= 2 (x2) or <= 3 (x4), at most 0.60 px (x2) and
    0.20 px (x4) off at sigma 4, which shifts that LR by as much against its HR.

    Args:
        sigma_range: ``(lo, hi)`` of both standard deviations, in HR pixels (the paper's ``(0.2, 4.0)``).
        kernel_size_x2: Odd kernel side at x2 (the paper: 11).
        kernel_size_x4: Odd kernel side at x4 (the paper: 21).
        max_kernel_noise: If > 0, per-pixel multiplicative noise ``1 + U(-n, n)`` with ``n ~ U(0, max_kernel_noise)``
            per kernel, as DIV2KRK (``DIV2KRKKernelSampler``); one ``(K, K)`` field for the larger side ``K``,
            centre-cropped to the smaller. Default 0: none, as FKP and KENet.
        recentre: Move each kernel's centre of mass onto the block centre (``kernels.recentre_kernels``,
            ``RECENTRE_ITERATIONS`` passes: mass pushed off the support slows it down; residual at most 0.025 px at
            x2, 4e-6 px at x4 over 20,000 draws), as FKP's ``kernel_shift`` does for its own centre (default: on, as
            FKP; off keeps the Gaussian's mean on the block centre and leaves wide kernels' LR shifted).
    """

    centre: Centre = "block"

    def __init__(
        self,
        sigma_range: tuple[float, float] = (0.2, 4.0),
        kernel_size_x2: int = 11,
        kernel_size_x4: int = 21,
        max_kernel_noise: float = 0.0,
        recentre: bool = True,
    ) -> None:
        if not 0 < sigma_range[0] <= sigma_range[1]:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {tuple(sigma_range)}")
        for size in (kernel_size_x2, kernel_size_x4):
            if size < 1 or size % 2 == 0:
                raise ValueError(f"KENet kernels are odd-sized (block centre, decimation from pixel 0), got {size}")
        if not 0 <= max_kernel_noise < 1:
            raise ValueError(f"max_kernel_noise must be in [0, 1), got {max_kernel_noise}")
        self.sigma_range = (float(sigma_range[0]), float(sigma_range[1]))
        self.sizes = {2: kernel_size_x2, 4: kernel_size_x4}
        self.max_kernel_noise = max_kernel_noise
        self.recentre = recentre

    def kernel_size(self, scale: int) -> int:
        """Side of the kernels at ``scale`` (2 or 4)."""
        if scale not in self.sizes:
            raise ValueError(f"KENet's kernels are defined for x2 and x4, got x{scale}")
        return self.sizes[scale]

    def sample(self, batch_size: int, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """Draw ``sigma1, sigma2, theta`` ``(B,)`` (and ``kernel_noise`` ``(B, K, K)`` if ``max_kernel_noise > 0``)."""
        lo, hi = self.sigma_range
        params = {
            "sigma1": uniform(lo, hi, batch_size, generator, device),
            "sigma2": uniform(lo, hi, batch_size, generator, device),
            "theta": uniform(0.0, math.pi, batch_size, generator, device),
        }
        if self.max_kernel_noise > 0:
            level = uniform(0.0, self.max_kernel_noise, batch_size, generator, device)
            k = max(self.sizes.values())
            field = 2 * torch.rand(batch_size, k, k, generator=generator, device=device) - 1
            params["kernel_noise"] = field * level[:, None, None]
        return params

    def kernels(self, params: dict[str, Tensor], scale: int) -> Tensor:
        """``(B, k, k)`` block-centred kernels at ``scale`` from ``sample``'s parameters (deterministic)."""
        size = self.kernel_size(scale)
        noise = params.get("kernel_noise")
        if noise is not None:
            cut = (noise.shape[-1] - size) // 2
            noise = noise[:, cut : cut + size, cut : cut + size]
        k = gaussian_kernels(
            size, params["sigma1"], params["sigma2"], params["theta"],
            param="std", centre="block", scale=scale, noise=noise,
        )  # fmt: skip
        if self.recentre:
            k = recentre_kernels(k, kernel_mean(size, scale, "block"), iterations=RECENTRE_ITERATIONS)
        return k

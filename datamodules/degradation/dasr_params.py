"""DASR's three-level degradation space (Liang et al., ECCV 2022): the ranges, and a sampler of named parameters.

The paper splits the space into ``S1`` (weak, one stage), ``S2`` (standard, one stage) and ``S3`` (severe, two
stages, Real-ESRGAN style), drawn with probabilities 0.3 / 0.3 / 0.4. The ranges below are the official
``train_DASR.yml`` values (``reference/official_code_facts.md`` section 5); ``pipelines.dasr`` applies them and
``dasr_vector`` turns the named parameters into the 33-number regression target.

What is drawn per batch and what per sample
-------------------------------------------
The official code (``DASRModel.feed_data``, read in csjliang/DASR) draws ONE level per batch
(``random.choices(degree_list, degree_prob)``) and, inside it, one resize direction / scale / mode per stage and one
final-resize mode per batch; kernels, noise greyness and JPEG qualities are per sample; the Gaussian-or-Poisson
choice, the second-blur coin and the order of the final steps are per batch there too. Resizing changes the
intermediate image size, so per-sample scales cannot run as one batched tensor op. We draw **the level, both resize
scales and modes and the final-resize mode per batch** (as the official code) and store them broadcast as ``(B,)``
tensors, so that validation can gather them per sample index; everything else is drawn **per sample** (the noise
type, the second-blur coin and the final order included: they do not change sizes, so per-sample draws cost
nothing and give more varied batches). ``pipelines.dasr.DASRDegradation.apply`` groups samples with identical
per-batch values and runs each group as one batch (a loop over groups, never over samples), so a batch gathered
from several draws (validation with repeats) still works.

Kernel sizes: the official draws ``2v + 1`` for ``v in range(ceil(7 / 2), ceil(21 / 2))``, i.e. ``{9, ..., 21}``:
the nominal minimum 7 is never drawn (the same holds for the final sinc filter). ``kernel_sizes`` makes the set
explicit; its default is that official effective set, pass ``(7, 9, ..., 21)`` for the nominal one.

Named parameters (every tensor ``(B,)``; ``sample`` returns them on the given device)
-------------------------------------------------------------------------------------
Absent steps are explicit: integer categories use ``-1``, sizes ``0``, continuous values ``0``, flags ``False``.

* ``level``: 0 weak (S1, Level-I), 1 standard (S2, II), 2 severe (S3, III) (per batch).
* ``kernel1_size`` (odd side, zero-padded to 21 when applied), ``kernel1_iso`` (p 0.65: ``sigma_y = sigma_x``,
  ``theta = 0``), ``kernel1_sigma_x``, ``kernel1_sigma_y`` (standard deviations along the principal axes, HR
  pixels), ``kernel1_theta`` (angle of the ``sigma_x`` axis from the x (column) axis, in ``[-pi, pi]``).
* ``resize1_scale``, ``resize1_mode`` (0 area, 1 bilinear, 2 bicubic) (per batch).
* ``noise1_type`` (0 Gaussian, p 0.5; 1 Poisson), ``noise1_gray`` (the same noise on all channels, p 0.4),
  ``noise1_sigma`` (Gaussian standard deviation in 8-bit levels; 0 when Poisson), ``noise1_poisson_scale`` (0 when
  Gaussian), ``noise1_seed`` (seed of this sample's noise draw, see ``pipelines.dasr``).
* ``jpeg1_quality``.
* Severe only: ``blur2_applied`` (p 0.8) and ``kernel2_*`` as ``kernel1_*`` (all 0 / False when not applied);
  ``resize2_scale``, ``resize2_mode`` (per batch; target size ``(H / s) * scale``); ``noise2_*``; ``jpeg2_quality``;
  ``final_order`` (0: resize + sinc then JPEG, 1: JPEG then resize + sinc, p 0.5 each); ``sinc_applied`` (p 0.8),
  ``sinc_size``, ``sinc_cutoff`` (``omega_c`` in ``[pi/3, pi]``). For the one-stage levels they are all absent:
  ``resize2_mode``, ``noise2_type``, ``final_order`` -1; sizes, scales, sigmas, qualities, seeds 0; flags False.
* ``final_mode``: mode of the final resize to ``H / s`` (per batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

RESIZE_MODES = ("area", "bilinear", "bicubic")
"""Resize modes, in the order of their index (``resize1_mode`` etc.) and of the vector's one-hot codes."""
LEVEL_NAMES = ("I", "II", "III")
"""The paper's names of the levels (Level-I, II, III = weak, standard, severe)."""
PER_BATCH = ("level", "resize1_scale", "resize1_mode", "resize2_scale", "resize2_mode", "final_mode")
"""The parameters drawn once per batch; ``DASRDegradation.apply`` groups samples on them."""


@dataclass(frozen=True)
class StageRanges:
    """One degradation stage (blur, resize, noise, JPEG) of one level.

    Args:
        sigma: Range of the Gaussian kernel's standard deviations, HR pixels.
        resize_prob: Probabilities of resizing up, down, or keeping the size.
        resize_range: ``(lo, hi)``: up draws ``U(1, hi)``, down ``U(lo, 1)``.
        gaussian_noise_prob: Probability of Gaussian (else Poisson) noise.
        noise_range: Gaussian standard deviation range, 8-bit levels.
        poisson_range: Poisson scale range.
        gray_noise_prob: Probability that the noise is the same on all channels.
        jpeg_range: JPEG quality range.
    """

    sigma: tuple[float, float]
    resize_prob: tuple[float, float, float]
    resize_range: tuple[float, float]
    noise_range: tuple[float, float]
    poisson_range: tuple[float, float]
    jpeg_range: tuple[float, float]
    gaussian_noise_prob: float = 0.5
    gray_noise_prob: float = 0.4


@dataclass(frozen=True)
class LevelRanges:
    """One level of the space: one stage, or two stages with a second blur and a final sinc filter.

    Args:
        name: ``"weak"``, ``"standard"`` or ``"severe"``.
        stage1: The first (or only) stage.
        stage2: The second stage (``None``: one-stage level).
        second_blur_prob: Probability of the second stage's blur.
        final_sinc_prob: Probability of the final sinc filter.
    """

    name: str
    stage1: StageRanges
    stage2: StageRanges | None = None
    second_blur_prob: float = 0.0
    final_sinc_prob: float = 0.0


WEAK = LevelRanges(
    "weak",
    StageRanges((0.2, 0.8), (0.1, 0.2, 0.7), (0.85, 1.2), (1.0, 10.0), (0.05, 0.5), (90.0, 95.0)),
)
STANDARD = LevelRanges(
    "standard",
    StageRanges((0.2, 1.5), (0.3, 0.4, 0.3), (0.5, 1.2), (1.0, 20.0), (0.05, 1.5), (50.0, 95.0)),
)
SEVERE = LevelRanges(
    "severe",
    StageRanges((0.2, 3.0), (0.2, 0.7, 0.1), (0.15, 1.5), (1.0, 30.0), (0.05, 3.0), (30.0, 95.0)),
    StageRanges((0.2, 1.5), (0.3, 0.4, 0.3), (0.3, 1.2), (1.0, 25.0), (0.05, 2.5), (30.0, 95.0)),
    second_blur_prob=0.8,
    final_sinc_prob=0.8,
)
OFFICIAL_LEVELS = (WEAK, STANDARD, SEVERE)
OFFICIAL_LEVEL_PROBS = (0.3, 0.3, 0.4)
OFFICIAL_KERNEL_SIZES = tuple(range(9, 22, 2))
"""The sizes the official code draws (``{9, ..., 21}``; its nominal range 7..21 never gives 7)."""
MAX_KERNEL_SIZE = 21
"""Kernels are zero-padded to 21 x 21 when applied, as in the official code."""
SINC_CUTOFF_RANGE = (math.pi / 3, math.pi)
THETA_RANGE = (-math.pi, math.pi)


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator | None, device) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def _pick(probs: Sequence[float], u: float) -> int:
    """The index ``i`` whose cumulative-probability bin holds the uniform draw ``u``."""
    total, edge = float(sum(probs)), 0.0
    for i, p in enumerate(probs[:-1]):
        edge += p / total
        if u < edge:
            return i
    return len(probs) - 1


def _resize_scale(r: StageRanges, u_direction: float, u_scale: float) -> float:
    """Up ``U(1, hi)``, down ``U(lo, 1)`` or keep (1), with the stage's probabilities."""
    direction = _pick(r.resize_prob, u_direction)
    lo, hi = r.resize_range
    return 1 + u_scale * (hi - 1) if direction == 0 else lo + u_scale * (1 - lo) if direction == 1 else 1.0


class DASRSampler:
    """Draws DASR's named per-sample parameters (module docstring) from a ``torch.Generator``; applies nothing.

    Args:
        levels: The three levels' ranges (weak, standard, severe), default the official ones.
        level_probs: Probabilities of the levels (official 0.3 / 0.3 / 0.4).
        kernel_sizes: Odd kernel sides drawn uniformly for both blurs and the final sinc filter (default the
            official effective set ``{9, ..., 21}``: the official range 7..21 never draws 7, see module docstring).
        iso_prob: Probability of an isotropic Gaussian (official 0.65; else anisotropic).
        sinc_cutoff: Range of the final sinc filter's cut-off ``omega_c``.
    """

    def __init__(
        self,
        levels: Sequence[LevelRanges] = OFFICIAL_LEVELS,
        level_probs: Sequence[float] = OFFICIAL_LEVEL_PROBS,
        kernel_sizes: Sequence[int] = OFFICIAL_KERNEL_SIZES,
        iso_prob: float = 0.65,
        sinc_cutoff: tuple[float, float] = SINC_CUTOFF_RANGE,
    ) -> None:
        if len(levels) != 3 or levels[2].stage2 is None or any(lv.stage2 is not None for lv in levels[:2]):
            raise ValueError("DASR has three levels: two one-stage levels, then a two-stage one")
        if len(level_probs) != 3 or min(level_probs) < 0 or sum(level_probs) <= 0:
            raise ValueError(f"level_probs must be 3 non-negative numbers, got {tuple(level_probs)}")
        sizes = tuple(int(k) for k in kernel_sizes)
        if not sizes or any(k % 2 == 0 or not 3 <= k <= MAX_KERNEL_SIZE for k in sizes):
            raise ValueError(f"kernel_sizes must be odd sides in 3..{MAX_KERNEL_SIZE}, got {tuple(kernel_sizes)}")
        self.levels = tuple(levels)
        self.level_probs = tuple(float(p) for p in level_probs)
        self.kernel_sizes = sizes
        self.iso_prob = iso_prob
        self.sinc_cutoff = sinc_cutoff

    def sample(
        self, batch_size: int, generator: torch.Generator | None, device, level: int | None = None
    ) -> dict[str, Tensor]:
        """Draw the named parameters of a batch.

        Args:
            batch_size: ``B``.
            generator: Source of every draw (on ``device``).
            device: Device of the returned tensors.
            level: Force this level (0 weak, 1 standard, 2 severe) instead of drawing it.

        Returns:
            ``{name: (B,) tensor}`` (module docstring).
        """
        n = batch_size
        # every per-batch draw in one read from the device: level, then (direction, scale, mode) of both resizes
        # and the final mode
        u = torch.rand(8, generator=generator, device=device).tolist()
        lv = _pick(self.level_probs, u[0]) if level is None else int(level)
        if lv not in (0, 1, 2):
            raise ValueError(f"level must be 0, 1 or 2, got {level}")
        ranges = self.levels[lv]

        def full(value, dtype=torch.float32) -> Tensor:
            return torch.full((n,), value, dtype=dtype, device=device)

        p: dict[str, Tensor] = {"level": full(lv, torch.long)}
        p.update(self._kernel("kernel1", ranges.stage1.sigma, n, generator, device))
        p.update({"resize1_scale": full(_resize_scale(ranges.stage1, u[1], u[2]))})
        p.update({"resize1_mode": full(_pick((1, 1, 1), u[3]), torch.long)})
        p.update(self._noise_jpeg("1", ranges.stage1, n, generator, device))
        if ranges.stage2 is not None:
            applied = torch.rand(n, generator=generator, device=device) < ranges.second_blur_prob
            kernel2 = self._kernel("kernel2", ranges.stage2.sigma, n, generator, device)
            p["blur2_applied"] = applied
            p.update({k: v & applied if v.dtype == torch.bool else v * applied for k, v in kernel2.items()})
            p["resize2_scale"] = full(_resize_scale(ranges.stage2, u[4], u[5]))
            p["resize2_mode"] = full(_pick((1, 1, 1), u[6]), torch.long)
            p.update(self._noise_jpeg("2", ranges.stage2, n, generator, device))
            p["final_order"] = (torch.rand(n, generator=generator, device=device) < 0.5).long()
            sinc = torch.rand(n, generator=generator, device=device) < ranges.final_sinc_prob
            p["sinc_applied"] = sinc
            p["sinc_size"] = self._sizes(n, generator, device) * sinc
            p["sinc_cutoff"] = _uniform(*self.sinc_cutoff, n, generator, device) * sinc
        else:
            p.update(self._absent_stage2(n, device))
        p["final_mode"] = full(_pick((1, 1, 1), u[7]), torch.long)
        return p

    def _sizes(self, n: int, generator: torch.Generator | None, device) -> Tensor:
        idx = torch.randint(len(self.kernel_sizes), (n,), generator=generator, device=device)
        return torch.tensor(self.kernel_sizes, dtype=torch.long, device=device)[idx]

    def _kernel(
        self, prefix: str, sigma: tuple[float, float], n: int, generator: torch.Generator | None, device
    ) -> dict[str, Tensor]:
        """Size, iso flag, ``sigma_x``, ``sigma_y``, ``theta`` of ``n`` Gaussians (iso: ``sigma_y = sigma_x``, 0)."""
        size = self._sizes(n, generator, device)
        iso = torch.rand(n, generator=generator, device=device) < self.iso_prob
        sx = _uniform(*sigma, n, generator, device)
        sy = _uniform(*sigma, n, generator, device)
        theta = _uniform(*THETA_RANGE, n, generator, device)
        return {
            f"{prefix}_size": size,
            f"{prefix}_iso": iso,
            f"{prefix}_sigma_x": sx,
            f"{prefix}_sigma_y": torch.where(iso, sx, sy),
            f"{prefix}_theta": torch.where(iso, torch.zeros_like(theta), theta),
        }

    def _noise_jpeg(
        self, stage: str, r: StageRanges, n: int, generator: torch.Generator | None, device
    ) -> dict[str, Tensor]:
        """Noise and JPEG quality (per sample) of one stage."""
        poisson = torch.rand(n, generator=generator, device=device) >= r.gaussian_noise_prob
        gray = torch.rand(n, generator=generator, device=device) < r.gray_noise_prob
        sigma = _uniform(*r.noise_range, n, generator, device)
        pscale = _uniform(*r.poisson_range, n, generator, device)
        return {
            f"noise{stage}_type": poisson.long(),
            f"noise{stage}_gray": gray,
            f"noise{stage}_sigma": torch.where(poisson, torch.zeros_like(sigma), sigma),
            f"noise{stage}_poisson_scale": torch.where(poisson, pscale, torch.zeros_like(pscale)),
            f"noise{stage}_seed": torch.randint(0, 2**62, (n,), generator=generator, device=device),
            f"jpeg{stage}_quality": _uniform(*r.jpeg_range, n, generator, device),
        }

    @staticmethod
    def _absent_stage2(n: int, device) -> dict[str, Tensor]:
        """The second stage's entries of a one-stage level, every one explicitly absent."""

        def zeros(dtype=torch.float32):
            return torch.zeros(n, dtype=dtype, device=device)

        def minus_one():
            return torch.full((n,), -1, dtype=torch.long, device=device)

        flag = torch.zeros(n, dtype=torch.bool, device=device)
        return {
            "blur2_applied": flag, "kernel2_size": zeros(torch.long), "kernel2_iso": flag.clone(),
            "kernel2_sigma_x": zeros(), "kernel2_sigma_y": zeros(), "kernel2_theta": zeros(),
            "resize2_scale": zeros(), "resize2_mode": minus_one(), "noise2_type": minus_one(),
            "noise2_gray": flag.clone(), "noise2_sigma": zeros(), "noise2_poisson_scale": zeros(),
            "noise2_seed": zeros(torch.long), "jpeg2_quality": zeros(), "final_order": minus_one(),
            "sinc_applied": flag.clone(), "sinc_size": zeros(torch.long), "sinc_cutoff": zeros(),
        }  # fmt: skip


def union_range(values: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The smallest range holding all ``values`` ranges."""
    return (min(v[0] for v in values), max(v[1] for v in values))


def stages(levels: Sequence[LevelRanges] = OFFICIAL_LEVELS) -> list[StageRanges]:
    """Every stage of ``levels`` (both stages of two-stage levels)."""
    return [s for lv in levels for s in (lv.stage1, lv.stage2) if s is not None]

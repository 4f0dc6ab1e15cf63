"""Spatially-variant degradation: the per-pixel correlation against a pixel loop and the classical one, the fields."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.degradation import ops
from datamodules.degradation.koala_sampler import KOALAKernelSampler, koala_gaussian_kernels
from datamodules.degradation.pipelines import ClassicalDegradation
from datamodules.degradation.spatially_variant import (
    FIELDS,
    field_blur_decimate,
    field_kernels,
    local_blur_decimate,
    smooth_random_field,
)


def _symmetric(i: int, n: int) -> int:
    """Half-sample symmetric index (c b a | a b c), for |overshoot| <= n."""
    return -i - 1 if i < 0 else (2 * n - 1 - i if i >= n else i)


def _pixel_loop(x: torch.Tensor, kernels: torch.Tensor, scale: int, phase: int) -> torch.Tensor:
    """Reference: each LR pixel from its own window of the HR image (symmetric border), one pixel at a time."""
    bsz, ch, hh, ww = x.shape
    k = math.isqrt(kernels.shape[1])
    h, w = hh // scale, ww // scale
    out = torch.zeros(bsz, ch, h, w, dtype=x.dtype)
    for b in range(bsz):
        for r in range(h):
            for c in range(w):
                kern = kernels[b, :, r, c].reshape(k, k)
                for a in range(k):
                    for d in range(k):
                        y = _symmetric(scale * r + phase + a - (k - 1) // 2, hh)
                        z = _symmetric(scale * c + phase + d - (k - 1) // 2, ww)
                        out[b, :, r, c] += kern[a, d] * x[b, :, y, z]
    return out


def _constant_field(params: dict[str, torch.Tensor], h: int, w: int) -> torch.Tensor:
    values = torch.stack([params["sigma_x"], params["sigma_y"], params["theta"]], dim=1)  # (B, 3)
    return values[:, :, None, None].expand(-1, -1, h, w).contiguous()


def test_local_correlation_matches_a_pixel_loop():
    gen = torch.Generator().manual_seed(0)
    for k, scale, phase in ((4, 2, 0), (5, 3, 2), (6, 4, 1)):
        x = torch.rand(2, 3, 5 * scale, 4 * scale, generator=gen, dtype=torch.float64)
        kernels = torch.randn(2, k * k, 5, 4, generator=gen, dtype=torch.float64)
        expected = _pixel_loop(x, kernels, scale, phase)
        torch.testing.assert_close(local_blur_decimate(x, kernels, scale, phase), expected, atol=1e-12, rtol=0)


def test_a_repeated_kernel_is_the_spatially_invariant_blur():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 24, 20, generator=gen, dtype=torch.float64)
    kernel = torch.rand(2, 7, 7, generator=gen, dtype=torch.float64)
    kernels = kernel.reshape(2, 49, 1, 1).expand(-1, -1, 8, 6).contiguous()
    for border in ("symmetric", "reflect", "replicate"):
        expected = ops.blur_decimate(x[..., :24, :18], kernel, 3, 1, border=border)
        torch.testing.assert_close(local_blur_decimate(x[..., :24, :18], kernels, 3, 1, border), expected)


@pytest.mark.parametrize("scale", [2, 4])
def test_constant_field_gives_exactly_the_classical_koala_lr(scale):
    """One kernel everywhere == ClassicalDegradation(KOALAKernelSampler()): float64 to 1e-12, 8-bit identical."""
    sampler = KOALAKernelSampler()
    gen = torch.Generator().manual_seed(scale)
    params = {n: v.double() for n, v in sampler.sample(2, gen, "cpu").items()}
    hr = torch.rand(2, 3, 9 * scale, 7 * scale, generator=gen, dtype=torch.float64)
    field = _constant_field(params, 9, 7)
    classical = ClassicalDegradation(scale, kernel_sampler=sampler, quantize=False).apply(hr, params)["lr"]
    variant = field_blur_decimate(hr, field, scale, rows_per_chunk=4)
    torch.testing.assert_close(variant, classical, atol=1e-12, rtol=0)
    assert torch.equal(ops.quantize(variant), ops.quantize(classical))


def test_field_kernels_layout_and_chunking():
    field = FIELDS["defocus"](6, 5, torch.Generator().manual_seed(3)).unsqueeze(0)
    maps = field_kernels(field)
    assert maps.shape == (1, 400, 6, 5) and maps.dtype == torch.float64
    one = koala_gaussian_kernels(field[0, 0, 4, 2:3], field[0, 1, 4, 2:3], field[0, 2, 4, 2:3])[0]
    # channel 20 * row + column (batched convolutions may round the last bit differently)
    torch.testing.assert_close(maps[0, :, 4, 2].reshape(20, 20), one, atol=1e-15, rtol=0)
    assert torch.equal(field_kernels(field[0]), maps[0])
    hr = torch.rand(1, 3, 24, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    whole = local_blur_decimate(hr, maps, 4, phase=1)
    for rows in (1, 4, 100):
        torch.testing.assert_close(field_blur_decimate(hr, field, 4, rows_per_chunk=rows), whole, atol=1e-14, rtol=0)
    with pytest.raises(ValueError, match="field"):
        field_blur_decimate(hr, field[..., :5, :], 4)
    with pytest.raises(ValueError, match="square"):
        local_blur_decimate(hr, maps[:, :399], 4, 1)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_fields_are_in_range_smooth_and_seeded(name):
    make = FIELDS[name]
    for seed in range(6):
        field = make(24, 30, torch.Generator().manual_seed(seed), (0.2, 4.0))
        assert field.shape == (3, 24, 30) and field.dtype == torch.float64
        sx, sy, theta = field
        assert sx.min() >= 0.2 and sy.min() >= 0.2 and sx.max() <= 4.0 and sy.max() <= 4.0
        assert theta.min() >= 0 and theta.max() <= math.pi / 2
        width = (sx * sy).sqrt()
        spread = (width.max() - width.min()).item()
        assert spread > 1.0  # it varies across the image
        step = max((width[1:] - width[:-1]).abs().max().item(), (width[:, 1:] - width[:, :-1]).abs().max().item())
        assert step < 0.45 * spread  # smoothly: no hard edge in one pixel
    a = make(10, 12, torch.Generator().manual_seed(5))
    assert torch.equal(a, make(10, 12, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, make(10, 12, torch.Generator().manual_seed(6)))


def test_defocus_is_sharp_near_its_focus_and_two_regions_have_two_levels():
    field = FIELDS["defocus"](40, 40, torch.Generator().manual_seed(0))
    width = (field[0] * field[1]).sqrt()
    assert width.min() < 0.4 and (field[0] / field[1]).max() < 1.5  # a sharp spot; nearly isotropic
    two = FIELDS["two_region"](40, 40, torch.Generator().manual_seed(0))
    width = (two[0] * two[1]).sqrt()
    sharp, blurry = (width < 0.2 + 0.15 * 3.8 + 1e-6).double().mean(), (width > 0.2 + 0.6 * 3.8 - 0.05).double().mean()
    assert sharp > 0.15 and blurry > 0.15 and sharp + blurry > 0.6  # two plateaus, a thin blend between them
    waves = smooth_random_field(16, 16, torch.Generator().manual_seed(0))
    assert waves.abs().max() <= 1

"""Functional image metrics (MATLAB Y, PSNR-Y, SSIM-Y) against hand-computed values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from datamodules.degradation import ops
from lightning_modules.metrics import PSNR_CLAMP_DB, PSNRY, psnr_y, rgb_to_y_matlab, ssim_y
from tests.metrics.reference import np_y, shave_y, to_torch

# ------------------------------------------------------------------------------------------------------------------
# Y conversion
# ------------------------------------------------------------------------------------------------------------------


def test_rgb_to_y_known_values() -> None:
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    x = colours.view(4, 3, 1, 1).expand(4, 3, 2, 3)
    y = rgb_to_y_matlab(x)
    assert y.shape == (4, 1, 2, 3)
    expected = torch.tensor([235.0, 16.0, 16.0 + 65.481, 16.0 + 128.553], dtype=torch.float64)
    torch.testing.assert_close(y[:, 0, 0, 0], expected, rtol=0, atol=1e-10)
    y_round = rgb_to_y_matlab(x, round_y=True)
    torch.testing.assert_close(y_round[:, 0, 0, 0], torch.tensor([235.0, 16.0, 81.0, 145.0], dtype=torch.float64))


def test_rgb_to_y_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="B, 3, H, W"):
        rgb_to_y_matlab(torch.zeros(1, 1, 4, 4))


# ------------------------------------------------------------------------------------------------------------------
# PSNR / SSIM against scikit-image on the same numpy Y arrays
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shave,round_y", [(2, False), (0, True), (4, False)])
def test_psnr_y_matches_skimage(pairs: tuple[np.ndarray, np.ndarray], shave: int, round_y: bool) -> None:
    srs, hrs = pairs
    got = psnr_y(to_torch(srs), to_torch(hrs), shave=shave, round_y=round_y)
    assert got.shape == (len(srs),) and got.dtype == torch.float64
    ref = [
        peak_signal_noise_ratio(
            shave_y(np_y(h, round_y=round_y), shave), shave_y(np_y(s, round_y=round_y), shave), data_range=255
        )
        for s, h in zip(srs, hrs, strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)
    assert len(set(np.round(ref, 3))) == len(ref)  # distinct images -> the per-image order is checked too


def test_psnr_y_without_quantisation_differs(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    srs, hrs = pairs
    got = psnr_y(to_torch(srs), to_torch(hrs), shave=2, quantize=False)
    ref = [
        peak_signal_noise_ratio(
            shave_y(np_y(h, quantize=False), 2), shave_y(np_y(s, quantize=False), 2), data_range=255
        )
        for s, h in zip(srs, hrs, strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)
    quantised = psnr_y(to_torch(srs), to_torch(hrs), shave=2, quantize=True)
    assert not torch.allclose(got, quantised, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shave,round_y", [(2, False), (0, True)])
def test_ssim_gaussian_matches_skimage(pairs: tuple[np.ndarray, np.ndarray], shave: int, round_y: bool) -> None:
    # skimage filters with 'reflect' padding over the whole image and then crops (win_size - 1) // 2 = 5 pixels
    # (win_size = 2 * int(3.5 * 1.5 + 0.5) + 1 = 11) from every border of the SSIM map before averaging. The map
    # that remains is made only of windows lying fully inside the image, i.e. exactly MATLAB ssim_index's 'valid'
    # map, so the two numbers must agree to floating-point accuracy.
    srs, hrs = pairs
    got = ssim_y(to_torch(srs), to_torch(hrs), shave=shave, round_y=round_y, window="gaussian")
    assert got.shape == (len(srs),) and got.dtype == torch.float64
    ref = [
        structural_similarity(
            shave_y(np_y(s, round_y=round_y), shave),
            shave_y(np_y(h, round_y=round_y), shave),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
        for s, h in zip(srs, hrs, strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-8)
    assert min(ref) < 0.99  # the perturbation is visible, so the comparison is not trivially 1 vs 1


def test_ssim_gaussian_matches_direct_valid_map(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    # A second, direct reference: MATLAB ssim_index with an explicit 11x11 Gaussian and 'valid' 2-D correlation.
    from scipy.signal import correlate2d

    srs, hrs = pairs
    ax = np.arange(11) - 5.0
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    g /= g.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    y1, y2 = np_y(srs[0]), np_y(hrs[0])

    def filt(a: np.ndarray) -> np.ndarray:
        return correlate2d(a, g, mode="valid")

    mu1, mu2 = filt(y1), filt(y2)
    s11, s22, s12 = filt(y1 * y1) - mu1**2, filt(y2 * y2) - mu2**2, filt(y1 * y2) - mu1 * mu2
    ref = np.mean(((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2)))
    got = ssim_y(to_torch(srs[:1]), to_torch(hrs[:1]), shave=0)
    assert abs(got.item() - ref) < 1e-9


def test_ssim_uniform7_matches_skimage_default(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    srs, hrs = pairs
    got = ssim_y(to_torch(srs), to_torch(hrs), shave=3, round_y=True, window="uniform7")
    ref = [
        structural_similarity(shave_y(np_y(s, round_y=True), 3), shave_y(np_y(h, round_y=True), 3), data_range=255)
        for s, h in zip(srs, hrs, strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)
    gaussian = ssim_y(to_torch(srs), to_torch(hrs), shave=3, round_y=True, window="gaussian")
    assert (gaussian - got).abs().min() > 1e-4  # the windows give genuinely different numbers


def test_ssim_identical_is_one_and_errors(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    _, hrs = pairs
    hr = to_torch(hrs)
    torch.testing.assert_close(ssim_y(hr, hr.clone(), shave=2), torch.ones(len(hrs), dtype=torch.float64))
    with pytest.raises(ValueError, match="larger than the shaved image"):
        ssim_y(hr[..., :14, :14], hr[..., :14, :14], shave=2)
    with pytest.raises(ValueError, match="Unknown SSIM window"):
        ssim_y(hr, hr, shave=2, window="box")  # type: ignore[arg-type]


def test_psnr_known_value_constant_offset() -> None:
    # Every RGB channel of every pixel is one 8-bit level higher: Y rises by (65.481 + 128.553 + 24.966) / 255
    # = 219 / 255 everywhere, so MSE = (219 / 255)^2 and PSNR = 20 log10(255 / (219 / 255)).
    gen = torch.Generator().manual_seed(0)
    hr = torch.randint(0, 255, (2, 3, 20, 24), generator=gen).double() / 255.0  # levels 0..254: no clipping
    sr = hr + 1.0 / 255.0
    expected = 20.0 * math.log10(255.0 * 255.0 / 219.0)
    got = psnr_y(sr, hr, shave=2)
    torch.testing.assert_close(got, torch.full((2,), expected, dtype=torch.float64), rtol=0, atol=1e-9)
    assert abs(expected - 49.4527) < 1e-3


def test_quantisation_removes_sub_level_differences() -> None:
    gen = torch.Generator().manual_seed(1)
    hr = torch.randint(0, 256, (1, 3, 16, 16), generator=gen).double() / 255.0
    sr = hr + 0.3 / 255.0  # less than half an 8-bit level
    assert torch.isinf(psnr_y(sr, hr, shave=0, quantize=True)).all()
    assert torch.isfinite(psnr_y(sr, hr, shave=0, quantize=False)).all()


def test_shave_removes_borders() -> None:
    gen = torch.Generator().manual_seed(2)
    hr = torch.rand(2, 3, 24, 24, generator=gen)
    sr = hr.clone()
    s = 3
    sr[..., :s, :] = 1.0 - sr[..., :s, :]
    sr[..., :, -s:] = 0.0
    assert torch.isinf(psnr_y(sr, hr, shave=s)).all()
    assert torch.isfinite(psnr_y(sr, hr, shave=0)).all()
    assert torch.isfinite(psnr_y(sr, hr, shave=s - 1)).all()
    metric = PSNRY(scale=s)
    metric.update(sr, hr)
    assert metric.compute().item() == PSNR_CLAMP_DB  # infinite PSNR is clamped, not averaged as inf


def test_size_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 16, 16\).*\(1, 3, 16, 18\)"):
        psnr_y(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 18), shave=2)
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\).*\(1, 3, 16, 16\)"):
        ssim_y(torch.rand(2, 3, 16, 16), torch.rand(1, 3, 16, 16), shave=0)
    with pytest.raises(ValueError, match="no pixels"):
        psnr_y(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), shave=4)


def test_quantisation_is_ops_quantize(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    # The metrics' "as saved to PNG" step is the project's one 8-bit quantiser, bit for bit.
    srs, hrs = pairs
    sr, hr = to_torch(srs).double() * 1.1 - 0.05, to_torch(hrs).double()  # some values outside [0, 1]
    expected = psnr_y(ops.quantize(sr), ops.quantize(hr), shave=2, quantize=False)
    assert torch.equal(psnr_y(sr, hr, shave=2), expected)
    q = ops.quantize(torch.tensor([-0.2, 0.0, 0.3 / 255, 0.7 / 255, 254.6 / 255, 1.0, 1.3], dtype=torch.float64))
    torch.testing.assert_close(q * 255, torch.tensor([0.0, 0.0, 0.0, 1.0, 255.0, 255.0, 255.0], dtype=torch.float64))
    np.testing.assert_array_equal(np_y(srs[0]), rgb_to_y_matlab(ops.quantize(to_torch(srs[:1]).double()))[0, 0].numpy())

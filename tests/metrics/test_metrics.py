"""Tests for lightning_modules.metrics against hand-computed values and scikit-image as independent reference."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lightning_modules.metrics import (
    METRIC_PROTOCOLS,
    PSNR_CLAMP_DB,
    PSNRY,
    SSIMY,
    KernelL2,
    KernelSAE,
    MetricProtocol,
    kernel_sae,
    kernel_shift_aligned_l2,
    make_kernel_metrics,
    make_sr_metrics,
    pad_to_common_size,
    psnr_y,
    resolve_shave,
    rgb_to_y_matlab,
    ssim_y,
)

# ------------------------------------------------------------------------------------------------------------------
# Fixtures and numpy reference helpers (written independently of the module under test)
# ------------------------------------------------------------------------------------------------------------------


def _pairs(n: int = 3, size: tuple[int, int] = (48, 56), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HR crops of skimage's astronaut (float32 in [0,1]) and perturbed copies (blur + noise, unquantised)."""
    rng = np.random.default_rng(seed)
    img = skdata.astronaut().astype(np.float32) / 255.0  # (512, 512, 3)
    h, w = size
    hrs, srs = [], []
    for i in range(n):
        top, left = 100 + 60 * i, 150 + 45 * i
        hr = img[top : top + h, left : left + w]
        sigma = 0.6 + 0.4 * i
        sr = ndimage.gaussian_filter(hr, sigma=(sigma, sigma, 0))
        sr = np.clip(sr + rng.normal(0.0, 0.02, sr.shape), 0.0, 1.0).astype(np.float32)
        hrs.append(hr)
        srs.append(sr)
    return np.stack(srs), np.stack(hrs)  # (n, h, w, 3)


def _to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _np_y(rgb: np.ndarray, quantize: bool = True, round_y: bool = False) -> np.ndarray:
    """MATLAB rgb2ycbcr Y (0..255) of an (h, w, 3) image in [0, 1], in float64."""
    x = rgb.astype(np.float64)
    if quantize:
        x = np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5) / 255.0
    y = 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]
    return np.floor(y + 0.5) if round_y else y


def _shave(y: np.ndarray, s: int) -> np.ndarray:
    return y[s:-s, s:-s] if s > 0 else y


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    return _pairs()


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
    got = psnr_y(_to_torch(srs), _to_torch(hrs), shave=shave, round_y=round_y)
    assert got.shape == (len(srs),) and got.dtype == torch.float64
    ref = [
        peak_signal_noise_ratio(
            _shave(_np_y(h, round_y=round_y), shave), _shave(_np_y(s, round_y=round_y), shave), data_range=255
        )
        for s, h in zip(srs, hrs, strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)
    assert len(set(np.round(ref, 3))) == len(ref)  # distinct images -> the per-image order is checked too


def test_psnr_y_without_quantisation_differs(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    srs, hrs = pairs
    got = psnr_y(_to_torch(srs), _to_torch(hrs), shave=2, quantize=False)
    ref = [
        peak_signal_noise_ratio(
            _shave(_np_y(h, quantize=False), 2), _shave(_np_y(s, quantize=False), 2), data_range=255
        )
        for s, h in zip(srs, hrs, strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)
    quantised = psnr_y(_to_torch(srs), _to_torch(hrs), shave=2, quantize=True)
    assert not torch.allclose(got, quantised, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shave,round_y", [(2, False), (0, True)])
def test_ssim_gaussian_matches_skimage(pairs: tuple[np.ndarray, np.ndarray], shave: int, round_y: bool) -> None:
    # skimage filters with 'reflect' padding over the whole image and then crops (win_size - 1) // 2 = 5 pixels
    # (win_size = 2 * int(3.5 * 1.5 + 0.5) + 1 = 11) from every border of the SSIM map before averaging. The map
    # that remains is made only of windows lying fully inside the image, i.e. exactly MATLAB ssim_index's 'valid'
    # map, so the two numbers must agree to floating-point accuracy.
    srs, hrs = pairs
    got = ssim_y(_to_torch(srs), _to_torch(hrs), shave=shave, round_y=round_y, window="gaussian")
    assert got.shape == (len(srs),) and got.dtype == torch.float64
    ref = [
        structural_similarity(
            _shave(_np_y(s, round_y=round_y), shave),
            _shave(_np_y(h, round_y=round_y), shave),
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
    y1, y2 = _np_y(srs[0]), _np_y(hrs[0])

    def filt(a: np.ndarray) -> np.ndarray:
        return correlate2d(a, g, mode="valid")

    mu1, mu2 = filt(y1), filt(y2)
    s11, s22, s12 = filt(y1 * y1) - mu1**2, filt(y2 * y2) - mu2**2, filt(y1 * y2) - mu1 * mu2
    ref = np.mean(((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2)))
    got = ssim_y(_to_torch(srs[:1]), _to_torch(hrs[:1]), shave=0)
    assert abs(got.item() - ref) < 1e-9


def test_ssim_uniform7_matches_skimage_default(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    srs, hrs = pairs
    got = ssim_y(_to_torch(srs), _to_torch(hrs), shave=3, round_y=True, window="uniform7")
    ref = [
        structural_similarity(_shave(_np_y(s, round_y=True), 3), _shave(_np_y(h, round_y=True), 3), data_range=255)
        for s, h in zip(srs, hrs, strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)
    gaussian = ssim_y(_to_torch(srs), _to_torch(hrs), shave=3, round_y=True, window="gaussian")
    assert (gaussian - got).abs().min() > 1e-4  # the windows give genuinely different numbers


def test_ssim_identical_is_one_and_errors(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    _, hrs = pairs
    hr = _to_torch(hrs)
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


# ------------------------------------------------------------------------------------------------------------------
# Protocols and torchmetrics classes
# ------------------------------------------------------------------------------------------------------------------


def test_protocol_presets_and_resolve_shave() -> None:
    assert set(METRIC_PROTOCOLS) == {"standard", "koalanet", "mixture"}
    std, koala, mix = (METRIC_PROTOCOLS[k] for k in ("standard", "koalanet", "mixture"))
    assert (std.shave, std.round_y, std.ssim_window, std.quantize) == ("scale", False, "gaussian", True)
    assert (koala.shave, koala.round_y, koala.ssim_window) == (0, True, "gaussian")
    assert (mix.shave, mix.round_y, mix.ssim_window) == ("scale", True, "uniform7")
    assert resolve_shave(std, 4) == 4 and resolve_shave("mixture", 3) == 3 and resolve_shave(koala, 4) == 0
    custom = MetricProtocol(shave=16, round_y=False, ssim_window="gaussian", quantize=True, description="sf^2")
    assert resolve_shave(custom, 4) == 16
    with pytest.raises(ValueError):
        resolve_shave(MetricProtocol(-1, False, "gaussian", True, ""), 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        std.shave = 3  # type: ignore[misc]


def test_metric_mean_of_per_image_values_over_two_updates(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    srs, hrs = pairs
    sr, hr = _to_torch(srs), _to_torch(hrs)
    psnr_metric, ssim_metric = PSNRY(scale=2), SSIMY(scale=2)
    for m in (psnr_metric, ssim_metric):
        m.update(sr[:2], hr[:2])
        m.update(sr[2:], hr[2:])
    per_psnr = psnr_y(sr, hr, shave=2)
    per_ssim = ssim_y(sr, hr, shave=2)
    assert abs(psnr_metric.compute().item() - per_psnr.mean().item()) < 1e-10
    assert abs(ssim_metric.compute().item() - per_ssim.mean().item()) < 1e-12
    # Mean of per-image PSNR differs from the PSNR of the pooled MSE; make sure we did the former.
    y_s = torch.stack([torch.from_numpy(_shave(_np_y(s), 2)) for s in srs])
    y_h = torch.stack([torch.from_numpy(_shave(_np_y(h), 2)) for h in hrs])
    pooled = 10 * math.log10(255.0**2 / (y_s - y_h).square().mean().item())
    assert abs(psnr_metric.compute().item() - pooled) > 1e-3


def test_protocols_give_different_numbers(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    srs, hrs = pairs
    sr, hr = _to_torch(srs), _to_torch(hrs)
    values = {}
    for name in METRIC_PROTOCOLS:
        p, s = PSNRY(scale=4, protocol=name), SSIMY(scale=4, protocol=name)
        p.update(sr, hr)
        s.update(sr, hr)
        values[name] = (p.compute().item(), s.compute().item())
    assert abs(values["koalanet"][0] - values["standard"][0]) > 1e-3
    assert abs(values["mixture"][1] - values["standard"][1]) > 1e-4
    # koalanet = rounded Y, no shave: check against skimage on rounded numpy Y.
    ref = np.mean(
        [
            peak_signal_noise_ratio(_np_y(h, round_y=True), _np_y(s, round_y=True), data_range=255)
            for s, h in zip(srs, hrs, strict=True)
        ]
    )
    assert abs(values["koalanet"][0] - ref) < 1e-6


def test_unknown_protocol_raises() -> None:
    with pytest.raises(ValueError, match="koalanet.*mixture.*standard"):
        PSNRY(scale=2, protocol="matlab")
    with pytest.raises(ValueError, match="valid protocols"):
        SSIMY(scale=2, protocol="nope")
    with pytest.raises(ValueError, match="valid protocols"):
        make_sr_metrics(2, protocol="nope")


def test_metric_class_attributes() -> None:
    for cls in (PSNRY, SSIMY):
        assert cls.higher_is_better is True
    for cls in (KernelSAE, KernelL2):
        assert cls.higher_is_better is False
    for cls in (PSNRY, SSIMY, KernelSAE, KernelL2):
        assert cls.full_state_update is False and cls.is_differentiable is False
    m = PSNRY(scale=2)
    assert m.total.dtype == torch.float64
    m.to(torch.bfloat16)  # as Lightning's true half precision would do: the running sum must stay float64
    assert m.total.dtype == torch.float64 and m._defaults["total"].dtype == torch.float64
    m.update(torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.51))
    assert m.total.dtype == torch.float64
    assert m._reductions["total"] is not None and m._reductions["count"] is not None


def test_make_sr_metrics_names(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    srs, hrs = pairs
    sr, hr = _to_torch(srs), _to_torch(hrs)
    coll = make_sr_metrics(scale=2, prefix="test/")
    coll.update(sr, hr)
    out = coll.compute()
    assert set(out) == {"test/psnr_y", "test/ssim_y"}
    assert abs(out["test/psnr_y"].item() - psnr_y(sr, hr, 2).mean().item()) < 1e-10
    assert abs(out["test/ssim_y"].item() - ssim_y(sr, hr, 2).mean().item()) < 1e-12
    assert set(make_sr_metrics(scale=2).keys()) == {"val/psnr_y", "val/ssim_y"}


def test_merge_state_equals_single_metric(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    # What DDP does: states summed across processes. Two halves merged == one metric on everything.
    srs, hrs = pairs
    sr, hr = _to_torch(srs), _to_torch(hrs)
    for cls in (PSNRY, SSIMY):
        whole, a, b = cls(scale=2), cls(scale=2), cls(scale=2)
        whole.update(sr, hr)
        a.update(sr[:1], hr[:1])
        b.update(sr[1:], hr[1:])
        a.merge_state(b)
        assert a.count.item() == 3
        assert abs(a.compute().item() - whole.compute().item()) < 1e-12
    k_est, k_gt = _gauss_kernels(4, 13, seed=3), _gauss_kernels(4, 11, seed=4)
    whole, a, b = KernelL2(), KernelL2(), KernelL2()
    whole.update(k_est, k_gt)
    a.update(k_est[:3], k_gt[:3])
    b.update(k_est[3:], k_gt[3:])
    a.merge_state(b)
    assert abs(a.compute().item() - whole.compute().item()) < 1e-15


# ------------------------------------------------------------------------------------------------------------------
# Kernel metrics
# ------------------------------------------------------------------------------------------------------------------


def _gauss_kernels(n: int, size: int, seed: int) -> torch.Tensor:
    """n random anisotropic Gaussian kernels (size x size), centred on the middle pixel, each summing to 1."""
    gen = torch.Generator().manual_seed(seed)
    ax = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    sx = 0.8 + 1.2 * torch.rand(n, 1, 1, generator=gen, dtype=torch.float64)
    sy = 0.8 + 1.2 * torch.rand(n, 1, 1, generator=gen, dtype=torch.float64)
    k = torch.exp(-(xx**2) / (2 * sx**2) - (yy**2) / (2 * sy**2))
    return k / k.sum(dim=(-2, -1), keepdim=True)


def test_pad_to_common_size() -> None:
    a = torch.ones(2, 11, 11)
    b = torch.ones(13, 13)
    pa, pb = pad_to_common_size(a, b)
    assert pa.shape == (2, 13, 13) and pb.shape == (13, 13)
    assert torch.equal(pb, b)
    assert pa[:, 1:-1, 1:-1].eq(1).all() and pa.sum() == 2 * 121  # one zero ring: centre preserved
    # Odd difference: extra row / column at the bottom / right.
    c = torch.zeros(2, 2)
    c[0, 0] = 1.0
    pc, _ = pad_to_common_size(c, torch.zeros(5, 5))
    assert pc.shape == (5, 5) and pc[1, 1] == 1.0 and pc.sum() == 1.0
    pc2, _ = pad_to_common_size(c, torch.zeros(3, 3))
    assert pc2[0, 0] == 1.0 and pc2[2].eq(0).all() and pc2[:, 2].eq(0).all()


def test_kernel_sae_identical_and_shifted() -> None:
    k = _pad(_gauss_kernels(3, 9, seed=0), 2)  # 13x13 with a zero border, so a roll is a zero-filled shift
    torch.testing.assert_close(kernel_sae(k, k.clone()), torch.zeros(3, dtype=torch.float64))
    shifted = torch.roll(k, shifts=(1, -1), dims=(-2, -1))
    sae = kernel_sae(shifted, k)
    l2 = kernel_shift_aligned_l2(shifted, k)
    assert (sae > 0.05).all()
    assert (l2 < 1e-8).all()
    assert (kernel_shift_aligned_l2(shifted, k, max_shift=0) > 1e-4).all()  # alignment is what makes it ~0


def _pad(k: torch.Tensor, p: int) -> torch.Tensor:
    return torch.nn.functional.pad(k, (p, p, p, p))


def test_kernel_metrics_different_sizes() -> None:
    gt11 = _gauss_kernels(2, 11, seed=1)
    est13 = _pad(gt11, 1)
    torch.testing.assert_close(kernel_sae(est13, gt11), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(kernel_sae(gt11, est13), torch.zeros(2, dtype=torch.float64))
    # DIV2KRK situation: a 13x13 estimate whose centre is one pixel off the 11x11 ground truth.
    est_off = torch.nn.functional.pad(gt11, (2, 0, 1, 1))  # content moved one px to the right inside 13x13
    assert (kernel_sae(est_off, gt11) > 0.05).all()
    assert (kernel_shift_aligned_l2(est_off, gt11) < 1e-12).all()
    # x4 sizes 33 vs 31 and a single gt kernel broadcast over a batch.
    gt31 = _gauss_kernels(1, 31, seed=2)[0]
    est33 = _gauss_kernels(3, 33, seed=5)
    assert kernel_sae(est33, gt31).shape == (3,)
    assert kernel_shift_aligned_l2(est33, gt31).shape == (3,)
    assert kernel_sae(gt31, gt31).shape == (1,)


def test_kernel_hand_computed_values() -> None:
    gt = torch.tensor([[0.0, 0.0, 0.0], [0.25, 0.5, 0.25], [0.0, 0.0, 0.0]])
    est = torch.zeros(3, 3)
    est[1, 1] = 1.0
    # SAE = 0.25 + 0.5 + 0.25; squared error = 0.0625 + 0.25 + 0.0625 = 0.375, and no shift does better
    # (moving the delta onto a 0.25 tap gives 0.5625 + 0.25 + 0.0625 = 0.875).
    assert kernel_sae(est, gt).item() == pytest.approx(1.0)
    assert kernel_shift_aligned_l2(est, gt, max_shift=0).item() == pytest.approx(0.375)
    assert kernel_shift_aligned_l2(est, gt, max_shift=2).item() == pytest.approx(0.375)
    assert kernel_shift_aligned_l2(est, gt, squared=False).item() == pytest.approx(math.sqrt(0.375))
    # A delta two pixels off in a 5x5 canvas: the best shift within 1 leaves it one pixel off (1 + 1 = 2),
    # within 2 it aligns (0). Zero fill, not circular: a wrap-around would also align it at max_shift=1 in 3x3.
    a = torch.zeros(5, 5)
    b = torch.zeros(5, 5)
    a[2, 0], b[2, 2] = 1.0, 1.0
    assert kernel_shift_aligned_l2(a, b, max_shift=0).item() == pytest.approx(2.0)
    assert kernel_shift_aligned_l2(a, b, max_shift=1).item() == pytest.approx(2.0)
    assert kernel_shift_aligned_l2(a, b, max_shift=2).item() == pytest.approx(0.0)
    c = torch.zeros(3, 3)
    d = torch.zeros(3, 3)
    c[1, 0], d[1, 2] = 1.0, 1.0
    assert kernel_shift_aligned_l2(c, d, max_shift=1).item() == pytest.approx(2.0)  # circular would give 0


def test_kernel_shift_is_not_truncated() -> None:
    # A mass at the very edge of the common canvas can still be shifted without losing it.
    a = torch.zeros(5, 5)
    b = torch.zeros(5, 5)
    a[0, 0], b[1, 1] = 1.0, 1.0
    assert kernel_shift_aligned_l2(a, b, max_shift=1).item() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        kernel_shift_aligned_l2(a, b, max_shift=-1)
    with pytest.raises(ValueError):
        kernel_sae(torch.zeros(1, 1, 3, 3), b)


def test_kernel_metric_classes() -> None:
    est, gt = _gauss_kernels(5, 13, seed=7), _gauss_kernels(5, 11, seed=8)
    coll = make_kernel_metrics()
    coll.update(est[:2], gt[:2])
    coll.update(est[2:], gt[2:])
    out = coll.compute()
    assert set(out) == {"test/kernel_sae", "test/kernel_l2"}
    assert abs(out["test/kernel_sae"].item() - kernel_sae(est, gt).mean().item()) < 1e-14
    assert abs(out["test/kernel_l2"].item() - kernel_shift_aligned_l2(est, gt).mean().item()) < 1e-15
    # Perfect estimates on the first batch must not merge the two metrics' states (compute groups disabled).
    coll2 = make_kernel_metrics(prefix="val/")
    coll2.update(gt[:2], gt[:2])
    coll2.update(est[2:], gt[2:])
    out2 = coll2.compute()
    assert out2["val/kernel_sae"].item() != pytest.approx(out2["val/kernel_l2"].item())
    single = KernelSAE()
    single.update(est[0], gt[0])
    assert single.count.item() == 1

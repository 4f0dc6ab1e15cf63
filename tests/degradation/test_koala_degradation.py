"""KOALAKernelSampler with ClassicalDegradation: KOALAnet's kernels (ranges, sizes, composition), its degradation
(symmetric padding by (20 - s) / 2 and stride-s correlation, written independently in numpy), and alignment of a
bicubic-upsampled LR with its HR in both centre conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from datamodules.degradation import kernels as K
from datamodules.degradation import ops
from datamodules.degradation.koala_sampler import (
    KOALAKernelSampler,
    block_centre_to_koala,
    koala_gaussian_kernels,
    koala_to_block_centre,
)
from datamodules.degradation.pipelines import ClassicalDegradation
from tests.degradation.test_alignment import blob, com


def _params(sx: float, sy: float, theta: float, dtype=torch.float64) -> dict[str, torch.Tensor]:
    return {n: torch.tensor([v], dtype=dtype) for n, v in (("sigma_x", sx), ("sigma_y", sy), ("theta", theta))}


def _reference_kernel(sx: float, sy: float, theta: float) -> np.ndarray:
    """The paper's k_d from its description: 15x15 Gaussian (std, rotated) 'same'-convolved with the 20x20 k_b."""
    c, s = math.cos(theta), math.sin(theta)
    g = np.zeros((15, 15))
    for row in range(15):
        for col in range(15):
            dx, dy = col - 7, row - 7
            u, v = c * dx + s * dy, -s * dx + c * dy  # coordinates along the sigma_x / sigma_y axes
            g[row, col] = math.exp(-0.5 * (u * u / sx**2 + v * v / sy**2))
    g /= g.sum()
    taps = np.zeros(20)
    taps[8:12] = [-0.0625, 0.5625, 0.5625, -0.0625]  # Keys a=-0.5 at distances 1.5, 0.5, 0.5, 1.5
    kd = signal.convolve2d(np.outer(taps, taps), g, mode="same")
    return kd / kd.sum()


def _official_lr(hr: np.ndarray, kernel: np.ndarray, scale: int) -> np.ndarray:
    """KOALAnet's degradation: pad symmetrically by (20 - s) / 2 on every side, correlate (VALID) with stride s."""
    p = (20 - scale) // 2
    padded = np.pad(hr, ((0, 0), (p, p), (p, p)), mode="symmetric")  # (C, H, W), edge pixel repeated
    windows = sliding_window_view(padded, (20, 20), axis=(1, 2))[:, ::scale, ::scale]
    return np.einsum("chwij,ij->chw", windows, kernel)


def test_parameter_ranges_over_many_draws():
    params = KOALAKernelSampler().sample(20_000, torch.Generator().manual_seed(0), "cpu")
    assert list(params) == ["sigma_x", "sigma_y", "theta"]
    for name, (lo, hi) in (("sigma_x", (0.2, 4.0)), ("sigma_y", (0.2, 4.0)), ("theta", (0.0, math.pi / 2))):
        v = params[name]
        assert v.shape == (20_000,)
        assert lo <= v.min().item() < lo + 0.01 * (hi - lo), name
        assert hi - 0.01 * (hi - lo) < v.max().item() <= hi, name
    assert 0.48 < (params["sigma_x"] > params["sigma_y"]).double().mean().item() < 0.52  # independent, not sorted
    narrow = KOALAKernelSampler(sigma_range=(1.0, 1.5), theta_range=(0.1, 0.2)).sample(500, None, "cpu")
    assert narrow["sigma_x"].min() >= 1.0 and narrow["sigma_y"].max() <= 1.5
    assert narrow["theta"].min() >= 0.1 and narrow["theta"].max() <= 0.2


def test_kernel_shapes_sums_and_centres():
    native, block = KOALAKernelSampler(), KOALAKernelSampler(centre="block")
    params = native.sample(64, torch.Generator().manual_seed(1), "cpu")
    params64 = {n: v.double() for n, v in params.items()}
    for scale in (2, 4):
        k = native.kernels(params64, scale)
        assert native.kernel_size(scale) == 20 and k.shape == (64, 20, 20)
        torch.testing.assert_close(k.sum(dim=(-2, -1)), torch.ones(64, dtype=torch.float64), atol=1e-12, rtol=0)
        # centrally symmetric about the middle of the grid (the Gaussian and k_b are): mean exactly at 9.5
        torch.testing.assert_close(k, k.flip(-2, -1), atol=1e-15, rtol=0)
        torch.testing.assert_close(K.centre_of_mass(k), torch.full((64, 2), 9.5, dtype=torch.float64))
        assert k.min() < 0  # k_b's negative lobes survive narrow Gaussians
        kb = block.kernels(params64, scale)
        size = 19 + scale
        assert block.kernel_size(scale) == size and kb.shape == (64, size, size)
        mean = K.kernel_mean(size, scale, "block")  # 10.5 at x2, 12.5 at x4
        torch.testing.assert_close(K.centre_of_mass(kb), torch.full((64, 2), mean, dtype=torch.float64))
        assert torch.equal(block_centre_to_koala(kb, scale), k)
        assert torch.equal(koala_to_block_centre(k, scale), kb)
        assert kb[:, : scale - 1].abs().sum() == 0 and kb[:, :, : scale - 1].abs().sum() == 0
    for bad in (3, 1):
        with pytest.raises(ValueError, match="even"):
            native.kernel_size(bad)
    with pytest.raises(ValueError):
        KOALAKernelSampler(sigma_range=(0.0, 4.0))
    with pytest.raises(ValueError):
        KOALAKernelSampler(kernel_size=21)
    with pytest.raises(ValueError):
        KOALAKernelSampler(centre="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize(("sx", "sy", "theta"), [(2.2, 0.7, 0.6), (0.2, 0.2, 0.0), (4.0, 1.3, 1.5), (3.1, 3.9, 0.3)])
def test_kernel_is_gaussian_convolved_with_bicubic(sx, sy, theta):
    k = KOALAKernelSampler().kernels(_params(sx, sy, theta), 4)[0]
    np.testing.assert_allclose(k.numpy(), _reference_kernel(sx, sy, theta), atol=1e-12, rtol=0)
    direct = koala_gaussian_kernels(*(torch.tensor([v], dtype=torch.float64) for v in (sx, sy, theta)))[0]
    assert torch.equal(direct, k)


def test_theta_turns_the_sigma_x_axis_from_the_x_axis():
    """theta = 0: sigma_x along the columns; pi/2: along the rows (the range covers every orientation)."""
    flat = KOALAKernelSampler().kernels(_params(3.0, 0.3, 0.0), 2)[0]
    turned = KOALAKernelSampler().kernels(_params(3.0, 0.3, math.pi / 2), 2)[0]
    idx = torch.arange(20, dtype=torch.float64) - 9.5
    var_x = lambda k: (k.sum(0) * idx**2).sum()  # noqa: E731
    var_y = lambda k: (k.sum(1) * idx**2).sum()  # noqa: E731
    assert var_x(flat) > 5 * var_y(flat)
    torch.testing.assert_close(turned, flat.T, atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("centre", ["pixel", "block"])
def test_pipeline_is_the_official_degradation(scale, centre):
    """Symmetric padding by (20 - s)/2 + stride-s correlation (numpy) == ClassicalDegradation with the sampler."""
    gen = torch.Generator().manual_seed(scale)
    hr = torch.rand(2, 3, 8 * scale, 6 * scale, generator=gen, dtype=torch.float64)
    sampler = KOALAKernelSampler(centre=centre)
    deg = ClassicalDegradation(scale, kernel_sampler=sampler, quantize=False)
    assert deg.phase == (0 if centre == "block" else scale // 2 - 1)  # decimation_phase(20, s, "pixel"): 0, 1
    params = {n: v.double() for n, v in sampler.sample(2, gen, "cpu").items()}
    out = deg.apply(hr, params)
    size = sampler.kernel_size(scale)
    assert out["lr"].shape == (2, 3, 8, 6) and out["kernel"].shape == (2, size, size)
    native = KOALAKernelSampler().kernels(params, scale)
    for b in range(2):
        ref = _official_lr(hr[b].numpy(), native[b].numpy(), scale)
        np.testing.assert_allclose(out["lr"][b].numpy(), ref, atol=1e-12, rtol=0)
    quantised = ClassicalDegradation(scale, kernel_sampler=sampler).apply(hr, params)["lr"]
    assert torch.equal(quantised, ops.quantize(out["lr"]))


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("centre", ["pixel", "block"])
@pytest.mark.parametrize("upsampler", ["torch", "matlab"])
@pytest.mark.parametrize(("sx", "sy", "theta"), [(2.0, 0.8, 0.7), (3.9, 0.25, 1.2)])
def test_bicubic_upsampled_lr_aligns_with_hr(scale, centre, upsampler, sx, sy, theta):
    sampler = KOALAKernelSampler(centre=centre)
    lr = ClassicalDegradation(scale, kernel_sampler=sampler, quantize=False).apply(blob(), _params(sx, sy, theta))
    up = ops.resize(lr["lr"], scale=scale, convention=upsampler)
    shift = com(up) - com(blob())
    assert shift.abs().max() < 0.03, f"sub-pixel shift {shift.tolist()}"


def test_wrong_phase_shows_a_shift():
    """The check above can fail: the native kernel decimated from pixel 0 at x4 lands one HR pixel off."""
    kernel = KOALAKernelSampler().kernels(_params(2.0, 0.8, 0.7), 4)
    lr = ops.blur_decimate(blob(), kernel, 4, 0, border="symmetric")
    shift = com(ops.resize(lr, scale=4, convention="torch")) - com(blob())
    assert (shift.abs() - 1.0).abs().max() < 0.03


def test_seeded_draws_and_batch_dict():
    deg = ClassicalDegradation(4, kernel_sampler=KOALAKernelSampler())
    hr = torch.rand(3, 3, 32, 40)
    a = deg(hr, torch.Generator().manual_seed(7))
    b = deg(hr, torch.Generator().manual_seed(7))
    c = deg(hr, torch.Generator().manual_seed(8))
    assert torch.equal(a["lr"], b["lr"]) and torch.equal(a["kernel"], b["kernel"])
    assert not torch.equal(a["kernel"], c["kernel"])
    assert a["lr"].shape == (3, 3, 8, 10) and a["kernel"].shape == (3, 20, 20)
    assert set(a["params"]) == {"sigma_x", "sigma_y", "theta"}
    assert torch.equal(a["lr"], ops.quantize(a["lr"]))  # 8-bit


def test_configurable_through_the_type_annotation():
    """LightningCLI resolves kernel_sampler by ClassicalDegradation's annotation, which names KOALAKernelSampler."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(ClassicalDegradation, "degradation")
    cfg = parser.parse_object(
        {
            "degradation": {
                "scale": 4,
                "kernel_sampler": {
                    "class_path": "datamodules.degradation.koala_sampler.KOALAKernelSampler",
                    "init_args": {"sigma_range": [0.5, 2.0]},
                },
            }
        }
    )
    deg = parser.instantiate_classes(cfg).degradation
    assert isinstance(deg.kernel_sampler, KOALAKernelSampler) and deg.kernel_sampler.sigma_range == (0.5, 2.0)
    assert deg.phase == 1

"""For each kernel-centring convention, blur -> aligned decimation -> bicubic upsampling lands on the HR grid."""

import pytest
import torch

from datamodules.degradation import kernels as K
from datamodules.degradation import ops


def blob(size: int = 120, cy: float = 57.3, cx: float = 61.8, sigma: float = 7.0) -> torch.Tensor:
    idx = torch.arange(size, dtype=torch.float64)
    img = torch.exp(-((idx[:, None] - cy) ** 2 + (idx[None, :] - cx) ** 2) / (2 * sigma**2))
    return img[None, None].expand(1, 3, size, size).contiguous()


def com(img: torch.Tensor) -> torch.Tensor:
    y = img[0, 0]
    idx = torch.arange(y.shape[-1], dtype=y.dtype)
    return torch.stack([(y.sum(1) * idx).sum() / y.sum(), (y.sum(0) * idx).sum() / y.sum()])


def degrade_and_upsample(hr, kernel, scale, phase, mode, convention):
    lr = ops.decimate(ops.blur(hr, kernel, mode=mode), scale, phase)
    return ops.resize(lr, scale=scale, convention=convention)


CASES = [
    # (kernel size, scale, centre, convention/mode): DIV2KRK/MoESR, MoESR x4, KAIR/USRNet, KOALAnet x2/x4, odd-scale
    (11, 2, "block", "correlate"),
    (13, 2, "block", "correlate"),
    (33, 4, "block", "correlate"),
    (11, 2, "block", "convolve"),
    (20, 2, "pixel", "correlate"),
    (20, 4, "pixel", "correlate"),
    (21, 3, "pixel", "correlate"),
]


@pytest.mark.parametrize(("size", "scale", "centre", "convention"), CASES)
@pytest.mark.parametrize("upsampler", ["torch", "matlab"])
def test_bicubic_upsampled_lr_aligns_with_hr(size, scale, centre, convention, upsampler):
    hr = blob()
    kernel = K.gaussian_kernels(
        size, torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.8]), torch.tensor([0.7]),
        centre=centre, scale=scale, convention=convention,
    )  # fmt: skip
    phase = K.decimation_phase(size, scale, centre)
    up = degrade_and_upsample(hr, kernel, scale, phase, convention, upsampler)
    shift = com(up) - com(hr)
    assert shift.abs().max() < 0.03, f"sub-pixel shift {shift.tolist()}"


def test_wrong_centre_shows_half_pixel_shift():
    """The check above can fail: a pixel-centred 11x11 kernel decimated at x2 is off by half a pixel."""
    hr = blob()
    kernel = K.gaussian_kernels(11, torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.8]), torch.tensor([0.7]))
    up = degrade_and_upsample(hr, kernel, 2, 0, "correlate", "torch")
    shift = com(up) - com(hr)
    assert (shift.abs() - 0.5).abs().max() < 0.03


def test_x4_equals_x2_applied_twice():
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 96, 96, dtype=torch.float64)
    k2 = K.gaussian_kernels(
        11, torch.tensor([2.5, 1.0], dtype=torch.float64), torch.tensor([0.9, 0.7]), torch.tensor([0.3, 2.0]),
        centre="block", scale=2,
    )  # fmt: skip
    twice = ops.decimate(ops.blur(ops.decimate(ops.blur(hr, k2), 2, 0), k2), 2, 0)
    once = ops.decimate(ops.blur(hr, K.compose_x2_twice(k2)), 4, K.decimation_phase(31, 4, "block"))
    m = 6  # border pixels see different padding in the two paths
    torch.testing.assert_close(once[..., m:-m, m:-m], twice[..., m:-m, m:-m], atol=1e-10, rtol=0)

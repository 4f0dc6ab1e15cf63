import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from datamodules.degradation import kernels as K
from datamodules.degradation import ops
from datamodules.degradation.samplers import gaussian_noise_field


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()[100:220, 150:310].copy()  # (120, 160, 3) uint8


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].double() / 255


def pil_float_resize(arr: np.ndarray, size_wh: tuple[int, int]) -> torch.Tensor:
    """Pillow's BICUBIC (a = -0.5, antialiased) on float32 planes: no 8-bit rounding between passes."""
    planes = [
        np.asarray(Image.fromarray(arr[..., c].astype(np.float32), mode="F").resize(size_wh, Image.BICUBIC))
        for c in range(3)
    ]
    return torch.from_numpy(np.stack(planes)).double()[None] / 255


def test_blur_per_sample_equals_individual_calls():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 24, 24)
    k = K.gaussian_kernels(
        7, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 1.0, 0.7]), torch.tensor([0.0, 0.5, 1.0])
    )
    batched = ops.blur(x, k)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], ops.blur(x[i : i + 1], k[i]))


def test_blur_convolve_is_correlate_with_flipped_kernel_and_known_values():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16)
    k = torch.rand(1, 5, 5)
    torch.testing.assert_close(ops.blur(x, k, mode="convolve"), ops.blur(x, k.flip(-2, -1)))
    delta = torch.zeros(1, 1, 9, 9)
    delta[..., 4, 4] = 1
    # correlating an impulse paints the flipped kernel; convolving paints the kernel itself
    k3 = torch.arange(9.0).view(1, 3, 3)
    torch.testing.assert_close(ops.blur(delta, k3, mode="convolve")[0, 0, 3:6, 3:6], k3[0])
    torch.testing.assert_close(ops.blur(delta, k3)[0, 0, 3:6, 3:6], k3[0].flip(0, 1))
    with pytest.raises(ValueError, match="batch"):
        ops.blur(torch.rand(2, 3, 8, 8), torch.rand(3, 3, 3))


@pytest.mark.parametrize(("size", "scale", "phase", "mode", "border", "hw"), [
    (11, 2, 0, "correlate", "reflect", (48, 52)),
    (31, 4, 0, "correlate", "reflect", (64, 70)),
    (20, 4, 1, "correlate", "replicate", (61, 64)),
    (13, 3, 1, "convolve", "circular", (45, 47)),
])  # fmt: skip
def test_blur_decimate_equals_blur_then_decimate(size, scale, phase, mode, border, hw):
    torch.manual_seed(0)
    x = torch.rand(3, 3, *hw, dtype=torch.float64)
    k = torch.rand(3, size, size, dtype=torch.float64)
    k = k / k.sum((-2, -1), keepdim=True)
    expected = ops.decimate(ops.blur(x, k, mode=mode, border=border), scale, phase)
    torch.testing.assert_close(ops.blur_decimate(x, k, scale, phase, mode=mode, border=border), expected)
    torch.testing.assert_close(ops.blur_decimate(x, k[0], scale, phase, mode=mode, border=border)[1],
                               ops.decimate(ops.blur(x, k[0], mode=mode, border=border), scale, phase)[1])  # fmt: skip


def test_decimate_phase_and_shape():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    assert ops.decimate(x, 2, 0)[0, 0, 0, :2].tolist() == [0.0, 2.0]
    assert ops.decimate(x, 2, 1)[0, 0, 0, :2].tolist() == [9.0, 11.0]
    assert ops.decimate(torch.rand(1, 3, 9, 11), 4, 3).shape == (1, 3, 2, 2)
    with pytest.raises(ValueError, match="phase"):
        ops.decimate(x, 2, 2)


@pytest.mark.parametrize("factor", [0.5, 0.25, 2.0, 3.0])
def test_matlab_resize_matches_pillow_bicubic(photo, factor):
    """Same algorithm as Pillow (a = -0.5, antialiased when shrinking) away from the borders.

    Tolerance: interior max 1e-3 / 255 against Pillow in float mode; whole-image mean 0.15 / 255 (borders differ:
    MATLAB mirrors the image, Pillow renormalises the truncated kernel); 8-bit Pillow within 1 level mean.
    """
    x = as_tensor(photo)
    y = ops.resize(x, scale=factor, convention="matlab")
    h, w = photo.shape[:2]
    assert y.shape[-2:] == (int(np.ceil(h * factor)), int(np.ceil(w * factor)))
    ref = pil_float_resize(photo, (y.shape[-1], y.shape[-2]))
    diff = (y - ref).abs() * 255
    m = int(np.ceil(2 * max(factor, 1))) + 2  # kernel radius in output pixels, plus a margin
    assert diff[..., m:-m, m:-m].max() < 1e-3
    assert diff.mean() < 0.15
    pil8 = as_tensor(np.asarray(Image.fromarray(photo).resize((y.shape[-1], y.shape[-2]), Image.BICUBIC)))
    assert ((ops.quantize(y) - pil8).abs() * 255).mean() < 1.0


def test_resize_conventions_differ_and_torch_is_interpolate(photo):
    x = as_tensor(photo)
    torch.testing.assert_close(
        ops.resize(x, scale=2, convention="torch"),
        F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False),
    )
    diff = (ops.resize(x, scale=2, convention="torch") - ops.resize(x, scale=2, convention="matlab")).abs().max()
    assert diff > 1 / 255  # a = -0.75 vs a = -0.5
    assert ops.resize(x, size=(50, 70)).shape[-2:] == (50, 70)
    with pytest.raises(ValueError, match="exactly one"):
        ops.resize(x)


def test_gaussian_noise_field_statistics_and_gray():
    g = torch.Generator().manual_seed(0)
    std = torch.tensor([0.1, 0.02])
    field = gaussian_noise_field((2, 3, 128, 128), std, torch.tensor([False, True]), g, "cpu")
    assert abs(field[0].std().item() - 0.1) < 0.005 and abs(field[1].std().item() - 0.02) < 0.001
    torch.testing.assert_close(field[1, 0], field[1, 2])
    assert not torch.equal(field[0, 0], field[0, 2])
    x = torch.rand(2, 3, 128, 128)
    torch.testing.assert_close(ops.add_noise(x, field) - x, field)


def test_poisson_noise_is_signal_dependent():
    g = torch.Generator().manual_seed(0)
    dark, bright = torch.full((1, 3, 128, 128), 0.05), torch.full((1, 3, 128, 128), 0.8)
    x = torch.cat([dark, bright])
    noisy = ops.poisson_noise(x, torch.tensor([1.0, 1.0]), torch.tensor([False, False]), g)
    resid = noisy - x
    assert abs(resid.mean().item()) < 0.002
    # variance of Poisson(255 x) / 255 is x / 255
    assert abs(resid[0].var().item() - 0.05 / 255) < 0.2 * 0.05 / 255
    assert abs(resid[1].var().item() - 0.8 / 255) < 0.2 * 0.8 / 255
    gray = ops.poisson_noise(bright, torch.tensor([1.0]), torch.tensor([True]), g)
    torch.testing.assert_close(gray[0, 0], gray[0, 1])


def test_jpeg_quality_orders_error_and_gradients_flow(photo):
    x = as_tensor(photo[:64, :64]).float().repeat(2, 1, 1, 1).requires_grad_(True)
    y = ops.jpeg(x, torch.tensor([95.0, 10.0]))
    err = (y - x).abs().mean((1, 2, 3))
    assert err[0] < err[1]
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="RGB"):
        ops.jpeg(torch.rand(1, 1, 16, 16), torch.tensor([50.0]))


def test_unsharp_mask_sharpens_edges_and_keeps_flat_regions(photo):
    x = as_tensor(photo).float()
    sharp = ops.unsharp_mask(x)
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 3, 3)
    energy = lambda im: ops.blur(im, lap).abs().mean()  # noqa: E731
    assert energy(sharp) > 1.1 * energy(x)
    flat = torch.full((1, 3, 64, 64), 0.4)
    torch.testing.assert_close(ops.unsharp_mask(flat), flat)


def test_quantize_levels():
    x = torch.tensor([-0.1, 0.0, 0.5, 0.50196, 1.2])
    q = ops.quantize(x)
    assert q.min() == 0 and q.max() == 1
    torch.testing.assert_close(q * 255, (q * 255).round())


def test_ops_keep_gradients():
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    k = K.gaussian_kernels(11, torch.tensor([2.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.3, 0.0]))
    ops.resize(ops.decimate(ops.blur(x, k), 2), scale=2, convention="matlab").sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("border", ["reflect", "replicate", "circular", "constant", "symmetric"])
@pytest.mark.parametrize(("scale", "phase", "mode"), [(2, 0, "correlate"), (3, 1, "convolve")])
def test_blur_decimate_bank_equals_one_kernel_at_a_time(border, scale, phase, mode):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 19, 24, generator=g)
    kernels = torch.rand(4, 5, 5, generator=g)
    kernels = kernels / kernels.sum(dim=(-2, -1), keepdim=True)
    out = ops.blur_decimate_bank(x, kernels, scale, phase, mode, border)
    assert out.shape == (2, 4, 3, 19 // scale, 24 // scale)
    for j in range(4):
        torch.testing.assert_close(out[:, j], ops.blur_decimate(x, kernels[j], scale, phase, mode, border))
    with pytest.raises(ValueError, match="kernels must be"):
        ops.blur_decimate_bank(x, kernels[0], scale)


def test_unsharp_mask_separable_blur_equals_the_dense_gaussian():
    from datamodules.degradation.kernels import gaussian_kernels
    from datamodules.degradation.ops.sharpening import _gaussian_blur_separable

    x = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    radius, sigma = 7, 1.7
    d = torch.arange(2 * radius + 1, dtype=torch.float64) - radius
    taps = torch.exp(-(d**2) / (2 * sigma**2))
    taps = (taps / taps.sum()).float()
    dense = gaussian_kernels(2 * radius + 1, torch.tensor([sigma]), torch.tensor([sigma]), torch.tensor([0.0]),
                             param="std")  # fmt: skip
    torch.testing.assert_close(_gaussian_blur_separable(x, taps), ops.blur(x, dense), atol=1e-6, rtol=0)

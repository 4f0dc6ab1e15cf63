"""Per-pixel local filtering (KOALAnet): each op against a direct per-pixel loop, layouts, padding, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.nets.layers import (
    kernel_normalize,
    local_downsample,
    local_filter,
    local_upsample,
    same_padding,
)


def _loop_reference(x, filters, k, stride, out_h, out_w):
    """``out[b, c, g, h, w] = sum_{i,j} x[b, c, h s + i - p, w s + j - p] f[b, i k + j, g, h, w]``, zeros outside.

    ``filters`` is ``(B, k*k, G, H, W)``; ``p`` is TF's ``"SAME"`` padding before, computed here independently.
    """
    batch, channels, in_h, in_w = x.shape
    groups = filters.shape[2]
    pad_h = max((out_h - 1) * stride + k - in_h, 0) // 2
    pad_w = max((out_w - 1) * stride + k - in_w, 0) // 2
    out = torch.zeros(batch, channels, groups, out_h, out_w, dtype=x.dtype)
    for b in range(batch):
        for c in range(channels):
            for g in range(groups):
                for h in range(out_h):
                    for w in range(out_w):
                        acc = 0.0
                        for i in range(k):
                            for j in range(k):
                                r, q = h * stride + i - pad_h, w * stride + j - pad_w
                                if 0 <= r < in_h and 0 <= q < in_w:
                                    acc += float(x[b, c, r, q]) * float(filters[b, i * k + j, g, h, w])
                        out[b, c, g, h, w] = acc
    return out


@pytest.mark.parametrize(
    ("size", "k", "stride", "expected"),
    [(5, 7, 1, (3, 3)), (6, 4, 1, (1, 2)), (8, 20, 2, (9, 9)), (400, 20, 4, (8, 8)), (9, 4, 3, (0, 1))],
)
def test_same_padding_is_tf_same(size, k, stride, expected):
    assert same_padding(size, k, stride) == expected


def test_kernel_normalize_sums_to_one_per_pixel_and_keeps_differences():
    torch.manual_seed(0)
    raw = torch.randn(2, 49, 5, 6, dtype=torch.float64) * 3
    norm = kernel_normalize(raw, 7)
    assert norm.shape == raw.shape
    torch.testing.assert_close(norm.sum(1), torch.ones(2, 5, 6, dtype=torch.float64))
    torch.testing.assert_close(norm[:, 1:] - norm[:, :1], raw[:, 1:] - raw[:, :1])  # only a per-pixel shift
    per_sub_pixel = kernel_normalize(torch.randn(2, 25, 4, 3, 3), 5)  # upsampling filters viewed (B, k*k, s*s, H, W)
    torch.testing.assert_close(per_sub_pixel.sum(1), torch.ones(2, 4, 3, 3))
    with pytest.raises(ValueError, match="49"):
        kernel_normalize(torch.randn(2, 48, 5, 6), 7)


@pytest.mark.parametrize("k", [3, 4])
def test_local_filter_matches_a_per_pixel_loop(k):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    f = torch.randn(2, k * k, 5, 6, dtype=torch.float64)
    expected = _loop_reference(x, f.unsqueeze(2), k, 1, 5, 6).squeeze(2)
    torch.testing.assert_close(local_filter(x, f, k), expected)


def test_local_filter_tap_order_is_row_major():
    x = torch.arange(30.0).view(1, 1, 5, 6)
    f = torch.zeros(1, 9, 5, 6)
    f[:, 0 * 3 + 2] = 1.0  # tap row 0, column 2: reads the pixel one up and one to the right
    out = local_filter(x, f, 3)
    torch.testing.assert_close(out[0, 0, 1:, :-1], x[0, 0, :-1, 1:])
    assert (out[0, 0, 0] == 0).all() and (out[0, 0, :, -1] == 0).all()  # zero padding


def test_local_filter_with_a_constant_filter_is_a_depthwise_correlation():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 9, 7)
    kernel = torch.randn(7, 7)
    f = kernel.reshape(1, 49, 1, 1).expand(2, 49, 9, 7)
    expected = F.conv2d(x, kernel.expand(4, 1, 7, 7), padding=3, groups=4)
    torch.testing.assert_close(local_filter(x, f, 7), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("k", "scale"), [(4, 2), (5, 2), (6, 3)])
def test_local_downsample_matches_a_per_pixel_loop(k, scale):
    torch.manual_seed(3)
    hr = torch.randn(2, 3, 4 * scale, 3 * scale, dtype=torch.float64)
    kernels = torch.randn(2, k * k, 4, 3, dtype=torch.float64)
    expected = _loop_reference(hr, kernels.unsqueeze(2), k, scale, 4, 3).squeeze(2)
    torch.testing.assert_close(local_downsample(hr, kernels, k, scale), expected)


@pytest.mark.parametrize("scale", [2, 4])
def test_local_downsample_with_a_constant_kernel_is_the_strided_correlation(scale):
    torch.manual_seed(4)
    hr = torch.rand(2, 3, 12 * scale, 8 * scale)
    kernel = torch.rand(20, 20)
    kernels = kernel.reshape(1, 400, 1, 1).expand(2, 400, 12, 8)
    pad = (20 - scale) // 2
    expected = F.conv2d(F.pad(hr, (pad,) * 4), kernel.expand(3, 1, 20, 20), stride=scale, groups=3)
    assert expected.shape == (2, 3, 12, 8)
    torch.testing.assert_close(local_downsample(hr, kernels, 20, scale), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("k", "scale"), [(3, 2), (5, 2), (3, 3)])
def test_local_upsample_matches_a_per_pixel_loop(k, scale):
    torch.manual_seed(5)
    lr = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    filters = torch.randn(2, k * k * scale * scale, 5, 6, dtype=torch.float64)
    sub = _loop_reference(lr, filters.view(2, k * k, scale * scale, 5, 6), k, 1, 5, 6)  # (B, C, s^2, H, W)
    expected = torch.zeros(2, 3, 5 * scale, 6 * scale, dtype=torch.float64)
    for dy in range(scale):
        for dx in range(scale):
            expected[:, :, dy::scale, dx::scale] = sub[:, :, dy * scale + dx]
    torch.testing.assert_close(local_upsample(lr, filters, k, scale), expected)


def test_local_upsample_sub_pixel_order():
    """Channel ``t * s^2 + q`` is tap ``t`` of sub-pixel ``q = dy * s + dx``: only that HR phase lights up."""
    lr = torch.rand(1, 3, 4, 5) + 1.0
    k, scale = 5, 2
    centre = (k // 2) * k + k // 2
    for dy in range(scale):
        for dx in range(scale):
            filters = torch.zeros(1, k * k * scale * scale, 4, 5)
            filters[:, centre * scale * scale + dy * scale + dx] = 1.0
            out = local_upsample(lr, filters, k, scale)
            torch.testing.assert_close(out[:, :, dy::scale, dx::scale], lr)
            assert out.abs().sum() == pytest.approx(lr.sum().item(), rel=1e-6)  # every other phase is zero


def test_identity_filters_give_nearest_neighbour_upsampling():
    lr = torch.rand(2, 3, 4, 5)
    k, scale = 5, 4
    filters = torch.zeros(2, k * k, scale * scale, 4, 5)
    filters[:, (k // 2) * k + k // 2] = 1.0
    out = local_upsample(lr, filters.view(2, -1, 4, 5), k, scale)
    torch.testing.assert_close(out, F.interpolate(lr, scale_factor=scale, mode="nearest"))


def test_gradients_match_autograd_numerically():
    torch.manual_seed(6)
    opts = {"dtype": torch.float64, "requires_grad": True}
    x, f = torch.randn(2, 3, 4, 5, **opts), torch.randn(2, 9, 4, 5, **opts)
    assert torch.autograd.gradcheck(lambda a, b: local_filter(a, b, 3), (x, f))
    hr, kd = torch.randn(1, 2, 6, 4, **opts), torch.randn(1, 16, 3, 2, **opts)
    assert torch.autograd.gradcheck(lambda a, b: local_downsample(a, b, 4, 2), (hr, kd))
    lr, fu = torch.randn(1, 2, 3, 4, **opts), torch.randn(1, 9 * 4, 3, 4, **opts)
    assert torch.autograd.gradcheck(lambda a, b: local_upsample(a, b, 3, 2), (lr, fu))


def test_gradients_flow_through_normalisation_to_inputs_and_filters():
    x = torch.randn(2, 4, 5, 6, requires_grad=True)
    raw = torch.randn(2, 49, 5, 6, requires_grad=True)
    local_filter(x, kernel_normalize(raw, 7), 7).square().sum().backward()
    assert x.grad.abs().sum() > 0 and raw.grad.abs().sum() > 0
    only_input = torch.randn(1, 2, 4, 4, requires_grad=True)
    local_filter(only_input, torch.randn(1, 9, 4, 4), 3).sum().backward()  # filters without grad
    assert only_input.grad.abs().sum() > 0


def test_shape_errors_are_explicit():
    with pytest.raises(ValueError, match="filters must be"):
        local_filter(torch.rand(1, 3, 5, 5), torch.rand(1, 8, 5, 5), 3)
    with pytest.raises(ValueError, match="filters cover"):
        local_filter(torch.rand(1, 3, 5, 5), torch.rand(1, 9, 4, 5), 3)
    with pytest.raises(ValueError, match="HR must be"):
        local_downsample(torch.rand(1, 3, 10, 10), torch.rand(1, 16, 4, 5), 4, 2)
    with pytest.raises(ValueError, match="filters must be"):
        local_upsample(torch.rand(1, 3, 4, 4), torch.rand(1, 25, 4, 4), 5, 2)


def _official_local_conv_us(img: np.ndarray, kernel_2d: np.ndarray, factor: int, k_sz: int) -> np.ndarray:
    """A numpy port of the official (TF) ``local_conv_us`` followed by ``depth_to_space`` (DCR), NHWC.

    Patches: ``extract_image_patches`` with SAME zero padding, taps row-major, channels fastest; the raw kernels are
    split into ``k*k`` groups of ``f*f`` (tap-major), normalised over the taps per sub-pixel, and the per-sub-pixel
    results concatenated sub-pixel-major before ``depth_to_space``.
    """
    b, h, w, c = img.shape
    r = k_sz // 2
    padded = np.pad(img, ((0, 0), (r, r), (r, r), (0, 0)))
    patches = np.stack([padded[:, i : i + h, j : j + w, :] for i in range(k_sz) for j in range(k_sz)], axis=3)
    kern = kernel_2d.reshape(b, h, w, k_sz * k_sz, factor * factor)  # split into k*k groups of f*f, stacked on 3
    kern = kern - kern.mean(axis=3, keepdims=True) + 1.0 / k_sz**2
    result = np.einsum("bhwtc,bhwtq->bhwqc", patches, kern).reshape(b, h, w, factor * factor * c)  # concat over q
    out = result.reshape(b, h, w, factor, factor, c).transpose(0, 1, 3, 2, 4, 5)  # depth_to_space, DCR
    return out.reshape(b, h * factor, w * factor, c)


@pytest.mark.parametrize("factor", [2, 4])
def test_local_upsample_matches_the_official_tf_order(factor):
    gen = torch.Generator().manual_seed(factor)
    lr = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    raw = torch.randn(2, 25 * factor * factor, 5, 6, generator=gen, dtype=torch.float64)
    normalised = kernel_normalize(raw.view(2, 25, factor * factor, 5, 6), 5).view_as(raw)
    ours = local_upsample(lr, normalised, 5, factor)
    ref = _official_local_conv_us(lr.permute(0, 2, 3, 1).numpy(), raw.permute(0, 2, 3, 1).numpy(), factor, 5)
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), ref, rtol=1e-10, atol=1e-12)

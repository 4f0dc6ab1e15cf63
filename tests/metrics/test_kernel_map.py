"""Per-pixel kernel errors of kernel maps against the per-kernel metrics (``kernel_sae``, shift-aligned l2)."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.metrics import (
    KernelMapL2,
    KernelMapSAE,
    kernel_error_maps,
    kernel_map_l2,
    kernel_map_sae,
    kernel_sae,
    kernel_shift_aligned_l2,
)
from tests.metrics.reference import gauss_kernels


def _map(kernels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, k, k)`` -> the ``(B, k*k, H, W)`` map repeating each kernel at every pixel."""
    return kernels.reshape(kernels.shape[0], -1, 1, 1).expand(-1, -1, h, w).contiguous()


def _random_maps(bsz: int, k: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Maps of positive kernels summing to 1 (a softmax over the taps), different at every pixel."""
    logits = torch.randn(bsz, k * k, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return logits.mul(2).softmax(dim=1)


def test_zero_for_identical_maps():
    gt = _random_maps(2, 20, 5, 6, seed=0)
    sae, l2 = kernel_error_maps(gt, gt.clone())
    assert sae.shape == l2.shape == (2, 5, 6) and sae.dtype == l2.dtype == torch.float64
    assert sae.abs().max() == 0 and l2.abs().max() < 1e-15
    torch.testing.assert_close(
        kernel_map_l2(gt, gt, squared=False), torch.zeros(2, dtype=torch.float64), atol=1e-7, rtol=0
    )


@pytest.mark.parametrize(("k_est", "k_gt"), [(11, 11), (13, 11), (20, 21)])
def test_constant_maps_equal_the_per_image_metrics(k_est, k_gt):
    est = gauss_kernels(3, k_est, seed=1)
    gt = gauss_kernels(3, k_gt, seed=2)
    est_map, gt_map = _map(est, 4, 7), _map(gt, 4, 7)
    torch.testing.assert_close(kernel_map_sae(est_map, gt_map), kernel_sae(est, gt), atol=1e-12, rtol=0)
    for shift, squared in ((3, True), (1, True), (2, False)):
        expected = kernel_shift_aligned_l2(est, gt, max_shift=shift, squared=squared)
        got = kernel_map_l2(est_map, gt_map, max_shift=shift, squared=squared)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    # a (B, k, k) argument stands for the same kernel at every pixel
    torch.testing.assert_close(kernel_map_l2(est_map, gt), kernel_map_l2(est_map, gt_map), atol=0, rtol=0)
    torch.testing.assert_close(kernel_map_sae(est, gt_map), kernel_sae(est, gt), atol=1e-12, rtol=0)


def test_every_pixel_is_the_per_kernel_metric():
    est, gt = _random_maps(2, 9, 3, 4, seed=3), _random_maps(2, 7, 3, 4, seed=4)
    sae, l2 = kernel_error_maps(est, gt, max_shift=2, chunk=5)  # chunks cut across rows and images
    for b in range(2):
        for r in range(3):
            for c in range(4):
                e, g = est[b, :, r, c].reshape(9, 9), gt[b, :, r, c].reshape(7, 7)
                torch.testing.assert_close(sae[b, r, c], kernel_sae(e, g)[0], atol=1e-12, rtol=0)
                torch.testing.assert_close(
                    l2[b, r, c], kernel_shift_aligned_l2(e, g, max_shift=2)[0], atol=1e-12, rtol=0
                )
    torch.testing.assert_close(kernel_map_sae(est, gt), sae.mean(dim=(-2, -1)))
    torch.testing.assert_close(kernel_map_l2(est, gt, max_shift=2), l2.mean(dim=(-2, -1)))


def test_shift_alignment_and_the_error_map_locate_errors():
    gt = _map(torch.nn.functional.pad(gauss_kernels(1, 11, seed=5), (3, 3, 3, 3)), 6, 6)  # 17x17, zero border
    est = gt.clone().reshape(1, 17, 17, 6, 6)
    est[..., 2:, :] = est[..., 2:, :].roll(shifts=(1, -2), dims=(1, 2))  # rows 2.. of the grid: shifted kernels
    est = est.reshape(1, 289, 6, 6)
    sae, l2 = kernel_error_maps(est, gt)
    assert (sae[0, :2] == 0).all() and (sae[0, 2:] > 0.05).all()
    assert l2.max() < 1e-15  # an integer shift is aligned away
    assert (kernel_error_maps(est, gt, max_shift=0)[1][0, 2:] > 1e-4).all()


def test_metric_objects_average_per_image_means():
    est, gt = _random_maps(3, 5, 4, 4, seed=6), _random_maps(3, 5, 4, 4, seed=7)
    sae_metric, l2_metric = KernelMapSAE(), KernelMapL2(max_shift=1)
    for part in (slice(0, 1), slice(1, 3)):
        sae_metric.update(est[part], gt[part])
        l2_metric.update(est[part], gt[part])
    torch.testing.assert_close(sae_metric.compute(), kernel_map_sae(est, gt).mean())
    torch.testing.assert_close(l2_metric.compute(), kernel_map_l2(est, gt, max_shift=1).mean())
    assert l2_metric.last_values.shape == (2,)
    with pytest.raises(ValueError):
        KernelMapL2(max_shift=-1)


def test_errors():
    good = _random_maps(1, 4, 2, 2, seed=8)
    with pytest.raises(ValueError, match="square"):
        kernel_error_maps(good[:, :15], good)
    with pytest.raises(ValueError, match="broadcast"):
        kernel_error_maps(good, _random_maps(1, 4, 3, 2, seed=9))
    with pytest.raises(ValueError, match="max_shift"):
        kernel_error_maps(good, good, max_shift=-1)
    with pytest.raises(ValueError, match="kernel map"):
        kernel_error_maps(good[None], good)
    with pytest.raises(ValueError, match="a kernel is"):
        kernel_error_maps(good[0, :3, :, :1], good)

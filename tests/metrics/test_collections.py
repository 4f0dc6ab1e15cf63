"""torchmetrics classes and collections: means of per-item values, states, names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_modules.metrics import (
    PSNR_CLAMP_DB,
    PSNRY,
    SSIMY,
    KernelL2,
    KernelPSNR,
    KernelSAE,
    kernel_psnr,
    kernel_sae,
    kernel_shift_aligned_l2,
    make_kernel_metrics,
    make_sr_metrics,
    psnr_y,
    ssim_y,
)
from tests.metrics.reference import gauss_kernels, np_y, shave_y, to_torch


def test_metric_mean_of_per_image_values_over_two_updates(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    srs, hrs = pairs
    sr, hr = to_torch(srs), to_torch(hrs)
    psnr_metric, ssim_metric = PSNRY(scale=2), SSIMY(scale=2)
    for m in (psnr_metric, ssim_metric):
        m.update(sr[:2], hr[:2])
        m.update(sr[2:], hr[2:])
    per_psnr = psnr_y(sr, hr, shave=2)
    per_ssim = ssim_y(sr, hr, shave=2)
    assert abs(psnr_metric.compute().item() - per_psnr.mean().item()) < 1e-10
    assert abs(ssim_metric.compute().item() - per_ssim.mean().item()) < 1e-12
    # Mean of per-image PSNR differs from the PSNR of the pooled MSE; make sure we did the former.
    y_s = torch.stack([torch.from_numpy(shave_y(np_y(s), 2)) for s in srs])
    y_h = torch.stack([torch.from_numpy(shave_y(np_y(h), 2)) for h in hrs])
    pooled = 10 * math.log10(255.0**2 / (y_s - y_h).square().mean().item())
    assert abs(psnr_metric.compute().item() - pooled) > 1e-3


def test_metric_class_attributes() -> None:
    for cls in (PSNRY, SSIMY):
        assert cls.higher_is_better is True
    for cls in (KernelSAE, KernelL2):
        assert cls.higher_is_better is False
    assert KernelPSNR.higher_is_better is True
    for cls in (PSNRY, SSIMY, KernelSAE, KernelL2, KernelPSNR):
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
    sr, hr = to_torch(srs), to_torch(hrs)
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
    sr, hr = to_torch(srs), to_torch(hrs)
    for cls in (PSNRY, SSIMY):
        whole, a, b = cls(scale=2), cls(scale=2), cls(scale=2)
        whole.update(sr, hr)
        a.update(sr[:1], hr[:1])
        b.update(sr[1:], hr[1:])
        a.merge_state(b)
        assert a.count.item() == 3
        assert abs(a.compute().item() - whole.compute().item()) < 1e-12
    k_est, k_gt = gauss_kernels(4, 13, seed=3), gauss_kernels(4, 11, seed=4)
    whole, a, b = KernelL2(), KernelL2(), KernelL2()
    whole.update(k_est, k_gt)
    a.update(k_est[:3], k_gt[:3])
    b.update(k_est[3:], k_gt[3:])
    a.merge_state(b)
    assert abs(a.compute().item() - whole.compute().item()) < 1e-15


def test_kernel_metric_classes() -> None:
    est, gt = gauss_kernels(5, 13, seed=7), gauss_kernels(5, 11, seed=8)
    coll = make_kernel_metrics()
    coll.update(est[:2], gt[:2])
    coll.update(est[2:], gt[2:])
    out = coll.compute()
    assert set(out) == {"test/kernel_sae", "test/kernel_l2", "test/kernel_psnr"}
    assert abs(out["test/kernel_sae"].item() - kernel_sae(est, gt).mean().item()) < 1e-14
    assert abs(out["test/kernel_l2"].item() - kernel_shift_aligned_l2(est, gt).mean().item()) < 1e-15
    assert abs(out["test/kernel_psnr"].item() - kernel_psnr(est, gt).mean().item()) < 1e-12
    # Perfect estimates on the first batch must not merge the two metrics' states (compute groups disabled).
    coll2 = make_kernel_metrics(prefix="val/")
    coll2.update(gt[:2], gt[:2])
    coll2.update(est[2:], gt[2:])
    out2 = coll2.compute()
    assert out2["val/kernel_sae"].item() != pytest.approx(out2["val/kernel_l2"].item())
    single = KernelSAE()
    single.update(est[0], gt[0])
    assert single.count.item() == 1


def test_kernel_psnr_metric_is_the_mean_of_clamped_per_kernel_values() -> None:
    """Per-kernel PSNR against numpy (FKP's formula), averaged; an exact estimate counts as the clamp value."""
    est, gt = gauss_kernels(3, 11, seed=21), gauss_kernels(3, 11, seed=22)
    metric = KernelPSNR()
    metric.update(gt[:1], gt[:1])  # identical: infinite PSNR, clamped
    assert metric.last_values.tolist() == [PSNR_CLAMP_DB]
    assert metric.compute().item() == PSNR_CLAMP_DB
    metric.update(est, gt)
    values = [-10 * math.log10(np.mean((e.numpy() - g.numpy()) ** 2)) for e, g in zip(est, gt, strict=True)]
    assert metric.compute().item() == pytest.approx((PSNR_CLAMP_DB + sum(values)) / 4, abs=1e-10)
    assert max(values) < PSNR_CLAMP_DB
    whole, a, b = KernelPSNR(), KernelPSNR(), KernelPSNR()
    whole.update(est, gt)
    a.update(est[:1], gt[:1])
    b.update(est[1:], gt[1:])
    a.merge_state(b)
    assert abs(a.compute().item() - whole.compute().item()) < 1e-12

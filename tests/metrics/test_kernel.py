"""Functional kernel metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_modules.metrics import kernel_psnr, kernel_sae, kernel_shift_aligned_l2, pad_to_common_size
from tests.metrics.reference import gauss_kernels


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
    k = _pad(gauss_kernels(3, 9, seed=0), 2)  # 13x13 with a zero border, so a roll is a zero-filled shift
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
    gt11 = gauss_kernels(2, 11, seed=1)
    est13 = _pad(gt11, 1)
    torch.testing.assert_close(kernel_sae(est13, gt11), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(kernel_sae(gt11, est13), torch.zeros(2, dtype=torch.float64))
    # DIV2KRK situation: a 13x13 estimate whose centre is one pixel off the 11x11 ground truth.
    est_off = torch.nn.functional.pad(gt11, (2, 0, 1, 1))  # content moved one px to the right inside 13x13
    assert (kernel_sae(est_off, gt11) > 0.05).all()
    assert (kernel_shift_aligned_l2(est_off, gt11) < 1e-12).all()
    # x4 sizes 33 vs 31 and a single gt kernel broadcast over a batch.
    gt31 = gauss_kernels(1, 31, seed=2)[0]
    est33 = gauss_kernels(3, 33, seed=5)
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


def _fkp_kernel_psnr(gt: np.ndarray, est: np.ndarray) -> float:
    """FKP's ``calculate_psnr(gt, est, is_kernel=True)``, written out in numpy."""
    mse = np.mean((gt.astype(np.float64) - est.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 20 * math.log10(1.0 / math.sqrt(mse))


def test_kernel_psnr_against_numpy() -> None:
    est, gt = gauss_kernels(4, 11, seed=11), gauss_kernels(4, 11, seed=12)
    got = kernel_psnr(est.float(), gt.float())  # float32 inputs are computed in float64
    assert got.shape == (4,) and got.dtype == torch.float64
    for b in range(4):
        ref = _fkp_kernel_psnr(gt[b].float().numpy(), est[b].float().numpy())
        assert got[b].item() == pytest.approx(ref, abs=1e-9)
    assert (got > 30).all() and (got < 80).all()
    # a single ground-truth kernel broadcasts; different sizes: the mean is over the common (padded) grid
    est13 = gauss_kernels(2, 13, seed=13)
    padded = np.pad(gt[0].numpy(), 1)
    single = kernel_psnr(est13, gt[0])
    for b in range(2):
        assert single[b].item() == pytest.approx(_fkp_kernel_psnr(padded, est13[b].numpy()), abs=1e-9)
    # hand value: two taps off by 0.1 in a 5x5 kernel -> mse 0.02 / 25 -> 10 log10(1250) = 30.97 dB
    a = torch.zeros(5, 5)
    b = torch.zeros(5, 5)
    a[2, 2], b[2, 2], b[2, 3] = 1.0, 0.9, 0.1
    assert kernel_psnr(a, b).item() == pytest.approx(10 * math.log10(25 / 0.02))


def test_kernel_psnr_identical_kernels_are_infinite() -> None:
    k = gauss_kernels(2, 11, seed=14)
    assert torch.isinf(kernel_psnr(k, k.clone())).all()
    with pytest.raises(ValueError):
        kernel_psnr(torch.zeros(1, 1, 3, 3), k)

"""Kernel losses (KENet's adaptive attention loss, plain L1) against a straightforward per-element reference."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.losses import KernelLoss, adaptive_attention_loss, kernel_l1_loss


def _kernels(n: int, k: int, seed: int) -> torch.Tensor:
    """Random positive kernels summing to 1, with a peak, in float64."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, k, k, generator=gen, dtype=torch.float64) ** 4
    raw[:, k // 2, k // 2] += 2.0
    return raw / raw.sum(dim=(-2, -1), keepdim=True)


def _reference(est, gt, lambdas=(0.01, 0.1), rhos=(0.01, 0.1, 1.0)) -> float:
    """The paper's formula element by element: k*_lambda(i,j) = k*(i,j) if k_gt(i,j) > lambda p_max else k_gt(i,j)."""
    total = 0.0
    for b in range(est.shape[0]):
        p_max = max(float(v) for v in gt[b].flatten())
        per_kernel = 0.0
        for i in range(est.shape[1]):
            for j in range(est.shape[2]):
                e, g = float(est[b, i, j]), float(gt[b, i, j])
                per_kernel += rhos[0] * abs(e - g)
                for lam, rho in zip(lambdas, rhos[1:], strict=True):
                    masked = e if g > lam * p_max else g
                    per_kernel += rho * abs(masked - g)
        total += per_kernel
    return total / est.shape[0]


def test_attention_loss_matches_the_reference():
    est, gt = _kernels(3, 5, seed=0), _kernels(3, 5, seed=1)
    for lambdas, rhos in (((0.01, 0.1), (0.01, 0.1, 1.0)), ((0.2, 0.5), (0.3, 2.0, 5.0)), ((0.4,), (1.0, 3.0))):
        got = adaptive_attention_loss(est, gt, lambdas, rhos).item()
        assert got == pytest.approx(_reference(est, gt, lambdas, rhos), rel=1e-12)
    # the thresholds matter with these kernels: the loss is not rho-sum times the L1 loss
    l1 = kernel_l1_loss(est, gt).item()
    assert adaptive_attention_loss(est, gt).item() < 1.11 * l1 - 1e-3


def test_l1_loss_matches_the_reference_and_the_module():
    est, gt = _kernels(4, 7, seed=2), _kernels(4, 7, seed=3)
    expected = sum(abs(float(a) - float(b)) for a, b in zip(est.flatten(), gt.flatten(), strict=True)) / 4
    assert kernel_l1_loss(est, gt).item() == pytest.approx(expected, rel=1e-12)
    assert KernelLoss("l1")(est, gt).item() == pytest.approx(expected, rel=1e-12)
    assert KernelLoss()(est, gt).item() == pytest.approx(_reference(est, gt), rel=1e-12)
    module = KernelLoss("attention", lambdas=(0.2, 0.5), rhos=(0.3, 2.0, 5.0))
    assert module(est, gt).item() == pytest.approx(_reference(est, gt, (0.2, 0.5), (0.3, 2.0, 5.0)), rel=1e-12)


def test_gradient_flows_only_where_the_masks_allow():
    """d L / d k*(i,j) = sign(k* - k_gt) (rho0 + rho1 [k_gt > l1 p] + rho2 [k_gt > l2 p]) / B, pixel by pixel."""
    lambdas, rhos = (0.01, 0.1), (0.01, 0.1, 1.0)
    gt = torch.zeros(2, 3, 3, dtype=torch.float64)
    gt[0] = torch.tensor([[0.005, 0.05, 0.0], [0.2, 0.6, 0.045], [0.05, 0.0, 0.05]])  # p_max 0.6: 0.006 / 0.06
    gt[1] = torch.tensor([[0.1, 0.1, 0.1], [0.1, 0.2, 0.1], [0.1, 0.1, 0.1]])  # p_max 0.2: every tap above 0.1 p
    signs = torch.tensor([1.0, -1.0]).repeat(9).view(2, 3, 3).double()
    est = (gt + 0.01 * signs).requires_grad_()
    adaptive_attention_loss(est, gt, lambdas, rhos).backward()
    expected = torch.zeros_like(gt)
    for b in range(2):
        p_max = float(gt[b].max())
        for i in range(3):
            for j in range(3):
                g = float(gt[b, i, j])
                weight = rhos[0]
                weight += rhos[1] if g > lambdas[0] * p_max else 0.0
                weight += rhos[2] if g > lambdas[1] * p_max else 0.0
                expected[b, i, j] = float(signs[b, i, j]) * weight / 2
    torch.testing.assert_close(est.grad, expected, rtol=0, atol=1e-15)
    # image 0: 0.005 is below lambda_1 p_max (rho0 only); 0.05 and 0.045 are between (rho0 + rho1); 0 is below
    assert est.grad[0, 0, 0].abs().item() == pytest.approx(0.01 / 2)
    assert est.grad[0, 0, 1].abs().item() == pytest.approx(0.11 / 2)
    assert est.grad[0, 1, 2].abs().item() == pytest.approx(0.11 / 2)
    assert est.grad[0, 1, 1].abs().item() == pytest.approx(1.11 / 2)
    torch.testing.assert_close(est.grad[1].abs(), torch.full_like(gt[1], 1.11 / 2), rtol=0, atol=1e-15)


def test_zero_for_a_perfect_estimate():
    gt = _kernels(2, 11, seed=4)
    assert adaptive_attention_loss(gt.clone(), gt).item() == 0.0
    assert kernel_l1_loss(gt.clone(), gt).item() == 0.0
    assert adaptive_attention_loss(_kernels(2, 11, seed=5), gt).item() > 0


def test_errors_on_shape_mismatch_and_bad_weights():
    a, b = _kernels(2, 5, seed=6), _kernels(2, 7, seed=7)
    for fn in (adaptive_attention_loss, kernel_l1_loss, KernelLoss()):
        with pytest.raises(ValueError, match="one shape"):
            fn(a, b)
        with pytest.raises(ValueError, match="one shape"):
            fn(a[0], a[0])  # a single (k, k) kernel is not a batch
        with pytest.raises(ValueError, match="one shape"):
            fn(a, a[:1])
    with pytest.raises(ValueError, match="rho"):
        adaptive_attention_loss(a, a, lambdas=(0.1,), rhos=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="kind"):
        KernelLoss("l2")  # type: ignore[arg-type]

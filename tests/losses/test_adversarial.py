"""Vanilla GAN loss: BCE with logits against 1 / 0, stable for large logits, weight on the generator term only."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.losses import GANLoss, gan_loss


def _reference(logits: torch.Tensor, real: bool) -> float:
    """Mean of -log sigmoid(z) (real) or -log(1 - sigmoid(z)) (fake), element by element in float64."""
    values = []
    for z in logits.double().flatten().tolist():
        p = 1.0 / (1.0 + math.exp(-z))
        values.append(-math.log(p) if real else -math.log(1.0 - p))
    return sum(values) / len(values)


def test_matches_binary_cross_entropy_by_hand():
    logits = torch.randn(3, 1, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    for real in (True, False):
        assert gan_loss(logits, real).item() == pytest.approx(_reference(logits, real), rel=1e-12)
    assert gan_loss(torch.zeros(4, dtype=torch.float64), True).item() == pytest.approx(math.log(2.0), rel=1e-12)


def test_stable_for_large_logits():
    logits = torch.tensor([100.0, -100.0])
    assert gan_loss(logits[:1], True).item() == pytest.approx(0.0, abs=1e-30)
    assert gan_loss(logits[:1], False).item() == pytest.approx(100.0, rel=1e-6)
    assert gan_loss(logits[1:], True).item() == pytest.approx(100.0, rel=1e-6)
    assert torch.isfinite(gan_loss(logits, True))


def test_generator_gradient_pushes_towards_real():
    logits = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    gan_loss(logits, True).backward()
    expected = (torch.sigmoid(logits.detach()) - 1.0) / 3  # d/dz of mean(-log sigmoid z)
    torch.testing.assert_close(logits.grad, expected)
    assert (logits.grad < 0).all()


def test_weight_applies_to_the_generator_only():
    logits = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    module = GANLoss(weight=0.1)
    assert module(logits, True).item() == pytest.approx(0.1 * gan_loss(logits, True).item(), rel=1e-6)
    assert module(logits, True, is_disc=True).item() == pytest.approx(gan_loss(logits, True).item(), rel=1e-6)
    assert module(logits, False, is_disc=True).item() == pytest.approx(gan_loss(logits, False).item(), rel=1e-6)
    assert "weight=0.1" in repr(module)

"""Vanilla GAN loss (binary cross-entropy on raw discriminator logits), as BasicSR's ``GANLoss(gan_type="vanilla")``.

The discriminator's logits may have any shape (a scalar per image, or the per-pixel map of a U-Net discriminator such
as DASR's ``UNetDiscriminatorSN``); the loss is the mean over all of them against a constant label, 1 for "real" and
0 for "fake". The generator is trained to make its output look real (``gan_loss(D(sr), True)``); the discriminator to
tell real from fake (``gan_loss(D(hr), True)`` and ``gan_loss(D(sr.detach()), False)``). As in BasicSR, the loss
weight scales only the generator's term (DASR: 0.1); the discriminator's terms are unweighted.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GANLoss", "gan_loss"]


def gan_loss(logits: Tensor, target_is_real: bool) -> Tensor:
    """Mean binary cross-entropy of raw logits against the label 1 (real) or 0 (fake).

    ``softplus(-z)`` for real, ``softplus(z)`` for fake (``BCEWithLogits``, numerically stable for any logit).

    Args:
        logits: Discriminator outputs before any sigmoid, any shape.
        target_is_real: Compare with the "real" label (1) if true, else with "fake" (0).

    Returns:
        Scalar: the mean over all elements.
    """
    target = logits.new_full((), 1.0 if target_is_real else 0.0).expand_as(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


class GANLoss(nn.Module):
    """Vanilla GAN loss with a weight on the generator's term.

    Args:
        weight: Factor on the generator's adversarial loss (DASR: 0.1). Discriminator terms are never weighted.

    Example:
        ``loss_g = gan(D(sr), target_is_real=True)``;
        ``loss_d = gan(D(hr), True, is_disc=True) + gan(D(sr.detach()), False, is_disc=True)``.
    """

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def forward(self, logits: Tensor, target_is_real: bool, is_disc: bool = False) -> Tensor:
        """Mean BCE of ``logits`` against the real/fake label, times ``weight`` for the generator.

        Args:
            logits: Raw discriminator outputs, any shape.
            target_is_real: Label 1 if true, else 0.
            is_disc: The loss trains the discriminator (then no weight is applied).

        Returns:
            Scalar loss.
        """
        loss = gan_loss(logits, target_is_real)
        return loss if is_disc else self.weight * loss

    def extra_repr(self) -> str:
        """The generator weight (shown by ``print(module)``)."""
        return f"weight={self.weight}"

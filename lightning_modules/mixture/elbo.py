"""The parts of the mixture's ELBO (Eq. 12) and its two inference rules (Eq. 10, hard selection): pure functions.

Shapes: ``B`` images, ``M`` branches (latent states ``z``); ``q`` is the posterior ``q(z | L)`` ``(B, M)``, branch
outputs and residuals are ``(B, M, H, W)`` on the Y channel, targets and bases ``(B, 1, H, W)``. Per image, Eq. (12)
is ``expected_reconstruction(q, branch_errors(F, H)) + lambda * kl_categorical(log q, log p)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def branch_errors(outputs: Tensor, target: Tensor, reduction: Literal["sum", "mean"] = "sum") -> Tensor:
    """Squared error of every branch: ``||H - F(L, z)||^2`` per image and branch.

    Args:
        outputs: ``(B, M, H, W)`` branch predictions ``F(L, z)``.
        target: ``(B, 1, H, W)`` HR Y.
        reduction: ``"sum"`` over pixels (the squared norm of Eq. 12) or ``"mean"``.

    Returns:
        ``(B, M)``.
    """
    sq = (outputs - target).square()
    return sq.sum(dim=(-2, -1)) if reduction == "sum" else sq.mean(dim=(-2, -1))


def expected_reconstruction(q: Tensor, errors: Tensor) -> Tensor:
    """First term of Eq. (12): ``E_q[||H - F(L, z)||^2] = sum_z q_z err_z``, ``(B, M), (B, M) -> (B,)``."""
    return (q * errors).sum(dim=-1)


def kl_categorical(log_q: Tensor, log_p: Tensor) -> Tensor:
    """``KL(q || p) = sum_z q_z (log q_z - log p_z)`` from log-probabilities ``(B, M)`` -> ``(B,)``.

    Exactly zero when ``log_q == log_p``; terms with ``q_z = 0`` contribute zero.
    """
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(dim=-1)


def soft_mixture(q: Tensor, residuals: Tensor, base: Tensor) -> Tensor:
    """Eq. (10): ``sum_z q_z R(L, z) + bicubic(L)``; ``q (B, M)``, ``residuals (B, M, H, W)``, ``base (B, 1, H, W)``."""
    return base + (q[:, :, None, None] * residuals).sum(dim=1, keepdim=True)


def hard_mixture(q: Tensor, residuals: Tensor, base: Tensor) -> Tensor:
    """Hard selection: the residual of the branch of maximum posterior plus ``base``; shapes as :func:`soft_mixture`."""
    idx = q.argmax(dim=1)
    return base + residuals[torch.arange(q.shape[0], device=q.device), idx][:, None]

"""Blur-kernel regression losses: estimated kernels ``(B, k, k)`` against ground-truth kernels ``(B, k, k)``.

Both must have the same shape and the same centre convention (KENet: block-centred, applied by correlation); nothing
is padded, shifted or normalised here. ``|.|_1`` is the sum of absolute values over a kernel's ``k x k`` pixels, as
the paper writes it (its Eq. 3 and the loss of Sec. 2.3), and the batch is reduced by the mean, so the loss does not
grow with the batch size. Batched tensor ops only; gradients flow to ``est`` (the masks depend on ``gt`` alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["KernelLoss", "adaptive_attention_loss", "kernel_l1_loss"]

KernelLossKind = Literal["attention", "l1"]


def _check_pair(est: Tensor, gt: Tensor) -> None:
    if est.ndim != 3 or est.shape != gt.shape:
        raise ValueError(
            f"kernel losses take est and gt of one shape (B, k, k), got est {tuple(est.shape)} and gt {tuple(gt.shape)}"
        )


def _check_weights(lambdas: Sequence[float], rhos: Sequence[float]) -> None:
    if len(rhos) != len(lambdas) + 1:
        raise ValueError(
            f"the attention loss needs one rho per threshold plus rho_0 for the unmasked term, got lambdas {lambdas} "
            f"and rhos {rhos}"
        )


def attention_weights(gt: Tensor, lambdas: Sequence[float], rhos: Sequence[float]) -> Tensor:
    """Per-pixel weights ``w = rho_0 + sum_t rho_t [gt > lambda_t max(gt)]`` ``(B, k, k)`` (no gradient).

    ``|k*_{lambda_t} - k_gt|`` is ``|k* - k_gt|`` where ``k_gt > lambda_t p_max`` and 0 elsewhere (Eq. 7 puts ``k_gt``
    there), so the attention loss of one kernel equals ``sum_ij w(i, j) |k*(i, j) - k_gt(i, j)|``.
    """
    _check_weights(lambdas, rhos)
    gt = gt.detach()
    peak = gt.amax(dim=(-2, -1), keepdim=True)
    weights = torch.full_like(gt, float(rhos[0]))
    for lam, rho in zip(lambdas, rhos[1:], strict=True):
        weights = weights + float(rho) * (gt > lam * peak).to(gt.dtype)
    return weights


def adaptive_attention_loss(
    est: Tensor,
    gt: Tensor,
    lambdas: Sequence[float] = (0.01, 0.1),
    rhos: Sequence[float] = (0.01, 0.1, 1.0),
) -> Tensor:
    """KENet's adaptive attention loss (Cao et al., Sec. 2.3, Eq. 7 and the loss after it).

    ``k*_{lambda_t}(i, j) = k*(i, j)`` where ``k_gt(i, j) > lambda_t p_max`` (``p_max`` the largest tap of ``k_gt``),
    else ``k_gt(i, j)``; ``L = rho_0 |k* - k_gt|_1 + rho_1 |k*_{lambda_1} - k_gt|_1 + rho_2 |k*_{lambda_2} - k_gt|_1``.
    The larger ``lambda_2`` keeps only the kernel's core, which ``rho_2`` weights most. Computed in one pass as
    ``sum w |k* - k_gt|`` with the weights of ``attention_weights`` (the same value and gradient).

    Args:
        est: ``(B, k, k)`` estimated kernels.
        gt: ``(B, k, k)`` ground-truth kernels.
        lambdas: Thresholds ``lambda_t`` as fractions of ``p_max`` (the paper: 0.01, 0.1).
        rhos: ``rho_0`` of the unmasked term, then one ``rho_t`` per threshold (the paper: 0.01, 0.1, 1).

    Returns:
        Scalar: the per-kernel loss (sums over the ``k x k`` pixels) averaged over the batch.

    Raises:
        ValueError: If the shapes differ or are not ``(B, k, k)``, or ``len(rhos) != len(lambdas) + 1``.
    """
    _check_pair(est, gt)
    weights = attention_weights(gt, lambdas, rhos)
    return (weights * (est - gt).abs()).sum(dim=(-2, -1)).mean()


def kernel_l1_loss(est: Tensor, gt: Tensor) -> Tensor:
    """Plain L1 kernel loss (KENet's Eq. 3 and the "L1" row of its Table 2): ``|k* - k_gt|_1``.

    Args:
        est: ``(B, k, k)`` estimated kernels.
        gt: ``(B, k, k)`` ground-truth kernels.

    Returns:
        Scalar: the sum of absolute errors over each kernel's pixels, averaged over the batch.

    Raises:
        ValueError: If the shapes differ or are not ``(B, k, k)``.
    """
    _check_pair(est, gt)
    return (est - gt).abs().sum(dim=(-2, -1)).mean()


class KernelLoss(nn.Module):
    """A kernel regression loss a system is configured with: ``loss(est, gt)`` -> scalar.

    Args:
        kind: ``"attention"`` (``adaptive_attention_loss``, KENet's) or ``"l1"`` (``kernel_l1_loss``, its ablation).
        lambdas: Thresholds of the attention loss (ignored by ``"l1"``).
        rhos: Weights of the attention loss, ``rho_0`` first (ignored by ``"l1"``).
    """

    def __init__(
        self,
        kind: KernelLossKind = "attention",
        lambdas: Sequence[float] = (0.01, 0.1),
        rhos: Sequence[float] = (0.01, 0.1, 1.0),
    ) -> None:
        super().__init__()
        if kind not in ("attention", "l1"):
            raise ValueError(f"kind must be 'attention' or 'l1', got {kind!r}")
        _check_weights(lambdas, rhos)
        self.kind = kind
        self.lambdas = tuple(float(v) for v in lambdas)
        self.rhos = tuple(float(v) for v in rhos)

    def forward(self, est: Tensor, gt: Tensor) -> Tensor:
        """``(B, k, k)`` estimates and ground truths -> the batch-mean loss (scalar)."""
        if self.kind == "l1":
            return kernel_l1_loss(est, gt)
        return adaptive_attention_loss(est, gt, self.lambdas, self.rhos)

    def extra_repr(self) -> str:
        """``kind`` and, for the attention loss, its thresholds and weights (shown by ``print(module)``)."""
        weights = f", lambdas={self.lambdas}, rhos={self.rhos}" if self.kind == "attention" else ""
        return f"kind={self.kind!r}{weights}"

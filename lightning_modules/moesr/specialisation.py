"""Do the experts specialise? PSNR-Y of every expert on images made with every kernel (issue 3, item 1).

* :func:`specialisation_matrix`: ``(E', K)`` mean PSNR-Y of expert ``i`` on LR images made with kernel ``j``, all
  pairs in one ``ExpertBank`` call; :func:`diagonal_wins` counts the kernels whose best expert is their own.
* :func:`train_experts_on_kernels`: train expert ``i`` on kernel ``i`` (the experts stage in miniature, for tests
  and ``benchmarks/moesr_specialisation.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from datamodules.degradation import ops
from lightning_modules.metrics import psnr_y
from lightning_modules.nets.moesr import ExpertBank


def degrade(hr: Tensor, kernels: Tensor, scale: int) -> Tensor:
    """``(B, 3, sH, sW)`` x ``(K, k, k)`` block-centred kernels -> 8-bit LR ``(B, K, 3, H, W)``."""
    return ops.quantize(ops.blur_decimate_bank(hr, kernels, scale))


@torch.no_grad()
def specialisation_matrix(
    bank: ExpertBank, kernels: Tensor, hr: Tensor, experts: Tensor | None = None, shave: int | None = None
) -> Tensor:
    """Mean PSNR-Y of expert ``i`` on LR images made with kernel ``j`` (issue 3, item 1).

    All ``E' x K`` (expert, kernel) pairs run in one ``ExpertBank`` call.

    Args:
        bank: The experts.
        kernels: ``(K, k, k)`` block-centred kernels (correlate, decimate from pixel 0), one per image set.
        hr: ``(B, 3, sH, sW)`` HR images in ``[0, 1]``.
        experts: ``(E',)`` experts to evaluate (default: all, in order).
        shave: Border pixels left out of PSNR-Y (default: the scale).

    Returns:
        ``(E', K)`` float64 matrix; a specialised bank has its largest value of column ``j`` in row ``j``
        (:func:`diagonal_wins`).
    """
    experts = torch.arange(bank.num_experts) if experts is None else experts.cpu().long()
    lr = degrade(hr, kernels.to(hr), bank.scale)  # (B, K, 3, h, w)
    n_e, n_k = experts.numel(), kernels.shape[0]
    pairs = lr.repeat(1, n_e, 1, 1, 1)  # slot e * K + j: expert e on kernel j
    sr = bank(pairs, experts.repeat_interleave(n_k)).clamp(0, 1)
    target = hr[:, None].expand_as(sr).flatten(0, 1)
    psnr = psnr_y(sr.flatten(0, 1), target, shave=bank.scale if shave is None else shave)
    return psnr.reshape(hr.shape[0], n_e, n_k).mean(dim=0)


def diagonal_wins(matrix: Tensor) -> int:
    """Columns ``j`` of a square matrix whose maximum is on the diagonal (expert ``j`` best on kernel ``j``)."""
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a square matrix is needed, got {tuple(matrix.shape)}")
    return int((matrix.argmax(dim=0) == torch.arange(matrix.shape[1])).sum())


def train_experts_on_kernels(
    bank: ExpertBank,
    kernels: Tensor,
    images: Sequence[Tensor],
    steps: int,
    patch: int = 24,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Train expert ``i`` of ``bank`` on kernel ``i`` (random HR crops, L1, Adam + one-cycle): all in one call a step.

    Each step draws one batch of HR crops and degrades it with every kernel, so the experts see the same images and
    differ only by their kernel (as ``GridDegradation``).

    Args:
        bank: ``E`` experts to train (``E == len(kernels)``).
        kernels: ``(E, k, k)`` block-centred kernels.
        images: HR images ``(3, H, W)`` in ``[0, 1]`` (each at least ``patch * scale`` on both sides).
        steps: Optimiser steps.
        patch: LR patch side (HR crops are ``patch * scale``).
        batch_size: Crops per step.
        lr: Maximum learning rate of the one-cycle schedule.
        seed: Seed of the crops.

    Returns:
        The training loss (mean L1 over experts) of every step.
    """
    if kernels.shape[0] != bank.num_experts:
        raise ValueError(f"{kernels.shape[0]} kernels for {bank.num_experts} experts")
    gen = torch.Generator().manual_seed(seed)
    size = patch * bank.scale
    opt = torch.optim.Adam(bank.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps))
    losses = []
    for _ in range(steps):
        crops = []
        for _ in range(batch_size):
            img = images[int(torch.randint(len(images), (1,), generator=gen))]
            top = int(torch.randint(img.shape[-2] - size + 1, (1,), generator=gen))
            left = int(torch.randint(img.shape[-1] - size + 1, (1,), generator=gen))
            crops.append(img[:, top : top + size, left : left + size])
        hr = torch.stack(crops)
        lr_imgs = degrade(hr, kernels.to(hr), bank.scale)
        sr = bank(lr_imgs)
        loss = (sr - hr[:, None]).abs().mean(dim=(0, 2, 3, 4)).sum()  # each expert its own L1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item() / bank.num_experts)
    return losses

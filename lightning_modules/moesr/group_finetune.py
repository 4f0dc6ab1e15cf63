"""MoESR's test-time fine-tuning of several equal-size images at once, their experts run as one grouped bank.

``finetune_group`` gives the same result as ``finetune.finetune`` on each image in turn (``tests/moesr``): the
chosen experts are copied into an ``ExpertBank`` of ``K`` slots (slot ``i`` = image ``i``'s expert) and every
iteration runs the ``K`` images' crops (each image's own crop plan, kernel, rotations and noise draws, from its own
``FinetuneObjective``) through the bank as grouped convolutions; the objective is the **sum** of the per-image
objectives, so each slot receives exactly its image's gradient, and Adam and the one-cycle schedule act element-wise,
as on separate networks. Images must have one size (their crops then have one size).

Worth it where many small convolutions leave a GPU idle; on a CPU one image at a time is faster (oneDNN's grouped
convolutions run below its plain ones, ``python -m benchmarks.moesr``), so ``MoESR(finetune_group=...)`` is off by
default.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from datamodules.degradation.ops import quantize
from lightning_modules.core.precision import fresh_casts, full_precision
from lightning_modules.moesr.finetune import FinetuneObjective, centre_crop, downscale_valid, finetune_optimizer
from lightning_modules.nets.moesr import ExpertBank
from lightning_modules.nets.vdsr import ChainedVDSR


def _l1(a: Tensor, b: Tensor) -> Tensor:
    """Per-image mean absolute error ``(K,)`` (``F.l1_loss`` of each image), ``b`` centre-cropped to ``a``."""
    return (a - centre_crop(b, *a.shape[-2:])).abs().mean(dim=(1, 2, 3))


def group_losses(
    bank: ExpertBank, objectives: list[FinetuneObjective], kernels: Tensor, mids: Tensor | None, step: int
) -> dict[str, Tensor]:
    """Each loss term summed over the ``K`` images (``"total"``: their sum), as ``FinetuneObjective.losses``.

    ``kernels`` ``(K, k, k)`` and ``mids`` (x4: ``(K, 13, 13)``) are the objectives' kernels, stacked once.
    """
    first = objectives[0]
    s, w_cycle, w_interp = first.scale, first.cycle_weight, first.interp_weight
    hr, lr, bic, mask = (torch.cat(parts) for parts in zip(*(o.crops(step) for o in objectives), strict=True))
    sr = bank(lr[None])[0]
    terms = {"forward": _l1(downscale_valid(sr, kernels, s), lr) * w_cycle}
    fake_lr = downscale_valid(hr, kernels, s)
    if first.real:
        noise = [torch.randn(fake_lr.shape[1:], generator=o.noise_generator, device=fake_lr.device) for o in objectives]
        fake_lr = fake_lr + torch.stack(noise).to(fake_lr) * first.noise_std
    outs = bank.stage_outputs(quantize(fake_lr)[None])
    if mids is not None:
        terms["intermediate"] = _l1(outs[0][0], downscale_valid(hr, mids, 2)) * w_cycle
    terms["backward"] = _l1(outs[-1][0], hr) * w_cycle
    terms["interp"] = (sr * mask - bic * mask).abs().mean(dim=(1, 2, 3)) * w_interp
    terms = {name: value.sum() for name, value in terms.items()}
    terms["total"] = sum(terms.values())
    return terms


def finetune_group(
    nets: list[ChainedVDSR],
    lrs: list[Tensor],
    kernels: list[Tensor],
    scale: int,
    iterations: int = 1000,
    lr_max: float = 1e-5,
    intermediate_kernels: list[Tensor] | None = None,
    **objective_kwargs,
) -> list[ChainedVDSR]:
    """Fine-tune ``nets[i]`` on ``lrs[i]`` ``(1, 3, H, W)`` with ``kernels[i]``, all as one bank; returns new nets.

    Args:
        nets: ``K`` experts of one architecture (``ChainedVDSR``; copied, not modified).
        lrs: ``K`` LR images of one size, in ``[0, 1]``.
        kernels: ``K`` block-centred ``(k, k)`` kernels at ``scale``.
        scale: SR factor.
        iterations: Optimiser steps (0: copies of ``nets``).
        lr_max: Maximum learning rate of the one-cycle schedule.
        intermediate_kernels: x4: ``K`` ``(13, 13)`` x2 kernels for the intermediate term.
        **objective_kwargs: ``FinetuneObjective`` options shared by the images (crop size, real, noise, seed).

    Returns:
        ``K`` fine-tuned ``ChainedVDSR`` in eval mode.
    """
    if not (len(nets) == len(lrs) == len(kernels)) or not nets:
        raise ValueError(f"need as many nets, images and kernels (>= 1), got {len(nets)}, {len(lrs)}, {len(kernels)}")
    sizes = {tuple(x.shape) for x in lrs}
    if len(sizes) != 1:
        raise ValueError(f"grouped fine-tuning needs images of one size, got {sorted(sizes)}")
    first = nets[0]
    stage = first[0]
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode(False), torch.enable_grad():  # Lightning's test loop runs in inference mode
        bank = ExpertBank(len(nets), first.scale, len(convs), convs[0].out_channels).to(lrs[0].device)
        for i, net in enumerate(nets):
            bank.load_expert(i, net)
        if iterations > 0:
            mids = intermediate_kernels or [None] * len(nets)
            with full_precision(lrs[0].device):  # fixed targets and masks (see finetune.finetune)
                objectives = [
                    FinetuneObjective(x.clone(), k.clone(), scale, iterations, None if m is None else m.clone(),
                                      **objective_kwargs)
                    for x, k, m in zip(lrs, kernels, mids, strict=True)
                ]  # fmt: skip
            stacked = torch.stack([o.kernel for o in objectives])
            stacked_mids = None if mids[0] is None else torch.stack([o.intermediate_kernel for o in objectives])
            optimizer, schedule = finetune_optimizer(list(bank.parameters()), iterations, lr_max)
            for step in range(iterations):
                optimizer.zero_grad(set_to_none=True)
                with fresh_casts(lrs[0].device):  # see finetune.finetune
                    total = group_losses(bank, objectives, stacked, stacked_mids, step)["total"]
                total.backward()
                optimizer.step()
                schedule.step()
        return [bank.expert(i).eval() for i in range(len(nets))]

"""Optimiser recipes shared by several systems."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adam_one_cycle(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, total_steps: int) -> dict:
    """Adam and a one-cycle schedule (maximum ``lr``) over ``total_steps``, stepped every step (Lightning's dict).

    The recipe of MoESR's experts, ISE and KEN and of the single-network baseline (MoESR paper Sec. 4.1).
    """
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, int(total_steps)))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

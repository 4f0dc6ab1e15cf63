"""Degradation models as modules: ``sample`` draws every random quantity, ``apply`` is deterministic given them.

``forward(hr, generator)`` does both. The output is the batch dict of DESIGN.md::

    {"hr": (B,3,sH,sW) float [0,1], "lr": (B,3,H,W) float [0,1], "kernel": (B,k,k), "params": {name: (B,...)}}

Keeping sampling apart from applying lets the DataModule precompute fixed validation parameters once and gather
them per sample, so validation is identical however the samples are split across ranks and batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


class Degradation(nn.Module, ABC):
    """Base class of the degradation models (one subclass per degradation model of a paper).

    Subclasses take ``scale: int`` as their first ``__init__`` argument (the CLI links it from the DataModule's
    ``scale``, so it is stated once) and implement ``sample`` and ``apply``.
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.scale = scale

    @abstractmethod
    def sample(self, hr_shape: torch.Size, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """Draw every random quantity of the degradation for a batch of HR images of ``hr_shape`` ``(B,3,sH,sW)``."""

    @abstractmethod
    def apply(self, hr: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Degrade ``hr`` ``(B,3,sH,sW)`` with ``params`` (deterministic); returns the batch dict."""

    def forward(self, hr: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Sample parameters on ``hr.device`` and apply them."""
        return self.apply(hr, self.sample(hr.shape, generator, hr.device))

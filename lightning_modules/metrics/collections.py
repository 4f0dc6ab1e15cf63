"""torchmetrics classes over the functional metrics, and the collections the systems log.

Each metric is the mean of per-item values (per image for :class:`PSNRY` / :class:`SSIMY`, per kernel for
:class:`KernelSAE` / :class:`KernelL2` / :class:`KernelPSNR`). It keeps a float64 ``total`` and an integer ``count``,
both reduced by summation, so it gives the same result on one process and under DDP. ``update(preds, target)`` takes
RGB batches ``(B, 3, H, W)`` in ``[0, 1]`` (image metrics) or kernels ``(k, k)`` / ``(B, k, k)`` (kernel metrics).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from torchmetrics import Metric, MetricCollection

from lightning_modules.metrics.image import psnr_y, ssim_y
from lightning_modules.metrics.kernel import kernel_psnr, kernel_sae, kernel_shift_aligned_l2
from lightning_modules.metrics.protocol import get_metric_protocol, resolve_shave

__all__ = [
    "PSNR_CLAMP_DB",
    "PSNRY",
    "SSIMY",
    "KernelL2",
    "KernelPSNR",
    "KernelSAE",
    "make_kernel_metrics",
    "make_sr_metrics",
]

PSNR_CLAMP_DB: float = 100.0
"""Upper bound applied to per-image PSNR by :class:`PSNRY` (and per-kernel PSNR by :class:`KernelPSNR`) so that
identical images (infinite PSNR) keep the mean finite."""


class _MeanOfPerItem(Metric, ABC):
    """Mean of per-item values: float64 ``total`` and integer ``count``, both summed across processes.

    ``last_values`` holds the per-item values of the latest ``update`` (not a synced state), so a system can write
    per-image tables without computing the metric twice.
    """

    is_differentiable = False
    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.last_values: Tensor | None = None

    def _apply(self, fn: Callable[..., Any], exclude_state: Sequence[str] = "") -> Module:
        """Move states like any module, but keep the accumulator in float64 even under ``.to(dtype)``.

        ``Module.to(torch.bfloat16)`` (e.g. Lightning's true half precision) would otherwise round the running sum.
        """
        this = super()._apply(fn, exclude_state)
        this.total = this.total.to(torch.float64)
        this._defaults["total"] = this._defaults["total"].to(torch.float64)
        return this

    @abstractmethod
    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        """Per-item values ``(B,)`` of one batch."""

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate the per-item values of one batch."""
        values = self._per_item(preds, target)
        self.last_values = values.detach()
        self.total += values.sum().to(self.total.dtype)
        self.count += values.numel()

    def compute(self) -> Tensor:
        """Mean of all per-item values seen so far (scalar float64; NaN before any update)."""
        return self.total / self.count


class _ProtocolMetric(_MeanOfPerItem, ABC):
    """A per-image image-quality metric evaluated under a named protocol (shave, Y rounding, quantisation)."""

    def __init__(self, scale: int, protocol: str = "standard", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol_name = protocol
        self.protocol = get_metric_protocol(protocol)
        self.shave = resolve_shave(self.protocol, scale)


class PSNRY(_ProtocolMetric):
    """Mean per-image Y-channel PSNR under a named protocol, DDP-syncable.

    Per-image PSNR is clamped at :data:`PSNR_CLAMP_DB` (100 dB) before averaging, so an image reproduced exactly
    (infinite PSNR) counts as 100 dB instead of making the mean infinite.

    Args:
        scale: SR scale factor (sets the shave of protocols with ``shave="scale"``).
        protocol: Name in ``METRIC_PROTOCOLS`` (``"standard"``, ``"koalanet"``, ``"mixture"``).
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: On an unknown protocol (the message lists the valid names).

    Example:
        ``metric.update(sr, hr)`` with RGB batches ``(B, 3, H, W)`` in ``[0, 1]``; ``metric.compute()`` -> scalar.
    """

    higher_is_better = True

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        values = psnr_y(preds, target, self.shave, round_y=self.protocol.round_y, quantize=self.protocol.quantize)
        return values.clamp(max=PSNR_CLAMP_DB)


class SSIMY(_ProtocolMetric):
    """Mean per-image Y-channel SSIM under a named protocol, DDP-syncable.

    Args:
        scale: SR scale factor (sets the shave of protocols with ``shave="scale"``).
        protocol: Name in ``METRIC_PROTOCOLS`` (``"standard"``, ``"koalanet"``, ``"mixture"``).
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: On an unknown protocol (the message lists the valid names).
    """

    higher_is_better = True

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        p = self.protocol
        return ssim_y(preds, target, self.shave, round_y=p.round_y, quantize=p.quantize, window=p.ssim_window)


class KernelSAE(_MeanOfPerItem):
    """Mean per-kernel sum of absolute errors (:func:`kernel_sae`), DDP-syncable.

    ``update(est, gt)`` takes kernels ``(k, k)`` or ``(B, k, k)``; sizes may differ (zero-padded to a common size).

    Args:
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = False

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        return kernel_sae(preds, target)


class KernelL2(_MeanOfPerItem):
    """Mean per-kernel shift-aligned l2 error of KOALAnet (:func:`kernel_shift_aligned_l2`), DDP-syncable.

    ``update(est, gt)`` takes kernels ``(k, k)`` or ``(B, k, k)``; sizes may differ (zero-padded to a common size).

    Args:
        max_shift: Largest integer shift tried along each axis.
        squared: Sum of squared errors as in KOALAnet's Eq. (9) (True) or its square root (False).
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = False

    def __init__(self, max_shift: int = 3, squared: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift
        self.squared = squared

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        return kernel_shift_aligned_l2(preds, target, max_shift=self.max_shift, squared=self.squared)


class KernelPSNR(_MeanOfPerItem):
    """Mean per-kernel PSNR of FKP (:func:`kernel_psnr`, peak 1), DDP-syncable; KENet's "kernel PSNR".

    Per-kernel values are clamped at :data:`PSNR_CLAMP_DB` (100 dB) before averaging, as :class:`PSNRY` does, so an
    exact estimate (infinite PSNR) keeps the mean finite. ``update(est, gt)`` takes kernels ``(k, k)`` or
    ``(B, k, k)``; sizes may differ (zero-padded to a common size, over which the mean squared error is taken).

    Args:
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = True

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        return kernel_psnr(preds, target).clamp(max=PSNR_CLAMP_DB)


def make_sr_metrics(scale: int, protocol: str = "standard", prefix: str = "val/") -> MetricCollection:
    """Y-PSNR and Y-SSIM under one protocol, as a collection logged as ``{prefix}psnr_y`` and ``{prefix}ssim_y``.

    Compute groups are disabled: the two metrics have identically named states that must never be shared.

    Args:
        scale: SR scale factor.
        protocol: Name in ``METRIC_PROTOCOLS``.
        prefix: Log-name prefix, e.g. ``"val/"`` or ``"test/"``.

    Returns:
        A :class:`torchmetrics.MetricCollection` with keys ``psnr_y`` and ``ssim_y``.
    """
    return MetricCollection(
        {"psnr_y": PSNRY(scale, protocol), "ssim_y": SSIMY(scale, protocol)}, prefix=prefix, compute_groups=False
    )


def make_kernel_metrics(prefix: str = "test/", max_shift: int = 3) -> MetricCollection:
    """Kernel SAE, shift-aligned l2 and kernel PSNR, logged as ``{prefix}kernel_sae``, ``_l2`` and ``_psnr``.

    Compute groups are disabled: the metrics have identically named states (and equal values for perfect
    estimates), which torchmetrics would otherwise merge into one.

    Args:
        prefix: Log-name prefix, e.g. ``"test/"``.
        max_shift: Largest shift of :class:`KernelL2`.

    Returns:
        A :class:`torchmetrics.MetricCollection` with keys ``kernel_sae``, ``kernel_l2`` and ``kernel_psnr``.
    """
    metrics = {"kernel_sae": KernelSAE(), "kernel_l2": KernelL2(max_shift=max_shift), "kernel_psnr": KernelPSNR()}
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)

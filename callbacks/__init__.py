"""Callbacks that watch training: image and kernel logging from a fixed validation batch, a non-finite-loss guard."""

from callbacks.guards import NonFiniteLossGuard
from callbacks.images import KernelGridLogger, SRImageLogger

__all__ = ["KernelGridLogger", "NonFiniteLossGuard", "SRImageLogger"]

"""Callbacks that watch training: image and kernel logging, a non-finite-loss guard, the posterior PCA plot."""

from callbacks.guards import NonFiniteLossGuard
from callbacks.images import KernelGridLogger, SRImageLogger
from callbacks.posterior_pca import PosteriorPCALogger

__all__ = ["KernelGridLogger", "NonFiniteLossGuard", "PosteriorPCALogger", "SRImageLogger"]

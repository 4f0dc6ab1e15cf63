"""BicubicSR: the "Bicubic" row of every table (no training)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from datamodules.degradation.ops import resize
from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem


class BicubicSR(SRSystem):
    """Bicubic upsampling as an SR system (``validate``, ``test`` and ``predict``; nothing to ``fit``).

    Args:
        convention: ``"matlab"`` (``imresize``, ``a = -0.5``: the literature's "Bicubic" rows) or ``"torch"``
            (``F.interpolate``, ``a = -0.75``: what MoESR's experts upsample with).
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    def __init__(self, convention: Literal["matlab", "torch"] = "matlab", **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(RUNTIME_HPARAMS))
        self.convention = convention

    def super_resolve(self, lr: Tensor) -> Tensor:
        """Bicubic upsampling by ``scale`` in the configured convention."""
        return resize(lr, scale=self.scale, convention=self.convention)

    def configure_optimizers(self) -> None:
        """BicubicSR has no parameters; ``fit`` is refused with a clear message."""
        raise RuntimeError("BicubicSR has nothing to train: use `validate`, `test` or `predict`")

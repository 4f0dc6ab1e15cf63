"""Stage checkpoints at stable paths that the next stage's config names by default."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class StageCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``dirpath`` may contain ``{scale}``, filled from the model's ``scale``.

    ``dirpath: checkpoints/baseline/x{scale}`` keeps the x2 and x4 runs of one config apart without restating the
    scale. Defaults: ``save_last=True`` (``last.ckpt``, what ``--ckpt_path last`` and later stages read) and no
    top-k copies.

    Args:
        dirpath: Folder of the checkpoints; ``{scale}`` is replaced by the model's scale.
        save_last: Keep ``last.ckpt`` up to date.
        save_top_k: Best-k checkpoints to keep by ``monitor`` (0: none).
        **kwargs: Further ``ModelCheckpoint`` arguments (``monitor``, ``every_n_train_steps``, ...).
    """

    def __init__(self, dirpath: str, save_last: bool = True, save_top_k: int = 0, **kwargs) -> None:
        super().__init__(dirpath=None, save_last=save_last, save_top_k=save_top_k, **kwargs)
        self.dirpath_template = dirpath

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Resolve ``{scale}`` before Lightning fixes the checkpoint folder."""
        self.dirpath = self.dirpath_template.format(scale=getattr(pl_module, "scale", ""))
        super().setup(trainer, pl_module, stage)

"""Exact resume of a fit that draws from torch's global RNG (E-Net's dropout): the RNG state goes in checkpoints."""

from __future__ import annotations

from typing import Any

import torch

RNG_KEY = "global_rng_state"


class ResumableRNG:
    """LightningModule mixin: the global RNG state is saved in every checkpoint and put back on resume.

    Lightning restores weights, optimiser, loops and the datamodule's generator (so the degradations repeat), but not
    torch's global RNG, which dropout draws from: without this mixin a run resumed with ``--ckpt_path`` draws other
    dropout masks than the uninterrupted run. The state (CPU, and the CUDA device the module is on) is taken when the
    checkpoint is written (at the end of a training batch) and put back at the first ``on_train_batch_start`` after
    the restore, not in ``on_load_checkpoint``: between the two, the resumed run's sanity check and the creation of
    its data-loader iterators draw from the RNG (every ``DataLoader`` iterator draws a base seed), which the
    uninterrupted run did before it saved the state. Under DDP the checkpoint holds rank 0's state and every rank
    restores it (``seed_everything`` gives all ranks the same state to begin with).
    """

    _rng_to_restore: dict[str, torch.Tensor] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the global RNG state under ``global_rng_state``."""
        super().on_save_checkpoint(checkpoint)
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint[RNG_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the stored RNG state for the first training batch (checkpoints without one restore nothing)."""
        super().on_load_checkpoint(checkpoint)
        self._rng_to_restore = checkpoint.get(RNG_KEY)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Put the stored RNG state back once, just before the first training step after a restore."""
        state, self._rng_to_restore = self._rng_to_restore, None
        if state is not None:
            torch.set_rng_state(state["cpu"])
            if "cuda" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda"], self.device)
        return super().on_train_batch_start(batch, batch_idx)

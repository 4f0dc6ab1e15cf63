"""Test-only callbacks, importable by class path from the CLI in subprocesses."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process after global step ``step`` (no clean-up, no final checkpoint: a real crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)

"""Test-only callbacks (importable by class path from the CLI in subprocesses) and the kill/resume trainer config."""

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


def resume_trainer(root, name: str, extra_callbacks: list) -> dict:
    """The ``trainer`` config of the kill/resume tests: 9 steps, a stage checkpoint every 3, validation every 4."""
    return {
        "max_steps": 9, "deterministic": True, "logger": False, "enable_progress_bar": False,
        "val_check_interval": 4, "check_val_every_n_epoch": None, "limit_val_batches": 2,
        "default_root_dir": str(root / name),
        "callbacks": [{"class_path": "callbacks.checkpoint.StageCheckpoint",
                       "init_args": {"dirpath": str(root / name / "ckpt"), "every_n_train_steps": 3}}]
        + extra_callbacks,
    }  # fmt: skip

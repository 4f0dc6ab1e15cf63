"""Callbacks that stop training early, with an explanation, when it has gone wrong."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

__all__ = ["NonFiniteLossGuard"]

_METRIC_KEYS = ("train/loss", "train/loss_step")


class NonFiniteLossGuard(Callback):
    """Stops training with a ``RuntimeError`` as soon as the training loss is NaN or infinite.

    After a training batch the loss is read from what ``training_step`` returned (a tensor, or a dict with key
    "loss"). When that is missing (manual optimisation returning nothing, a skipped step) the logged metric
    ``train/loss`` (or ``train/loss_step``) in ``trainer.callback_metrics`` is checked instead; if neither exists the
    batch is not checked. The error names the value, the global step at which the batch started, the epoch and
    batch index, the checkpoints saved so far, and the usual remedies.

    Multi-process (DDP): every rank checks its own loss, which differs between ranks for most systems (each rank
    sees different data; only the gradients are all-reduced). With ``sync_ranks=True`` (default) the per-rank
    verdicts are combined with one boolean all-reduce per checked batch, so every rank raises this error at the same
    batch (the ranks that saw a finite loss say so). With ``sync_ranks=False`` no communication is added and only the
    rank that sees the bad loss raises; the others then fail in their next collective (with gloo: "Connection closed
    by peer", which hides the cause) or, depending on backend and launcher, wait there until the process-group
    timeout.

    Checking reads the loss back to the host, which synchronises an accelerator once per checked batch; raise
    ``check_every_n_steps`` where that matters. A non-finite loss at an unchecked batch is caught at the next
    checked one, since NaN weights stay NaN.

    Args:
        check_every_n_steps: Check every n-th training batch (1 = every batch), counted from the first batch this
            callback sees. Must be the same on every rank.
        sync_ranks: Combine the verdicts of all ranks so that all of them stop at the same batch (one boolean
            all-reduce per checked batch; no effect in single-process runs).
    """

    def __init__(self, check_every_n_steps: int = 1, sync_ranks: bool = True) -> None:
        super().__init__()
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self.sync_ranks = sync_ranks
        self._batches_seen = 0
        self._step_at_batch_start = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Remembers the global step at which the batch starts (the optimizer step may advance it)."""
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Raises ``RuntimeError`` if this batch's loss (on this or, with ``sync_ranks``, any rank) is not finite."""
        self._batches_seen += 1
        if (self._batches_seen - 1) % self.check_every_n_steps:
            return
        loss = self._read_loss(trainer, outputs)
        bad_here = loss is not None and not bool(torch.isfinite(loss).all())
        bad_anywhere = trainer.strategy.reduce_boolean_decision(bad_here, all=False) if self.sync_ranks else bad_here
        if bad_anywhere:
            raise RuntimeError(self._message(trainer, batch_idx, loss if bad_here else None))

    @staticmethod
    def _read_loss(trainer: pl.Trainer, outputs: Any) -> Tensor | None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None:
            loss = next((trainer.callback_metrics[k] for k in _METRIC_KEYS if k in trainer.callback_metrics), None)
        if isinstance(loss, Tensor):
            return loss.detach()
        if isinstance(loss, (int, float)):
            return torch.tensor(float(loss))
        return None

    def _message(self, trainer: pl.Trainer, batch_idx: int, loss: Tensor | None) -> str:
        where = (
            f"in the training batch that started at global step {self._step_at_batch_start} "
            f"(epoch {trainer.current_epoch}, batch_idx {batch_idx}; trainer.global_step is now {trainer.global_step})"
        )
        if loss is None:
            head = f"Non-finite training loss on another rank (rank {trainer.global_rank} saw a finite one) {where}."
        elif loss.numel() == 1:
            value = float(loss.float())
            head = f"Non-finite training loss ({value}) {where}."
        else:
            bad = int((~torch.isfinite(loss)).sum())
            head = f"Non-finite training loss ({bad} of {loss.numel()} elements are NaN/inf) {where}."
        lines = [head, self._checkpoint_line(trainer)]
        lines.append(
            "Usual remedies: lower the learning rate; enable gradient clipping (e.g. --trainer.gradient_clip_val 1.0);"
            " check the data for NaN/inf values and the loss for divisions by zero or logs of zero; in 16-bit"
            " precision try bf16-mixed or 32-true."
        )
        return "\n".join(lines)

    @staticmethod
    def _checkpoint_line(trainer: pl.Trainer) -> str:
        paths: list[str] = []
        for callback in trainer.checkpoint_callbacks:
            for attr in ("last_model_path", "best_model_path"):
                path = getattr(callback, attr, "") or ""
                if path and path not in paths:
                    paths.append(path)
        if not paths:
            return "No checkpoint has been saved in this run yet."
        listed = ", ".join(paths)
        return f"Checkpoints saved so far: {listed} (resume from one with --ckpt_path {paths[0]})."

"""Reading stage checkpoints safely: ``weights_only=True``, strict keys, and errors that say how to make the file.

Every system that needs an earlier stage's weights (``experts_ckpt: str`` and the like) and the CLI's ``--ckpt_path``
check go through here, so a missing or mismatched checkpoint always stops with a message naming the file and the
command that produces it, never with silent random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model (the message says what and how to fix it)."""


def read_checkpoint(path: str | Path, produced_by: str) -> dict:
    """Load a Lightning checkpoint with ``weights_only=True`` on the CPU.

    Args:
        path: Checkpoint file.
        produced_by: The command that writes this file (quoted in errors).

    Raises:
        CheckpointError: The file is missing, unreadable, or not a Lightning checkpoint with a ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; it is produced by:\n    {produced_by}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({err}); it is produced by:\n    {produced_by}"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "pytorch-lightning_version" not in ckpt:
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint of this project; it is produced by:\n    {produced_by}"
        )
    return ckpt


def check_state_dict(
    module: nn.Module, state_dict: dict[str, Tensor], path: str | Path, produced_by: str, prefix: str = ""
) -> dict[str, Tensor]:
    """Check that ``state_dict`` (keys under ``prefix``) fits ``module`` exactly; returns it with the prefix removed.

    Raises:
        CheckpointError: Missing or unexpected keys, or shape mismatches (the first few are listed).
    """
    own = module.state_dict()
    theirs = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = [f"{k}: checkpoint {tuple(theirs[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(theirs)) if own[k].shape != theirs[k].shape]  # fmt: skip
    problems = [
        (missing, "missing keys"),
        (unexpected, "unexpected keys"),
        (shapes, "shape mismatches"),
    ]
    lines = [
        f"{what} ({len(items)}): {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
        for items, what in problems
        if items
    ]
    if lines:
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(module).__name__} (different widths, scale or method?):\n  "
            + "\n  ".join(lines)
            + f"\nit is produced by:\n    {produced_by}"
        )
    return theirs


def load_weights(module: nn.Module, path: str | Path, produced_by: str, prefix: str = "") -> None:
    """Load the weights of ``module`` from the Lightning checkpoint ``path`` (keys under ``prefix``), strictly."""
    ckpt = read_checkpoint(path, produced_by)
    module.load_state_dict(check_state_dict(module, ckpt["state_dict"], path, produced_by, prefix), strict=True)

"""Stage hand-off: reading an earlier stage's checkpoint, freezing it, keeping it out of the next checkpoint.

Every system that needs an earlier stage's weights (``experts_ckpt: str`` and the like) and the CLI's ``--ckpt_path``
check go through here, so a missing or mismatched checkpoint always stops with a message naming the file and the
command that produces it, never with silent random weights. Checkpoints load with ``weights_only=True`` and strict
keys.

* :func:`read_checkpoint`, :func:`check_state_dict`: read and check a Lightning checkpoint.
* :func:`stage_hparams`: the hyper-parameters a later stage needs from it (and its scale), checked.
* :func:`freeze`, :class:`FrozenParts`: frozen earlier stages stay in eval mode whatever ``train()`` is called with.
* :func:`exclude_from_checkpoint`: frozen parts loaded from their own files are not saved again.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise CheckpointError(
            f"checkpoint {path} cannot be read, truncated or not a PyTorch file? ({reason}); it is produced by:\n"
            f"    {produced_by}"
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


def stage_hparams(ckpt: dict, path: str | Path, keys: Sequence[str], command: str, scale: int | None = None) -> dict:
    """The hyper-parameters of a stage checkpoint, with ``keys`` present and (if given) the same ``scale``.

    Raises:
        CheckpointError: A key is missing (another system's checkpoint) or the scale differs.
    """
    hp = ckpt.get("hyper_parameters") or {}
    missing = [k for k in keys if k not in hp]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} has no hyper-parameters {missing}: is it a checkpoint of this stage? "
            f"It is produced by:\n    {command}"
        )
    if scale is not None and "scale" in hp and int(hp["scale"]) != scale:
        raise CheckpointError(
            f"checkpoint {path} is x{hp['scale']} but the model is x{scale}; the x{scale} one is produced by:\n"
            f"    {command}"
        )
    return hp


def freeze(module: nn.Module) -> nn.Module:
    """``requires_grad_(False)`` and eval mode; returns the module."""
    module.requires_grad_(False)
    return module.eval()


class FrozenParts:
    """Mixin for a LightningModule with frozen submodules (named in ``frozen_parts``) that must stay in eval mode.

    Lightning calls ``train()`` on the whole module at the start of every training epoch, which would switch frozen
    BatchNorm/dropout layers back to training behaviour; this ``train`` puts them back in eval mode.
    """

    frozen_parts: tuple[str, ...] = ()

    def train(self, mode: bool = True):
        """As ``nn.Module.train``, but the parts named in ``frozen_parts`` always stay in eval mode."""
        super().train(mode)
        for name in self.frozen_parts:
            part = getattr(self, name, None)
            if part is not None:
                part.eval()
        return self


def exclude_from_checkpoint(module: nn.Module, names: Sequence[str]) -> None:
    """Keep the submodules ``names`` out of ``module.state_dict()``; strict ``load_state_dict`` accepts their absence.

    For frozen earlier stages, which are loaded from their own checkpoints.
    """
    prefixes = tuple(f"{n}." for n in names)

    def drop(mod: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
        for key in [k for k in state_dict if k.startswith(tuple(prefix + p for p in prefixes))]:
            del state_dict[key]

    def ignore_missing(mod: nn.Module, incompatible) -> None:
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith(prefixes)]

    module.register_state_dict_post_hook(drop)
    module.register_load_state_dict_post_hook(ignore_missing)

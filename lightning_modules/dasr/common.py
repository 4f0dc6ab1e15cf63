"""What DASR's stages share: the training target and the hand-off of MSRResNet / DASR checkpoints."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Target = Literal["usm", "hr"]


def training_target(batch: dict, target: Target) -> Tensor:
    """The HR the losses compare with: ``batch["hr_usm"]`` (USM-sharpened, DASR's target) or ``batch["hr"]``.

    Raises:
        KeyError: ``"usm"`` asked for but the degradation made no sharpened HR (its ``sharpen_target`` is off).
    """
    if target == "hr":
        return batch["hr"]
    if "hr_usm" not in batch:
        raise KeyError(
            "target 'usm' needs batch['hr_usm']: use the DASR degradation with sharpen_target true "
            "(configs/dasr/*.yaml), or pass --model.init_args.target hr"
        )
    return batch["hr_usm"]

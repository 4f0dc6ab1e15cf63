"""MoESR's stage hand-off: the checkpoints of experts, ISE and KEN, and the data kernels that must fit the grid.

* :func:`experts_spec` reads the grid (``lambdas``) and the expert widths from the experts checkpoint's
  hyper-parameters, so the ISE and KEN stages and inference build matching networks without repeating them in
  their configs; :func:`load_experts`, :func:`load_ise`, :func:`load_ken` load the weights strictly
  (``weights_only=True``, through ``core.stages``) and stop with a message naming the missing file and the command
  that writes it (:func:`stage_command`).
* :func:`check_data_kernels`: the data's MoESR degradation must fit the experts' grid. It is a check, not a link:
  for the experts stage the CLI copies ``model.init_args.lambdas`` to the degradation (``BlindSRCLI``), so the check
  only catches systems built by hand; for ISE and KEN the grid is read from the experts checkpoint at ``setup``,
  after the data exist, and the data draw kernels from a continuous range (only its ends must match the grid's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datamodules.degradation.kernels.moesr import MoESRGrid
from datamodules.degradation.pipelines.moesr import GridDegradation, MoESRKernelDegradation
from lightning_modules.core.stages import check_state_dict, freeze, read_checkpoint, stage_hparams
from lightning_modules.nets.moesr import ISE, KEN, ExpertBank

EXPERTS_COMMAND = "python main.py fit -c configs/moesr/experts.yaml"
ISE_COMMAND = "python main.py fit -c configs/moesr/ise.yaml"
KEN_COMMAND = "python main.py fit -c configs/moesr/ken.yaml"
DEFAULT_CKPTS = {
    "experts": "checkpoints/moesr/experts_x{scale}/last.ckpt",
    "ise": "checkpoints/moesr/ise_x{scale}/last.ckpt",
    "ken": "checkpoints/moesr/ken_x{scale}/last.ckpt",
}
_COMMANDS = {"experts": EXPERTS_COMMAND, "ise": ISE_COMMAND, "ken": KEN_COMMAND}


def stage_command(stage: str, scale: int = 2) -> str:
    """The command that writes a stage's checkpoint, e.g. ``python main.py fit -c configs/moesr/ise.yaml``."""
    command = _COMMANDS[stage]
    return command if scale == 2 else f"{command} --data.init_args.scale {scale}"


@dataclass(frozen=True)
class ExpertsSpec:
    """What later stages need to know about the experts: their grid and widths (from the checkpoint's hparams)."""

    grid: MoESRGrid
    num_layers: int
    channels: int

    def build_bank(self) -> ExpertBank:
        """An ``ExpertBank`` of this shape (random weights)."""
        return ExpertBank(self.grid.num_experts, self.grid.scale, self.num_layers, self.channels)


def experts_spec(path: str | Path, scale: int, ckpt: dict | None = None) -> ExpertsSpec:
    """Grid and widths of the experts checkpoint ``path`` (checked against ``scale``)."""
    command = stage_command("experts", scale)
    ckpt = read_checkpoint(path, command) if ckpt is None else ckpt
    hp = stage_hparams(ckpt, path, ("scale", "lambdas", "num_layers", "channels"), command, scale)
    return ExpertsSpec(MoESRGrid(scale, hp["lambdas"]), int(hp["num_layers"]), int(hp["channels"]))


def load_experts(path: str | Path, scale: int) -> tuple[ExpertBank, MoESRGrid]:
    """The trained ``ExpertBank`` (keys ``bank.*``) and its grid from the experts checkpoint; not frozen."""
    command = stage_command("experts", scale)
    ckpt = read_checkpoint(path, command)
    spec = experts_spec(path, scale, ckpt)
    bank = spec.build_bank()
    bank.load_state_dict(check_state_dict(bank, ckpt["state_dict"], path, command, "bank."), strict=True)
    return bank, spec.grid


def load_ise(path: str | Path, scale: int) -> ISE:
    """The trained ``ISE`` (keys ``ise.*``; ``ise_channels``, ``residual_gain`` from the checkpoint); not frozen.

    A checkpoint without ``residual_gain`` predates the option and was trained on the official input (gain 0).
    """
    command = stage_command("ise", scale)
    ckpt = read_checkpoint(path, command)
    hp = stage_hparams(ckpt, path, ("scale", "ise_channels"), command, scale)
    ise = ISE(hp["ise_channels"], float(hp.get("residual_gain", 0.0)))
    ise.load_state_dict(check_state_dict(ise, ckpt["state_dict"], path, command, "ise."), strict=True)
    return ise


def load_ken(path: str | Path, scale: int, num_kernels: int) -> KEN:
    """The trained ``KEN`` (keys ``ken.*``) for a grid of ``num_kernels`` kernels; not frozen."""
    command = stage_command("ken", scale)
    ckpt = read_checkpoint(path, command)
    hp = stage_hparams(ckpt, path, ("scale", "hidden"), command, scale)
    ken = KEN(num_kernels, int(hp["hidden"]))
    ken.load_state_dict(check_state_dict(ken, ckpt["state_dict"], path, command, "ken."), strict=True)
    return ken


@dataclass
class MoESRStages:
    """The three trained stages, frozen: experts, their grid, ISE and (optionally) KEN."""

    bank: ExpertBank
    grid: MoESRGrid
    ise: ISE
    ken: KEN | None


def load_stages(
    experts_ckpt: str = DEFAULT_CKPTS["experts"],
    ise_ckpt: str = DEFAULT_CKPTS["ise"],
    ken_ckpt: str | None = DEFAULT_CKPTS["ken"],
    scale: int = 2,
) -> MoESRStages:
    """Load and freeze the trained stages (``{scale}`` in the paths is filled in); ``ken_ckpt=None`` skips KEN."""
    bank, grid = load_experts(experts_ckpt.format(scale=scale), scale)
    ise = load_ise(ise_ckpt.format(scale=scale), scale)
    ken = None if ken_ckpt is None else load_ken(ken_ckpt.format(scale=scale), scale, grid.num_kernels)
    return MoESRStages(freeze(bank), grid, freeze(ise), None if ken is None else freeze(ken))


def check_data_kernels(
    degradation: object, grid: MoESRGrid, kind: type[GridDegradation | MoESRKernelDegradation], system: str
) -> None:
    """Stop unless the data's degradation is a ``kind`` that fits ``grid`` (why a check: see the module docstring).

    ``GridDegradation`` (experts stage) must degrade with ``grid`` itself; ``MoESRKernelDegradation`` (ISE, KEN)
    must draw kernels of ``grid``'s size over a variance range that covers the grid's.

    Args:
        degradation: The DataModule's ``degradation``.
        grid: The experts' grid.
        kind: The degradation the stage trains on.
        system: The checking system's class name (quoted in errors).
    """
    if not isinstance(degradation, kind):
        raise ValueError(
            f"{system} trains on MoESR kernels: the data needs degradation: "
            f"{{class_path: datamodules.degradation.pipelines.moesr.{kind.__name__}}}, got {type(degradation).__name__}"
        )
    if kind is GridDegradation:
        if degradation.grid != grid:
            raise ValueError(
                f"the data's grid {degradation.grid} differs from the model's {grid}: state the lambdas once, in "
                "--model.init_args.lambdas (the CLI passes them to the degradation)"
            )
        return
    low, high = degradation.lambda_range
    covered = low <= min(grid.lambdas) and high >= max(grid.lambdas)
    if degradation.kernel_size != grid.kernel_size or not covered:
        factor = grid.lambdas[0] / grid.base_lambdas[0]
        raise ValueError(
            f"the data's kernels ({degradation.kernel_size}x{degradation.kernel_size}, lambdas in "
            f"{degradation.lambda_range}) do not cover the experts' {grid} (lambdas {min(grid.lambdas):g} to "
            f"{max(grid.lambdas):g}): pass --data.init_args.degradation.init_args.lambda_range "
            f"[{min(grid.lambdas) / factor:g}, {max(grid.lambdas) / factor:g}] or wider"
        )

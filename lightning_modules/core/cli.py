"""The command line behind ``main.py``: LightningCLI with the project's links, W&B defaults and checkpoint checks.

Any ``SRSystem`` subclass is a model and any ``SRDataModule`` (subclass) the data, chosen by ``class_path`` in the
YAML. ``scale`` is stated once, in ``data.init_args.scale``, and linked to the degradation and the model.
The default logger is W&B, offline unless W&B is configured on this machine (``WANDB_API_KEY``, ``wandb login`` or
``WANDB_MODE``); runs are grouped by method (the system's package) and job type (the stage and subcommand).

Importing this module imports every system (:data:`SYSTEM_MODULES`), so configs may name them by class name alone
(``class_path: MoESRExperts``) as well as by full path.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from lightning.pytorch.cli import ArgsType, LightningCLI

from datamodules.sr_datamodule import SRDataModule
from lightning_modules.core.base import SRSystem
from lightning_modules.core.runtime import keep_freed_memory
from lightning_modules.core.stages import check_state_dict, read_checkpoint

# Every module that defines a system: imported here (not in lightning_modules/__init__.py, which stays empty so that
# nets and metrics import without Lightning) so that LightningCLI resolves short class names.
SYSTEM_MODULES = (
    "lightning_modules.baselines.bicubic",
    "lightning_modules.baselines.single_net",
    "lightning_modules.mixture.enet_pretrain",
    "lightning_modules.mixture.joint",
    "lightning_modules.moesr.experts",
    "lightning_modules.moesr.ise",
    "lightning_modules.moesr.ken",
    "lightning_modules.moesr.inference",
)
for _name in SYSTEM_MODULES:
    importlib.import_module(_name)


def wandb_configured() -> bool:
    """True if the user has set W&B up (an API key, a ``wandb login`` entry in ``~/.netrc``, or ``WANDB_MODE``)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def method_of(class_path: str) -> str:
    """The method a system belongs to, for W&B grouping: its package below ``lightning_modules`` (``moesr``)."""
    parts = class_path.split(".")
    if len(parts) >= 3 and parts[0] == "lightning_modules":
        return parts[1]
    return parts[-2] if len(parts) > 1 else class_path


class BlindSRCLI(LightningCLI):
    """LightningCLI with the project's links and logging defaults."""

    def add_arguments_to_parser(self, parser) -> None:
        """Link the data scale to the degradation and the model (the source must be ``data.init_args.scale``)."""
        parser.link_arguments("data.init_args.scale", "model.init_args.scale")
        parser.link_arguments("data.init_args.scale", "data.init_args.degradation.init_args.scale")

    def before_instantiate_classes(self) -> None:
        """Fill ``{scale}`` in checkpoint folders; group W&B runs by method and stage unless the config names them."""
        cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        self.copy_model_lambdas(cfg)
        scale = cfg.data.init_args.scale
        for callback in cfg.trainer.callbacks or []:
            dirpath = callback.init_args.get("dirpath") if hasattr(callback, "init_args") else None
            if isinstance(dirpath, str) and "{scale}" in dirpath:
                callback.init_args["dirpath"] = dirpath.format(scale=scale)
        loggers = cfg.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if getattr(logger, "class_path", "").endswith("WandbLogger"):
                args = logger.init_args
                model_path = cfg.model.class_path
                if args.get("group") is None:
                    args["group"] = method_of(model_path)
                if args.get("job_type") is None:
                    args["job_type"] = f"{model_path.split('.')[-1]}-{self.subcommand}"

    @staticmethod
    def copy_model_lambdas(cfg) -> None:
        """State MoESR's grid variances once: copy ``model.init_args.lambdas`` to ``data.init_args.degradation``.

        Only when both take ``lambdas`` (``MoESRExperts`` with ``GridDegradation``); the degradation's own value, if
        any, is replaced. Other models and degradations are left alone.
        """
        lambdas = (cfg.model.get("init_args") or {}).get("lambdas")
        degradation_args = getattr(cfg.data.init_args.get("degradation"), "init_args", None)
        if lambdas is not None and degradation_args is not None and "lambdas" in degradation_args:
            degradation_args["lambdas"] = list(lambdas)

    def after_instantiate_classes(self) -> None:
        """Check ``--ckpt_path`` (a file) against the model before Lightning loads it, with an actionable message."""
        super().after_instantiate_classes()
        if not self.subcommand:
            return
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path in (None, "last", "best", "hpc", "registry"):
            return
        configs = " ".join(f"-c {c}" for c in self.config[self.subcommand].get("config") or [])
        produced_by = f"python main.py fit {configs}".strip()
        ckpt = read_checkpoint(ckpt_path, produced_by)
        check_state_dict(self.model, ckpt["state_dict"], ckpt_path, produced_by)


def cli_main(args: ArgsType = None, run: bool = True) -> BlindSRCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``); returns the CLI object.

    Args:
        args: Command-line arguments (``None``: ``sys.argv[1:]``).
        run: Run the subcommand; ``False`` only instantiates model, data and trainer (no subcommand in ``args``).
    """
    keep_freed_memory()  # large CPU tensors would otherwise page-fault on every step (core/runtime.py)
    logger = {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "blindsr", "save_dir": "runs", "offline": not wandb_configured()},
    }
    return BlindSRCLI(
        SRSystem,
        SRDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"logger": logger, "default_root_dir": "runs"},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )

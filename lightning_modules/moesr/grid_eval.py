"""What MoESR's stages share: the grid run through the experts, ISE errors, stage checkpoints, specialisation.

* :func:`grid_outputs` runs grid kernels' experts on LR images through the four input transforms: **one**
  ``ExpertBank`` call per transform group (all the group's experts at once as a grouped convolution, never a loop
  over experts; ``max_batch`` only splits a group into memory-sized chunks).
* :func:`grid_errors` adds ISE: ``E_i = mean over ISE's output pixels of ISE(U_i(LR), up(LR))^2`` (Eq. 8 / 10,
  official "mean of the squared ISE output"), for all ``N`` grid kernels in the official order -> ``(B, N)``.
* Stage checkpoints: :func:`experts_spec` reads the grid (``lambdas``) and the expert widths from the experts
  checkpoint's hyper-parameters, so the ISE and KEN stages and inference build matching networks without repeating
  them in their configs; :func:`load_experts`, :func:`load_ise`, :func:`load_ken` load the weights strictly
  (``weights_only=True``) and stop with a message naming the missing file and the command that writes it.
* :func:`specialisation_matrix` (issue item 1): PSNR-Y of every expert on images made with every kernel.

Bicubic inputs of ISE use PyTorch's ``F.interpolate(mode="bicubic")`` (``ops.resize(convention="torch")``), as the
official code does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from datamodules.degradation import ops
from datamodules.degradation.pipelines.moesr import MoESRGrid, MoESRKernelDegradation, apply_transform, invert_transform
from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.stages import CheckpointError, check_state_dict, read_checkpoint
from lightning_modules.metrics import KernelSAE, psnr_y
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
_VAL_SEED = 424_242


def stage_command(stage: str, scale: int = 2) -> str:
    """The command that writes a stage's checkpoint, e.g. ``python main.py fit -c configs/moesr/ise.yaml``."""
    command = _COMMANDS[stage]
    return command if scale == 2 else f"{command} --data.init_args.scale {scale}"


def upsample(lr: Tensor, scale: int) -> Tensor:
    """ISE's second input: PyTorch bicubic upsampling (``a = -0.75``, as the official code)."""
    return ops.resize(lr, scale=scale, convention="torch")


def batch_index(x: Tensor) -> Tensor:
    """``arange(B)`` on ``x``'s device (to pick one slot per image: ``outputs[batch_index(x), choice]``)."""
    return torch.arange(x.shape[0], device=x.device)


def freeze(module: nn.Module) -> nn.Module:
    """``requires_grad_(False)`` and eval mode; returns the module."""
    module.requires_grad_(False)
    return module.eval()


# ----------------------------------------------------------------------------------------------------------------
# The grid through the experts
# ----------------------------------------------------------------------------------------------------------------


def _chunks(n: int, size: int | None) -> Iterator[slice]:
    size = n if not size or size <= 0 else size
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _groups(grid: MoESRGrid, indices: Tensor) -> Iterator[tuple[int, Tensor]]:
    """``(transform, positions)`` of each transform present among ``indices`` (1-D, CPU)."""
    transforms = grid.transform[indices]
    for t in range(4):
        pos = (transforms == t).nonzero().flatten()
        if pos.numel():
            yield t, pos


def _run_groups(bank: ExpertBank, grid: MoESRGrid, lr: Tensor, indices: Tensor | None, max_batch: int | None):
    """Yield ``(batch rows or None, slot positions, SR (n_b, n_s, 3, sH, sW))`` for each chunk of each group."""
    bsz = lr.shape[0]
    if indices is None:
        indices = torch.arange(grid.num_kernels)
    indices = indices.detach().cpu().long()
    if indices.dim() == 1:  # the same kernels for every image: (B, n, ...) with experts (n,)
        per_call = None if not max_batch else max(1, max_batch // bsz)
        for t, pos in _groups(grid, indices):
            x = apply_transform(lr, t)
            for part in _chunks(pos.numel(), per_call):
                p = pos[part]
                experts = grid.expert_index[indices[p]]
                sr = bank(x[:, None].expand(bsz, p.numel(), *x.shape[1:]), experts)
                yield None, p, invert_transform(sr, t)
        return
    if indices.shape[0] != bsz:
        raise ValueError(f"per-image indices must be (B, K) with B = {bsz}, got {tuple(indices.shape)}")
    transforms = grid.transform[indices]
    for t in range(4):
        rows, cols = (transforms == t).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        x = apply_transform(lr, t)
        for part in _chunks(rows.numel(), max_batch):
            r, c = rows[part], cols[part]
            experts = grid.expert_index[indices[r, c]]
            sr = bank(x[r.to(lr.device)][None], experts)[0]  # batch of one, a slot per (image, kernel)
            yield r, c, invert_transform(sr, t)[:, None]


def grid_outputs(
    bank: ExpertBank, grid: MoESRGrid, lr: Tensor, indices: Tensor | None = None, max_batch: int | None = None
) -> Tensor:
    """SR images of grid kernels' experts (each through its input transform and back).

    Args:
        bank: The experts (``bank.num_experts == grid.num_experts``).
        grid: The grid the bank was trained on.
        lr: ``(B, 3, h, w)``.
        indices: Grid kernels to run: ``None`` (all ``N``), ``(K,)`` (the same for every image) or ``(B, K)`` (per
            image, e.g. a random subset per training image).
        max_batch: Most (image, kernel) pairs per ``ExpertBank`` call (``None``: one call per transform group).

    Returns:
        ``(B, K, 3, s*h, s*w)``; slot ``k`` is grid kernel ``indices[k]`` (or ``indices[b, k]``).
    """
    _check_bank(bank, grid)
    bsz = lr.shape[0]
    k = grid.num_kernels if indices is None else indices.shape[-1]
    out = lr.new_empty(bsz, k, 3, lr.shape[-2] * bank.scale, lr.shape[-1] * bank.scale)
    for rows, slots, sr in _run_groups(bank, grid, lr, indices, max_batch):
        if rows is None:
            out[:, slots.to(lr.device)] = sr
        else:
            out[rows.to(lr.device), slots.to(lr.device)] = sr[:, 0]
    return out


def ise_errors(ise: ISE, sr: Tensor, up: Tensor, max_batch: int | None = None) -> Tensor:
    """``E = mean(ISE(sr, up)^2)`` over ISE's output pixels, per image and slot.

    Args:
        ise: The sharpness evaluator.
        sr: ``(B, K, 3, H, W)`` expert outputs.
        up: ``(B, 3, H, W)`` bicubic-upsampled LR.
        max_batch: Most images per ISE call (``None``: all at once).

    Returns:
        ``(B, K)``.
    """
    bsz, k = sr.shape[:2]
    flat = sr.flatten(0, 1)
    ups = up[:, None].expand(bsz, k, *up.shape[1:]).flatten(0, 1)
    errs = [ise(flat[s], ups[s]).square().mean(dim=(1, 2, 3)) for s in _chunks(flat.shape[0], max_batch)]
    return torch.cat(errs).reshape(bsz, k)


def grid_errors(
    bank: ExpertBank,
    ise: ISE,
    grid: MoESRGrid,
    lr: Tensor,
    max_batch: int | None = None,
    return_outputs: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """ISE error of every grid kernel's expert output on ``lr`` (Eq. 8 / 10), official order.

    Runs one ``ExpertBank`` call and one ISE call per transform group (or per ``max_batch`` chunk of it); SR images
    are dropped after use unless ``return_outputs``.

    Args:
        bank: The experts.
        ise: The sharpness evaluator.
        grid: The experts' grid.
        lr: ``(B, 3, h, w)``; ``s*h`` and ``s*w`` must be at least 49 (ISE's receptive field).
        max_batch: Most (image, kernel) pairs per call (``None``: whole transform groups).
        return_outputs: Also return the SR images ``(B, N, 3, sh, sw)``.

    Returns:
        ``(B, N)`` errors (and the outputs).
    """
    _check_bank(bank, grid)
    up = upsample(lr, bank.scale)
    errors = lr.new_empty(lr.shape[0], grid.num_kernels)
    outputs = grid_outputs(bank, grid, lr, max_batch=max_batch) if return_outputs else None
    if outputs is not None:
        errors = ise_errors(ise, outputs, up, max_batch)
        return errors, outputs
    for _, slots, sr in _run_groups(bank, grid, lr, None, max_batch):
        errors[:, slots.to(lr.device)] = ise_errors(ise, sr, up)
    return errors


def _check_bank(bank: ExpertBank, grid: MoESRGrid) -> None:
    if bank.num_experts != grid.num_experts or bank.scale != grid.scale:
        raise ValueError(
            f"the bank has {bank.num_experts} x{bank.scale} experts but {grid} needs {grid.num_experts} x{grid.scale}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Stage checkpoints
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertsSpec:
    """What later stages need to know about the experts: their grid and widths (from the checkpoint's hparams)."""

    grid: MoESRGrid
    num_layers: int
    channels: int

    def build_bank(self) -> ExpertBank:
        """An ``ExpertBank`` of this shape (random weights)."""
        return ExpertBank(self.grid.num_experts, self.grid.scale, self.num_layers, self.channels)


def _hparams(ckpt: dict, path: str | Path, keys: Sequence[str], command: str) -> dict:
    hp = ckpt.get("hyper_parameters") or {}
    missing = [k for k in keys if k not in hp]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} has no hyper-parameters {missing}: is it a MoESR stage checkpoint? "
            f"It is produced by:\n    {command}"
        )
    return hp


def _check_scale(hp: dict, path: str | Path, scale: int, command: str) -> None:
    if int(hp["scale"]) != scale:
        raise CheckpointError(
            f"checkpoint {path} is x{hp['scale']} but the model is x{scale}; the x{scale} one is produced by:\n"
            f"    {command}"
        )


def experts_spec(path: str | Path, scale: int, ckpt: dict | None = None) -> ExpertsSpec:
    """Grid and widths of the experts checkpoint ``path`` (checked against ``scale``)."""
    command = stage_command("experts", scale)
    ckpt = read_checkpoint(path, command) if ckpt is None else ckpt
    hp = _hparams(ckpt, path, ("scale", "lambdas", "num_layers", "channels"), command)
    _check_scale(hp, path, scale, command)
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
    hp = _hparams(ckpt, path, ("scale", "ise_channels"), command)
    _check_scale(hp, path, scale, command)
    ise = ISE(hp["ise_channels"], float(hp.get("residual_gain", 0.0)))
    ise.load_state_dict(check_state_dict(ise, ckpt["state_dict"], path, command, "ise."), strict=True)
    return ise


def load_ken(path: str | Path, scale: int, num_kernels: int) -> KEN:
    """The trained ``KEN`` (keys ``ken.*``) for a grid of ``num_kernels`` kernels; not frozen."""
    command = stage_command("ken", scale)
    ckpt = read_checkpoint(path, command)
    hp = _hparams(ckpt, path, ("scale", "hidden"), command)
    _check_scale(hp, path, scale, command)
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


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints without the frozen parts
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Specialisation (issue 3, item 1)
# ----------------------------------------------------------------------------------------------------------------


def degrade(hr: Tensor, kernels: Tensor, scale: int) -> Tensor:
    """``(B, 3, sH, sW)`` x ``(K, k, k)`` block-centred kernels -> 8-bit LR ``(B, K, 3, H, W)``."""
    return ops.quantize(ops.blur_decimate_bank(hr, kernels, scale))


@torch.no_grad()
def specialisation_matrix(
    bank: ExpertBank, kernels: Tensor, hr: Tensor, experts: Tensor | None = None, shave: int | None = None
) -> Tensor:
    """Mean PSNR-Y of expert ``i`` on LR images made with kernel ``j`` (issue 3, item 1).

    All ``E' x K`` (expert, kernel) pairs run in one ``ExpertBank`` call.

    Args:
        bank: The experts.
        kernels: ``(K, k, k)`` block-centred kernels (correlate, decimate from pixel 0), one per image set.
        hr: ``(B, 3, sH, sW)`` HR images in ``[0, 1]``.
        experts: ``(E',)`` experts to evaluate (default: all, in order).
        shave: Border pixels left out of PSNR-Y (default: the scale).

    Returns:
        ``(E', K)`` float64 matrix; a specialised bank has its largest value of column ``j`` in row ``j``
        (:func:`diagonal_wins`).
    """
    experts = torch.arange(bank.num_experts) if experts is None else experts.cpu().long()
    lr = degrade(hr, kernels.to(hr), bank.scale)  # (B, K, 3, h, w)
    n_e, n_k = experts.numel(), kernels.shape[0]
    pairs = lr.repeat(1, n_e, 1, 1, 1)  # slot e * K + j: expert e on kernel j
    sr = bank(pairs, experts.repeat_interleave(n_k)).clamp(0, 1)
    target = hr[:, None].expand_as(sr).flatten(0, 1)
    psnr = psnr_y(sr.flatten(0, 1), target, shave=bank.scale if shave is None else shave)
    return psnr.reshape(hr.shape[0], n_e, n_k).mean(dim=0)


def diagonal_wins(matrix: Tensor) -> int:
    """Columns ``j`` of a square matrix whose maximum is on the diagonal (expert ``j`` best on kernel ``j``)."""
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a square matrix is needed, got {tuple(matrix.shape)}")
    return int((matrix.argmax(dim=0) == torch.arange(matrix.shape[1])).sum())


def train_experts_on_kernels(
    bank: ExpertBank,
    kernels: Tensor,
    images: Sequence[Tensor],
    steps: int,
    patch: int = 24,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Train expert ``i`` of ``bank`` on kernel ``i`` (random HR crops, L1, Adam + one-cycle): all in one call a step.

    Each step draws one batch of HR crops and degrades it with every kernel, so the experts see the same images and
    differ only by their kernel (as ``GridDegradation``).

    Args:
        bank: ``E`` experts to train (``E == len(kernels)``).
        kernels: ``(E, k, k)`` block-centred kernels.
        images: HR images ``(3, H, W)`` in ``[0, 1]`` (each at least ``patch * scale`` on both sides).
        steps: Optimiser steps.
        patch: LR patch side (HR crops are ``patch * scale``).
        batch_size: Crops per step.
        lr: Maximum learning rate of the one-cycle schedule.
        seed: Seed of the crops.

    Returns:
        The training loss (mean L1 over experts) of every step.
    """
    if kernels.shape[0] != bank.num_experts:
        raise ValueError(f"{kernels.shape[0]} kernels for {bank.num_experts} experts")
    gen = torch.Generator().manual_seed(seed)
    size = patch * bank.scale
    opt = torch.optim.Adam(bank.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps))
    losses = []
    for _ in range(steps):
        crops = []
        for _ in range(batch_size):
            img = images[int(torch.randint(len(images), (1,), generator=gen))]
            top = int(torch.randint(img.shape[-2] - size + 1, (1,), generator=gen))
            left = int(torch.randint(img.shape[-1] - size + 1, (1,), generator=gen))
            crops.append(img[:, top : top + size, left : left + size])
        hr = torch.stack(crops)
        lr_imgs = degrade(hr, kernels.to(hr), bank.scale)
        sr = bank(lr_imgs)
        loss = (sr - hr[:, None]).abs().mean(dim=(0, 2, 3, 4)).sum()  # each expert its own L1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item() / bank.num_experts)
    return losses


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of the rows of ``a`` and ``b`` ``(B, N)`` -> ``(B,)`` (ties broken by order)."""
    ra = a.argsort(dim=1).argsort(dim=1).to(torch.float64)
    rb = b.argsort(dim=1).argsort(dim=1).to(torch.float64)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    return (ra * rb).sum(dim=1) / (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt().clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Base of the ISE and KEN stages: frozen earlier stages, grid validation
# ----------------------------------------------------------------------------------------------------------------


class FrozenStagesSystem(SRSystem):
    """Base of the stages that run frozen experts (and ISE): loading, checkpoint exclusion, data checks, metrics.

    The frozen parts (class attribute ``frozen_parts``) are read at ``setup`` from their own checkpoints (the grid and
    widths from the experts checkpoint's hyper-parameters), registered as submodules so they follow the model to its
    device, and kept out of this stage's checkpoint (``exclude_from_checkpoint``).

    Validation draws ``val_kernels`` kernels per validation crop: the DataModule's fixed one, and ``val_kernels - 1``
    more from the data's degradation with generators seeded by the crop's index (so the same on any number of
    processes and at every validation), which makes the grid metrics less coarse on small validation sets.

    Args:
        experts_ckpt: Experts checkpoint; ``{scale}`` is filled with the model's scale.
        val_max_batch: Most (image, kernel) pairs per expert/ISE call in validation and inference (memory; ``None``:
            one call per transform group). A runtime option.
        val_kernels: Kernels per validation crop (see above). A runtime option.
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    frozen_parts: tuple[str, ...] = ("bank",)
    runtime_hparams: tuple[str, ...] = (*RUNTIME_HPARAMS, "val_max_batch", "val_kernels")

    def __init__(
        self,
        experts_ckpt: str = DEFAULT_CKPTS["experts"],
        val_max_batch: int | None = None,
        val_kernels: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if val_kernels < 1:
            raise ValueError(f"val_kernels must be >= 1, got {val_kernels}")
        self.val_max_batch = val_max_batch
        self.val_kernels = val_kernels
        self.bank: ExpertBank | None = None
        self.grid: MoESRGrid | None = None
        exclude_from_checkpoint(self, self.frozen_parts)
        self.val_top1 = MeanMetric()
        self.val_best_expert_top1 = MeanMetric()
        self.val_rank_corr = MeanMetric()
        self.val_ise_kernel_sae = KernelSAE()
        self.val_grid_kernel_sae = KernelSAE()

    # ------------------------------------------------------------------------------------------------ loading
    @property
    def experts_ckpt_path(self) -> str:
        """``experts_ckpt`` with ``{scale}`` filled in."""
        return self.hparams.experts_ckpt.format(scale=self.scale)

    def load_frozen(self) -> None:
        """Load (and freeze) the experts; subclasses load more. Stops with a message if a checkpoint is missing."""
        bank, grid = load_experts(self.experts_ckpt_path, self.scale)
        self.grid = grid
        self.bank = freeze(bank)

    def setup(self, stage: str) -> None:
        """Check the scale, load the frozen stages, check that the data's kernels fit the experts' grid."""
        super().setup(stage)
        if self.bank is None:
            self.load_frozen()
        degradation = getattr(getattr(self.trainer, "datamodule", None), "degradation", None)
        if stage in ("fit", "validate") and degradation is not None:
            self._check_degradation(degradation)

    def _check_degradation(self, degradation) -> None:
        if not isinstance(degradation, MoESRKernelDegradation):
            raise ValueError(
                f"{type(self).__name__} trains on MoESR kernels: the data needs degradation: "
                f"{{class_path: datamodules.degradation.pipelines.moesr.MoESRKernelDegradation}}, got {type(degradation).__name__}"
            )
        grid = self.grid
        wanted = (min(grid.lambdas), max(grid.lambdas))
        if degradation.kernel_size != grid.kernel_size or tuple(degradation.lambda_range) != wanted:
            raise ValueError(
                f"the data's kernels ({degradation.kernel_size}x{degradation.kernel_size}, lambdas in "
                f"{degradation.lambda_range}) do not fit the experts' {grid} (lambdas in {wanted}): pass "
                f"--data.init_args.degradation.init_args.lambdas {list(grid.base_lambdas)}"
            )

    def train(self, mode: bool = True) -> FrozenStagesSystem:
        """As ``nn.Module.train``, but the frozen parts always stay in eval mode."""
        super().train(mode)
        for name in self.frozen_parts:
            part = getattr(self, name, None)
            if part is not None:
                part.eval()
        return self

    def validation_batches(self, batch: dict) -> Iterator[dict]:
        """The validation batch, then the same crops degraded with ``val_kernels - 1`` more kernels each."""
        yield batch
        degradation = getattr(getattr(self.trainer, "datamodule", None), "degradation", None)
        if self.val_kernels == 1 or degradation is None or "index" not in batch:
            return
        hr = batch["hr"]
        for r in range(1, self.val_kernels):
            draws = [
                degradation.sample(
                    torch.Size((1, *hr.shape[1:])), torch.Generator().manual_seed(_VAL_SEED + r + 7919 * int(i)), "cpu"
                )
                for i in batch["index"]
            ]
            params = {key: torch.cat([d[key] for d in draws]).to(hr.device) for key in draws[0]}
            yield {**degradation.apply(hr, params), "index": batch["index"]}

    # ------------------------------------------------------------------------------------------- grid helpers
    def grid_kernels(self, like: Tensor) -> Tensor:
        """``(N, k, k)`` grid kernels on ``like``'s device and dtype."""
        return self.grid.kernels(like.dtype).to(like.device)

    def log_grid_validation(self, batch: dict, errors: Tensor, outputs: Tensor, choice: Tensor) -> None:
        """Log the metrics of a grid selection ``choice`` ``(B,)`` (SR metrics of its expert, ISE ranking metrics).

        ``val/psnr_y``, ``val/ssim_y``: the chosen expert's output (no fine-tuning); ``val/ise_top1``: the best-ISE
        grid kernel is the grid kernel nearest (in SAE) to the true kernel, next to ``val/ise_top1_chance`` = 1/N;
        ``val/ise_best_expert_top1``: the best-ISE kernel's expert is the one with the lowest true error on this
        crop; ``val/ise_rank_corr``: Spearman correlation of ISE errors and true errors over the grid;
        ``val/ise_kernel_sae``: SAE of the best-ISE grid kernel; ``val/grid_kernel_sae``: SAE of the nearest grid
        kernel (the best any grid choice can do).
        """
        hr, lr, kernel = batch["hr"], batch["lr"], batch["kernel"]
        bsz = hr.shape[0]
        sr = outputs[batch_index(hr), choice].clamp(0, 1)
        self.val_metrics.update(sr, hr)
        self.val_bicubic_metrics.update(ops.resize(lr, scale=self.scale, convention="matlab").clamp(0, 1), hr)
        self.log_dict(self.val_metrics, on_epoch=True, batch_size=bsz, prog_bar=True)
        self.log_dict(self.val_bicubic_metrics, on_epoch=True, batch_size=bsz, prog_bar=True)

        best_ise = errors.argmin(dim=1)
        true_err = (outputs - hr[:, None]).square().mean(dim=(2, 3, 4))
        nearest = self.grid.kernel_nearest(kernel)
        grid_k = self.grid_kernels(kernel)
        self.val_top1.update((best_ise == nearest).float())
        self.val_best_expert_top1.update((best_ise == true_err.argmin(dim=1)).float())
        self.val_rank_corr.update(rank_correlation(errors, true_err))
        self.val_ise_kernel_sae.update(grid_k[best_ise], kernel)
        self.val_grid_kernel_sae.update(grid_k[nearest], kernel)
        self.log("val/ise_top1", self.val_top1, on_epoch=True, batch_size=bsz, prog_bar=True)
        self.log("val/ise_top1_chance", 1.0 / self.grid.num_kernels, on_epoch=True, batch_size=bsz)
        self.log("val/ise_best_expert_top1", self.val_best_expert_top1, on_epoch=True, batch_size=bsz)
        self.log("val/ise_rank_corr", self.val_rank_corr, on_epoch=True, batch_size=bsz)
        self.log("val/ise_kernel_sae", self.val_ise_kernel_sae, on_epoch=True, batch_size=bsz)
        self.log("val/grid_kernel_sae", self.val_grid_kernel_sae, on_epoch=True, batch_size=bsz)

"""The grid through the experts: every grid kernel's expert output and its ISE error, in batched calls.

* :func:`grid_outputs` runs grid kernels' experts on LR images through the four input transforms: **one**
  ``ExpertBank`` call per shape class of transforms (identity and flip keep the image's shape, the two transposing
  ones swap it), split into ``max_batch`` chunks for memory (``None``: two calls for the 85 kernels). Each
  transformed image is made once and bicubic-upsampled once per call (``ExpertBank(..., slot_source=...)``), not
  once per kernel. On GPUs a call runs all its experts as one grouped convolution; on CPUs each distinct expert of
  the call runs its slots with plain convolutions (``per_expert``; ``nets.moesr.PER_CALL_PIXELS`` output pixels a
  call), because oneDNN's grouped convolutions reached only 0.45-0.66 of a per-kernel loop's speed
  (``python -m benchmarks.moesr``).
* :func:`grid_errors` adds ISE: ``E_i = mean over ISE's output pixels of ISE(U_i(LR), up(LR))^2`` (Eq. 8 / 10,
  official "mean of the squared ISE output"), for all ``N`` grid kernels in the official order -> ``(B, N)``.
* :func:`grid_expert`: one grid kernel's expert as a standalone network, its input transform folded into the weights.

Bicubic inputs of ISE use PyTorch's ``F.interpolate(mode="bicubic")`` (``ops.resize(convention="torch")``), as the
official code does.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from datamodules.degradation import ops
from datamodules.degradation.kernels.moesr import MoESRGrid, apply_transform, invert_transform
from lightning_modules.nets.moesr import ISE, ExpertBank, per_call_batch


def upsample(lr: Tensor, scale: int) -> Tensor:
    """ISE's second input: PyTorch bicubic upsampling (``a = -0.75``, as the official code)."""
    return ops.resize(lr, scale=scale, convention="torch")


def batch_index(x: Tensor) -> Tensor:
    """``arange(B)`` on ``x``'s device (to pick one slot per image: ``outputs[batch_index(x), choice]``)."""
    return torch.arange(x.shape[0], device=x.device)


def _chunks(n: int, size: int | None) -> Iterator[slice]:
    size = n if not size or size <= 0 else size
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# Input transforms whose images share a shape (0 identity and 3 flip keep (h, w); 1 and 2 transpose it).
SHAPE_CLASSES = ((0, 3), (1, 2))


def _run_groups(
    bank: ExpertBank, grid: MoESRGrid, lr: Tensor, indices: Tensor | None, max_batch: int | None,
    per_expert: bool | None = None,
):  # fmt: skip
    """Yield ``(batch rows or None, slot positions, SR (n_b, n_s, 3, sH, sW))`` for each chunk of each group."""
    bsz = lr.shape[0]
    if indices is None:
        indices = torch.arange(grid.num_kernels)
    indices = indices.detach().cpu().long()
    if indices.dim() == 1:  # the same kernels for every image: (B, n, ...) with experts (n,)
        per_call = None if not max_batch else max(1, max_batch // bsz)
        if per_expert is None:  # plain convolutions per expert beat grouped ones on CPUs
            per_expert = lr.device.type == "cpu"
        for pair in SHAPE_CLASSES:  # transforms whose images have one shape share calls
            transforms = grid.transform[indices]
            pos = torch.isin(transforms, torch.tensor(pair)).nonzero().flatten()
            if pos.numel() == 0:
                continue
            sources = torch.stack([apply_transform(lr, t) for t in pair], dim=1)  # (B, 2, 3, h', w')
            for part in _chunks(pos.numel(), per_call):
                p = pos[part]
                slot_t = transforms[p]
                slot_source = (slot_t == pair[1]).long()
                sr = bank(sources, grid.expert_index[indices[p]], slot_source=slot_source, per_expert=per_expert)
                out = torch.empty_like(sr) if pair[0] == 0 else sr.new_empty(*sr.shape[:3], *sr.shape[-2:][::-1])
                for j, t in enumerate(pair):
                    sel = (slot_source == j).nonzero().flatten().to(sr.device)
                    if sel.numel():
                        out[:, sel] = invert_transform(sr[:, sel], t)
                yield None, p, out
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
    bank: ExpertBank,
    grid: MoESRGrid,
    lr: Tensor,
    indices: Tensor | None = None,
    max_batch: int | None = None,
    per_expert: bool | None = None,
) -> Tensor:
    """SR images of grid kernels' experts (each through its input transform and back).

    Args:
        bank: The experts (``bank.num_experts == grid.num_experts``).
        grid: The grid the bank was trained on.
        lr: ``(B, 3, h, w)``.
        indices: Grid kernels to run: ``None`` (all ``N``), ``(K,)`` (the same for every image) or ``(B, K)`` (per
            image, e.g. a random subset per training image).
        max_batch: Most (image, kernel) pairs per ``ExpertBank`` call (``None``: one call per shape class).
        per_expert: With 1-D ``indices`` (or ``None``): run each expert's slots with plain convolutions
            (``ExpertBank(per_expert=True)``) rather than one grouped convolution; ``None``: on CPUs only.

    Returns:
        ``(B, K, 3, s*h, s*w)``; slot ``k`` is grid kernel ``indices[k]`` (or ``indices[b, k]``).
    """
    _check_bank(bank, grid)
    bsz = lr.shape[0]
    k = grid.num_kernels if indices is None else indices.shape[-1]
    out = lr.new_empty(bsz, k, 3, lr.shape[-2] * bank.scale, lr.shape[-1] * bank.scale)
    for rows, slots, sr in _run_groups(bank, grid, lr, indices, max_batch, per_expert):
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
        max_batch: Most images per ISE call (``None``: all at once); on CPUs also at most
            ``nets.moesr.PER_CALL_PIXELS`` pixels a call (one image if larger: 85 ISE calls on 256x256 images ran
            4-6 s one by one against 9 s in batches of 8 on 2 AVX2 EPYC cores).

    Returns:
        ``(B, K)``.
    """
    bsz, k = sr.shape[:2]
    if sr.device.type == "cpu":
        per_call = per_call_batch(*sr.shape[-2:])
        max_batch = per_call if not max_batch or max_batch <= 0 else min(max_batch, per_call)
    flat = sr.flatten(0, 1)
    ups = up[:, None].expand(bsz, k, *up.shape[1:]).flatten(0, 1)
    errs = [ise(flat[s], ups[s]).float().square().mean(dim=(1, 2, 3)) for s in _chunks(flat.shape[0], max_batch)]
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

    Runs one ``ExpertBank`` call and one ISE call per shape class (or per ``max_batch`` chunk of it); SR images
    are dropped after use unless ``return_outputs``.

    Args:
        bank: The experts.
        ise: The sharpness evaluator.
        grid: The experts' grid.
        lr: ``(B, 3, h, w)``; ``s*h`` and ``s*w`` must be at least 49 (ISE's receptive field).
        max_batch: Most (image, kernel) pairs per call (``None``: whole shape classes).
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


def fold_transform_into_weights(net: nn.Module, transform: int) -> nn.Module:
    """Make ``net(x) == invert_transform(net_before(apply_transform(x, t)), t)`` by transforming its 3x3 weights.

    For a correlation with symmetric padding, conjugating the input by a flip or rotation ``g`` equals correlating
    with ``g^-1`` applied to the kernel, and PyTorch's bicubic upsampling commutes with flips and rotations; so every
    ``Conv2d`` weight becomes ``invert_transform(weight, t)`` (in place; biases unchanged). This is the official
    code's weight rotation; ``tests/moesr/test_system.py`` checks it against the image-transform form.
    """
    if transform == 0:
        return net
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(invert_transform(module.weight, transform).clone())
    return net


def grid_expert(bank: ExpertBank, grid: MoESRGrid, index: int) -> nn.Module:
    """A standalone copy of grid kernel ``index``'s expert with its input transform folded into the weights.

    ``grid_expert(bank, grid, i)(lr) == grid_outputs(bank, grid, lr, tensor([i]))[:, 0]`` on any ``(B, 3, h, w)``.
    """
    net = bank.expert(int(grid.expert_index[index]))
    return fold_transform_into_weights(net, int(grid.transform[index]))


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of the rows of ``a`` and ``b`` ``(B, N)`` -> ``(B,)`` (ties broken by order)."""
    ra = a.argsort(dim=1).argsort(dim=1).to(torch.float64)
    rb = b.argsort(dim=1).argsort(dim=1).to(torch.float64)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    return (ra * rb).sum(dim=1) / (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt().clamp_min(1e-12)

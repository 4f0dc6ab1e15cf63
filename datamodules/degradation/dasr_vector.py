"""DASR's 33-number degradation vector ``v`` (the regression target of its predictor): the one place its layout lives.

``dasr_vector(params)`` builds ``(B, 33)`` from the named parameters of ``dasr_params.DASRSampler``;
``vector_to_named(v)`` decodes the continuous entries back to physical units (for display, or for a user who edits
a predicted vector, the paper's "user control"). The layout is the official one (``DASR_model.py``, blocks
``[0, 10, 18, 26, 33]``):

===== ============================ =================================================================================
index name                         meaning (``norm(x, lo, hi) = (x - lo) / (hi - lo)``, ranges in ``RANGES``)
===== ============================ =================================================================================
0     ``kernel1_size``             ``size_code(k)`` of the first Gaussian (see "absent" below)
1-2   ``kernel1_sigma_x/y``        ``norm(sigma, 0.2, 3)``: standard deviations, HR pixels
3     ``kernel1_theta``            ``norm(theta, -pi, pi)`` (isotropic kernels: theta 0 -> 0.5)
4-7   ``kernel2_*``                the second Gaussian, as 0-3; all 0 when the second blur is not applied
8     ``sinc_size``                ``size_code(k)`` of the final sinc filter; 0 when there is none
9     ``sinc_cutoff``              ``norm(omega_c, pi/3, pi)``; 0 when there is no sinc
10    ``resize1_scale``            ``norm(scale, 0.15, 1.5)``
11-13 ``resize1_area/...``         one-hot mode (area, bilinear, bicubic)
14-17 ``resize2_*``                the second resize, as 10-13; all 0 for one-stage levels
18    ``noise1_level``             Gaussian ``norm(sigma_8bit, 1, 30)`` or Poisson ``norm(scale, 0.05, 3)``
19    ``noise1_gray``              1 if the noise is the same on all channels
20-21 ``noise1_gaussian/poisson``  one-hot noise type
22-25 ``noise2_*``                 the second stage's noise, as 18-21; all 0 for one-stage levels
26-27 ``jpeg1/2_quality``          ``norm(q, 30, 95)``; 27 is 0 for one-stage levels
28-29 ``order_*``                  one-hot final order: [1, 0] resize + sinc then JPEG, [0, 1] JPEG then resize +
                                   sinc; [0, 0] for one-stage levels
30-32 ``final_area/...``           one-hot mode of the final resize to ``H / s``
===== ============================ =================================================================================

Absent steps: a one-hot block of zeros says its step is absent (second resize, second noise, the final order and
with it the second JPEG); for the second blur and the sinc filter, the size entry is the flag: ``size_code(k) =
(k - 5) / 16`` maps every admissible odd side 7..21 into ``[0.125, 1]`` (the official ``(k - 7) / 14`` would map the
nominal minimum 7 to 0), so 0 means exactly "absent", and every other entry of that kernel is then 0 too.

Issue #14's three bugs of the official vector, fixed here (``tests/degradation/test_dasr_vector.py`` shows each with
a reference of the old behaviour):

1. the official code writes 1 into index 9 (the sinc cut-off) whenever the second blur is applied, erasing the
   cut-off: here index 9 is only ever the cut-off, and whether the second blur ran is index 4 (> 0);
2. no final sinc gave kernel size 0 -> ``(0 - 7) / 14 = -0.5``: here it gives 0, the "absent" code above;
3. each level normalised with its own ranges (sigma 1.0 was 1.0 at S2 but 0.29 at S3): here every quantity uses ONE
   range, the union of all levels' and both stages' ranges (``RANGES``), so a value means the same at every level.

Every entry of a vector from ``DASRSampler``'s ranges is finite and in ``[0, 1]``; parameters outside ``RANGES`` (a
customised sampler) give entries outside ``[0, 1]`` rather than being clipped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from datamodules.degradation.dasr_params import (
    OFFICIAL_LEVELS,
    RESIZE_MODES,
    SINC_CUTOFF_RANGE,
    THETA_RANGE,
    stages,
    union_range,
)

_STAGES = stages(OFFICIAL_LEVELS)
RANGES: dict[str, tuple[float, float]] = {
    "sigma": union_range([s.sigma for s in _STAGES]),  # (0.2, 3.0)
    "theta": THETA_RANGE,
    "sinc_cutoff": SINC_CUTOFF_RANGE,
    "resize_scale": union_range([s.resize_range for s in _STAGES]),  # (0.15, 1.5)
    "noise_sigma": union_range([s.noise_range for s in _STAGES]),  # (1, 30), 8-bit levels
    "poisson_scale": union_range([s.poisson_range for s in _STAGES]),  # (0.05, 3.0)
    "jpeg_quality": union_range([s.jpeg_range for s in _STAGES]),  # (30, 95)
}
"""One normalisation range per physical quantity, the union over every level and stage (issue #14, bug 3)."""
SIZE_CODE_ZERO = 5
"""``size_code(k) = (k - 5) / 16``: 0 is reserved for "absent" (the smallest admissible side, 7, gives 0.125)."""
SIZE_CODE_SPAN = 16

_MODES = RESIZE_MODES
VECTOR_NAMES: tuple[str, ...] = (
    "kernel1_size", "kernel1_sigma_x", "kernel1_sigma_y", "kernel1_theta",
    "kernel2_size", "kernel2_sigma_x", "kernel2_sigma_y", "kernel2_theta",
    "sinc_size", "sinc_cutoff",
    "resize1_scale", *(f"resize1_{m}" for m in _MODES),
    "resize2_scale", *(f"resize2_{m}" for m in _MODES),
    "noise1_level", "noise1_gray", "noise1_gaussian", "noise1_poisson",
    "noise2_level", "noise2_gray", "noise2_gaussian", "noise2_poisson",
    "jpeg1_quality", "jpeg2_quality",
    "order_resize_sinc_then_jpeg", "order_jpeg_then_resize_sinc",
    *(f"final_{m}" for m in _MODES),
)  # fmt: skip
"""The 33 entries' names, in vector order (module docstring)."""
assert len(VECTOR_NAMES) == 33


def dasr_vector_names() -> tuple[str, ...]:
    """The names of the 33 entries, in order (``VECTOR_NAMES``)."""
    return VECTOR_NAMES


def _norm(x: Tensor, name: str) -> Tensor:
    lo, hi = RANGES[name]
    return (x.float() - lo) / (hi - lo)


def _denorm(v: Tensor, name: str) -> Tensor:
    lo, hi = RANGES[name]
    return lo + v * (hi - lo)


def _size_code(size: Tensor) -> Tensor:
    """``(k - 5) / 16`` for a kernel side ``k >= 7``, exactly 0 for ``k == 0`` (absent)."""
    size = size.float()
    return torch.where(size > 0, (size - SIZE_CODE_ZERO) / SIZE_CODE_SPAN, torch.zeros_like(size))


def _one_hot(index: Tensor, classes: int) -> Tensor:
    """``(B, classes)`` one-hot of ``index``; an index of -1 (absent) gives a row of zeros."""
    present = index >= 0
    return torch.nn.functional.one_hot(index.clamp(min=0).long(), classes).float() * present[:, None].float()


def _kernel_block(params: dict[str, Tensor], prefix: str, present: Tensor) -> list[Tensor]:
    keep = present.float()
    return [
        _size_code(params[f"{prefix}_size"] * present.long())[:, None],
        (_norm(params[f"{prefix}_sigma_x"], "sigma") * keep)[:, None],
        (_norm(params[f"{prefix}_sigma_y"], "sigma") * keep)[:, None],
        (_norm(params[f"{prefix}_theta"], "theta") * keep)[:, None],
    ]


def _noise_block(params: dict[str, Tensor], stage: str) -> list[Tensor]:
    kind = params[f"noise{stage}_type"]
    level = (
        torch.where(
            kind == 0,
            _norm(params[f"noise{stage}_sigma"], "noise_sigma"),
            _norm(params[f"noise{stage}_poisson_scale"], "poisson_scale"),
        )
        * (kind >= 0).float()
    )
    gray = params[f"noise{stage}_gray"].float() * (kind >= 0).float()
    return [level[:, None], gray[:, None], _one_hot(kind, 2)]


def dasr_vector(params: dict[str, Tensor]) -> Tensor:
    """The ``(B, 33)`` degradation vector of named DASR parameters (layout and fixes: module docstring).

    Args:
        params: ``DASRSampler.sample``'s named ``(B,)`` tensors (any extra keys are ignored).

    Returns:
        ``(B, 33)`` float32 on the parameters' device.
    """
    blur2 = params["blur2_applied"].bool() & (params["kernel2_size"] > 0)
    sinc = params["sinc_applied"].bool() & (params["sinc_size"] > 0)
    resize2 = (params["resize2_mode"] >= 0).float()
    two_stage = (params["final_order"] >= 0).float()
    parts = [
        *_kernel_block(params, "kernel1", torch.ones_like(blur2)),
        *_kernel_block(params, "kernel2", blur2),
        _size_code(params["sinc_size"] * sinc.long())[:, None],
        (_norm(params["sinc_cutoff"], "sinc_cutoff") * sinc.float())[:, None],
        _norm(params["resize1_scale"], "resize_scale")[:, None],
        _one_hot(params["resize1_mode"], 3),
        (_norm(params["resize2_scale"], "resize_scale") * resize2)[:, None],
        _one_hot(params["resize2_mode"], 3),
        *_noise_block(params, "1"),
        *_noise_block(params, "2"),
        _norm(params["jpeg1_quality"], "jpeg_quality")[:, None],
        (_norm(params["jpeg2_quality"], "jpeg_quality") * two_stage)[:, None],
        _one_hot(params["final_order"], 2),
        _one_hot(params["final_mode"], 3),
    ]
    return torch.cat(parts, dim=1)


def _decode_size(v: Tensor) -> Tensor:
    """Nearest odd side to ``5 + 16 v``; 0 (absent) below half the smallest code (0.0625)."""
    k = (SIZE_CODE_ZERO + SIZE_CODE_SPAN * v.clamp(0, 1) - 1) / 2
    size = 2 * torch.round(k).long() + 1
    return torch.where(v >= 0.5 * (7 - SIZE_CODE_ZERO) / SIZE_CODE_SPAN, size, torch.zeros_like(size))


def _decode_choice(block: Tensor) -> Tensor:
    """Index of the largest entry of a one-hot block, or -1 where the block sums to less than 0.5 (absent)."""
    return torch.where(block.sum(1) >= 0.5, block.argmax(1), torch.full_like(block[:, 0], -1, dtype=torch.long))


def vector_to_named(vector: Tensor) -> dict[str, Tensor]:
    """Decode a ``(B, 33)`` vector (exact or predicted) into named physical parameters.

    Continuous entries are mapped back through ``RANGES``; one-hot blocks to their largest entry (``-1`` where the
    block sums to less than 0.5: absent); sizes to the nearest odd side (0: absent); flags to ``entry > 0.5``.
    Entries of absent steps decode to 0. The level, the seeds and the iso flags are not in the vector.

    Args:
        vector: ``(B, 33)``.

    Returns:
        ``{name: (B,)}`` with the names of ``DASRSampler`` (``kernel1_size``, ``kernel1_sigma_x``, ...,
        ``noise1_type``, ``noise1_sigma``, ``noise1_poisson_scale``, ``final_order``, ``sinc_cutoff``, ...).
    """
    if vector.dim() != 2 or vector.shape[1] != len(VECTOR_NAMES):
        raise ValueError(f"expected a (B, {len(VECTOR_NAMES)}) vector, got {tuple(vector.shape)}")
    v = vector.float()
    col = {name: v[:, i] for i, name in enumerate(VECTOR_NAMES)}
    out: dict[str, Tensor] = {}
    for prefix in ("kernel1", "kernel2"):
        size = _decode_size(col[f"{prefix}_size"])
        keep = (size > 0).float()
        out[f"{prefix}_size"] = size
        out[f"{prefix}_sigma_x"] = _denorm(col[f"{prefix}_sigma_x"], "sigma") * keep
        out[f"{prefix}_sigma_y"] = _denorm(col[f"{prefix}_sigma_y"], "sigma") * keep
        out[f"{prefix}_theta"] = _denorm(col[f"{prefix}_theta"], "theta") * keep
    out["blur2_applied"] = out["kernel2_size"] > 0
    out["sinc_size"] = _decode_size(col["sinc_size"])
    out["sinc_applied"] = out["sinc_size"] > 0
    out["sinc_cutoff"] = _denorm(col["sinc_cutoff"], "sinc_cutoff") * out["sinc_applied"].float()
    for stage in ("1", "2"):
        mode = _decode_choice(v[:, [VECTOR_NAMES.index(f"resize{stage}_{m}") for m in _MODES]])
        out[f"resize{stage}_mode"] = mode
        out[f"resize{stage}_scale"] = _denorm(col[f"resize{stage}_scale"], "resize_scale") * (mode >= 0).float()
        kind = _decode_choice(torch.stack([col[f"noise{stage}_gaussian"], col[f"noise{stage}_poisson"]], 1))
        level = col[f"noise{stage}_level"]
        out[f"noise{stage}_type"] = kind
        out[f"noise{stage}_gray"] = (col[f"noise{stage}_gray"] > 0.5) & (kind >= 0)
        out[f"noise{stage}_sigma"] = _denorm(level, "noise_sigma") * (kind == 0).float()
        out[f"noise{stage}_poisson_scale"] = _denorm(level, "poisson_scale") * (kind == 1).float()
    order = _decode_choice(torch.stack([col["order_resize_sinc_then_jpeg"], col["order_jpeg_then_resize_sinc"]], 1))
    out["final_order"] = order
    out["jpeg1_quality"] = _denorm(col["jpeg1_quality"], "jpeg_quality")
    out["jpeg2_quality"] = _denorm(col["jpeg2_quality"], "jpeg_quality") * (order >= 0).float()
    out["final_mode"] = _decode_choice(v[:, [VECTOR_NAMES.index(f"final_{m}") for m in _MODES]])
    return out

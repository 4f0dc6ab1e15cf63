"""The degradation model of the variational mixture of networks (Wang et al., Pattern Recognition 2020).

Eq. (1): ``L = S(B * H)``: blur with one of a fixed set of 11x11 Gaussian kernels, then decimate (no noise).

The kernel set and its seen / unseen split are ``kernels.mixture`` (summary there); test sets of every image x every
kernel of a group are written by ``python -m datamodules.generate --protocol mixture``.

Decimation and alignment (the official evaluation code)
-------------------------------------------------------
The official code correlates the Y channel with the kernel (``scipy.ndimage.correlate``, default border
``'reflect'`` = half-sample symmetric) and decimates with PIL ``NEAREST`` resizing, which keeps HR pixel
``floor((i + 0.5) * s)``, i.e. phase ``s // 2`` (x2: 1, x3: 1, x4: 2). ``MixtureDegradation`` does the same
(``border="symmetric"``, ``phase=None`` -> ``s // 2``). With a pixel-centred kernel, a bicubic upsample lines up
with the HR image for phase ``(s - 1) / 2``: at x3 the official phase is exactly aligned; at x2 and x4 it is
**half an HR pixel off** (down and right). The paper's networks learn that shift as part of the residual; we follow
the official code and say so here rather than silently "fixing" it (pass ``phase`` to change it).

Colour: we blur and decimate the RGB image and the systems take the Y channel of the LR RGB. Y is an affine
function of RGB and the kernels sum to 1, so this equals blurring Y (the official code) up to the 8-bit rounding
of the RGB LR (``quantize=True``, as when the LR is saved as PNG).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from datamodules.degradation import ops
from datamodules.degradation.kernels.mixture import (
    KERNEL_SIZE,
    NUM_SEEN,
    IsotropicPolicy,
    KernelGroup,
    distinct_kernel_params,
    load_or_make_split,
)
from datamodules.degradation.ops import Border
from datamodules.degradation.pipelines.base import Degradation
from datamodules.degradation.samplers import KernelBankSampler


def blur_decimate(
    hr: Tensor, kernels: Tensor, scale: int, phase: int | None = None, border: Border = "symmetric"
) -> Tensor:
    """Eq. (1) without noise, with the official code's conventions (``ops.blur_decimate``).

    Correlation with scipy's symmetric border, keeping every ``scale``-th pixel from ``phase`` (``None``:
    ``scale // 2``, as PIL ``NEAREST``).

    Returns:
        ``(B, C, H // scale, W // scale)``, not quantised.
    """
    phase = scale // 2 if phase is None else phase
    return ops.blur_decimate(hr, kernels, scale, phase, border=border)


class MixtureDegradation(Degradation):
    """Wang et al. 2020's degradation: a uniformly drawn kernel of the seen (or unseen) set, blur, decimation.

    ``sample`` draws ``kernel_index`` (the index in the chosen group: the E-Net pre-training label) and returns
    the kernel's ``lambda1``, ``lambda2``, ``theta`` and ``kernel_id`` (its global id of the 52). The kernel split is
    made from ``split_seed`` (see the module docstring); with ``split_file`` the split is read from that JSON file
    when it exists (and checked), and written there the first time the degradation is used when it does not.

    Args:
        scale: Downscaling factor (linked from the DataModule's ``scale``).
        kernels: Which kernels to draw from: ``"seen"`` (training), ``"unseen"`` or ``"all"``.
        split_seed: Seed of the seen/unseen split.
        num_seen: Number of seen kernels (paper: 29).
        isotropic: Where the 4 isotropic kernels go (``"unseen"``: as in the official test file).
        split_file: JSON file of the split (read if present, written on first use if not); ``None``: not saved.
        kernel_ids: Draw from these global kernel ids instead of ``kernels`` (e.g. a small subset for quick checks;
            ``kernel_index`` then indexes this list).
        phase: First kept pixel of the decimation; ``None``: ``scale // 2`` (PIL NEAREST, official code).
        border: Blur border: ``"symmetric"`` (scipy ``ndimage.correlate`` default) or a Kornia border type.
        quantize: Round the LR to 8-bit levels (as saved to PNG).
    """

    def __init__(
        self,
        scale: int = 2,
        kernels: KernelGroup = "seen",
        split_seed: int = 0,
        num_seen: int = NUM_SEEN,
        isotropic: IsotropicPolicy = "unseen",
        split_file: str | None = None,
        kernel_ids: list[int] | None = None,
        phase: int | None = None,
        border: Border = "symmetric",
        quantize: bool = True,
    ) -> None:
        super().__init__(scale)
        self.split = load_or_make_split(split_file, split_seed, num_seen, isotropic)
        self.split_file = split_file
        self.group = kernels
        ids = self.split.ids(kernels) if kernel_ids is None else tuple(int(i) for i in kernel_ids)
        if not ids or len(set(ids)) != len(ids) or not all(0 <= i < 52 for i in ids):
            raise ValueError(f"kernel_ids must be distinct ids in 0..51, got {kernel_ids}")
        self.ids = torch.tensor(ids, dtype=torch.long)
        self._ids_on: dict[torch.device, Tensor] = {}  # ids copied once per device, not every batch
        p = distinct_kernel_params()
        self.kernel_sampler = KernelBankSampler(
            KERNEL_SIZE, a=p["lambda1"][self.ids].tolist(), b=p["lambda2"][self.ids].tolist(),
            theta=p["theta"][self.ids].tolist(), param="var", centre="pixel", product=False,
        )  # fmt: skip
        self.phase = scale // 2 if phase is None else phase
        if not 0 <= self.phase < scale:
            raise ValueError(f"phase must be in [0, {scale}), got {phase}")
        self.border = border
        self.quantize = quantize

    @property
    def num_kernels(self) -> int:
        """Number of kernels drawn from (the E-Net pre-training's ``K``)."""
        return len(self.ids)

    def _save_split(self) -> None:
        if self.split_file is not None and not Path(self.split_file).is_file():
            self.split.save(self.split_file)

    def sample(self, hr_shape: torch.Size, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """``kernel_index`` ``(B,)`` uniform over the group, plus ``kernel_id``, ``lambda1``, ``lambda2``, ``theta``."""
        self._save_split()
        params = self.kernel_sampler.sample(hr_shape[0], generator, device)
        idx = params["kernel_index"]
        if idx.device not in self._ids_on:
            self._ids_on[idx.device] = self.ids.to(idx.device)
        params["kernel_id"] = self._ids_on[idx.device][idx]
        return params

    def kernels(self, kernel_index: Tensor) -> Tensor:
        """``(B, 11, 11)`` kernels of the group for ``kernel_index``."""
        return self.kernel_sampler.kernels({"kernel_index": kernel_index}, self.scale)

    def degrade(self, hr: Tensor, kernels: Tensor) -> Tensor:
        """Blur and decimate ``hr`` with the given kernels (any kernels; used to render every kernel of a set)."""
        lr = blur_decimate(hr, kernels.to(hr), self.scale, self.phase, self.border)
        return ops.quantize(lr) if self.quantize else lr.clamp(0, 1)

    def apply(self, hr: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Blur with the drawn kernels, decimate at ``phase``, quantise."""
        kernel = self.kernels(params["kernel_index"]).to(hr)
        return {"hr": hr, "lr": self.degrade(hr, kernel), "kernel": kernel, "params": params}

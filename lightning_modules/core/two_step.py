"""Two-step blind SR: any kernel estimator drives any non-blind restorer (the interfaces and the one conversion).

An estimator returns kernels in the convention it states; a restorer takes kernels in the convention it states;
:class:`~lightning_modules.kenet.blind.TwoStepSR` converts once, through the degradation engine's convention, with
:func:`convert_kernel`. The conventions (``datamodules.degradation.kernels.conventions``):

* ``"block"``: the engine's own: block-centred (mean at ``k // 2 + 0.5 * (s - k % 2)``), correlated with the HR
  image, every ``s``-th pixel kept from pixel 0 (DIV2KRK's LR images, MoESR, KENet's training data, test batches);
* ``"pixel"``: centred on the middle pixel (the DIV2KRK ``.mat`` files, KOALAnet, DASR);
* ``"usrnet"``: USRNet / KAIR: convolved (flipped), the upper-left pixel of each block kept; the block-centred
  kernel rotated by 180 degrees (``kernels.block_centre_to_usrnet``).

Both interfaces are ``nn.Module`` so that the CLI instantiates them from ``class_path`` and Lightning moves them to
the device; their weights are loaded by ``load(scale)`` at the system's ``setup`` (a missing checkpoint stops with a
message naming the file and the command that writes it) and are never saved in the two-step checkpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

from datamodules.degradation.kernels import (
    block_centre_to_div2krk_kernel,
    block_centre_to_usrnet,
    div2krk_kernel_to_block_centre,
    usrnet_to_block_centre,
)

KernelConvention = Literal["block", "pixel", "usrnet"]
TileFn = Callable[[Tensor], Tensor]
"""``(B, 3, h, w)`` LR tile of the prepared batch -> ``(B, 3, s h, s w)`` SR."""


def convert_kernel(kernel: Tensor, src: KernelConvention, dst: KernelConvention, scale: int) -> Tensor:
    """``(B, k, k)`` kernels from convention ``src`` to ``dst`` (module docstring), via the engine's ``"block"``.

    ``"block" <-> "usrnet"`` is an exact 180-degree rotation; ``"pixel" <-> "block"`` a bilinear shift by
    ``0.5 * (scale - 1)`` px (exact for x1, a slight blur otherwise: estimators should return ``"block"`` where
    they can).
    """
    if src == dst:
        return kernel
    to_block = {
        "block": lambda k: k,
        "pixel": lambda k: div2krk_kernel_to_block_centre(k, scale),
        "usrnet": usrnet_to_block_centre,
    }
    from_block = {
        "block": lambda k: k,
        "pixel": lambda k: block_centre_to_div2krk_kernel(k, scale),
        "usrnet": block_centre_to_usrnet,
    }
    for name in (src, dst):
        if name not in to_block:
            raise ValueError(f"unknown kernel convention {name!r}; choose from {sorted(to_block)}")
    return from_block[dst](to_block[src](kernel))


class KernelEstimator(nn.Module, ABC):
    """Estimates the blur kernel of each LR image; ``convention`` says how its kernels are meant to be applied.

    ``uses_ground_truth`` marks the oracle (the benchmark's own kernel): its kernel accuracy is not reported.
    """

    convention: KernelConvention = "block"
    uses_ground_truth: bool = False

    def load(self, scale: int) -> None:
        """Load trained weights for ``scale`` (called once at the system's ``setup``; nothing by default)."""

    @abstractmethod
    def estimate(self, lr: Tensor, batch: dict) -> Tensor:
        """``(B, 3, H, W)`` LR in ``[0, 1]`` (the whole images of ``batch``) -> ``(B, k, k)`` kernels summing to 1."""


class KernelRestorer(nn.Module, ABC):
    """A non-blind SR method: super-resolves LR images given their kernels (in its ``convention``)."""

    convention: KernelConvention = "block"

    def load(self, scale: int) -> None:
        """Load trained weights for ``scale`` (called once at the system's ``setup``; nothing by default)."""

    @abstractmethod
    def prepare(self, lr: Tensor, kernel: Tensor, scale: int, names: list[str]) -> TileFn:
        """Get ready for one batch of whole LR images ``(B, 3, H, W)`` and kernels ``(B, k, k)``.

        Per-image work (choosing or fine-tuning a network) happens here, on the whole image; the returned function
        super-resolves tiles of the same batch (the system tiles large images).
        """


class GroundTruthKernel(KernelEstimator):
    """The oracle: each benchmark image's own kernel (``batch["kernel"]``, block-centred), the "GT + X" upper bound."""

    convention = "block"
    uses_ground_truth = True

    def estimate(self, lr: Tensor, batch: dict) -> Tensor:
        """``batch["kernel"]``; an error for data without ground-truth kernels (photos: use a real estimator)."""
        if "kernel" not in batch:
            raise ValueError(
                "the ground-truth estimator needs a set with kernels (DIV2KRK layout: gt_k_x{s}/); for photos "
                "choose an estimator, e.g. --model.init_args.estimator lightning_modules.kenet.components."
                "KENetKernelEstimator"
            )
        return batch["kernel"].to(lr)

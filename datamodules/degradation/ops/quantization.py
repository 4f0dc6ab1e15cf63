"""8-bit quantisation of images in ``[0, 1]`` (any shape), the one quantiser of the project."""

from __future__ import annotations

from torch import Tensor


def quantize(x: Tensor) -> Tensor:
    """Clamp to ``[0, 1]`` and round to 8-bit levels: ``round(255 x) / 255``, halves to even.

    The one 8-bit quantiser of the project: LR synthesis, the metrics' "as saved to PNG" step and
    ``datamodules.io.save_png``. Halves round to even, as ``numpy.round`` / ``torch.round`` in the generators of
    DIV2KRK (KernelGAN) and BasicSR; MATLAB's ``im2uint8`` rounds them up. The two differ only where ``255 x`` is
    exactly ``n + 1/2``: never for network outputs in practice, but often enough for blurred 8-bit images that
    the LR synthesis keeps the numpy rounding (changing it moved a fine-tuning test by 0.04 dB).
    """
    return x.clamp(0, 1).mul(255).round_().div_(255)

"""Named evaluation protocols for Y-channel PSNR / SSIM (how published numbers are measured).

The literature's default, ``"standard"``:

* SR and HR are float RGB ``(B, 3, H, W)`` in ``[0, 1]``, both first quantised to 8 bit as if saved to PNG
  (``datamodules.degradation.ops.quantize``: ``round(255 * clamp(x, 0, 1)) / 255``, halves to even).
* Y is MATLAB ``rgb2ycbcr``'s luma on the 0..255 scale (BT.601 studio range, ``[16, 235]``):
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B``; optionally rounded to integers (MATLAB on uint8 input).
* ``shave`` pixels are removed from every border of Y (``shave = scale``).
* PSNR has peak 255. SSIM is Wang et al. 2004 (K1 = 0.01, K2 = 0.03, L = 255) in float64 with MATLAB
  ``ssim_index``'s 11x11 Gaussian window (sigma 1.5), 'valid' filtering and population statistics.
* A data set's score is the mean of per-image values (not the PSNR of the pooled MSE).

Named variants (:data:`METRIC_PROTOCOLS`):

* ``"standard"``: shave = scale, float Y, Gaussian SSIM (RCAN / EDSR / MoESR / DAN / BasicSR).
* ``"koalanet"``: no shave, rounded Y, Gaussian SSIM (KOALAnet's Y-PSNR).
* ``"mixture"``: shave = scale, rounded Y, scikit-image's default SSIM (7x7 uniform window, sample covariance)
  as in the evaluation code of Wang et al. 2020.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lightning_modules.metrics.image import SSIMWindow

__all__ = ["METRIC_PROTOCOLS", "MetricProtocol", "get_metric_protocol", "resolve_shave"]


@dataclass(frozen=True)
class MetricProtocol:
    """A named evaluation protocol for Y-channel PSNR / SSIM.

    Attributes:
        shave: Pixels removed from every border of Y before measuring: ``"scale"`` (the SR scale factor) or a fixed
            non-negative integer.
        round_y: Round Y (0..255 scale) to integers before measuring.
        ssim_window: ``"gaussian"`` (MATLAB ``ssim_index``: 11x11, sigma 1.5, 'valid', population statistics) or
            ``"uniform7"`` (scikit-image's default ``structural_similarity``).
        quantize: Round SR and HR RGB to 8 bit first, as if both were saved to PNG.
        description: Who uses this protocol.
    """

    shave: Literal["scale"] | int
    round_y: bool
    ssim_window: SSIMWindow
    quantize: bool
    description: str


METRIC_PROTOCOLS: dict[str, MetricProtocol] = {
    "standard": MetricProtocol(
        shave="scale",
        round_y=False,
        ssim_window="gaussian",
        quantize=True,
        description="Literature default (RCAN/EDSR/MoESR/DAN/BasicSR): shave = scale, float MATLAB Y, "
        "11x11 Gaussian SSIM.",
    ),
    "koalanet": MetricProtocol(
        shave=0,
        round_y=True,
        ssim_window="gaussian",
        quantize=True,
        description="KOALAnet: Y-PSNR without shaving on rounded MATLAB Y, 11x11 Gaussian SSIM.",
    ),
    "mixture": MetricProtocol(
        shave="scale",
        round_y=True,
        ssim_window="uniform7",
        quantize=True,
        description="Wang et al. 2020 (mixture of deep networks) eval code: shave = scale, rounded Y, "
        "scikit-image default SSIM (7x7 uniform window).",
    ),
}
"""The named evaluation protocols; see the module docstring."""


def get_metric_protocol(name: str) -> MetricProtocol:
    """Look up a protocol of :data:`METRIC_PROTOCOLS` by name.

    Args:
        name: Protocol name, e.g. ``"standard"``.

    Returns:
        The protocol.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the valid names.
    """
    try:
        return METRIC_PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"Unknown metric protocol {name!r}; valid protocols: {sorted(METRIC_PROTOCOLS)}") from None


def resolve_shave(protocol: MetricProtocol | str, scale: int) -> int:
    """Number of border pixels a protocol shaves at a given scale.

    Args:
        protocol: A :class:`MetricProtocol` or the name of one in :data:`METRIC_PROTOCOLS`.
        scale: SR scale factor (>= 1).

    Returns:
        ``scale`` if the protocol's shave is ``"scale"``, otherwise its fixed shave.

    Raises:
        ValueError: On an unknown protocol name, a scale < 1 or a negative / malformed shave.
    """
    if isinstance(protocol, str):
        protocol = get_metric_protocol(protocol)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if protocol.shave == "scale":
        return int(scale)
    if isinstance(protocol.shave, bool) or not isinstance(protocol.shave, int) or protocol.shave < 0:
        raise ValueError(f"protocol shave must be 'scale' or a non-negative int, got {protocol.shave!r}")
    return protocol.shave

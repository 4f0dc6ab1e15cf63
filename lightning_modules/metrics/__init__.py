"""Evaluation protocol for blind super-resolution: Y-channel PSNR / SSIM and blur-kernel accuracy.

Protocol (the literature's default, "standard"):

* Images are float RGB tensors ``(B, 3, H, W)`` in ``[0, 1]``. By default both SR and HR are first quantised to
  8 bit (``floor(255 * clamp(x, 0, 1) + 0.5) / 255``), as if saved to PNG, because published numbers are measured
  on saved uint8 images.
* Y is the luma of MATLAB's ``rgb2ycbcr`` on the 0..255 scale (BT.601 studio range):
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for ``R, G, B`` in ``[0, 1]``, so Y lies in ``[16, 235]``.
  Optionally Y is rounded to integers (as MATLAB does for uint8 input).
* ``shave`` pixels are removed from every border of Y before measuring (``shave = scale`` by default).
* PSNR uses peak 255. SSIM is Wang et al. 2004 (K1 = 0.01, K2 = 0.03, L = 255) on Y, computed in float64, with
  MATLAB ``ssim_index``'s 11x11 Gaussian window (sigma 1.5), 'valid' filtering (no padding) and population
  statistics; the mean of the SSIM map is the image's SSIM.
* A data set's score is the mean of per-image values (not the PSNR of the pooled MSE).

Named variants (:data:`METRIC_PROTOCOLS`):

* ``"standard"``: shave = scale, float Y, Gaussian SSIM (RCAN / EDSR / MoESR / DAN / BasicSR).
* ``"koalanet"``: no shave, rounded Y, Gaussian SSIM (KOALAnet's Y-PSNR).
* ``"mixture"``: shave = scale, rounded Y, scikit-image's default SSIM (7x7 uniform window, sample covariance,
  border of the SSIM map cropped) as in the evaluation code of Wang et al. 2020.

Kernel accuracy (kernels ``(B, k, k)`` or ``(k, k)``, each summing to one; estimate and ground truth may differ in
size and are zero-padded to a common size first):

* :func:`kernel_sae`: sum of absolute errors (MoESR Fig. 4, KernelGAN-style).
* :func:`kernel_shift_aligned_l2`: KOALAnet Table 4 / Eq. (9), the minimum over integer shifts of the estimate of
  the sum of squared errors.

The torchmetrics classes (:class:`PSNRY`, :class:`SSIMY`, :class:`KernelSAE`, :class:`KernelL2`) keep a float64
sum and a count, both reduced by summation, so they give the same result on one process and under DDP.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module
from torchmetrics import Metric, MetricCollection

__all__ = [
    "METRIC_PROTOCOLS",
    "PSNR_CLAMP_DB",
    "KernelL2",
    "KernelSAE",
    "MetricProtocol",
    "PSNRY",
    "SSIMY",
    "get_metric_protocol",
    "kernel_sae",
    "kernel_shift_aligned_l2",
    "make_kernel_metrics",
    "make_sr_metrics",
    "pad_to_common_size",
    "psnr_y",
    "quantize_8bit",
    "resolve_shave",
    "rgb_to_y_matlab",
    "ssim_y",
]

PSNR_CLAMP_DB: float = 100.0
"""Upper bound applied to per-image PSNR by :class:`PSNRY` so that identical images (infinite PSNR) keep the mean
finite."""

_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
_PEAK = 255.0
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_GAUSS_SIZE = 11
_GAUSS_SIGMA = 1.5
_UNIFORM_SIZE = 7

SSIMWindow = Literal["gaussian", "uniform7"]


# ----------------------------------------------------------------------------------------------------------------
# Protocols
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Image metrics (functional)
# ----------------------------------------------------------------------------------------------------------------


def _round_half_up(x: Tensor) -> Tensor:
    """Round to the nearest integer, halves away from zero for non-negative input (MATLAB's uint8 cast)."""
    return torch.floor(x + 0.5)


def quantize_8bit(x: Tensor) -> Tensor:
    """Quantise an image in ``[0, 1]`` to 8 bit as if saved to PNG.

    Args:
        x: Image tensor of any shape, values nominally in ``[0, 1]``.

    Returns:
        ``floor(255 * clamp(x, 0, 1) + 0.5) / 255`` (same shape and dtype as ``x``).
    """
    return _round_half_up(x.clamp(0.0, 1.0) * _PEAK) / _PEAK


def _check_rgb(x: Tensor, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must be an RGB batch of shape (B, 3, H, W), got {tuple(x.shape)}")


def rgb_to_y_matlab(x: Tensor, round_y: bool = False) -> Tensor:
    """Y (luma) of MATLAB ``rgb2ycbcr`` on the 0..255 scale.

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with ``R, G, B`` in ``[0, 1]`` (BT.601 studio range: black -> 16,
    white -> 235). Computed in the input's dtype.

    Args:
        x: RGB batch ``(B, 3, H, W)`` in ``[0, 1]``.
        round_y: Round Y to integers (halves up), as MATLAB does when the input is uint8.

    Returns:
        Y batch ``(B, 1, H, W)`` on the 0..255 scale.

    Raises:
        ValueError: If ``x`` is not ``(B, 3, H, W)``.
    """
    _check_rgb(x, "x")
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    y = _Y_OFFSET + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b
    return _round_half_up(y) if round_y else y


def _prepare_y(sr: Tensor, hr: Tensor, shave: int, round_y: bool, quantize: bool) -> tuple[Tensor, Tensor]:
    """Validate, quantise, convert to float64 Y (0..255) and shave; returns two ``(B, 1, H', W')`` tensors."""
    _check_rgb(sr, "sr")
    _check_rgb(hr, "hr")
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr must have the same shape, got sr {tuple(sr.shape)} and hr {tuple(hr.shape)}")
    if isinstance(shave, bool) or not isinstance(shave, int) or shave < 0:
        raise ValueError(f"shave must be a non-negative int, got {shave!r}")
    h, w = sr.shape[-2:]
    if 2 * shave >= h or 2 * shave >= w:
        raise ValueError(f"shave={shave} leaves no pixels of an image of size {h}x{w}")
    sr = sr.detach().to(torch.float64)
    hr = hr.detach().to(torch.float64)
    if quantize:
        sr, hr = quantize_8bit(sr), quantize_8bit(hr)
    y_sr = rgb_to_y_matlab(sr, round_y=round_y)
    y_hr = rgb_to_y_matlab(hr, round_y=round_y)
    if shave > 0:
        y_sr = y_sr[..., shave:-shave, shave:-shave]
        y_hr = y_hr[..., shave:-shave, shave:-shave]
    return y_sr, y_hr


def psnr_y(sr: Tensor, hr: Tensor, shave: int, round_y: bool = False, quantize: bool = True) -> Tensor:
    """Per-image PSNR (peak 255) on MATLAB Y.

    Args:
        sr: Super-resolved RGB batch ``(B, 3, H, W)`` in ``[0, 1]``.
        hr: Ground-truth RGB batch ``(B, 3, H, W)`` in ``[0, 1]``.
        shave: Pixels removed from every border of Y before measuring.
        round_y: Round Y to integers first.
        quantize: Round both RGB images to 8 bit first (as if saved to PNG).

    Returns:
        ``(B,)`` float64 PSNR in dB; ``+inf`` for an image whose measured Y equals the reference exactly
        (:class:`PSNRY` clamps this to :data:`PSNR_CLAMP_DB`).

    Raises:
        ValueError: On shapes other than ``(B, 3, H, W)``, different SR / HR shapes, or a shave that leaves no pixels.
    """
    y_sr, y_hr = _prepare_y(sr, hr, shave, round_y, quantize)
    mse = (y_sr - y_hr).square().mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(_PEAK**2 / mse)


def _ssim_window_1d(window: SSIMWindow, device: torch.device) -> tuple[Tensor, float]:
    """1-D separable window (float64, sums to one) and covariance normaliser for an SSIM window name."""
    if window == "gaussian":
        x = torch.arange(_GAUSS_SIZE, dtype=torch.float64, device=device) - (_GAUSS_SIZE - 1) / 2
        g = torch.exp(-(x**2) / (2 * _GAUSS_SIGMA**2))
        return g / g.sum(), 1.0
    if window == "uniform7":
        n = _UNIFORM_SIZE
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=device), n * n / (n * n - 1)
    raise ValueError(f"Unknown SSIM window {window!r}; valid windows: ['gaussian', 'uniform7']")


def ssim_y(
    sr: Tensor,
    hr: Tensor,
    shave: int,
    round_y: bool = False,
    quantize: bool = True,
    window: SSIMWindow = "gaussian",
) -> Tensor:
    """Per-image SSIM (Wang et al. 2004) on MATLAB Y, batched and computed in float64.

    Constants: L = 255, K1 = 0.01, K2 = 0.03. The local statistics are filtered with a separable window over the
    'valid' region only (no padding), and the image's SSIM is the mean of that map:

    * ``"gaussian"``: MATLAB ``ssim_index`` -- 11x11 Gaussian, sigma 1.5, normalised to sum 1, population
      (biased) variances and covariance. Equal to scikit-image's ``gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False``, whose 5-pixel crop of its padded SSIM map is exactly the 'valid' map.
    * ``"uniform7"``: scikit-image's default -- 7x7 box window, sample covariance (factor 49/48); skimage's crop
      of the 3-pixel border of its padded map is again exactly the 'valid' map used here.

    Args:
        sr: Super-resolved RGB batch ``(B, 3, H, W)`` in ``[0, 1]``.
        hr: Ground-truth RGB batch ``(B, 3, H, W)`` in ``[0, 1]``.
        shave: Pixels removed from every border of Y before measuring.
        round_y: Round Y to integers first.
        quantize: Round both RGB images to 8 bit first (as if saved to PNG).
        window: ``"gaussian"`` or ``"uniform7"`` (see above).

    Returns:
        ``(B,)`` float64 SSIM (1 for identical images).

    Raises:
        ValueError: On shapes other than ``(B, 3, H, W)``, different SR / HR shapes, an unknown window, or a shaved
            image smaller than the window.
    """
    y_sr, y_hr = _prepare_y(sr, hr, shave, round_y, quantize)
    win, cov_norm = _ssim_window_1d(window, y_sr.device)
    k = win.numel()
    h, w = y_sr.shape[-2:]
    if h < k or w < k:
        raise ValueError(f"SSIM window {window!r} ({k}x{k}) is larger than the shaved image ({h}x{w})")
    stats = torch.cat([y_sr, y_hr, y_sr * y_sr, y_hr * y_hr, y_sr * y_hr], dim=1)  # (B, 5, h, w)
    filt = F.conv2d(stats, win.view(1, 1, 1, k).expand(5, 1, 1, k), groups=5)
    filt = F.conv2d(filt, win.view(1, 1, k, 1).expand(5, 1, k, 1), groups=5)  # (B, 5, h-k+1, w-k+1)
    mu_x, mu_y, e_xx, e_yy, e_xy = filt.unbind(dim=1)
    var_x = cov_norm * (e_xx - mu_x * mu_x)
    var_y = cov_norm * (e_yy - mu_y * mu_y)
    cov_xy = cov_norm * (e_xy - mu_x * mu_y)
    c1 = (_SSIM_K1 * _PEAK) ** 2
    c2 = (_SSIM_K2 * _PEAK) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(-2, -1))


# ----------------------------------------------------------------------------------------------------------------
# Kernel metrics (functional)
# ----------------------------------------------------------------------------------------------------------------


def _as_kernel_batch(k: Tensor, name: str) -> Tensor:
    if k.ndim == 2:
        return k.unsqueeze(0)
    if k.ndim == 3:
        return k
    raise ValueError(f"{name} must be a kernel (kh, kw) or a batch of kernels (B, kh, kw), got {tuple(k.shape)}")


def _pad_kernel(k: Tensor, size_h: int, size_w: int) -> Tensor:
    dh, dw = size_h - k.shape[-2], size_w - k.shape[-1]
    return F.pad(k, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def pad_to_common_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-pad two kernels (or kernel batches) symmetrically to their common (larger) size.

    Each spatial dimension is padded to ``max`` of the two sizes with ``d // 2`` zeros before and ``d - d // 2``
    after, where ``d`` is the size difference; with an odd difference the extra row / column goes to the bottom /
    right, so an element at index ``i`` moves to ``i + d // 2``. Even differences (13 vs 11, 33 vs 31) preserve
    the centre exactly.

    Args:
        a: Kernel ``(ha, wa)`` or batch ``(Ba, ha, wa)``.
        b: Kernel ``(hb, wb)`` or batch ``(Bb, hb, wb)``.

    Returns:
        ``(a_padded, b_padded)``, each keeping its own leading dimensions, spatial size
        ``(max(ha, hb), max(wa, wb))``.

    Raises:
        ValueError: If either input is not 2-D or 3-D.
    """
    for t, name in ((a, "a"), (b, "b")):
        if t.ndim not in (2, 3):
            raise ValueError(f"{name} must be a kernel (kh, kw) or a batch (B, kh, kw), got {tuple(t.shape)}")
    size_h = max(a.shape[-2], b.shape[-2])
    size_w = max(a.shape[-1], b.shape[-1])
    return _pad_kernel(a, size_h, size_w), _pad_kernel(b, size_h, size_w)


def _prepare_kernels(est: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Batch, pad to common size, cast to float64 and broadcast; returns two ``(B, h, w)`` tensors."""
    est = _as_kernel_batch(est.detach(), "est").to(torch.float64)
    gt = _as_kernel_batch(gt.detach(), "gt").to(torch.float64)
    if est.shape[0] != gt.shape[0] and 1 not in (est.shape[0], gt.shape[0]):
        raise ValueError(f"est and gt batch sizes differ: est {tuple(est.shape)} and gt {tuple(gt.shape)}")
    est, gt = pad_to_common_size(est, gt)
    est, gt = torch.broadcast_tensors(est, gt)
    return est, gt


def kernel_sae(est: Tensor, gt: Tensor) -> Tensor:
    """Sum of absolute errors between estimated and ground-truth kernels (MoESR Fig. 4, KernelGAN-style).

    Both are zero-padded to a common size with :func:`pad_to_common_size`; no shift alignment.

    Args:
        est: Estimated kernel(s) ``(k1, k1)`` or ``(B, k1, k1)``.
        gt: Ground-truth kernel(s) ``(k2, k2)`` or ``(B, k2, k2)``; a single kernel broadcasts over the batch.

    Returns:
        ``(B,)`` float64 sums of ``|est - gt|`` (``B = 1`` when both inputs are single kernels).

    Raises:
        ValueError: On malformed shapes or incompatible batch sizes.
    """
    est, gt = _prepare_kernels(est, gt)
    return (est - gt).abs().sum(dim=(-2, -1))


def kernel_shift_aligned_l2(est: Tensor, gt: Tensor, max_shift: int = 3, squared: bool = True) -> Tensor:
    """Shift-aligned l2 kernel error of KOALAnet (Table 4, Eq. (9) of its appendix).

    ``min over (dh, dw) in [-max_shift, max_shift]^2 of sum_{h,w} (gt(h, w) - est(h + dh, w + dw))^2``.

    KOALAnet's Eq. (9) is the *squared* error (no square root), so ``squared=True`` (the default) follows the
    paper; ``squared=False`` returns the square root of the same minimum (the Euclidean norm). The kernels are
    first zero-padded to a common size (:func:`pad_to_common_size`); the shifts use zero fill (not circular) on a
    canvas enlarged by ``max_shift`` on every side, so no mass of the estimate is cut off by a shift. Vectorised:
    all ``(2 max_shift + 1)^2`` shifted copies are views of one padded tensor (``unfold``).

    Args:
        est: Estimated kernel(s) ``(k1, k1)`` or ``(B, k1, k1)``.
        gt: Ground-truth kernel(s) ``(k2, k2)`` or ``(B, k2, k2)``; a single kernel broadcasts over the batch.
        max_shift: Largest integer shift tried along each axis (>= 0).
        squared: Return the paper's sum of squared errors (True) or its square root (False).

    Returns:
        ``(B,)`` float64 errors (``B = 1`` when both inputs are single kernels).

    Raises:
        ValueError: On malformed shapes, incompatible batch sizes or a negative ``max_shift``.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    est, gt = _prepare_kernels(est, gt)
    m = int(max_shift)
    h, w = gt.shape[-2:]
    gt_canvas = F.pad(gt, (m, m, m, m))  # (B, h + 2m, w + 2m)
    est_canvas = F.pad(est, (2 * m, 2 * m, 2 * m, 2 * m))  # (B, h + 4m, w + 4m)
    # Window (i, j) of est_canvas is est shifted so that gt(h, w) meets est(h + i - m, w + j - m).
    shifted = est_canvas.unfold(1, h + 2 * m, 1).unfold(2, w + 2 * m, 1)  # (B, 2m+1, 2m+1, h+2m, w+2m)
    err = (shifted - gt_canvas[:, None, None]).square().sum(dim=(-2, -1)).flatten(1).amin(dim=1)
    return err if squared else err.sqrt()


# ----------------------------------------------------------------------------------------------------------------
# torchmetrics classes
# ----------------------------------------------------------------------------------------------------------------


class _MeanOfPerItem(Metric, ABC):
    """Mean of per-item values: float64 ``total`` and integer ``count``, both summed across processes.

    ``last_values`` holds the per-item values of the latest ``update`` (not a synced state), so a system can write
    per-image tables without computing the metric twice.
    """

    is_differentiable = False
    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.last_values: Tensor | None = None

    def _apply(self, fn: Callable[..., Any], exclude_state: Sequence[str] = "") -> Module:
        """Move states like any module, but keep the accumulator in float64 even under ``.to(dtype)``.

        ``Module.to(torch.bfloat16)`` (e.g. Lightning's true half precision) would otherwise round the running sum.
        """
        this = super()._apply(fn, exclude_state)
        this.total = this.total.to(torch.float64)
        this._defaults["total"] = this._defaults["total"].to(torch.float64)
        return this

    @abstractmethod
    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        """Per-item values ``(B,)`` of one batch."""

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate the per-item values of one batch."""
        values = self._per_item(preds, target)
        self.last_values = values.detach()
        self.total += values.sum().to(self.total.dtype)
        self.count += values.numel()

    def compute(self) -> Tensor:
        """Mean of all per-item values seen so far (scalar float64; NaN before any update)."""
        return self.total / self.count


class _ProtocolMetric(_MeanOfPerItem, ABC):
    """A per-image image-quality metric evaluated under a named protocol (shave, Y rounding, quantisation)."""

    def __init__(self, scale: int, protocol: str = "standard", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol_name = protocol
        self.protocol = get_metric_protocol(protocol)
        self.shave = resolve_shave(self.protocol, scale)


class PSNRY(_ProtocolMetric):
    """Mean per-image Y-channel PSNR under a named protocol, DDP-syncable.

    Per-image PSNR is clamped at :data:`PSNR_CLAMP_DB` (100 dB) before averaging, so an image reproduced exactly
    (infinite PSNR) counts as 100 dB instead of making the mean infinite.

    Args:
        scale: SR scale factor (sets the shave of protocols with ``shave="scale"``).
        protocol: Name in :data:`METRIC_PROTOCOLS` (``"standard"``, ``"koalanet"``, ``"mixture"``).
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: On an unknown protocol (the message lists the valid names).

    Example:
        ``metric.update(sr, hr)`` with RGB batches ``(B, 3, H, W)`` in ``[0, 1]``; ``metric.compute()`` -> scalar.
    """

    higher_is_better = True

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        values = psnr_y(preds, target, self.shave, round_y=self.protocol.round_y, quantize=self.protocol.quantize)
        return values.clamp(max=PSNR_CLAMP_DB)


class SSIMY(_ProtocolMetric):
    """Mean per-image Y-channel SSIM under a named protocol, DDP-syncable.

    Args:
        scale: SR scale factor (sets the shave of protocols with ``shave="scale"``).
        protocol: Name in :data:`METRIC_PROTOCOLS` (``"standard"``, ``"koalanet"``, ``"mixture"``).
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: On an unknown protocol (the message lists the valid names).
    """

    higher_is_better = True

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        p = self.protocol
        return ssim_y(preds, target, self.shave, round_y=p.round_y, quantize=p.quantize, window=p.ssim_window)


class KernelSAE(_MeanOfPerItem):
    """Mean per-kernel sum of absolute errors (:func:`kernel_sae`), DDP-syncable.

    ``update(est, gt)`` takes kernels ``(k, k)`` or ``(B, k, k)``; sizes may differ (zero-padded to a common size).

    Args:
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = False

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        return kernel_sae(preds, target)


class KernelL2(_MeanOfPerItem):
    """Mean per-kernel shift-aligned l2 error of KOALAnet (:func:`kernel_shift_aligned_l2`), DDP-syncable.

    ``update(est, gt)`` takes kernels ``(k, k)`` or ``(B, k, k)``; sizes may differ (zero-padded to a common size).

    Args:
        max_shift: Largest integer shift tried along each axis.
        squared: Sum of squared errors as in KOALAnet's Eq. (9) (True) or its square root (False).
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better = False

    def __init__(self, max_shift: int = 3, squared: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift
        self.squared = squared

    def _per_item(self, preds: Tensor, target: Tensor) -> Tensor:
        return kernel_shift_aligned_l2(preds, target, max_shift=self.max_shift, squared=self.squared)


def make_sr_metrics(scale: int, protocol: str = "standard", prefix: str = "val/") -> MetricCollection:
    """Y-PSNR and Y-SSIM under one protocol, as a collection logged as ``{prefix}psnr_y`` and ``{prefix}ssim_y``.

    Compute groups are disabled: the two metrics have identically named states that must never be shared.

    Args:
        scale: SR scale factor.
        protocol: Name in :data:`METRIC_PROTOCOLS`.
        prefix: Log-name prefix, e.g. ``"val/"`` or ``"test/"``.

    Returns:
        A :class:`torchmetrics.MetricCollection` with keys ``psnr_y`` and ``ssim_y``.
    """
    return MetricCollection(
        {"psnr_y": PSNRY(scale, protocol), "ssim_y": SSIMY(scale, protocol)}, prefix=prefix, compute_groups=False
    )


def make_kernel_metrics(prefix: str = "test/", max_shift: int = 3) -> MetricCollection:
    """Kernel SAE and shift-aligned l2, as a collection logged as ``{prefix}kernel_sae`` and ``{prefix}kernel_l2``.

    Compute groups are disabled: both metrics have identically named states (and equal values for perfect
    estimates), which torchmetrics would otherwise merge into one.

    Args:
        prefix: Log-name prefix, e.g. ``"test/"``.
        max_shift: Largest shift of :class:`KernelL2`.

    Returns:
        A :class:`torchmetrics.MetricCollection` with keys ``kernel_sae`` and ``kernel_l2``.
    """
    return MetricCollection(
        {"kernel_sae": KernelSAE(), "kernel_l2": KernelL2(max_shift=max_shift)}, prefix=prefix, compute_groups=False
    )

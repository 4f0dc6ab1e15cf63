"""Functional image metrics: per-image PSNR and SSIM on MATLAB Y (0..255 scale), batched, in float64.

Inputs are SR and HR RGB batches ``(B, 3, H, W)`` in ``[0, 1]``; results are ``(B,)`` float64. By default both are
first quantised to 8 bit with ``datamodules.degradation.ops.quantize`` (as if saved to PNG); Y is
``datamodules.degradation.ops.rgb_to_y(x, peak=255)`` (``16 + 65.481 R + 128.553 G + 24.966 B``, in ``[16, 235]``),
optionally rounded to integers; ``shave`` pixels are then removed from every border. PSNR has peak 255; SSIM is
Wang et al. 2004 (L = 255, K1 = 0.01, K2 = 0.03) over the 'valid' region of a separable window.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.degradation import ops

__all__ = ["SSIMWindow", "psnr_y", "rgb_to_y_matlab", "ssim_y"]

SSIMWindow = Literal["gaussian", "uniform7"]

_PEAK = 255.0
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_GAUSS_SIZE = 11
_GAUSS_SIGMA = 1.5
_UNIFORM_SIZE = 7


def _check_rgb(x: Tensor, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must be an RGB batch of shape (B, 3, H, W), got {tuple(x.shape)}")


def rgb_to_y_matlab(x: Tensor, round_y: bool = False) -> Tensor:
    """Y (luma) of MATLAB ``rgb2ycbcr`` on the 0..255 scale (``ops.rgb_to_y(x, peak=255)``), optionally rounded.

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with ``R, G, B`` in ``[0, 1]`` (BT.601 studio range: black -> 16,
    white -> 235). Computed in the input's dtype.

    Args:
        x: RGB batch ``(B, 3, H, W)`` in ``[0, 1]``.
        round_y: Round Y to integers, halves up (``floor(Y + 0.5)``), as MATLAB does when the input is uint8.

    Returns:
        Y batch ``(B, 1, H, W)`` on the 0..255 scale.

    Raises:
        ValueError: If ``x`` is not ``(B, 3, H, W)``.
    """
    y = ops.rgb_to_y(x, peak=255)
    return torch.floor(y + 0.5) if round_y else y


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
        sr, hr = ops.quantize(sr), ops.quantize(hr)
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
        (:class:`~lightning_modules.metrics.PSNRY` clamps this to ``PSNR_CLAMP_DB``).

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

"""Numpy / torch reference helpers for the metric tests, written independently of the module under test."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage import data as skdata


def make_pairs(n: int = 3, size: tuple[int, int] = (48, 56), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HR crops of skimage's astronaut (float32 in [0,1]) and perturbed copies (blur + noise, unquantised)."""
    rng = np.random.default_rng(seed)
    img = skdata.astronaut().astype(np.float32) / 255.0  # (512, 512, 3)
    h, w = size
    hrs, srs = [], []
    for i in range(n):
        top, left = 100 + 60 * i, 150 + 45 * i
        hr = img[top : top + h, left : left + w]
        sigma = 0.6 + 0.4 * i
        sr = ndimage.gaussian_filter(hr, sigma=(sigma, sigma, 0))
        sr = np.clip(sr + rng.normal(0.0, 0.02, sr.shape), 0.0, 1.0).astype(np.float32)
        hrs.append(hr)
        srs.append(sr)
    return np.stack(srs), np.stack(hrs)  # (n, h, w, 3)


def to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def np_y(rgb: np.ndarray, quantize: bool = True, round_y: bool = False) -> np.ndarray:
    """MATLAB rgb2ycbcr Y (0..255) of an (h, w, 3) image in [0, 1], in float64."""
    x = rgb.astype(np.float64)
    if quantize:
        x = np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0  # halves to even, as ops.quantize
    y = 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]
    return np.floor(y + 0.5) if round_y else y


def shave_y(y: np.ndarray, s: int) -> np.ndarray:
    return y[s:-s, s:-s] if s > 0 else y


def gauss_kernels(n: int, size: int, seed: int) -> torch.Tensor:
    """n random anisotropic Gaussian kernels (size x size), centred on the middle pixel, each summing to 1."""
    gen = torch.Generator().manual_seed(seed)
    ax = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    sx = 0.8 + 1.2 * torch.rand(n, 1, 1, generator=gen, dtype=torch.float64)
    sy = 0.8 + 1.2 * torch.rand(n, 1, 1, generator=gen, dtype=torch.float64)
    k = torch.exp(-(xx**2) / (2 * sx**2) - (yy**2) / (2 * sy**2))
    return k / k.sum(dim=(-2, -1), keepdim=True)

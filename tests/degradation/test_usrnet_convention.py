"""The engine's block-centred, correlated degradation and USRNet's convolved, upper-left one: rot180 converts.

(a) needs nothing on disk: the engine's LR equals USRNet's own FFT degradation with the converted kernel, and does
not without the conversion. (b) runs the official USRNet-tiny weights (skipped when ``../shared`` lacks them) on
Set5 crops and shows that only the converted kernel gives a good SR image.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.degradation import kernels as K
from datamodules.degradation import ops
from lightning_modules.metrics import psnr_y
from lightning_modules.nets.layers import circular_convolve, downsample_upper_left

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TINY_WEIGHTS = SHARED / "pretrained" / "usrnet_tiny.pth"
SET5 = SHARED / "data" / "test" / "Set5"


def photo(size: int = 96) -> torch.Tensor:
    """A real ``(1, 3, size, size)`` float64 image in [0, 1] (scikit-image's astronaut, centre crop)."""
    import skimage.data

    img = skimage.data.astronaut()
    h, w = img.shape[:2]
    crop = np.ascontiguousarray(img[h // 2 - size // 2 : h // 2 + size // 2, w // 2 - size // 2 : w // 2 + size // 2])
    return torch.from_numpy(crop).permute(2, 0, 1)[None].double() / 255


def random_block_kernels(batch: int, size: int, scale: int, seed: int) -> torch.Tensor:
    """Random anisotropic block-centred Gaussians (std parameterisation), float64 ``(B, k, k)``."""
    g = torch.Generator().manual_seed(seed)
    sx = 0.4 * scale + 1.2 * scale * torch.rand(batch, generator=g, dtype=torch.float64)
    sy = 0.4 * scale + 1.2 * scale * torch.rand(batch, generator=g, dtype=torch.float64)
    theta = torch.pi * torch.rand(batch, generator=g, dtype=torch.float64)
    return K.gaussian_kernels(size, sx, sy, theta, param="std", centre="block", scale=scale)


def usrnet_degrade(hr: torch.Tensor, kernel: torch.Tensor, scale: int) -> torch.Tensor:
    """USRNet's own degradation: FFT (psf2otf) circular convolution, keep the upper-left pixel of each block."""
    return downsample_upper_left(circular_convolve(hr, kernel), scale)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(1 / (a - b).square().mean().clamp_min(1e-30))).item()


# ---------------------------------------------------------------- (a) the operators agree


@pytest.mark.parametrize(("scale", "size"), [(2, 11), (4, 21)])
def test_engine_lr_equals_usrnet_degradation_only_with_rot180(scale, size):
    hr = photo().expand(3, -1, -1, -1)
    kb = random_block_kernels(3, size, scale, seed=scale)
    engine = ops.decimate(ops.blur(hr, kb), scale, 0)  # default reflect border: compare the interior only
    converted = usrnet_degrade(hr, K.block_centre_to_usrnet(kb), scale)
    unconverted = usrnet_degrade(hr, kb, scale)
    m = size // scale + 2  # LR pixels whose HR support can reach the border
    inner = (..., slice(m, -m), slice(m, -m))
    good, bad = psnr(engine[inner], converted[inner]), psnr(engine[inner], unconverted[inner])
    assert good > 45, good
    assert good >= bad + 10, (good, bad)
    assert bad < 40, bad  # s - 1 HR px off: measured 29.3 dB at x2, 24.6 dB at x4 (converted: identical, 300 dB cap)


@pytest.mark.parametrize("size", [4, 5, 10, 11])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_rot180_is_exact_with_a_circular_border(size, scale):
    """The docstring's proof, numerically: odd and even kernels, the fused blur_decimate too."""
    g = torch.Generator().manual_seed(size * scale)
    hr = torch.rand(2, 3, 24, 36, generator=g, dtype=torch.float64)
    kb = torch.rand(2, size, size, generator=g, dtype=torch.float64)
    kb = kb / kb.sum(dim=(-2, -1), keepdim=True)
    usrnet = usrnet_degrade(hr, K.block_centre_to_usrnet(kb), scale)
    torch.testing.assert_close(ops.decimate(ops.blur(hr, kb, border="circular"), scale, 0), usrnet)
    torch.testing.assert_close(ops.blur_decimate(hr, kb, scale, 0, border="circular"), usrnet)
    torch.testing.assert_close(K.usrnet_to_block_centre(K.block_centre_to_usrnet(kb)), kb)


@pytest.mark.parametrize(("scale", "size"), [(2, 11), (3, 15), (4, 21)])
def test_converted_gaussian_is_kairs_convolve_convention(scale, size):
    """rot180 of a block-centred Gaussian is the factory's ``convention="convolve"`` kernel, mean k//2 - (s-1)/2."""
    g = torch.Generator().manual_seed(0)
    a, b = (0.4 + 0.3 * scale * torch.rand(4, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.pi * torch.rand(4, generator=g, dtype=torch.float64)
    kb = K.gaussian_kernels(size, a, b, t, param="std", centre="block", scale=scale)
    ku = K.gaussian_kernels(size, a, b, t, param="std", centre="block", scale=scale, convention="convolve")
    torch.testing.assert_close(K.block_centre_to_usrnet(kb), ku)
    mean = torch.full((4, 2), size // 2 - 0.5 * (scale - 1), dtype=torch.float64)
    torch.testing.assert_close(K.centre_of_mass(K.block_centre_to_usrnet(kb)), mean, atol=0.02, rtol=0)


# ---------------------------------------------------------------- (b) the official weights


@pytest.mark.skipif(not TINY_WEIGHTS.is_file(), reason=f"official USRNet-tiny weights not found at {TINY_WEIGHTS}")
@pytest.mark.skipif(not SET5.is_dir(), reason=f"Set5 not found at {SET5}")
@pytest.mark.parametrize(("scale", "size", "stds"), [(2, 11, (1.6, 0.7)), (4, 21, (3.2, 1.4))])
def test_usrnet_tiny_needs_the_rot180(scale, size, stds):
    """Two 128x128 Set5 crops, engine degradation (correlate, decimate 0, 8 bit), USRNet-tiny with sigma 0.

    The blur uses a circular border, the boundary USRNet's data step assumes: with the engine's default reflect
    border the circular model's edge artefacts cost USRNet 6-10 dB on 128-px crops (it falls below bicubic with
    shave = scale), which would hide the convention. Measured (dB, baby / butterfly), x2: correct 44.7 / 33.4,
    bicubic 39.1 / 26.0, not flipped 33.1 / 23.4, flipped and shifted 33.1 / 23.3; x4: 39.8 / 29.8, 33.7 / 21.4,
    26.0 / 16.7, 26.0 / 16.6. Shifting the kernel by -(s - 1) px *instead* of flipping matches the correct result to
    0.01 dB: a Gaussian is symmetric about its mean, so rot180 and that shift give the same kernel.
    """
    from datamodules.io import load_rgb, to_tensor
    from lightning_modules.nets.usrnet import load_usrnet_tiny

    crops = []
    for name in ("baby", "butterfly"):
        img = to_tensor(load_rgb(SET5 / f"{name}.png")).float() / 255
        h, w = img.shape[-2:]
        crops.append(img[:, h // 2 - 64 : h // 2 + 64, w // 2 - 64 : w // 2 + 64])
    hr = torch.stack(crops)
    ones = torch.ones(2)
    kb = K.gaussian_kernels(size, stds[0] * ones, stds[1] * ones, 0.6 * ones, param="std", centre="block", scale=scale)
    lr = ops.quantize(ops.decimate(ops.blur(hr, kb, border="circular"), scale, 0))
    flipped = K.block_centre_to_usrnet(kb)
    off = -(scale - 1)
    kernels = {
        "correct": flipped,
        "not_flipped": kb,
        "flipped_and_shifted": K.shift_kernel(flipped, off, off),
        "shifted_not_flipped": K.shift_kernel(kb, off, off),
    }
    net = load_usrnet_tiny(TINY_WEIGHTS)
    score = {"bicubic": psnr_y(ops.resize(lr, scale=scale, convention="matlab"), hr, scale)}
    with torch.no_grad():
        for name, k in kernels.items():
            score[name] = psnr_y(net(lr, k / k.sum(dim=(-2, -1), keepdim=True), scale, 0.0).clamp(0, 1), hr, scale)
    report = {name: [round(v, 2) for v in s.tolist()] for name, s in score.items()}
    assert (score["correct"] >= score["bicubic"] + 3).all(), report
    assert (score["correct"] >= score["not_flipped"] + 6).all(), report
    assert (score["correct"] >= score["flipped_and_shifted"] + 6).all(), report
    assert (score["correct"] - score["shifted_not_flipped"]).abs().max() < 0.1, report

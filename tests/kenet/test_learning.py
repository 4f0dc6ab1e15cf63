"""KENet and USRNet learn on real photos: tiny nets, a few hundred steps, held-out photo and kernels.

KENet must beat the best constant guess (the mean kernel of the training distribution) in kernel PSNR (FKP's, the
paper's measure; the mean kernel is the constant of least expected squared error);
USRNet, given the true kernels, must beat MATLAB bicubic. Training photos: scikit-image's astronaut, coffee and
chelsea; held out: its rocket photo (KENet) and immunohistochemistry photo (USRNet), with kernels from another seed.
"""

import numpy as np
import pytest
import torch

from datamodules.degradation import ops
from datamodules.degradation.pipelines import ClassicalDegradation
from datamodules.degradation.samplers import KENetKernelSampler
from lightning_modules.core.two_step import convert_kernel
from lightning_modules.kenet.usrnet import restore_padded
from lightning_modules.losses import KernelLoss
from lightning_modules.metrics import kernel_psnr, psnr_y
from lightning_modules.nets.kenet import KENet
from lightning_modules.nets.usrnet import USRNet

pytestmark = pytest.mark.usefixtures("one_thread")


def photo(name: str) -> torch.Tensor:
    import skimage.data

    return torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)())).permute(2, 0, 1).float() / 255


def random_crops(images: list[torch.Tensor], size: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """``(count, 3, size, size)`` crops at random positions of random images."""
    out = []
    for _ in range(count):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        y = int(torch.randint(img.shape[1] - size + 1, (1,), generator=gen))
        x = int(torch.randint(img.shape[2] - size + 1, (1,), generator=gen))
        out.append(img[:, y : y + size, x : x + size])
    return torch.stack(out)


TRAIN = ["astronaut", "coffee", "chelsea"]


def batches(scale: int, hr_size: int, batch: int, seed: int):
    deg = ClassicalDegradation(scale, kernel_sampler=KENetKernelSampler())
    images = [photo(n) for n in TRAIN]
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield deg(random_crops(images, hr_size, batch, gen), gen)


def held_out(scale: int, hr_size: int, count: int, name: str = "rocket") -> dict:
    gen = torch.Generator().manual_seed(1234)
    deg = ClassicalDegradation(scale, kernel_sampler=KENetKernelSampler())
    return deg(random_crops([photo(name)], hr_size, count, gen), gen)


def test_kenet_learns_to_beat_the_mean_kernel():
    torch.manual_seed(0)
    net = KENet(kernel_size=11, width=8, fc_width=64)
    loss_fn = KernelLoss("attention")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    data = batches(2, 48, 16, seed=0)
    for _ in range(300):
        b = next(data)
        loss = loss_fn(net(b["lr"]), b["kernel"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = held_out(2, 48, 64)
    sampler = KENetKernelSampler()
    mean = sampler.kernels(sampler.sample(4096, torch.Generator().manual_seed(5), "cpu"), 2).mean(0)
    with torch.no_grad():
        learned = kernel_psnr(net(test["lr"]), test["kernel"]).mean()
    constant = kernel_psnr(mean, test["kernel"]).mean()
    assert learned > constant + 1.0, (float(learned), float(constant))  # measured 43.86 vs 41.68 dB


@pytest.mark.slow
def test_usrnet_learns_to_beat_bicubic_with_true_kernels():
    """Slow (6 minutes on a busy core): USRNet's prior starts random and needs ~300 steps to reach bicubic."""
    torch.manual_seed(0)
    net = USRNet(n_iter=2, h_nc=8, nc=(8, 16, 16, 32), nb=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    data = batches(2, 48, 8, seed=0)

    def sr(b: dict) -> torch.Tensor:
        k = convert_kernel(b["kernel"], "block", "usrnet", 2)
        return restore_padded(net, b["lr"], k, 2, torch.zeros(b["lr"].shape[0]), 4)

    for _ in range(1000):
        b = next(data)
        loss = (sr(b) - b["hr"]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = held_out(2, 64, 24, "immunohistochemistry")
    with torch.no_grad():
        ours = psnr_y(sr(test).clamp(0, 1), test["hr"], 2).mean()
    bicubic = psnr_y(ops.resize(test["lr"], scale=2, convention="matlab").clamp(0, 1), test["hr"], 2).mean()
    assert ours > bicubic + 0.5, (float(ours), float(bicubic))

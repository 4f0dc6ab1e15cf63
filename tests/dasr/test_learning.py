"""DASR learns on real photos: a tiny DASR (random init, 400 steps) beats bicubic on a held-out photo at every level
of the three-level degradation space, and its predictor beats predicting the mean vector of the training distribution.

Training photos: scikit-image's astronaut, coffee and chelsea; held out: its rocket photo, degraded from another seed.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules.degradation import ops
from datamodules.degradation.dasr_params import DASRSampler
from datamodules.degradation.dasr_vector import dasr_vector
from datamodules.degradation.pipelines import DASRDegradation
from lightning_modules.metrics import psnr_y
from lightning_modules.nets.dasr import DASRNet

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # about a minute on one core


def photo(name: str) -> torch.Tensor:
    import skimage.data

    return torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)())).permute(2, 0, 1).float() / 255


def crops(images: list[torch.Tensor], size: int, count: int, gen: torch.Generator) -> torch.Tensor:
    out = []
    for _ in range(count):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        y = int(torch.randint(img.shape[1] - size + 1, (1,), generator=gen))
        x = int(torch.randint(img.shape[2] - size + 1, (1,), generator=gen))
        out.append(img[:, y : y + size, x : x + size])
    return torch.stack(out)


def test_tiny_dasr_beats_bicubic_at_every_level_and_its_predictor_beats_the_mean_vector():
    torch.manual_seed(0)
    net = DASRNet(num_feat=16, num_block=2, num_experts=5, scale=4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    deg = DASRDegradation(4, sharpen_target=False, degrade_sharpened=False)
    images = [photo(n) for n in ("astronaut", "coffee", "chelsea")]
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        b = deg(crops(images, 64, 8, gen), gen)
        sr, vector = net(b["lr"])
        loss = F.l1_loss(sr, b["hr"]) + F.l1_loss(vector, b["vector"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    sampler = DASRSampler()
    draws = [dasr_vector(sampler.sample(100, torch.Generator().manual_seed(99 + i), "cpu")) for i in range(50)]
    constant = torch.cat(draws).mean(0)
    gains = []
    rocket = [photo("rocket")]
    with torch.no_grad():
        for level in range(3):
            gen = torch.Generator().manual_seed(1234 + level)
            test = DASRDegradation(4, level=level, sharpen_target=False)(crops(rocket, 96, 8, gen), gen)
            sr, vector = net(test["lr"])
            bicubic = ops.resize(test["lr"], scale=4, convention="matlab").clamp(0, 1)
            gain = float((psnr_y(sr.clamp(0, 1), test["hr"], 4) - psnr_y(bicubic, test["hr"], 4)).mean())
            assert gain > 0.02, f"level {level}: {gain:.2f} dB over bicubic"
            gains.append(gain)
            err, const_err = (vector - test["vector"]).abs().mean(), (constant - test["vector"]).abs().mean()
            assert err < const_err, f"level {level}: predictor L1 {err:.4f} vs the mean vector's {const_err:.4f}"
    assert sum(gains) / 3 > 0.15, f"mean gain over bicubic {sum(gains) / 3:.2f} dB"

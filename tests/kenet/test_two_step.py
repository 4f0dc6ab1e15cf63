"""Two-step blind SR: every estimator's kernel, converted once, means the same degradation for every restorer."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from datamodules.degradation import ops
from datamodules.degradation.kernels import gaussian_kernels
from lightning_modules.core.two_step import GroundTruthKernel, convert_kernel
from lightning_modules.kenet.components import KENetKernelEstimator
from lightning_modules.moesr.adapters import MoESRKernelEstimator
from lightning_modules.nets.kenet import KENet
from tests.kenet.helpers import psnr_db, real_hr, write_kenet_checkpoint
from tests.moesr.test_system import write_checkpoints as write_moesr_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


def usrnet_degradation(hr: torch.Tensor, kernel: torch.Tensor, scale: int) -> torch.Tensor:
    """USRNet's own model, written independently: true convolution (circular border), upper-left pixel kept.

    ``y[p] = sum_j k[j] x[p - j + k // 2]`` (scipy ``ndimage.convolve(mode="wrap")``, KAIR's test), then ``y[::s]``.
    """
    k = kernel.shape[-1]
    before, after = k // 2, (k - 1) // 2  # convolution = correlation with the flipped kernel, origin mirrored
    padded = F.pad(hr, (before, after, before, after), mode="circular")
    out = [F.conv2d(padded[i : i + 1].transpose(0, 1), kernel[i].flip(-2, -1)[None, None]).transpose(0, 1)
           for i in range(hr.shape[0])]  # fmt: skip
    return torch.cat(out)[..., ::scale, ::scale]


def engine_degradation(hr: torch.Tensor, kernel: torch.Tensor, scale: int) -> torch.Tensor:
    """The degradation engine's model for block-centred kernels: correlation, every s-th pixel from 0."""
    return ops.decimate(ops.blur(hr, kernel, border="circular"), scale, 0)


def estimators(tmp_path: Path, scale: int) -> dict:
    """Each estimator of the two-step system, with (random) weights loaded the way the system loads them."""
    kenet = KENetKernelEstimator(write_kenet_checkpoint(tmp_path / "kenet_x{scale}.ckpt", scale))
    moesr = MoESRKernelEstimator(**{f"{k}_ckpt": v for k, v in write_moesr_checkpoints(tmp_path, scale).items()})
    for est in (kenet, moesr):
        est.load(scale)
    return {"ground truth": GroundTruthKernel(), "KENet": kenet, "MoESR": moesr}


@pytest.mark.parametrize("scale", [2, 4])
def test_each_estimator_output_regenerates_the_lr_through_usrnets_convention(tmp_path, scale):
    hr = real_hr(96 if scale == 2 else 128)
    one = torch.ones(1)
    gt = gaussian_kernels(11 if scale == 2 else 21, 2.5 * one, 0.8 * one, 0.6 * one, param="std", centre="block",
                          scale=scale)  # fmt: skip
    batch = {"lr": engine_degradation(hr, gt, scale), "kernel": gt}
    for name, est in estimators(tmp_path, scale).items():
        with torch.no_grad():
            kernel = est.estimate(batch["lr"], batch)
        block = convert_kernel(kernel, est.convention, "block", scale)
        reference = engine_degradation(hr, block, scale)
        usrnet = usrnet_degradation(hr, convert_kernel(block, "block", "usrnet", scale), scale)
        assert psnr_db(usrnet, reference) > 45, name
        if name == "ground truth":
            unconverted = usrnet_degradation(hr, block, scale)  # the kernel handed over as it is
            assert psnr_db(unconverted, reference) < 40


def test_kenet_estimator_refuses_a_checkpoint_of_another_scale(tmp_path):
    path = write_kenet_checkpoint(tmp_path / "k.ckpt", 2)
    est = KENetKernelEstimator(path)
    with pytest.raises(Exception, match="x2 but the model is x4"):
        est.load(4)


def test_kenet_estimator_names_the_missing_file_and_its_command(tmp_path):
    est = KENetKernelEstimator(str(tmp_path / "none_x{scale}.ckpt"))
    with pytest.raises(Exception, match=r"none_x2\.ckpt does not exist(.|\n)*configs/kenet/kenet\.yaml"):
        est.load(2)


def test_ground_truth_estimator_needs_a_kernel():
    with pytest.raises(ValueError, match="needs a set with kernels"):
        GroundTruthKernel().estimate(torch.rand(1, 3, 8, 8), {"lr": torch.rand(1, 3, 8, 8)})


def test_convert_kernel_round_trips_and_refuses_unknown_conventions():
    k = torch.rand(2, 11, 11)
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    assert torch.equal(convert_kernel(convert_kernel(k, "block", "usrnet", 2), "usrnet", "block", 2), k)
    assert not torch.equal(convert_kernel(k, "block", "usrnet", 2), k)
    with pytest.raises(ValueError, match="unknown kernel convention"):
        convert_kernel(k, "block", "kair", 2)


def test_kenet_net_in_the_estimator_is_frozen(tmp_path):
    est = KENetKernelEstimator(write_kenet_checkpoint(tmp_path / "k_x{scale}.ckpt", 2))
    est.load(2)
    assert isinstance(est.net, KENet)
    assert not any(p.requires_grad for p in est.net.parameters())

"""Every system's ``inference_path``: channels-last equals float32, bfloat16 stays within a stated PSNR of it.

Each system is built at a small width with its own (random or identity-like) initialisation and run through the
base class's tiled inference (``SRSystem._tiled``, what ``test``/``predict`` call) on a real photo crop, once per
path. Tolerances: channels-last reorders float32 sums only (max |difference| < 1e-4); bfloat16 rounds every
convolution's inputs to 8 significant bits, so its output is compared by PSNR against the float32 output of the same
system: > 45 dB for every system (measured 46-70 dB here; MoESR includes its estimation and fine-tuning in the
path; trained networks: the README's "Inference paths" table).
"""

import pytest
import torch

from lightning_modules.baselines.single_net import SingleNetSR
from lightning_modules.core.precision import check_path
from lightning_modules.dasr.msrresnet import MSRResNetSystem
from lightning_modules.dasr.psnr import DASRSystem
from lightning_modules.kenet.blind import TwoStepSR
from lightning_modules.kenet.components import KENetKernelEstimator, USRNetRestorer
from lightning_modules.kenet.estimator import KENetSystem
from lightning_modules.kenet.usrnet import USRNetSystem
from lightning_modules.koalanet.stage1 import KOALADownsamplingSystem
from lightning_modules.koalanet.stage2 import KOALABaselineSystem
from lightning_modules.koalanet.stage3 import KOALAnetSystem
from lightning_modules.mixture.joint import MixtureSR
from lightning_modules.moesr.inference import MoESR
from tests.kenet.helpers import psnr_db, real_hr, write_kenet_checkpoint, write_usrnet_checkpoint
from tests.moesr.test_system import tiny_stages

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:inference_path bf16 on:UserWarning"),  # CPUs that emulate bfloat16
]

BF16_MIN_PSNR = 45.0
CHANNELS_LAST_ATOL = 1e-4


def sr(model, lr: torch.Tensor) -> torch.Tensor:
    """What ``test``/``predict`` run: the tiled SR in the model's path."""
    return model._tiled(lr)


def estimate(model, lr: torch.Tensor) -> torch.Tensor:
    """A kernel estimator's test-time estimate (what every system's ``test_step`` calls)."""
    return model.estimate_in_path(lr)


def moesr(model: MoESR, lr: torch.Tensor) -> torch.Tensor:
    """Estimation, 3 fine-tuning iterations and reconstruction (``MoESR.test_step``'s path)."""
    with model._prepare({"lr": lr}, None):
        return model._tiled(lr)


def usrnet(model: USRNetSystem, lr: torch.Tensor) -> torch.Tensor:
    """USRNet with a 3x3 box kernel (block-centred, 13x13)."""
    kernel = torch.zeros(lr.shape[0], 13, 13)
    kernel[:, 5:8, 5:8] = 1 / 9
    with model.conditioned(kernel):
        return model._tiled(lr)


def kaiming(model):
    """Kaiming-normal convolutions: DASR/MSRResNet start near bicubic (last layers x0.1), which would hide bf16."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() >= 4:  # plain (out, in, k, k) and dynamic (K, out, in, k, k)
                p.normal_(0, (2 / p.shape[-3:].numel()) ** 0.5)
                if p.dim() == 5:  # equal experts: a uniform routing (mean of the K) keeps the scale
                    p.copy_(p[:1].expand_as(p))
    return model


def tiny_moesr(scale: int) -> MoESR:
    model = MoESR(scale=scale, finetune_iters=3, progress=False, crop_size=32)
    model.set_stages(*tiny_stages(scale))
    return model


SYSTEMS = {  # name: (scale, builder, run)
    "single_net": (2, lambda: SingleNetSR(num_layers=6, channels=16, scale=2), sr),
    "mixture": (2, lambda: MixtureSR(variant="average", num_branches=2, channels=16, mapping_layers=1), sr),
    "moesr": (2, lambda: tiny_moesr(2), moesr),
    "kenet": (2, lambda: KENetSystem(scale=2, width=8, fc_width=32), estimate),
    "usrnet": (2, lambda: USRNetSystem(scale=2, n_iter=2, h_nc=16, nc=(16, 16, 16, 16), nb=1), usrnet),
    "msrresnet": (4, lambda: kaiming(MSRResNetSystem(scale=4, num_feat=16, num_block=2)), sr),
    "dasr": (4, lambda: kaiming(DASRSystem(num_feat=16, num_block=2, msrresnet_ckpt=None, routing_init="uniform")), sr),
    "koala_stage1": (4, lambda: KOALADownsamplingSystem(scale=4, width=16), estimate),
    "koala_stage2": (4, lambda: KOALABaselineSystem(scale=4, feat=16), sr),
    "koalanet": (4, lambda: KOALAnetSystem(scale=4, width=16, feat=16, stage1_ckpt=None, stage2_ckpt=None), sr),
}


def run_path(model, run, lr: torch.Tensor, path: str) -> torch.Tensor:
    """``run(model, lr)`` in ``path`` (weights moved to its layout first), under inference mode as in ``test``."""
    model.inference_path = check_path(path)
    model.apply_inference_layout()  # as Lightning's on_test_start
    torch.manual_seed(0)
    with torch.inference_mode():
        return run(model, lr)


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_fast_paths_match_float32(name):
    scale, build, run = SYSTEMS[name]
    torch.manual_seed(0)
    model = build().eval()
    lr = torch.nn.functional.avg_pool2d(real_hr(64 if scale == 2 else 96), scale)
    ref, cl, bf = (run_path(model, run, lr, path) for path in ("fp32", "channels_last", "bf16"))
    if run is not estimate:
        assert ref.shape == (1, 3, lr.shape[-2] * scale, lr.shape[-1] * scale)
    assert (cl - ref).abs().max() < CHANNELS_LAST_ATOL
    assert not torch.equal(bf, ref)  # bfloat16 did run: its rounding shows
    peak = 1.0 if run is not estimate else float(ref.abs().max())  # kernels: PSNR relative to the largest tap
    assert psnr_db(bf.clamp(0, 1) / peak, ref.clamp(0, 1) / peak) > BF16_MIN_PSNR


def two_step(model, lr: torch.Tensor) -> torch.Tensor:
    """KENet + USRNet: estimation, the restorer's preparation and restoration (``TwoStepSR.test_step``'s path)."""
    with model.prepared({"lr": lr}):
        return model._tiled(lr)


def test_two_step_system_runs_its_estimation_in_the_path(tmp_path):
    torch.manual_seed(0)
    kenet = write_kenet_checkpoint(tmp_path / "kenet_x{scale}.ckpt", 2)
    usrnet = write_usrnet_checkpoint(tmp_path / "usrnet_x{scale}.ckpt", 2)
    model = TwoStepSR(KENetKernelEstimator(kenet), USRNetRestorer(usrnet), scale=2).eval()
    model.estimator.load(2)
    model.restorer.load(2)
    lr = torch.nn.functional.avg_pool2d(real_hr(64), 2)
    seen = []
    estimate_kernel = model.estimate_kernel
    model.estimate_kernel = lambda x, batch=None: seen.append(torch.is_autocast_enabled("cpu")) or estimate_kernel(x)
    ref, bf = (run_path(model, two_step, lr, path) for path in ("fp32", "bf16"))
    assert seen == [False, True]
    assert not torch.equal(bf, ref) and psnr_db(bf.clamp(0, 1), ref.clamp(0, 1)) > BF16_MIN_PSNR


def test_a_model_tested_in_a_fast_path_can_still_be_trained():
    model = SingleNetSR(num_layers=3, channels=4, scale=2, inference_path="bf16")
    with torch.inference_mode():  # Lightning runs on_test_start inside inference mode
        model.apply_inference_layout()
        model._tiled(torch.rand(1, 3, 8, 8))
    model.train()
    assert model.net[0].body[0].weight.is_contiguous(memory_format=torch.channels_last)
    model.super_resolve(torch.rand(1, 3, 8, 8)).mean().backward()  # no inference tensors among the weights
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unknown_path_is_refused():
    with pytest.raises(ValueError, match="inference_path 'fp16'"):
        SingleNetSR(num_layers=2, channels=4, inference_path="fp16")

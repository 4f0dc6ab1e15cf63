import math

import pytest
import torch

from datamodules.degradation import ops
from datamodules.degradation.pipelines import ClassicalDegradation
from datamodules.degradation.samplers import DIV2KRKKernelSampler, KernelBankSampler


def test_div2krk_sampler_ranges_and_reproducibility():
    s = DIV2KRKKernelSampler()
    p1 = s.sample(512, torch.Generator().manual_seed(3), "cpu")
    p2 = s.sample(512, torch.Generator().manual_seed(3), "cpu")
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k])
    assert (p1["lambda1"] >= p1["lambda2"]).all()
    assert p1["lambda2"].min() >= 0.6 and p1["lambda1"].max() <= 5.0
    assert p1["theta"].min() >= 0 and p1["theta"].max() < math.pi
    assert p1["kernel_noise"].abs().max() <= 0.25 and p1["kernel_noise"].abs().max() > 0.2
    assert s.kernels(p1, 2).shape == (512, 11, 11)
    assert s.kernels(p1, 4).shape == (512, 31, 31)
    with pytest.raises(ValueError, match="x3"):
        s.kernel_size(3)


def test_bank_sampler_draws_bank_entries():
    bank = KernelBankSampler(kernel_size=13, a=[1.0, 3.0], b=[1.0], theta=[0.0, 0.5])
    assert len(bank) == 4
    p = bank.sample(64, torch.Generator().manual_seed(0), "cpu")
    assert set(p["kernel_index"].tolist()) == {0, 1, 2, 3}
    k = bank.kernels(p, 2)
    torch.testing.assert_close(k, bank.bank(2)[p["kernel_index"]])
    torch.testing.assert_close(p["lambda1"], bank.grid["a"][p["kernel_index"]])


def test_classical_pipeline_batch_dict_and_determinism():
    deg = ClassicalDegradation(4, DIV2KRKKernelSampler(), noise_range=(1.0, 10.0), gray_noise_prob=0.5)
    hr = torch.rand(4, 3, 64, 64)
    params = deg.sample(hr.shape, torch.Generator().manual_seed(0), hr.device)
    out1, out2 = deg.apply(hr, params), deg.apply(hr, params)
    torch.testing.assert_close(out1["lr"], out2["lr"])
    assert out1["lr"].shape == (4, 3, 16, 16) and out1["kernel"].shape == (4, 31, 31)
    assert set(out1) == {"hr", "lr", "kernel", "params"}
    torch.testing.assert_close(out1["lr"] * 255, (out1["lr"] * 255).round())  # 8-bit
    assert (params["noise_std"] * 255 >= 1.0).all()


def test_batched_pipeline_equals_per_sample_application():
    deg = ClassicalDegradation(2, DIV2KRKKernelSampler(), noise_range=(0.0, 5.0))
    hr = torch.rand(3, 3, 48, 48)
    params = deg.sample(hr.shape, torch.Generator().manual_seed(1), hr.device)
    batched = deg.apply(hr, params)["lr"]
    for i in range(3):
        one = {k: v[i : i + 1] for k, v in params.items()}
        torch.testing.assert_close(deg.apply(hr[i : i + 1], one)["lr"], batched[i : i + 1])


def test_pipeline_without_noise_is_blur_then_decimate():
    deg = ClassicalDegradation(2, DIV2KRKKernelSampler(), quantize=False)
    hr = torch.rand(2, 3, 32, 32)
    out = deg(hr, torch.Generator().manual_seed(0))
    expected = ops.decimate(ops.blur(hr, out["kernel"]), 2, 0).clamp(0, 1)
    torch.testing.assert_close(out["lr"], expected)
    assert "noise" not in out["params"]

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from datamodules.degradation import ops
from datamodules.degradation.kernels import centre_of_mass, gaussian_kernels, kernel_mean, shift_kernel, shift_kernels
from datamodules.degradation.pipelines import ClassicalDegradation
from datamodules.degradation.pipelines.mixture import MixtureDegradation
from datamodules.degradation.pipelines.moesr import GridDegradation, MoESRKernelDegradation
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


@pytest.mark.parametrize("scale", [2, 4])
def test_pipeline_without_noise_is_scipy_correlate_then_decimate(scale):
    """The protocol default border is scipy's ``ndimage.correlate`` default ('reflect' = half-sample symmetric), with
    which DIV2KRK was made (issue 11, item 9); PyTorch's 'reflect' (whole-sample) stays an option."""
    deg = ClassicalDegradation(scale, DIV2KRKKernelSampler(), quantize=False)
    assert deg.border == "symmetric"
    hr = torch.rand(2, 3, 16 * scale, 16 * scale, dtype=torch.float64)
    out = deg(hr, torch.Generator().manual_seed(0))
    assert "noise" not in out["params"]
    k = out["kernel"].numpy()
    ref = np.stack([[ndimage.correlate(hr[b, c].numpy(), k[b]) for c in range(3)] for b in range(2)])
    expected = torch.from_numpy(ref[..., ::scale, ::scale]).clamp(0, 1)  # scipy's default mode is 'reflect'
    torch.testing.assert_close(out["lr"], expected, atol=1e-12, rtol=0)
    torch_reflect = ClassicalDegradation(scale, DIV2KRKKernelSampler(), quantize=False, border="reflect")
    again = torch_reflect.apply(hr, out["params"])["lr"]
    torch.testing.assert_close(again, ops.decimate(ops.blur(hr, out["kernel"]), scale, 0).clamp(0, 1))
    assert float((again - out["lr"]).abs().max()) > 1e-3  # the two borders differ


@pytest.mark.parametrize("scale", [2, 4])
def test_div2krk_kernels_are_recentred_after_the_noise(scale):
    """KernelGAN's kernel_shift: the centre of mass is the block centre (issue 11, item 9); without, it drifts."""
    s = DIV2KRKKernelSampler()
    params = {k: v.double() for k, v in s.sample(2000, torch.Generator().manual_seed(5), "cpu").items()}
    size = s.kernel_size(scale)
    block = kernel_mean(size, scale, "block")  # 5.5 (11x11, x2), 16.5 (31x31, x4)
    k = s.kernels(params, scale)
    assert k.shape == (2000, size, size) and float(k.min()) >= 0
    torch.testing.assert_close(k.sum(dim=(-2, -1)), torch.ones(2000, dtype=torch.float64))
    drift = (centre_of_mass(k) - block).abs()
    assert float(drift.max()) < 0.01, float(drift.max())
    raw = DIV2KRKKernelSampler(recentre=False).kernels(params, scale)
    assert float((centre_of_mass(raw) - block).abs().max()) > 0.05  # the noise and the truncation move it
    # the shift is small: the recentred kernels stay close to the raw ones
    assert float((k - raw).abs().sum(dim=(-2, -1)).max()) < 0.15


def test_shift_kernels_moves_the_centre_of_mass_by_the_offset():
    k = gaussian_kernels(21, torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.5]), torch.tensor([0.3, 2.0]))
    dy, dx = torch.tensor([0.3, -1.7]), torch.tensor([-0.45, 2.25])
    moved = shift_kernels(k, dy, dx)
    torch.testing.assert_close(centre_of_mass(moved) - centre_of_mass(k), torch.stack([dy, dx], 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(shift_kernels(k, torch.zeros(2), torch.zeros(2)), k)
    one = shift_kernel(k[1:], -1.7, 2.25)  # the scalar, bilinear form agrees
    torch.testing.assert_close(moved[1:], one, atol=1e-6, rtol=0)


def _copies_from_host(monkeypatch) -> list:
    """Record every ``Tensor.to`` that copies a CPU tensor to another device."""
    copies, to = [], torch.Tensor.to

    def recording(self, *args, **kwargs):
        out = to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type != "cpu":
            copies.append(tuple(self.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "to", recording)
    return copies


def _no_host_reads(monkeypatch) -> None:
    def refuse(self, *args, **kwargs):
        raise AssertionError("host synchronisation in a per-batch path")

    for name in ("cpu", "item", "tolist", "__bool__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_per_batch_paths_neither_read_nor_copy_from_the_host(monkeypatch):
    """Issue 11 item 9: no GPU -> CPU syncs or per-batch host -> device copies in samplers, kernels and resizing.

    On the ``meta`` device every read of a value (``item``, ``bool``, ``cpu``, ``tolist``) raises, as a sync would
    on a GPU; after one warm-up call (caches fill), no CPU tensor is copied to the device either.
    """
    dev = torch.device("meta")
    degradations = [
        ClassicalDegradation(2, DIV2KRKKernelSampler(), noise_range=(1.0, 5.0), gray_noise_prob=0.5),
        ClassicalDegradation(4, DIV2KRKKernelSampler()),
        ClassicalDegradation(2, KernelBankSampler(kernel_size=13, theta=[0.0, 0.5])),
        GridDegradation(2, [0.85, 2.27, 4.37]),
        MoESRKernelDegradation(2),
        MixtureDegradation(2),
    ]
    hr = torch.empty(4, 3, 64, 64, device=dev)
    for deg in degradations:  # warm-up
        deg(hr, torch.Generator())
    ops.resize(hr, scale=0.5)
    copies = _copies_from_host(monkeypatch)
    _no_host_reads(monkeypatch)
    for deg in degradations:
        out = deg(hr, torch.Generator())
        assert out["lr"].device == dev and out["kernel"].device == dev
    assert ops.resize(hr, scale=0.5).device == dev
    assert copies == []
    # sample() on the CPU too: the parameters come from tensor ops alone
    for deg in degradations:
        deg.sample(torch.Size((4, 3, 64, 64)), torch.Generator().manual_seed(0), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_batch_paths_do_not_synchronise_cuda():
    """The same paths on a GPU under ``torch.cuda.set_sync_debug_mode("error")`` (after a warm-up call)."""
    dev = torch.device("cuda")
    degradations = [
        ClassicalDegradation(2, DIV2KRKKernelSampler(), noise_range=(1.0, 5.0), gray_noise_prob=0.5),
        ClassicalDegradation(4, DIV2KRKKernelSampler()),
        ClassicalDegradation(2, KernelBankSampler(kernel_size=13, theta=[0.0, 0.5])),
        GridDegradation(2, [0.85, 2.27, 4.37]),
        MoESRKernelDegradation(2),
        MixtureDegradation(2),
    ]
    hr = torch.rand(4, 3, 64, 64, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    for deg in degradations:
        deg(hr, gen)
    ops.resize(hr, scale=0.5)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for deg in degradations:
            deg(hr, gen)
        ops.resize(hr, scale=0.5)
    finally:
        torch.cuda.set_sync_debug_mode(0)

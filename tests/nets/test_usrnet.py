"""USRNet: shapes, parameter counts, gradients, the exactness of the FFT data step, and strict KAIR weight loading."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.nets.layers import (
    circular_convolve,
    data_step,
    data_terms,
    downsample_upper_left,
    upsample_zeros,
)
from lightning_modules.nets.usrnet import ResUNet, USRNet, load_kair_state_dict, load_usrnet_tiny, usrnet_tiny

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TINY_WEIGHTS = SHARED / "pretrained" / "usrnet_tiny.pth"
needs_weights = pytest.mark.skipif(
    not TINY_WEIGHTS.is_file(), reason=f"official USRNet-tiny weights not found at {TINY_WEIGHTS}"
)


def small_net() -> USRNet:
    return USRNet(n_iter=2, h_nc=8, nc=(4, 8, 8, 8), nb=1)


def random_kernels(batch: int, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    k = torch.rand(batch, size, size, dtype=dtype) + 0.05
    return k / k.sum(dim=(-2, -1), keepdim=True)


def kair_state_dict(model: USRNet) -> dict[str, torch.Tensor]:
    """The model's weights under KAIR's names, built from the architecture (the inverse of the loader's table)."""
    prior, nb = model.prior, len(model.prior.body)
    out = {"p.m_head.weight": prior.head.weight, "p.m_tail.weight": prior.tail.weight}
    for level in (1, 2, 3):
        enc, dec = prior.encoder[level - 1], prior.decoder[level - 1]
        out[f"p.m_down{level}.{nb}.weight"] = enc.down.weight
        out[f"p.m_up{level}.0.weight"] = dec.up.weight
        for j in range(nb):
            for r, conv in ((0, "conv1"), (2, "conv2")):
                out[f"p.m_down{level}.{j}.res.{r}.weight"] = getattr(enc.blocks[j], conv).weight
                out[f"p.m_up{level}.{j + 1}.res.{r}.weight"] = getattr(dec.blocks[j], conv).weight
    for j in range(nb):
        out[f"p.m_body.{j}.res.0.weight"] = prior.body[j].conv1.weight
        out[f"p.m_body.{j}.res.2.weight"] = prior.body[j].conv2.weight
    for i, conv in ((0, "conv1"), (2, "conv2"), (4, "conv3")):
        out[f"h.mlp.{i}.weight"] = getattr(model.hyper, conv).weight
        out[f"h.mlp.{i}.bias"] = getattr(model.hyper, conv).bias
    return {k: v.detach().clone() for k, v in out.items()}


# ---------------------------------------------------------------- shapes, sizes, gradients


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape_with_odd_sizes(scale):
    net = small_net()
    lr = torch.rand(2, 3, 7, 9)
    with torch.no_grad():
        sr = net(lr, random_kernels(2, 5), scale, torch.tensor([0.0, 0.01]))
        shared = net(lr, random_kernels(1, 5)[0], scale, 0.0)
    assert sr.shape == shared.shape == (2, 3, 7 * scale, 9 * scale)
    assert torch.isfinite(sr).all()


def test_resunet_pads_and_crops_any_size():
    net = ResUNet(in_nc=4, out_nc=3, nc=(4, 8, 8, 8), nb=1)
    assert net(torch.rand(1, 4, 13, 21)).shape == (1, 3, 13, 21)


def test_parameter_counts():
    # Prior (no biases), nc = (64, 128, 256, 512), nb = 2: head 4*64*9 = 2,304; tail 64*3*9 = 1,728;
    # each level c -> c' has 2 blocks x 2 convs of 9c^2 = 36c^2 plus a 2x2 (transposed) conv 4cc', once down, once up:
    #   64: 147,456 + 32,768;  128: 589,824 + 131,072;  256: 2,359,296 + 524,288  -> x2 = 7,569,408;
    # body 36 * 512^2 = 9,437,184.  Prior = 2,304 + 1,728 + 7,569,408 + 9,437,184 = 17,010,624.
    # HyPaNet 2 -> 64 -> 64 -> 16 with biases: 192 + 4,160 + 1,040 = 5,392.  Total 17,016,016 (paper: 17.02M).
    assert sum(p.numel() for p in USRNet().parameters()) == 17_016_016
    # Tiny, nc = (16, 32, 64, 64): 576 + 432 + 2 * 220,160 + 147,456 = 588,784; HyPaNet 2 -> 32 -> 32 -> 12: 1,548.
    assert sum(p.numel() for p in usrnet_tiny().parameters()) == 590_332


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = small_net()
    sr = net(torch.rand(2, 3, 8, 8), random_kernels(2, 5), 2, torch.tensor([0.0, 0.05]))
    (sr - torch.rand_like(sr)).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} has no gradient"


# ---------------------------------------------------------------- the FFT data step


def spatial_degrade(x: torch.Tensor, kernel: torch.Tensor, scale: int) -> torch.Tensor:
    """USRNet's model without FFTs: circular padding, convolution (flipped kernel, centre k // 2), keep [0::s]."""
    k = kernel.shape[-1]
    padded = F.pad(x, ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2), mode="circular")
    weight = kernel.flip(-2, -1)[:, None].repeat_interleave(x.shape[1], dim=0)
    b, c = x.shape[:2]
    blurred = F.conv2d(padded.reshape(1, b * c, *padded.shape[-2:]), weight, groups=b * c).reshape(x.shape)
    return blurred[..., ::scale, ::scale]


@pytest.mark.parametrize("size", [4, 5])
def test_fft_blur_equals_spatial_convolution(size):
    x = torch.rand(2, 3, 12, 16, dtype=torch.float64)
    k = random_kernels(2, size, torch.float64)
    torch.testing.assert_close(downsample_upper_left(circular_convolve(x, k), 2), spatial_degrade(x, k, 2))


def test_zero_upsampling_is_the_adjoint_of_decimation():
    a, b = torch.rand(2, 3, 5, 7, dtype=torch.float64), torch.rand(2, 3, 15, 21, dtype=torch.float64)
    assert upsample_zeros(a, 3)[..., ::3, ::3].equal(a)
    torch.testing.assert_close((upsample_zeros(a, 3) * b).sum(), (a * downsample_upper_left(b, 3)).sum())


@pytest.mark.parametrize(("scale", "size"), [(2, 5), (3, 4), (4, 7)])
@pytest.mark.parametrize("alpha", [1e-3, 0.5, 20.0])
def test_data_step_solves_its_normal_equations(scale, size, alpha):
    """x = argmin ||y - Hx||^2 + alpha ||x - z||^2  <=>  (H^T H + alpha) x = H^T y + alpha z, with H built spatially."""
    torch.manual_seed(scale)
    k = random_kernels(2, size, torch.float64)
    y, z = torch.rand(2, 3, 6, 5, dtype=torch.float64), torch.rand(2, 3, 6 * scale, 5 * scale, dtype=torch.float64)
    alphas = torch.tensor([alpha, 3 * alpha], dtype=torch.float64).view(2, 1, 1, 1)
    x = data_step(z, data_terms(y, k, scale), alphas, scale)

    def adjoint(v: torch.Tensor) -> torch.Tensor:
        return torch.autograd.functional.vjp(lambda t: spatial_degrade(t, k, scale), torch.zeros_like(z), v)[1]

    lhs = adjoint(spatial_degrade(x, k, scale)) + alphas * x
    rhs = adjoint(y) + alphas * z
    assert (lhs - rhs).abs().max() < 1e-9 * rhs.abs().max()


def test_data_step_with_tiny_alpha_is_data_consistent():
    torch.manual_seed(0)
    k = random_kernels(1, 7, torch.float64)
    x_true = torch.rand(1, 3, 24, 24, dtype=torch.float64)
    y = spatial_degrade(x_true, k, 3)
    x = data_step(torch.rand_like(x_true), data_terms(y, k, 3), torch.tensor(1e-9, dtype=torch.float64), 3)
    assert (spatial_degrade(x, k, 3) - y).abs().max() < 1e-6
    assert (x - x_true).abs().max() > 1e-2  # consistent, not a copy: decimation loses information


# ---------------------------------------------------------------- loading KAIR weights


def test_kair_names_round_trip():
    torch.manual_seed(0)
    source, target = small_net(), small_net()
    load_kair_state_dict(target, kair_state_dict(source))
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert a.equal(b), name


@pytest.mark.parametrize(
    ("corrupt", "named"),
    [
        (lambda sd: sd.pop("p.m_down2.0.res.2.weight"), "prior.encoder.1.blocks.0.conv2.weight"),
        (lambda sd: sd.update({"p.m_up1.9.weight": torch.zeros(1)}), "p.m_up1.9.weight"),
        (lambda sd: sd.update({"p.m_tail.weight": torch.zeros(3, 5, 3, 3)}), "p.m_tail.weight"),
        (lambda sd: sd.update({"h.mlp.6.bias": torch.zeros(4)}), "h.mlp.6.bias"),
        (lambda sd: sd.update({"p.m_body.5.res.0.weight": torch.zeros(8, 8, 3, 3)}), "p.m_body.5.res.0.weight"),
    ],
    ids=["missing", "unexpected", "shape", "unknown-hyper", "extra-block"],
)
def test_corrupted_state_dict_raises_naming_the_key(corrupt, named):
    sd = kair_state_dict(small_net())
    corrupt(sd)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        load_kair_state_dict(small_net(), sd)


@needs_weights
def test_official_tiny_weights_load_strictly():
    sd = torch.load(TINY_WEIGHTS, map_location="cpu", weights_only=True)
    assert len(sd) == 42 and sum(v.numel() for v in sd.values()) == 590_332
    assert set(sd) == set(kair_state_dict(usrnet_tiny()))  # the test's table is KAIR's naming
    net = load_usrnet_tiny(TINY_WEIGHTS)
    assert not net.training
    assert net.prior.head.weight.equal(sd["p.m_head.weight"])
    assert net.prior.decoder[2].up.weight.equal(sd["p.m_up3.0.weight"])
    assert net.hyper.conv3.bias.equal(sd["h.mlp.4.bias"])


def test_load_usrnet_tiny_errors_name_the_file(tmp_path):
    missing = tmp_path / "usrnet_tiny.pth"
    with pytest.raises(FileNotFoundError, match=r"usrnet_tiny\.pth.*shared/pretrained"):
        load_usrnet_tiny(missing)
    torch.save(kair_state_dict(small_net()), missing)  # a USRNet, but not the tiny one
    with pytest.raises(ValueError, match=rf"{missing}.*shape mismatch"):
        load_usrnet_tiny(missing)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(missing.read_bytes()[:2000])
    with pytest.raises(ValueError, match=rf"cannot read .*{truncated.name}.*shared/pretrained"):
        load_usrnet_tiny(truncated)
    other = tmp_path / "other.pth"
    torch.save([torch.zeros(2)], other)
    with pytest.raises(ValueError, match=rf"{other.name} is not a plain state dict"):
        load_usrnet_tiny(other)

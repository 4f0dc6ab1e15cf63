"""KOALAnet networks: shapes, parameter counts, gradients, the KOALA module's algebra, stage-2 -> 3 weight loading."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.koalanet.common import load_stage_weights
from lightning_modules.nets.koalanet import (
    KOALABaselineNet,
    KOALABlock,
    KOALADownsamplingNet,
    KOALAResBlock,
    KOALAUpsamplingNet,
)

TINY_DOWN = {"kernel_size": 4, "width": 8}
TINY_UP = {"num_blocks": 3, "num_koala": 2, "feat": 8, "kernel_channels": 16}
TINY_BASE = {"num_blocks": 3, "feat": 8}

# Layer by layer in the module docstring of lightning_modules/nets/koalanet.py.
DOWNSAMPLING_PARAMETERS = 4_319_184
UPSAMPLING_PARAMETERS = {2: 1_862_268, 4: 2_226_232}
PAPER_MILLIONS = {2: 6.09, 4: 6.45}


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("scale", [2, 4])
def test_paper_size_parameter_counts(scale):
    down, up = KOALADownsamplingNet(scale), KOALAUpsamplingNet(scale)
    assert _count(down) == DOWNSAMPLING_PARAMETERS
    assert _count(up) == UPSAMPLING_PARAMETERS[scale]
    # The baseline is the KOALA net without the kernel branch (304,320) and the five modules' m and k (406,005).
    assert _count(KOALABaselineNet(scale)) == UPSAMPLING_PARAMETERS[scale] - 304_320 - 406_005
    # Ours exceeds the paper's 6.09 M / 6.45 M by a constant ~0.09 M (the module docstring) ...
    excess = _count(down) + _count(up) - PAPER_MILLIONS[scale] * 1e6
    assert 0.086e6 < excess < 0.1e6


def test_scale_dependent_layers_match_the_paper_difference():
    # ... while the x4 - x2 difference, which only the scale-dependent head layers make, is the paper's 0.36 M.
    difference = _count(KOALAUpsamplingNet(4)) - _count(KOALAUpsamplingNet(2))
    assert round(difference / 1e6, 2) == round(PAPER_MILLIONS[4] - PAPER_MILLIONS[2], 2)


@pytest.mark.parametrize("scale", [2, 4])
def test_paper_size_shapes(scale):
    torch.manual_seed(0)
    down, up = KOALADownsamplingNet(scale), KOALAUpsamplingNet(scale)
    lr = torch.rand(1, 3, 8, 12) * 2 - 1
    with torch.no_grad():
        raw = down(lr)
        assert raw.shape == (1, 400, 8, 12)
        assert up(lr, raw).shape == (1, 3, 8 * scale, 12 * scale)
        assert KOALABaselineNet(scale)(lr).shape == (1, 3, 8 * scale, 12 * scale)
        assert down.degrade(torch.rand(1, 3, 8 * scale, 12 * scale), raw).shape == (1, 3, 8, 12)


@pytest.mark.parametrize("scale", [2, 4])
def test_every_trainable_parameter_gets_a_gradient(scale):
    torch.manual_seed(1)
    down = KOALADownsamplingNet(scale, **TINY_DOWN)
    up = KOALAUpsamplingNet(scale, **TINY_UP)
    lr, hr = torch.rand(2, 3, 8, 12), torch.rand(2, 3, 8 * scale, 12 * scale)
    raw = down(lr)
    loss = (up(lr, raw) - hr).abs().mean() + (down.degrade(hr, raw) - lr).abs().mean()
    loss.backward()
    for prefix, net in (("down", down), ("up", up)):
        for name, p in net.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{prefix}.{name}"
    base = KOALABaselineNet(scale, **TINY_BASE)
    (base(lr) - hr).abs().mean().backward()
    for name, p in base.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"baseline.{name}"


def test_baseline_output_is_independent_of_kernels():
    torch.manual_seed(2)
    base = KOALABaselineNet(4, **TINY_BASE)
    lr = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        ref = base(lr)
        torch.testing.assert_close(base(lr, torch.randn(2, 400, 8, 8)), ref, rtol=0, atol=0)
        torch.testing.assert_close(base(lr, torch.randn(2, 400, 8, 8) * 100), ref, rtol=0, atol=0)


def test_koala_net_output_depends_on_kernels():
    torch.manual_seed(3)
    up = KOALAUpsamplingNet(2, **TINY_UP)
    lr = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(up(lr, torch.randn(1, 16, 8, 8)), up(lr, torch.randn(1, 16, 8, 8)))


def test_upsampling_filters_are_normalised_per_sub_pixel():
    torch.manual_seed(4)
    up = KOALAUpsamplingNet(4, **TINY_UP)
    with torch.no_grad():
        filters = up.upsampling_filters(torch.rand(2, 8, 5, 6))
    assert filters.shape == (2, 25 * 16, 5, 6)
    torch.testing.assert_close(filters.view(2, 25, 16, 5, 6).sum(1), torch.ones(2, 16, 5, 6))


def _set_branch_constants(block: KOALABlock, m_value: float, centre_filter: bool) -> None:
    """Make ``m`` the constant ``m_value`` and ``k`` the identity (centre tap) or, un-normalised zeros, a box."""
    with torch.no_grad():
        block.mul[-1].weight.zero_()
        block.mul[-1].bias.fill_(m_value)
        block.filt[-1].weight.zero_()
        block.filt[-1].bias.zero_()
        if centre_filter:
            block.filt[-1].bias[(block.k_size * block.k_size) // 2] = 1.0


def test_koala_block_algebra():
    torch.manual_seed(5)
    block = KOALABlock(8, 6)
    plain = KOALAResBlock(8)
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if k.startswith(("conv1", "conv2"))})
    x, kf = torch.randn(2, 8, 9, 10), torch.randn(2, 6, 9, 10)
    with torch.no_grad():
        _set_branch_constants(block, 1.0, centre_filter=True)  # m = 1, k = identity: a plain res-block
        torch.testing.assert_close(block(x, kf), plain(x))
        _set_branch_constants(block, 2.0, centre_filter=False)  # m = 2, k = normalize(0) = 1/49 everywhere
        box = F.avg_pool2d(plain.residual(x), 7, stride=1, padding=3, count_include_pad=True)
        torch.testing.assert_close(block(x, kf), x + 2.0 * box, atol=1e-5, rtol=1e-5)


def test_load_stage_weights_copies_every_baseline_tensor_and_keeps_the_new_ones(caplog):
    torch.manual_seed(6)
    base = KOALABaselineNet(4, **TINY_BASE)
    koala = KOALAUpsamplingNet(4, **TINY_UP)
    before = {k: v.clone() for k, v in koala.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="lightning_modules.koalanet.common"):
        load_stage_weights(koala, base.state_dict())
    after = koala.state_dict()
    for key, value in base.state_dict().items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)
    new = koala.koala_only_keys()
    assert set(after) == set(base.state_dict()) | set(new)
    assert set(new).isdisjoint(base.state_dict())
    assert any(k.startswith("kernel_features.") for k in new)
    assert {k.split(".")[2] for k in new if k.startswith("blocks.")} == {"mul", "filt"}
    for key in new:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert "new" in caplog.text and "kernel_features.0.weight" in caplog.text
    lr = torch.rand(1, 3, 8, 8)
    with torch.no_grad():  # with m = 1 and identity k in every KOALA module the two nets agree
        for block in koala.blocks[: koala.num_koala]:
            _set_branch_constants(block, 1.0, centre_filter=True)
        torch.testing.assert_close(koala(lr, torch.randn(1, 16, 8, 8)), base(lr))


def test_identity_init_starts_stage_3_at_the_baseline_and_still_learns_the_kernel_branch():
    torch.manual_seed(7)
    base = KOALABaselineNet(4, **TINY_BASE)
    koala = KOALAUpsamplingNet(4, **TINY_UP, koala_init="identity")
    official = KOALAUpsamplingNet(4, **TINY_UP)
    for net in (koala, official):
        load_stage_weights(net, base.state_dict())
    lr, raw = torch.rand(1, 3, 8, 8), torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(koala(lr, raw), base(lr), rtol=0, atol=1e-6)
        assert (official(lr, raw) - base(lr)).abs().max() > 1e-2  # the official init perturbs stage 2's output
    koala(lr, raw).square().mean().backward()
    block = koala.blocks[0]
    assert block.mul[-1].weight.grad.abs().sum() > 0 and block.filt[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="koala_init"):
        KOALAUpsamplingNet(4, **TINY_UP, koala_init="zeros")


def test_load_stage_weights_is_strict():
    base_state = KOALABaselineNet(4, **TINY_BASE).state_dict()
    koala = KOALAUpsamplingNet(4, **TINY_UP)
    with pytest.raises(ValueError, match="unexpected \\['extra.weight'\\]"):
        load_stage_weights(koala, {**base_state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing \\['conv_in.weight'\\]"):
        load_stage_weights(koala, {k: v for k, v in base_state.items() if k != "conv_in.weight"})
    with pytest.raises(ValueError, match="mis-shaped \\['kernel_head.2.weight"):
        load_stage_weights(koala, KOALABaselineNet(2, **TINY_BASE).state_dict())
    with pytest.raises(ValueError, match="blocks.3.conv1.weight"):  # a deeper baseline does not fit either
        load_stage_weights(koala, KOALABaselineNet(4, num_blocks=4, feat=8).state_dict())


def test_official_initialisation():
    net = KOALADownsamplingNet(4)
    weight = net.enc2.blocks[0].conv1.weight  # 128 -> 128, 3x3: fan_in + fan_out = 2 * 1152
    std = math.sqrt(2.0 / (2 * 1152))  # Glorot-normal variance; truncated normal with std sqrt(1.3) x this
    assert weight.std().item() == pytest.approx(std, rel=0.05)
    assert weight.abs().max().item() <= 2 * math.sqrt(1.3) * std + 1e-6
    assert all((m.bias == 0).all() for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d))


def test_input_errors_are_explicit():
    with pytest.raises(ValueError, match="divisible by 4"):
        KOALADownsamplingNet(2, **TINY_DOWN)(torch.rand(1, 3, 10, 12))
    with pytest.raises(ValueError, match="scales"):
        KOALAUpsamplingNet(3, **TINY_UP)
    up = KOALAUpsamplingNet(2, **TINY_UP)
    with pytest.raises(ValueError, match="raw_kernels must be"):
        up(torch.rand(1, 3, 8, 8), torch.rand(1, 16, 4, 4))
    with pytest.raises(ValueError, match="lr must be"):
        up(torch.rand(1, 1, 8, 8), torch.rand(1, 16, 8, 8))

"""DASR nets: paper parameter counts and FLOPs, shapes, the dynamic convolution against an explicit per-sample
reference, expert replication, gradients, and Real-ESRGAN's U-Net discriminator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.nets.dasr import (
    DASRNet,
    DegradationPredictor,
    MSRResNet,
    MSRResNetDynamic,
    WeightingModule,
    copy_into_experts,
)
from lightning_modules.nets.discriminator import UNetDiscriminatorSN
from lightning_modules.nets.layers import DynamicConv2d

# Paper size (num_feat 64, 16 blocks, x4); a 3x3 conv a->b has 9ab + b parameters, a 5x5 one 25ab + b:
#   MSRResNet: conv_first 9*3*64+64 = 1,792; body 32 * (9*64*64+64) = 1,181,696; upconv1, upconv2 2 * (9*64*256+256)
#              = 295,424; conv_hr 36,928; conv_last 9*64*3+3 = 1,731                        -> 1,517,571 (paper 1.52 M)
#              x2: one upconv fewer                                                           -> 1,369,859
#   predictor: 25*3*64+64 = 4,864; 4 * (25*64*64+64) = 409,856; 25*64*33+33 = 52,833         ->   467,553
#   weighting: 33*15+15 = 510; 15*5+5 = 80                                                    ->       590
#   DASR: 5 * 1,517,571 + 467,553 + 590 = 8,055,998 (8.06 M). The paper's 8.07 M = 5 * 1.52 + 0.47, its rounded parts.
MSRRESNET_X4 = 1_517_571
MSRRESNET_X2 = 1_369_859
PREDICTOR_AND_WEIGHTING = 468_143
DASR_X4 = 8_055_998

# The paper's FLOPs (Table 2) are thop/ptflops multiply-accumulates on a 256x256 *LR* input (x4 -> 1024x1024), the
# latency on 510x339 LR. Per LR pixel: MSRResNet conv_first 1,728 + body 32*36,864 + upconv1 147,456 + upconv2 at 2x
# 4*147,456 + conv_hr at 4x 16*36,864 + conv_last at 4x 16*1,728 = 2,536,128 MACs; the predictor 4,800 + 2*102,400 +
# (3 convs after the stride-2 one, at 1/4 the pixels) (102,400 + 102,400 + 52,800) / 4 = 274,000 MACs.
PAPER_SIDE = 256
MSRRESNET_MACS_PER_PX = 2_536_128
PREDICTOR_MACS_PER_PX = 274_000
PAPER_GMACS = {"msrresnet": 166.0, "dasr": 184.0, "predictor": 18.0}
TOLERANCE_G = 0.5  # the paper prints whole G; ours must round to its figure


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def gmacs_at_paper_size(build, call) -> tuple[float, dict]:
    """FlopCounterMode on meta tensors (no arithmetic runs): exact counts at 256x256 in milliseconds."""
    with torch.device("meta"):
        net = build()
        with FlopCounterMode(display=False) as counter:
            call(net, torch.empty(1, 3, PAPER_SIDE, PAPER_SIDE))
    return counter.get_total_flops() / 2 / 1e9, {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}


class CountConvolutions(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_parameter_counts_match_the_paper():
    with torch.device("meta"):
        plain, plain_x2, dasr = MSRResNet(), MSRResNet(scale=2), DASRNet()
    assert count(plain) == MSRRESNET_X4 and round(MSRRESNET_X4 / 1e6, 2) == 1.52
    assert count(plain_x2) == MSRRESNET_X2
    assert count(dasr.generator) == 5 * MSRRESNET_X4
    assert count(dasr.predictor) + count(dasr.weighting) == PREDICTOR_AND_WEIGHTING
    assert round(PREDICTOR_AND_WEIGHTING / 1e6, 2) == 0.47
    assert count(dasr) == DASR_X4
    assert abs(DASR_X4 / 1e6 - 8.07) < 0.015  # 8.056 M; the paper adds its rounded parts: 5 * 1.52 + 0.47


def test_flops_match_the_paper_at_256x256_lr():
    pixels = PAPER_SIDE**2
    msr, msr_ops = gmacs_at_paper_size(MSRResNet, lambda n, x: n(x))
    assert msr_ops["aten.convolution"] == 2 * MSRRESNET_MACS_PER_PX * pixels
    pred, _ = gmacs_at_paper_size(lambda: nn.Sequential(DegradationPredictor(), WeightingModule()), lambda n, x: n(x))
    assert abs(pred - PREDICTOR_MACS_PER_PX * pixels / 1e9) < 1e-3
    dasr, dasr_ops = gmacs_at_paper_size(DASRNet, lambda n, x: n(x))
    assert dasr_ops["aten.convolution"] == 2 * (MSRRESNET_MACS_PER_PX + PREDICTOR_MACS_PER_PX) * pixels
    biases = 64 + 32 * 64 + 2 * 256 + 64 + 3  # mixing: 2 K multiply-adds per weight (einsum) and bias (matmul)
    assert dasr_ops["aten.bmm"] == 2 * 5 * (MSRRESNET_X4 - biases) and dasr_ops["aten.mm"] == 2 * 5 * biases
    for ours, paper in ((msr, "msrresnet"), (pred, "predictor"), (dasr, "dasr")):
        assert abs(ours - PAPER_GMACS[paper]) < TOLERANCE_G, (paper, ours)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shapes(scale):
    torch.manual_seed(0)
    lr = torch.rand(2, 3, 12, 10)
    net = DASRNet(num_feat=8, num_block=2, scale=scale, num_params=33)
    sr, vector = net(lr)
    assert sr.shape == (2, 3, 12 * scale, 10 * scale) and vector.shape == (2, 33)
    assert net.routing(vector).shape == (2, 5)
    assert MSRResNet(8, 2, scale)(lr).shape == (2, 3, 12 * scale, 10 * scale)
    assert MSRResNetDynamic(8, 2, 3, scale)(lr, torch.randn(2, 3)).shape == (2, 3, 12 * scale, 10 * scale)
    with pytest.raises(ValueError, match="scale"):
        MSRResNet(scale=8)


def reference_dynamic_conv(layer: DynamicConv2d, x, routing):
    """Per-sample loops, written independently of the layer: mix the banks by hand, one F.conv2d per sample."""
    outs = []
    for b in range(x.shape[0]):
        weight = sum(routing[b, k] * layer.weight[k] for k in range(layer.num_experts))
        bias = None if layer.bias is None else sum(routing[b, k] * layer.bias[k] for k in range(layer.num_experts))
        outs.append(F.conv2d(x[b : b + 1], weight, bias, stride=layer.stride, padding=layer.padding))
    return torch.cat(outs)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "bias"), [(3, 1, None, True), (5, 2, 1, False), (1, 1, 0, True)]
)
def test_dynamic_conv_equals_per_sample_weighted_conv(kernel, stride, padding, bias):
    torch.manual_seed(0)
    layer = DynamicConv2d(4, 6, kernel, num_experts=3, stride=stride, padding=padding, bias=bias)
    x, routing = torch.randn(5, 4, 11, 9), torch.randn(5, 3)
    with CountConvolutions() as calls:
        out = layer(x, routing)
    assert calls.calls == 1  # one grouped convolution for the whole batch
    torch.testing.assert_close(out, reference_dynamic_conv(layer, x, routing), atol=1e-5, rtol=1e-5)


def test_one_hot_routing_is_that_experts_plain_conv():
    torch.manual_seed(0)
    layer = DynamicConv2d(4, 6, 3, num_experts=5)
    x = torch.randn(5, 4, 8, 8)
    out = layer(x, torch.eye(5))  # sample k routed to expert k
    for k in range(5):
        plain = nn.Conv2d(4, 6, 3, padding=1)
        plain.weight.data.copy_(layer.weight[k])
        plain.bias.data.copy_(layer.bias[k])
        torch.testing.assert_close(out[k : k + 1], plain(x[k : k + 1]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], layer(x[:1], torch.eye(5)[1:2])[0])  # experts differ


def test_dynamic_conv_init_and_errors():
    layer = DynamicConv2d(16, 8, 3, num_experts=4)
    bound = 1 / (16 * 9) ** 0.5  # nn.Conv2d's bounds (Kaiming-uniform a=sqrt 5 gives the same for the weight)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert not torch.equal(layer.weight[0], layer.weight[1])
    with pytest.raises(ValueError, match="routing must be"):
        layer(torch.rand(2, 16, 5, 5), torch.rand(2, 3))
    with pytest.raises(ValueError, match="rows"):
        layer(torch.rand(2, 16, 5, 5), torch.rand(3, 4))
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.rand(2, 15, 5, 5), torch.rand(2, 4))


@pytest.mark.parametrize("scale", [2, 4])
def test_copy_into_experts_makes_the_dynamic_net_the_plain_one(scale):
    torch.manual_seed(0)
    plain = MSRResNet(8, 2, scale)
    for p in plain.parameters():  # non-zero biases, so the bias mixing is tested too
        p.data.add_(0.05 * torch.randn_like(p))
    dynamic = MSRResNetDynamic(8, 2, 5, scale)
    copy_into_experts(dynamic, plain.state_dict())
    lr = torch.rand(3, 3, 10, 12)
    routing = torch.randn(3, 5)
    routing = routing - routing.mean(dim=1, keepdim=True) + 0.2  # rows sum to 1, with negative entries
    torch.testing.assert_close(dynamic(lr, routing), plain(lr), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(dynamic(lr, 2 * routing), plain(lr), atol=1e-3)  # a sum of 2 is another network


def test_copy_into_experts_is_strict():
    plain = MSRResNet(8, 2, 4)
    dynamic = MSRResNetDynamic(8, 2, 5, 4)
    before = {k: v.clone() for k, v in dynamic.state_dict().items()}
    state = plain.state_dict()
    with pytest.raises(ValueError, match=r"missing \['conv_hr.bias'\], unexpected \[\]"):
        copy_into_experts(dynamic, {k: v for k, v in state.items() if k != "conv_hr.bias"})
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['extra.weight'\]"):
        copy_into_experts(dynamic, {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing .*upconv2"):
        copy_into_experts(dynamic, MSRResNet(8, 2, 2).state_dict())
    with pytest.raises(ValueError, match="shape mismatch"):
        copy_into_experts(dynamic, {**state, "conv_last.weight": torch.zeros(3, 8, 5, 5)})
    with pytest.raises(ValueError, match="outside dynamic"):
        copy_into_experts(nn.Sequential(dynamic, nn.Linear(2, 2)), {f"0.{k}": v for k, v in state.items()})
    for k, v in dynamic.state_dict().items():
        assert torch.equal(v, before[k]), k  # nothing copied on error


def test_msrresnet_uses_basicsr_names_and_init():
    keys = set(MSRResNet().state_dict())
    assert len(keys) == 2 * (1 + 32 + 2 + 1 + 1)
    assert {"conv_first.weight", "body.15.conv2.bias", "upconv1.weight", "upconv2.bias", "conv_last.bias"} <= keys
    assert not any(k.startswith("upconv2") for k in MSRResNet(scale=2).state_dict())
    torch.manual_seed(0)
    net = MSRResNet()
    std = net.body[0].conv1.weight.std().item()
    assert abs(std - 0.1 * (2 / (64 * 9)) ** 0.5) < 0.1 * std  # Kaiming-normal x 0.1
    assert all(m.bias.abs().sum() == 0 for m in net.modules() if isinstance(m, nn.Conv2d))
    dyn = MSRResNetDynamic(num_block=1)
    assert abs(dyn.body[0].conv1.weight[3].std().item() - std) < 0.1 * std


def test_predictor_and_weighting_module():
    predictor = DegradationPredictor()
    convs = [m for m in predictor.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (3, 64, (5, 5), (1, 1), (2, 2)),
        (64, 64, (5, 5), (1, 1), (2, 2)),
        (64, 64, (5, 5), (1, 1), (2, 2)),
        (64, 64, (5, 5), (2, 2), (2, 2)),
        (64, 64, (5, 5), (1, 1), (2, 2)),
        (64, 33, (5, 5), (1, 1), (2, 2)),
    ]
    assert isinstance(predictor.body[-1], nn.LeakyReLU) and predictor.body[-1].negative_slope == 0.2
    assert predictor(torch.rand(2, 3, 13, 16)).shape == (2, 33)
    torch.manual_seed(0)
    weighting = WeightingModule()
    u, w = torch.randn(4, 33), torch.randn(4, 33)  # no activation: the module is affine, outputs unconstrained
    torch.testing.assert_close(weighting(0.3 * u + 0.7 * w), 0.3 * weighting(u) + 0.7 * weighting(w))


def test_dasr_forward_is_predict_then_restore_and_user_vectors_steer_it():
    torch.manual_seed(0)
    net = DASRNet(num_feat=8, num_block=2, scale=2)
    lr = torch.rand(2, 3, 9, 11)
    sr, vector = net(lr)
    torch.testing.assert_close(vector, net.predict_vector(lr))
    torch.testing.assert_close(sr, net.generator(lr, net.routing(vector)))
    assert not torch.allclose(net.restore(lr, vector + 0.5), sr)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    nets = {
        "dasr": DASRNet(num_feat=8, num_block=2, scale=4),
        "plain": MSRResNet(8, 2, 2),
        "disc": UNetDiscriminatorSN(width=4),
    }
    lr = torch.rand(2, 3, 8, 8)
    sr, vector = nets["dasr"](lr)
    (sr.abs().mean() + vector.abs().mean() + nets["plain"](lr).abs().mean() + nets["disc"](sr).mean()).backward()
    for key, net in nets.items():
        for name, p in net.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (key, name)


def test_discriminator_shape_spectral_norm_and_size():
    torch.manual_seed(0)
    disc = UNetDiscriminatorSN()
    w = 64  # conv0, 3 encoder 4x4 convs, 3 decoder + 2 extra 3x3 convs, conv9
    expected = (27 * w + w) + 16 * (2 * w * w + 8 * w * w + 32 * w * w) + 9 * (32 * w * w + 8 * w * w + 2 * w * w)
    expected += 9 * 2 * w * w + 9 * w + 1
    assert count(disc) == expected == 4_376_897
    normed = [f"conv{i}" for i in range(10) if parametrize.is_parametrized(getattr(disc, f"conv{i}"))]
    assert normed == [f"conv{i}" for i in range(1, 9)]
    small = UNetDiscriminatorSN(width=4)
    assert small(torch.rand(2, 3, 16, 24)).shape == (2, 1, 16, 24)
    assert UNetDiscriminatorSN(width=4, skip_connection=False)(torch.rand(1, 3, 8, 8)).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="multiples of 8"):
        small(torch.rand(1, 3, 12, 16))


def test_uniform_routing_init_makes_copied_experts_start_as_the_plain_msrresnet():
    torch.manual_seed(0)
    plain = MSRResNet(num_feat=8, num_block=2, scale=4)
    for p in plain.parameters():  # weights of a trained-looking net (the default init makes the residual ~0)
        nn.init.normal_(p, std=0.2)
    dasr = DASRNet(num_feat=8, num_block=2, num_experts=5, scale=4)
    copy_into_experts(dasr.generator, plain.state_dict())
    lr = torch.rand(2, 3, 10, 12)
    with torch.no_grad():
        assert not torch.allclose(dasr(lr)[0], plain(lr), atol=1e-4)  # the official init scales the copied weights
        dasr.weighting.uniform_init_()
        torch.testing.assert_close(dasr(lr)[0], plain(lr), atol=1e-5, rtol=1e-5)

"""KENet (Cao et al.): output shape and normalisation, the paper's parameter count, gradients."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.nets.kenet import KENet, kenet_parameter_count

# Paper size (width 64, fc_width 1024, RGB input), layer by layer; a 3x3 conv a->b has 9ab + b parameters, a fully
# connected layer a->b has ab + b:
#   stage 1: conv 3->64        9*3*64 + 64       =     1,792;  RB(64):  2 * (9*64*64 + 64)    =    73,856
#   stage 2: conv 64->128      9*64*128 + 128    =    73,856;  RB(128): 2 * (9*128*128 + 128) =   295,168
#   stage 3: conv 128->192     9*128*192 + 192   =   221,376;  RB(192): 2 * (9*192*192 + 192) =   663,936
#   stage 4: conv 192->256     9*192*256 + 256   =   442,624;  RB(256): 2 * (9*256*256 + 256) = 1,180,160
#   convolutions together                                                                      = 2,952,768
#   FC 256->1024: 256*1024 + 1024 = 263,168;  FC 1024->1024: 1024*1024 + 1024 = 1,049,600     = 1,312,768
#   FC 1024->l*l: 1025 * l^2 = 124,025 (l = 11) or 452,025 (l = 21)
#   total: 4,265,536 + 124,025 = 4,389,561 (l = 11);  4,265,536 + 452,025 = 4,717,561 (l = 21)
PAPER_PARAMETERS = {11: 4_389_561, 21: 4_717_561}


@pytest.mark.parametrize("size", [11, 21])
def test_paper_size_parameter_count(size):
    net = KENet(kernel_size=size)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == PAPER_PARAMETERS[size]
    assert kenet_parameter_count(size) == PAPER_PARAMETERS[size]


def test_parameter_count_formula_at_other_sizes():
    for args in ((5, 1, 4, 16), (21, 3, 8, 32), (11, 4, 16, 8)):
        assert sum(p.numel() for p in KENet(*args).parameters()) == kenet_parameter_count(*args), args


@pytest.mark.parametrize("size", [11, 21])
@pytest.mark.parametrize("hw", [(24, 40), (33, 17), (8, 8)])
def test_output_is_a_batch_of_kernels_summing_to_one(size, hw):
    torch.manual_seed(0)
    net = KENet(kernel_size=size, width=8, fc_width=32)
    k = net(torch.rand(3, 3, *hw))
    assert k.shape == (3, size, size)
    assert (k > 0).all()
    torch.testing.assert_close(k.sum(dim=(-2, -1)), torch.ones(3), atol=1e-6, rtol=0)
    assert not torch.allclose(k[0], torch.full_like(k[0], 1 / size**2))  # not a constant output


def test_images_too_small_or_not_batched_are_refused():
    net = KENet(kernel_size=11, width=4, fc_width=8)
    with pytest.raises(ValueError, match="8x8"):
        net(torch.rand(1, 3, 7, 20))
    with pytest.raises(ValueError, match="B, C, H, W"):
        net(torch.rand(3, 16, 16))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = KENet(kernel_size=11, width=8, fc_width=32)
    target = torch.softmax(torch.randn(2, 121), dim=-1).view(2, 11, 11)
    loss = (net(torch.rand(2, 3, 20, 28)) - target).abs().sum()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name

"""MoESR's networks: the grouped-convolution expert bank, ISE and its target, KEN."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.nets import moesr as moesr_nets
from lightning_modules.nets.moesr import ISE, KEN, ExpertBank, ise_output_size, ise_target, ken_params
from lightning_modules.nets.vdsr import ChainedVDSR


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_parameter_counts_match_the_paper():
    assert sum(p.numel() for p in ExpertBank(1, 2, 12, 64).parameters()) == 372_803  # one 12 x 64 expert stage
    assert sum(p.numel() for p in ExpertBank(25, 2, 12, 64).parameters()) == 25 * 372_803
    assert sum(p.numel() for p in ExpertBank(3, 4, 12, 64).parameters()) == 3 * 2 * 372_803  # x4: two stages
    # ISE: 6->64->64->128->256->512->1, 3x3 convolutions with bias
    assert sum(p.numel() for p in ISE().parameters()) == 1_594_241
    # KEN: 85 -> 50 -> 50 -> 3
    assert sum(p.numel() for p in KEN().parameters()) == 85 * 50 + 50 + 50 * 50 + 50 + 50 * 3 + 3 == 7_003


@pytest.mark.parametrize("scale", [2, 4])
def test_bank_output_equals_standalone_chained_vdsr(scale):
    bank = ExpertBank(4, scale, num_layers=4, channels=8)
    lr = torch.rand(2, 4, 3, 10, 12)
    out = bank(lr)
    assert out.shape == (2, 4, 3, 10 * scale, 12 * scale)
    for i in range(4):
        net = bank.expert(i)
        assert isinstance(net, ChainedVDSR) and len(net) == (2 if scale == 4 else 1)
        torch.testing.assert_close(out[:, i], net(lr[:, i]), atol=1e-5, rtol=1e-5)
    # a selection with repeats, and a different expert per (sample, slot)
    sel = bank(lr[:, :3], torch.tensor([2, 2, 0]))
    torch.testing.assert_close(sel[:, 1], bank.expert(2)(lr[:, 1]), atol=1e-5, rtol=1e-5)
    per = bank(lr[:, :2], torch.tensor([[3, 1], [0, 3]]))
    torch.testing.assert_close(per[1, 1], bank.expert(3)(lr[1:2, 1])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per[0, 1], bank.expert(1)(lr[0:1, 1])[0], atol=1e-5, rtol=1e-5)
    stages = bank.stage_outputs(lr)
    assert len(stages) == len(bank.stages) and stages[-1].shape == out.shape
    if scale == 4:
        torch.testing.assert_close(stages[0][:, 2], bank.expert(2)[0](lr[:, 2]), atol=1e-5, rtol=1e-5)


def test_expert_round_trip_and_independence():
    bank = ExpertBank(3, 2, num_layers=3, channels=4)
    other = ChainedVDSR(2, 3, 4)
    lr = torch.rand(1, 3, 3, 8, 8)
    before = bank(lr)
    bank.load_expert(1, other)
    after = bank(lr)
    torch.testing.assert_close(after[:, 1], other(lr[:, 1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])  # the other experts are untouched
    copy = bank.expert(1)
    with torch.no_grad():
        copy[0].body[0].weight.add_(1.0)  # the copy owns its parameters
    torch.testing.assert_close(bank(lr)[:, 1], after[:, 1])
    with pytest.raises(ValueError, match="stages"):
        bank.load_expert(0, ChainedVDSR(4, 3, 4))


def test_bank_runs_all_experts_in_one_grouped_convolution_and_gradients_stay_per_expert(monkeypatch):
    calls = []
    conv2d = F.conv2d

    def counting(*args, **kwargs):
        calls.append(kwargs.get("groups", 1))
        return conv2d(*args, **kwargs)

    monkeypatch.setattr(F, "conv2d", counting)
    bank = ExpertBank(5, 2, num_layers=4, channels=4)
    lr = torch.rand(2, 5, 3, 8, 8)
    loss = bank(lr[:, :2], torch.tensor([1, 3])).abs().mean()
    assert calls == [2] * 4  # one grouped convolution per layer, whatever the number of experts
    calls.clear()
    bank(lr).sum().backward()
    assert calls == [5] * 4
    bank.zero_grad()
    loss.backward()
    for stage in bank.stages:
        for w in stage.weights:
            used = w.grad.flatten(1).abs().sum(dim=1) > 0
            assert used.tolist() == [False, True, False, True, False]


def test_bank_rejects_bad_shapes():
    bank = ExpertBank(3, 2, 3, 4)
    with pytest.raises(ValueError, match="all 3"):
        bank(torch.rand(1, 2, 3, 8, 8))
    with pytest.raises(ValueError, match="slots"):
        bank(torch.rand(1, 2, 3, 8, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="x5"):
        ExpertBank(2, 5)


def test_ise_architecture_and_receptive_field():
    ise = ISE((4, 4, 8, 8, 8))
    assert [c.stride[0] for c in ise.convs] == [1, 2, 2, 2, 1, 1]
    assert all(c.padding == (0, 0) for c in ise.convs)
    for h, w in ((49, 49), (64, 80), (128, 128), (100, 57)):
        out = ise(torch.rand(1, 3, h, w), torch.rand(1, 3, h, w))
        assert out.shape == (1, 1, ise_output_size(h), ise_output_size(w))
        assert ise_target(torch.rand(1, 3, h, w), torch.rand(1, 3, h, w)).shape == out.shape
    assert ise_output_size(128) == 10 and ise_output_size(48) == 0
    # output pixel (1, 2) sees exactly input rows 8..56 and columns 16..64 (receptive field 49, stride 8)
    sr = torch.rand(1, 3, 80, 80, requires_grad=True)
    ise(sr, torch.rand(1, 3, 80, 80))[0, 0, 1, 2].backward()
    rows = (sr.grad.abs().sum(dim=(0, 1, 3)) > 0).nonzero().flatten()
    cols = (sr.grad.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
    assert (rows.min().item(), rows.max().item()) == (8, 56)
    assert (cols.min().item(), cols.max().item()) == (16, 64)
    with pytest.raises(ValueError, match="49"):
        ise(torch.rand(1, 3, 40, 60), torch.rand(1, 3, 40, 60))


def test_ise_has_no_relu_after_the_512_layer():
    ise = ISE((4, 4, 4, 4, 4), residual_gain=0.0)
    x = torch.rand(1, 6, 64, 64)
    feats = x
    for conv in list(ise.convs)[:4]:
        feats = F.relu(conv(feats))
    pre = ise.convs[4](feats)
    assert (pre < 0).any()  # the 256->512 layer's negative outputs reach the last layer unchanged
    torch.testing.assert_close(ise(x[:, :3], x[:, 3:]), ise.convs[5](pre))


def test_ise_residual_input_is_a_reparametrisation_of_the_official_input():
    """Gain g on (SR - up) and up - 0.5 = the official (SR, up) net with first-layer weights [g A, B - g A]."""
    torch.manual_seed(0)
    ours = ISE((4, 4, 4, 4, 4), residual_gain=10.0)
    official = ISE((4, 4, 4, 4, 4), residual_gain=0.0)
    official.load_state_dict(ours.state_dict())
    with torch.no_grad():
        w, b = ours.convs[0].weight, ours.convs[0].bias
        official.convs[0].weight.copy_(torch.cat([10 * w[:, :3], w[:, 3:] - 10 * w[:, :3]], dim=1))
        official.convs[0].bias.copy_(b - 0.5 * w[:, 3:].sum(dim=(1, 2, 3)))
    sr, up = torch.rand(2, 3, 57, 64), torch.rand(2, 3, 57, 64)
    torch.testing.assert_close(ours(sr, up), official(sr, up), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in official.parameters())
    with pytest.raises(ValueError, match="residual_gain"):
        ISE(residual_gain=-1.0)


def test_ise_target_is_the_pooled_squared_error():
    sr, hr = torch.rand(2, 3, 65, 73), torch.rand(2, 3, 65, 73)
    t = ise_target(sr, hr)
    assert t.shape == (2, 1, 3, 4)
    err = (sr - hr).square().mean(dim=1)
    torch.testing.assert_close(t[1, 0, 2, 3], err[1, 16:65, 24:73].mean())
    torch.testing.assert_close(t[0, 0, 0, 0], err[0, :49, :49].mean())


def test_ken_standardisation_clamp_and_theta_units():
    ken = KEN(27, 16)
    errors = torch.rand(5, 27) * 1e-3
    out = ken(errors)
    assert out.shape == (5, 3)
    torch.testing.assert_close(ken(errors * 37.0 + 5.0), out, atol=1e-5, rtol=1e-4)  # per-sample standardisation
    x = KEN.standardise(errors)
    torch.testing.assert_close(x.std(dim=1), torch.ones(5))  # unbiased std, as torch.std
    torch.testing.assert_close(x.mean(dim=1), torch.zeros(5), atol=1e-6, rtol=0)
    with torch.no_grad():
        ken.net[-1].weight.zero_()
        ken.net[-1].bias.copy_(torch.tensor([-3.0, 2.0, 4.0]))
    out = ken(errors)
    assert out[:, 0].tolist() == pytest.approx([0.01] * 5)  # lambdas clamped at 0.01
    assert out[:, 1].tolist() == pytest.approx([2.0] * 5)
    assert out[:, 2].tolist() == pytest.approx([4 * math.pi / 16] * 5)  # theta in units of pi/16
    with pytest.raises(ValueError, match="27"):
        ken(torch.rand(2, 26))
    # init_lambda starts every output inside the clamp's live range (default init: some below 0.01, no gradient)
    centred = KEN(27, 16, init_lambda=2.5)(torch.rand(64, 27))
    assert float(centred[:, :2].min()) > 1.0 and float((centred[:, 2] - math.pi / 2).abs().max()) < 0.5


def test_ken_params_names_the_columns_of_kens_output():
    out = KEN(27, 16)(torch.rand(4, 27))
    named = ken_params(out)
    assert list(named) == ["lambda1", "lambda2", "theta"]
    for i, values in enumerate(named.values()):
        assert torch.equal(values, out[:, i])
    with pytest.raises(ValueError, match="lambda1, lambda2, theta"):
        ken_params(torch.rand(4, 2))


@pytest.mark.parametrize("pixels", [1, 2 * 16 * 16, 10**9], ids=["one_image", "two_images", "all"])
def test_per_expert_form_in_pixel_bounded_calls_equals_the_grouped_form(monkeypatch, pixels):
    monkeypatch.setattr(moesr_nets, "PER_CALL_PIXELS", pixels)
    calls = []
    conv2d = F.conv2d

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return conv2d(x, *args, **kwargs)

    torch.manual_seed(1)
    bank = ExpertBank(4, 2, num_layers=3, channels=4)
    lr, experts = torch.rand(2, 3, 3, 8, 8), torch.tensor([2, 0, 2])  # expert 2: 2 slots x 2 images = 4 images
    with torch.no_grad():
        grouped = bank(lr, experts)
        monkeypatch.setattr(F, "conv2d", counting)
        plain = bank(lr, experts, per_expert=True)
    torch.testing.assert_close(plain, grouped, atol=1e-6, rtol=1e-5)
    batch = {1: 1, 2 * 16 * 16: 2, 10**9: 4}[pixels]  # 16x16 outputs; expert 2's four images per call
    assert max(calls) == batch and sum(calls) == 3 * (4 + 2)  # 3 layers x (4 + 2) images

"""VGG perceptual loss: torchvision's state-dict layout, pre-ReLU features, strict loading and its error messages."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.losses import (
    DEFAULT_LAYER_WEIGHTS,
    VGG19_URL,
    PerceptualLoss,
    VGG19Features,
    VGGFeatures,
    vgg_layer_indices,
)

# torchvision's vgg19().features: (index, in, out) of its 16 convs; max-pools at 4, 9, 18, 27, 36.
VGG19_CONVS = [
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256), (16, 256, 256),
    (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512),
    (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512),
]  # fmt: skip
VGG19_POOLS = (4, 9, 18, 27, 36)
VGG16_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def vgg19() -> VGG19Features:
    torch.manual_seed(0)
    return VGG19Features()


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory, vgg19) -> str:
    path = tmp_path_factory.mktemp("vgg") / "vgg19_random.pth"
    torch.save(vgg19.state_dict(), path)
    return str(path)


def _images(seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=gen), torch.rand(2, 3, size, size, generator=gen)


def test_state_dict_has_torchvision_vgg19_keys_and_shapes(vgg19):
    expected = [f"features.{i}.{p}" for i, _, _ in VGG19_CONVS for p in ("weight", "bias")]
    state = vgg19.state_dict()
    assert list(state) == expected
    for i, cin, cout in VGG19_CONVS:
        assert state[f"features.{i}.weight"].shape == (cout, cin, 3, 3)
        assert state[f"features.{i}.bias"].shape == (cout,)
    assert all(isinstance(vgg19.features[i], torch.nn.MaxPool2d) for i in VGG19_POOLS)
    assert len(vgg19.features) == 37


def test_layer_names_map_to_torchvision_indices():
    idx19 = vgg_layer_indices("vgg19")
    assert {k: idx19[k] for k in ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4")} == {
        "conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34,
    }  # fmt: skip
    assert [v for k, v in idx19.items() if k.startswith("conv")] == [i for i, _, _ in VGG19_CONVS]
    assert [v for k, v in idx19.items() if k.startswith("pool")] == list(VGG19_POOLS)
    idx16 = vgg_layer_indices("vgg16")
    assert [v for k, v in idx16.items() if k.startswith("conv")] == VGG16_CONV_INDICES
    keys16 = list(VGGFeatures(["conv5_3"], arch="vgg16").state_dict())
    assert keys16 == [f"features.{i}.{p}" for i in VGG16_CONV_INDICES for p in ("weight", "bias")]


def _reference_features(state: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Plain functional VGG19 from the state dict; records each block's last conv output before its ReLU."""
    wanted = {2: "conv1_2", 7: "conv2_2", 16: "conv3_4", 25: "conv4_4", 34: "conv5_4"}
    out = {}
    x = (x - MEAN) / STD
    for i, _, _ in VGG19_CONVS:
        if i - 1 in VGG19_POOLS:
            x = F.max_pool2d(x, 2)
        x = F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1)
        if i in wanted:
            out[wanted[i]] = x
        x = F.relu(x)
    return out


def test_features_are_pre_relu_activations_at_the_right_layers(vgg19):
    x, _ = _images(1)
    got = vgg19(x)
    ref = _reference_features(vgg19.state_dict(), x)
    assert list(got) == list(DEFAULT_LAYER_WEIGHTS["vgg19"])
    for name, value in ref.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-5)
        assert (got[name] < 0).any(), f"{name} has no negative values: taken after a ReLU?"
    assert got["conv1_2"].shape == (2, 64, 16, 16) and got["conv5_4"].shape == (2, 512, 1, 1)


def test_runs_only_as_deep_as_needed(vgg19):
    shallow = VGGFeatures(["conv2_2"])
    calls = []
    for i, layer in enumerate(shallow.features):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    out = shallow(_images(2)[0])
    assert list(out) == ["conv2_2"] and max(calls) == 7


def test_frozen_and_eval():
    feats = VGG19Features(["conv1_2"])
    feats.train()
    assert not feats.training and not any(p.requires_grad for p in feats.parameters())


def test_loss_zero_for_identical_positive_otherwise_and_weighted_sum(vgg19_file, vgg19):
    loss = PerceptualLoss(vgg19_file)
    x, y = _images(3)
    assert loss(x, x.clone()).item() == 0.0
    value = loss(x, y)
    assert value.item() > 0
    fx, fy = vgg19(x), vgg19(y)
    expected = sum(w * (fx[k] - fy[k]).abs().mean() for k, w in DEFAULT_LAYER_WEIGHTS["vgg19"].items())
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=0)
    scaled = PerceptualLoss(vgg19_file, layer_weights={"conv2_2": 2.0}, weight=0.5)
    torch.testing.assert_close(scaled(x, y), (fx["conv2_2"] - fy["conv2_2"]).abs().mean(), rtol=1e-5, atol=0)


def test_gradient_reaches_sr_only(vgg19_file):
    loss = PerceptualLoss(vgg19_file, layer_weights={"conv1_2": 1.0, "conv3_4": 1.0})
    x, y = _images(4)
    x.requires_grad_(True)
    y.requires_grad_(True)
    loss(x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert y.grad is None
    assert all(p.grad is None for p in loss.parameters())


def test_saved_state_dict_round_trips_strictly(vgg19_file, vgg19, tmp_path):
    loaded = PerceptualLoss(vgg19_file).vgg.state_dict()
    for key, value in vgg19.state_dict().items():
        assert torch.equal(loaded[key], value)
    # torchvision's whole-model file also holds the classifier: accepted, and dropped
    full = dict(vgg19.state_dict())
    full.update({f"classifier.{i}.{p}": torch.zeros(2) for i in (0, 3, 6) for p in ("weight", "bias")})
    torch.save(full, tmp_path / "full.pth")
    assert torch.equal(PerceptualLoss(str(tmp_path / "full.pth")).vgg.features[34].weight, vgg19.features[34].weight)


def test_missing_file_names_path_source_and_the_way_out(tmp_path):
    path = tmp_path / "nowhere" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(FileNotFoundError) as err:
        PerceptualLoss(str(path))
    message = str(err.value)
    assert str(path) in message and VGG19_URL in message
    assert "--model.init_args.perceptual_weight 0" in message and "internet" in message
    with pytest.raises(FileNotFoundError, match="--export-vgg16"):
        PerceptualLoss(str(path), arch="vgg16")


def test_wrong_layout_names_file_and_keys(vgg19, tmp_path):
    state = dict(vgg19.state_dict())
    del state["features.34.bias"]
    state["features.35.weight"] = torch.zeros(1)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        PerceptualLoss(str(path))
    assert (
        str(path) in str(err.value) and "features.34.bias" in str(err.value) and "features.35.weight" in str(err.value)
    )
    state = dict(vgg19.state_dict())
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"features\.0\.weight: \(64, 3, 5, 5\)"):
        PerceptualLoss(str(path))
    good = tmp_path / "good19.pth"
    torch.save(vgg19.state_dict(), good)
    with pytest.raises(ValueError, match="vgg16"):  # a VGG19 file is not a VGG16 one
        PerceptualLoss(str(good), arch="vgg16")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth"):
        PerceptualLoss(str(tmp_path / "junk.pth"))


def test_no_silent_random_weights(vgg19_file):
    with pytest.raises(ValueError, match="random_init=True"):
        PerceptualLoss()
    with pytest.raises(ValueError, match="not both"):
        PerceptualLoss(vgg19_file, random_init=True)
    with pytest.raises(ValueError, match="conv3_4"):
        PerceptualLoss(random_init=True, arch="vgg16", layer_weights={"conv3_4": 1.0})  # a VGG19 name on VGG16
    assert isinstance(PerceptualLoss(random_init=True, layer_weights={"conv1_2": 1.0}), PerceptualLoss)


def test_backbone_kept_out_of_the_state_dict_and_moves_with_to(vgg19_file):
    loss = PerceptualLoss(vgg19_file, layer_weights={"conv1_2": 1.0})
    parent = torch.nn.ModuleDict({"perceptual": loss})
    assert parent.state_dict() == {}
    parent.load_state_dict({}, strict=True)  # a checkpoint without the backbone
    before = loss.vgg.features[0].weight.clone()
    with_backbone = {f"perceptual.vgg.{k}": v for k, v in loss.vgg.state_dict().items()}
    parent.load_state_dict(with_backbone, strict=True)  # and one with it
    assert torch.equal(loss.vgg.features[0].weight, before)
    loss.to(torch.float64)
    assert loss.vgg.features[0].weight.dtype == torch.float64 and loss.vgg.mean.dtype == torch.float64
    x, y = _images(5)
    assert loss(x.double(), y.double()).dtype == torch.float64

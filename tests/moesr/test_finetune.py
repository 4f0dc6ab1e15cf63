import copy

import pytest
import skimage.data
import torch
import torch.nn.functional as F

from datamodules.degradation import ops
from datamodules.degradation.kernels import gaussian_kernels, shift_kernel
from lightning_modules.core.precision import inference_context
from lightning_modules.metrics import psnr_y
from lightning_modules.moesr.crops import can_finetune, crop_probability, gradient_map
from lightning_modules.moesr.finetune import FinetuneObjective, centre_crop, downscale_valid, finetune, flat_region_mask
from lightning_modules.moesr.group_finetune import finetune_group
from lightning_modules.nets.vdsr import ChainedVDSR

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: one thread is much faster


def _kernel(l1: float, l2: float, theta: float, scale: int = 2, size: int = 13) -> torch.Tensor:
    t = torch.tensor
    return gaussian_kernels(size, t([l1]), t([l2]), t([theta]), centre="block", scale=scale)[0]


def _photo(name: str, size: int) -> torch.Tensor:
    img = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    h, w = img.shape[-2:]
    return img[..., h // 2 - size // 2 : h // 2 + size // 2, w // 2 - size // 2 : w // 2 + size // 2]


def _bicubic_net(scale: int = 2, layers: int = 4, channels: int = 8) -> ChainedVDSR:
    """A tiny expert whose residual branches start at zero (= PyTorch bicubic)."""
    torch.manual_seed(0)
    net = ChainedVDSR(scale, layers, channels)
    for stage in net:
        torch.nn.init.zeros_(stage.body[-1].weight)
        torch.nn.init.zeros_(stage.body[-1].bias)
    return net


def _pretrain(net: torch.nn.Module, train: torch.Tensor, degrade, crop: int, steps: int = 300) -> torch.nn.Module:
    """Train ``net`` (L1, Adam 3e-3) on random ``crop`` px HR crops of ``train`` ``(N, 3, H, W)``, 8 per step."""
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    n, _, h, w = train.shape
    for _ in range(steps):
        i, y, x = (torch.randint(0, m, (8,), generator=g) for m in (n, h - crop, w - crop))
        hr = torch.stack([train[a, :, b : b + crop, c : c + crop] for a, b, c in zip(i, y, x, strict=True)])
        loss = F.l1_loss(net(degrade(hr)), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


@pytest.mark.parametrize(("scale", "size"), [(2, 13), (4, 33)])
def test_downscale_valid_is_blur_decimate_interior(scale, size):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 88)
    k = _kernel(2.0 * (5 if scale == 4 else 1), 0.8, 0.4, scale, size)
    valid = downscale_valid(x, k, scale)
    assert valid.shape == (2, 3, (96 - size) // scale + 1, (88 - size) // scale + 1)
    full = ops.blur_decimate(x, k, scale)  # 'same' padding, phase 0
    off = ((size - 1) // 2) // scale  # valid pixel m = padded pixel m + (k-1)/2 / s
    torch.testing.assert_close(valid, full[..., off : off + valid.shape[-2], off : off + valid.shape[-1]])
    assert centre_crop(x, 90, 80).shape[-2:] == (90, 80)


def test_flat_region_mask_is_zero_on_edges_one_on_flat_regions():
    img = torch.full((1, 3, 32, 32), 0.3)
    img[..., 16:] = 0.8  # a vertical step edge between columns 15 and 16
    mask = flat_region_mask(img)
    assert mask.shape == img.shape
    assert torch.all(mask[..., 15:17] == 0)
    assert torch.all(mask[..., :14] > 1 - 1e-6) and torch.all(mask[..., 18:] > 1 - 1e-6)
    ramp = torch.linspace(0, 1, 64).expand(1, 3, 64, 64)  # 1/63 per pixel: unnormalised Sobel gives 8/63
    assert 0.8 < float(flat_region_mask(ramp)[..., 8:-8, 8:-8].mean()) < 0.9


def test_crop_plan_is_seeded_in_bounds_and_prefers_texture():
    g = torch.Generator().manual_seed(0)
    img = torch.full((1, 3, 120, 200), 0.5)
    img[..., 100:] = torch.rand(1, 3, 120, 100, generator=g)  # right half textured
    k = _kernel(2.0, 1.0, 0.0)
    a = FinetuneObjective(img, k, 2, 300, crop_size=48, seed=3)
    b = FinetuneObjective(img, k, 2, 300, crop_size=48, seed=3)
    c = FinetuneObjective(img, k, 2, 300, crop_size=48, seed=4)
    assert a.plan == b.plan and a.plan != c.plan
    assert a.plan.big_size == 48 and a.plan.small_size == 24
    for corners, size in ((a.plan.big, 48), (a.plan.small, 24)):
        tops, lefts = torch.tensor(corners).T
        assert tops.min() >= 0 and lefts.min() >= 0 and tops.max() <= 120 - size and lefts.max() <= 200 - size
        assert (tops % 2 == 0).all() and (lefts % 2 == 0).all()
        centres = lefts + size // 2
        assert (centres >= 100).float().mean() > 0.9  # flat regions are hardly ever chosen
    assert 0.25 < sum(a.plan.rotate_small) / 300 < 0.55
    prob = crop_probability(gradient_map(img), 24)
    assert torch.isclose(prob.sum(), torch.tensor(1.0, dtype=prob.dtype)) and prob[:, :12].sum() == 0
    hr, lr, bic, mask = a.crops(0)
    assert hr.shape[-2:] == (48, 48) and lr.shape[-2:] == (24, 24) and bic.shape == mask.shape == (1, 3, 48, 48)


def test_finetune_reduces_the_self_supervised_loss_inside_inference_mode():
    img = _photo("coffee", 96)
    k = _kernel(3.0, 1.0, 0.7)
    net = ChainedVDSR(2, 4, 8)
    objective = FinetuneObjective(img, k, 2, 40, crop_size=64, seed=7)
    before = objective.evaluate(net, range(8))
    assert set(before) == {"forward", "backward", "interp", "total"}
    reports = []
    with torch.inference_mode():  # as Lightning's test/predict loops
        out = finetune(
            net, img, k, 2, iterations=40, lr_max=1e-3, crop_size=64, seed=7,
            progress=lambda done, total, losses: reports.append((done, total, losses)), progress_every=15,
        )  # fmt: skip
    assert out is net and not net.training
    assert [r[0] for r in reports] == [15, 30, 40] and all(r[1] == 40 for r in reports)
    after = objective.evaluate(net, range(8))
    assert after["total"] < 0.7 * before["total"], (before, after)
    frozen = copy.deepcopy(net)
    finetune(net, img, k, 2, iterations=0)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), frozen.parameters(), strict=True))


def test_finetune_with_the_true_kernel_improves_a_pretrained_expert_and_a_shifted_kernel_does_not():
    """GT-blurred LR, tiny expert pre-trained on that kernel: the true kernel gains, a 1-px misaligned one loses."""
    k = _kernel(3.5, 0.9, 0.6)

    def degrade(hr: torch.Tensor) -> torch.Tensor:
        return ops.quantize(ops.blur_decimate(hr, k, 2))

    train = torch.cat([_photo(n, 192) for n in ("astronaut", "coffee", "rocket")])
    test_hr = _photo("chelsea", 128)
    test_lr = degrade(test_hr)
    net = _pretrain(_bicubic_net(), train, degrade, crop=32)

    def score(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(psnr_y(model(test_lr).clamp(0, 1), test_hr, 2))

    pretrained = score(net)
    assert pretrained > score(_bicubic_net()) + 0.2  # the expert is a (weak) expert for this kernel
    tuned = score(finetune(copy.deepcopy(net), test_lr, k, 2, iterations=40, lr_max=1e-3))
    shifted = score(finetune(copy.deepcopy(net), test_lr, shift_kernel(k, 1.0, 1.0), 2, iterations=40, lr_max=1e-3))
    assert tuned > pretrained + 0.1, (pretrained, tuned)
    assert shifted < tuned - 0.3, (tuned, shifted)


def test_x4_intermediate_term_noise_and_small_images():
    img = _photo("astronaut", 80)
    k4, k2 = _kernel(10.0, 4.0, 0.3, 4, 33), _kernel(2.0, 0.8, 0.3)
    net = _bicubic_net(4, 3, 4)
    obj = FinetuneObjective(img, k4, 4, 3, intermediate_kernel=k2)
    assert obj.plan.big_size == 80 and obj.plan.small_size == 20
    terms = obj.losses(net, 0)
    assert set(terms) == {"forward", "backward", "intermediate", "interp", "total"}
    torch.testing.assert_close(terms["total"], sum(v for n, v in terms.items() if n != "total"))
    clean = FinetuneObjective(img, k4, 4, 3, real=False).losses(net, 1)["backward"]
    noisy = [FinetuneObjective(img, k4, 4, 3, real=True, seed=100).losses(net, 1)["backward"] for _ in range(2)]
    assert noisy[0] == noisy[1] and noisy[0] != clean
    with pytest.raises(TypeError, match="Sequential"):
        FinetuneObjective(img, k4, 4, 1, intermediate_kernel=k2).losses(lambda x: net(x), 0)
    with pytest.raises(ValueError, match="too small"):
        FinetuneObjective(img[..., :30, :30], k4, 4, 1)
    assert can_finetune(80, 80, 4, 33) and not can_finetune(30, 200, 4, 33) and can_finetune(30, 200, 2, 13)


@pytest.mark.slow
def test_x4_finetune_with_the_true_kernel_and_intermediate_term_improves_a_pretrained_expert():
    """x4 (two x2 stages, intermediate term at lambda / 5): the true kernel gains, a 1-px shifted one loses (~25 s)."""
    params = torch.tensor([[3.5 * 5, 0.9 * 5, 0.6]])
    k4 = gaussian_kernels(33, *params.T, centre="block", scale=4)[0]
    k2 = gaussian_kernels(13, params[:, 0] / 5, params[:, 1] / 5, params[:, 2], centre="block", scale=2)[0]

    def degrade(hr: torch.Tensor) -> torch.Tensor:
        return ops.quantize(ops.blur_decimate(hr, k4, 4))

    train = torch.cat([_photo(n, 256) for n in ("astronaut", "coffee", "rocket")])
    test_hr = _photo("chelsea", 256)
    test_lr = degrade(test_hr)
    net = _pretrain(_bicubic_net(4), train, degrade, crop=64)

    def score(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(psnr_y(model(test_lr).clamp(0, 1), test_hr, 4))

    pretrained = score(net)
    tuned = score(finetune(copy.deepcopy(net), test_lr, k4, 4, iterations=40, lr_max=1e-3, intermediate_kernel=k2))
    shifted = shift_kernel(k4, 1.0, 1.0)
    moved = score(finetune(copy.deepcopy(net), test_lr, shifted, 4, iterations=40, lr_max=1e-3, intermediate_kernel=k2))
    assert tuned > pretrained + 0.03, (pretrained, tuned)
    assert moved < tuned - 0.3, (tuned, moved)


@pytest.mark.parametrize(("scale", "real"), [(2, False), (4, True)])
def test_grouped_finetuning_equals_one_image_at_a_time(scale, real):
    torch.manual_seed(0)
    size = {2: 13, 4: 33}[scale]
    nets = [ChainedVDSR(scale, 3, 4) for _ in range(3)]
    lrs = [torch.rand(1, 3, 72, 80) for _ in range(3)]
    kernels = [torch.softmax(torch.randn(size * size), 0).reshape(size, size) for _ in range(3)]
    mids = [torch.softmax(torch.randn(169), 0).reshape(13, 13) for _ in range(3)] if scale == 4 else None
    options = {"crop_size": 40, "real": real, "seed": 5}
    grouped = finetune_group(nets, lrs, kernels, scale, iterations=4, lr_max=1e-3, intermediate_kernels=mids, **options)
    for i, net in enumerate(nets):
        alone = finetune(copy.deepcopy(net), lrs[i], kernels[i], scale, iterations=4, lr_max=1e-3,
                         intermediate_kernel=None if mids is None else mids[i], **options)  # fmt: skip
        pairs = zip(alone.state_dict().values(), net.state_dict().values(), strict=True)
        moved = max((a - b).abs().max() for a, b in pairs)
        assert moved > 1e-4  # fine-tuning changed the weights, so the comparison below means something
        for (key, a), b in zip(alone.state_dict().items(), grouped[i].state_dict().values(), strict=True):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=key)
    with pytest.raises(ValueError, match="one size"):
        finetune_group(nets[:2], [lrs[0], torch.rand(1, 3, 72, 84)], kernels[:2], scale, iterations=1)


def test_bf16_finetuning_inside_one_autocast_context_tracks_float32():
    """The whole per-image work runs inside one autocast context (the bf16 path): each step must use its own weights.

    Autocast caches weight casts until its outermost context exits; without ``fresh_casts`` every step would run the
    first step's bfloat16 weights, and the float32 weights would drift blindly (a 6 dB loss on DIV2KRK).
    """
    img = _photo("coffee", 96)
    k = _kernel(3.0, 1.0, 0.7)
    torch.manual_seed(0)
    start = ChainedVDSR(2, 4, 16)
    objective = FinetuneObjective(img, k, 2, 60, crop_size=64, seed=7)
    before = objective.evaluate(start, range(60))["total"]
    tuned = {}
    for path in ("fp32", "bf16"):
        net = copy.deepcopy(start)
        with torch.inference_mode(), inference_context(path, "cpu"):
            finetune(net, img, k, 2, iterations=60, lr_max=3e-3, crop_size=64, seed=7)
        tuned[path] = objective.evaluate(net, range(60))["total"]
    assert tuned["fp32"] < 0.8 * before
    assert abs(tuned["bf16"] - tuned["fp32"]) < 0.05 * (before - tuned["fp32"]), (before, tuned)

"""Variational mixture of networks (Wang et al. 2020): kernel set, degradation, nets, ELBO, variants, CLI, learning."""

import csv
import functools
import json
import math
import pathlib

import numpy as np
import pytest
import scipy.ndimage
import torch
import yaml
from PIL import Image

from callbacks.posterior_pca import pca_project
from datamodules.degradation.kernels import gaussian_kernels
from datamodules.degradation.kernels import mixture as mkern
from datamodules.degradation.ops import resize, rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from datamodules.degradation.pipelines import mixture as mdeg
from datamodules.generate import write_mixture_set
from datamodules.images import builtin_photo_paths, find_images
from datamodules.io import load_rgb
from lightning_modules.core.cli import cli_main
from lightning_modules.core.stages import CheckpointError
from lightning_modules.mixture.elbo import (
    branch_errors,
    expected_reconstruction,
    hard_mixture,
    kl_categorical,
    soft_mixture,
)
from lightning_modules.mixture.enet_pretrain import ENetPretrain
from lightning_modules.mixture.joint import MixtureSR
from lightning_modules.nets.mixture import ENet, KernelClassifierHead, MixtureBranches
from tests.conftest import REPO
from tests.mixture.helpers import TINY_ENET, fake_enet_checkpoint

TINY_DATA = [
    "--data.init_args.batch_size=4", "--data.init_args.patch_size=12", "--data.init_args.val_patch_size=16",
    "--data.init_args.num_workers=0", "--data.init_args.val_batch_size=4", "--trainer.logger=false",
    "--data.init_args.train_dirs=[builtin]", "--data.init_args.val_dirs=[builtin]",  # tests never read ../shared
]  # fmt: skip
TINY_MIXTURE = [
    "--model.init_args.num_branches=2", "--model.init_args.channels=4", "--model.init_args.mapping_layers=1",
    f"--model.init_args.enet_channels=[{','.join(map(str, TINY_ENET))}]",
]  # fmt: skip
SMOKE = ["-c", str(REPO / "configs/trainer/smoke.yaml")]
PRETRAIN_COMMAND = "python main.py fit -c configs/mixture/enet_pretrain.yaml"
pytestmark = pytest.mark.filterwarnings(
    "ignore:You are trying to `self.log\\(\\)`", "ignore:.*args parameter is intended", "ignore:Found .* in eval mode"
)


def tiny_mixture(variant="ours", tmp_path=None, **kw):
    args = {"num_branches": 2, "channels": 4, "mapping_layers": 1, "enet_channels": TINY_ENET, **kw}
    model = MixtureSR(variant=variant, **args)
    if model.uses_pretraining:
        model.load_pretrained_enet(str(fake_enet_checkpoint(tmp_path / "enet.ckpt", args["num_branches"], seed=1)))
    return model


def degraded_batch(batch=4, hr_size=32, scale=2, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(batch, 3, hr_size, hr_size, generator=g)
    return mdeg.MixtureDegradation(scale, **kw)(hr, g)


# ---------------------------------------------------------------------------------------------- kernel set
def test_paper_count_58_is_52_distinct_kernels_plus_6_theta_pi_duplicates():
    paper = mkern.paper_kernel_list()
    distinct = mkern.distinct_kernel_params()
    assert len(paper["lambda1"]) == 58 and len(distinct["lambda1"]) == 52
    iso = distinct["lambda1"] == distinct["lambda2"]
    assert int(iso.sum()) == 4 and int((~iso).sum()) == 48 == 6 * 8
    assert set(distinct["lambda1"].tolist()) | set(distinct["lambda2"].tolist()) == {0.75, 1.5, 2.25, 3.0}
    assert bool((distinct["lambda1"] >= distinct["lambda2"]).all())
    steps = distinct["theta"] / (math.pi / 8)
    assert torch.allclose(steps, steps.round(), atol=1e-9) and steps.min() == 0 and steps.max() == 7
    # the 6 entries at theta = pi are the same kernels as their theta = 0 twins
    at_pi = paper["angle_step"] == 8
    assert int(at_pi.sum()) == 6
    bank58 = gaussian_kernels(11, paper["lambda1"], paper["lambda2"], paper["theta"], param="var")
    torch.testing.assert_close(bank58, mkern.mixture_kernels(paper["distinct_id"].tolist(), dtype=torch.float64))
    assert len(set(paper["distinct_id"].tolist())) == 52
    # the 52 are pairwise different kernels
    bank = mkern.mixture_kernels(list(range(52)), dtype=torch.float64)
    dist = (bank[:, None] - bank[None]).abs().sum(dim=(-2, -1)) + 10 * torch.eye(52, dtype=torch.float64)
    assert float(dist.min()) > 0.05


def test_kernels_are_centred_gaussians_with_the_stated_covariance():
    p = mkern.distinct_kernel_params()
    bank = mkern.mixture_kernels(list(range(52)), dtype=torch.float64)
    assert bank.shape == (52, 11, 11)
    torch.testing.assert_close(bank.sum(dim=(-2, -1)), torch.ones(52, dtype=torch.float64))
    yy, xx = torch.meshgrid(torch.arange(11.0, dtype=torch.float64), torch.arange(11.0, dtype=torch.float64),
                            indexing="ij")  # fmt: skip
    for i in range(52):
        k = bank[i]
        mx, my = (k * xx).sum(), (k * yy).sum()
        assert abs(float(mx) - 5) < 1e-9 and abs(float(my) - 5) < 1e-9  # centred on pixel (5, 5)
        dx, dy = xx - mx, yy - my
        cov = torch.stack([torch.stack([(k * dx * dx).sum(), (k * dx * dy).sum()]),
                           torch.stack([(k * dx * dy).sum(), (k * dy * dy).sum()])])  # fmt: skip
        evals, evecs = torch.linalg.eigh(cov)
        # eigenvalues = the variances, up to the truncation of the 11x11 support (< 8 % for variance 3)
        assert abs(float(evals[1]) / float(p["lambda1"][i]) - 1) < 0.08
        assert abs(float(evals[0]) / float(p["lambda2"][i]) - 1) < 0.08
        if p["lambda1"][i] != p["lambda2"][i]:  # principal axis at theta (mod pi), x = column
            angle = math.atan2(float(evecs[1, 1]), float(evecs[0, 1])) % math.pi
            diff = abs(angle - float(p["theta"][i]))
            assert min(diff, math.pi - diff) < 0.01  # (the square support tilts it by up to ~1e-3 rad)


def test_split_sizes_isotropic_placement_and_determinism():
    split = mkern.make_split(seed=0)
    assert len(split.seen) == 29 and len(split.unseen) == 23
    assert sorted(split.seen + split.unseen) == list(range(52))
    assert int(mkern.is_isotropic(list(split.seen)).sum()) == 0  # as in the official test file:
    assert int(mkern.is_isotropic(list(split.unseen)).sum()) == 4  # all 4 isotropic kernels are unseen
    assert mkern.make_split(seed=0) == split
    assert mkern.make_split(seed=1).seen != split.seen
    seen_iso = mkern.make_split(seed=0, isotropic="seen")
    assert len(seen_iso.seen) == 29 and int(mkern.is_isotropic(list(seen_iso.seen)).sum()) == 4


def test_split_file_is_written_on_first_use_read_back_and_checked(tmp_path):
    path = tmp_path / "split" / "kernel_split.json"
    deg = mdeg.MixtureDegradation(2, split_file=str(path))
    assert not path.exists()  # constructing (e.g. instantiating a config) writes nothing
    deg.sample(torch.Size((2, 3, 32, 32)), torch.Generator().manual_seed(0), "cpu")
    assert path.is_file()
    assert mkern.load_or_make_split(path, seed=0) == deg.split
    with pytest.raises(ValueError, match="seed=0.*seed=3"):
        mkern.load_or_make_split(path, seed=3)
    data = json.loads(path.read_text())
    data["seen_kernels"][0]["lambda1"] = 9.0
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not match"):
        mkern.load_or_make_split(path, seed=0)


# --------------------------------------------------------------------------------------------- degradation
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_degradation_equals_official_scipy_correlate_and_pil_nearest(scale):
    rng = np.random.RandomState(scale)
    hr = rng.rand(3, 8 * scale, 9 * scale)
    deg = mdeg.MixtureDegradation(scale, quantize=False)
    assert deg.phase == scale // 2  # PIL NEAREST keeps pixel floor((i + 0.5) * s)
    idx = torch.tensor([5])
    kernel = deg.kernels(idx)[0].double().numpy()
    out = deg.apply(torch.from_numpy(hr)[None], {"kernel_index": idx})
    for c in range(3):
        blurred = scipy.ndimage.correlate(hr[c], kernel)  # official: correlate, default 'reflect' border
        h, w = hr.shape[1:]
        ref = np.asarray(Image.fromarray(blurred.astype(np.float32), mode="F").resize((w // scale, h // scale),
                                                                                       Image.NEAREST))  # fmt: skip
        np.testing.assert_allclose(out["lr"][0, c].numpy(), ref, atol=1e-6)


def test_sampled_labels_index_the_seen_kernels():
    b = degraded_batch(batch=64)
    split = mkern.make_split(0)
    idx, kid = b["params"]["kernel_index"], b["params"]["kernel_id"]
    assert int(idx.min()) >= 0 and int(idx.max()) < 29
    assert kid.tolist() == [split.seen[i] for i in idx.tolist()]
    torch.testing.assert_close(b["kernel"], mkern.mixture_kernels(kid.tolist()))
    assert b["lr"].shape == (64, 3, 16, 16) and bool(((b["lr"] * 255).round() == b["lr"] * 255).all())


# -------------------------------------------------------------------------------------------------- nets
def test_enet_is_table_1():
    net = ENet()
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert all(c.stride == (2, 2) and c.kernel_size == (3, 3) for c in convs)
    kinds = [type(m).__name__ for m in net.features]
    assert kinds == ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 4
    assert isinstance(net.pool, torch.nn.AdaptiveAvgPool2d) and net.dropout.p == 0.5
    assert (net.fc.in_features, net.fc.out_features) == (256, 4)
    y = torch.rand(3, 1, 24, 24)
    assert net(y).shape == (3, 4)
    net.eval()
    torch.testing.assert_close(net(y), net(y))  # no dropout at evaluation
    head = KernelClassifierHead(4, 29)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 64), (64, 29)]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_branches_are_table_2_and_batched_equals_separate(scale):
    torch.manual_seed(scale)
    net = MixtureBranches(scale, num_branches=4)
    assert len(net.mapping) == 9 and net.head.out_channels == 4 * 64
    assert net.deconv.kernel_size == (scale + 2, scale + 2) and net.deconv.stride == (scale, scale)
    assert net.deconv.out_channels == 4 * 8 and net.tail.out_channels == 4
    y = torch.rand(2, 1, 7, 9)
    out = net(y)
    assert out.shape == (2, 4, 7 * scale, 9 * scale)
    one = sum(p.numel() for p in MixtureBranches(scale, num_branches=1).parameters())
    table2 = (9 * 64 + 64) + 9 * (64 * 64 * 9 + 64) + (64 * 8 * (scale + 2) ** 2 + 8) + (8 * 9 + 1)
    assert one == table2 and sum(p.numel() for p in net.parameters()) == 4 * one
    separate = torch.cat([net.branch(i)(y) for i in range(4)], dim=1)
    torch.testing.assert_close(out, separate, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ ELBO parts (item 3)
def test_kl_is_zero_exactly_when_q_equals_p_and_positive_otherwise():
    torch.manual_seed(0)
    log_p = torch.log_softmax(torch.randn(16, 4), dim=1)
    assert bool((kl_categorical(log_p, log_p) == 0).all())
    log_q = torch.log_softmax(torch.randn(16, 4), dim=1)
    kl = kl_categorical(log_q, log_p)
    assert bool((kl > 0).all())
    q = log_q.exp()
    torch.testing.assert_close(kl, (q * (q / log_p.exp()).log()).sum(1))
    # a component with q = 0 contributes nothing; a tiny change of q gives a small positive KL
    zero = torch.tensor([[0.0, 1.0]]).log()
    assert float(kl_categorical(zero, torch.tensor([[0.5, 0.5]]).log())) == pytest.approx(math.log(2))
    assert 0 < float(kl_categorical(torch.log_softmax(log_p[:1] + 1e-3 * torch.randn(1, 4), 1), log_p[:1])) < 1e-5


def test_gradient_step_on_kl_moves_q_towards_the_prior():
    torch.manual_seed(1)
    p = torch.softmax(torch.randn(8, 4), dim=1)
    logits = torch.randn(8, 4, requires_grad=True)
    q0 = torch.softmax(logits, 1).detach()
    kl = kl_categorical(torch.log_softmax(logits, 1), p.log())
    kl.sum().backward()
    # d KL(q || p) / d logits = q (log q - log p - KL); the reverse KL(p || q) would give q - p
    forward = q0 * (q0.log() - p.log() - kl.detach()[:, None])
    torch.testing.assert_close(logits.grad, forward)
    assert float((logits.grad - (q0 - p)).abs().max()) > 0.05
    torch.testing.assert_close(kl.detach(), (q0 * (q0.log() - p.log())).sum(1))
    assert float((kl.detach() - (p * (p.log() - q0.log())).sum(1)).abs().max()) > 0.05
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    q1 = torch.softmax(logits, 1).detach()
    assert bool(((q1 - p).abs().sum(1) < (q0 - p).abs().sum(1)).all())
    assert bool((kl_categorical(q1.log(), p.log()) < kl.detach()).all())


def test_system_kl_is_zero_with_the_pretrained_posterior_and_its_gradient_pulls_q_back(tmp_path):
    """The system's KL is KL(q || q_pretrained) (Eq. 12), in value and gradient, not KL(q_pretrained || q)."""
    model = tiny_mixture("ours", tmp_path, dropout=0.0, num_branches=4).eval()
    b = degraded_batch(batch=8)
    y = rgb_to_y(b["lr"])
    parts = model._parts(b["lr"])
    assert bool((model.elbo_terms(parts, rgb_to_y(b["hr"]))["kl"] == 0).all())  # q = pre-trained posterior
    with torch.no_grad():
        model.enet.fc.bias += torch.tensor([1.5, -1.0, 0.5, -1.0])
    kl = model.elbo_terms(model._parts(b["lr"]), rgb_to_y(b["hr"]))["kl"]
    assert bool((kl > 0).all())
    with torch.no_grad():
        log_q, log_p = torch.log_softmax(model.enet(y), 1), torch.log_softmax(model.prior(y), 1)
    q, p = log_q.exp(), log_p.exp()
    forward, reverse = (q * (log_q - log_p)).sum(1), (p * (log_p - log_q)).sum(1)
    assert float((forward - reverse).abs().min()) > 1e-3  # the two directions differ on every image
    torch.testing.assert_close(kl.detach(), forward)
    kl.sum().backward()
    # fc.bias adds to the scores: d KL(q || p) / d bias = sum over images of q (log q - log p - KL)
    grad_forward = (q * (log_q - log_p - forward[:, None])).sum(0)
    torch.testing.assert_close(model.enet.fc.bias.grad, grad_forward)
    assert float((grad_forward - (q - p).sum(0)).abs().max()) > 1e-2  # what KL(p || q) would give
    assert model.enet.fc.bias.grad[0] > 0 and model.enet.fc.bias.grad[1] < 0  # descent undoes the perturbation
    assert all(p.grad is None for p in model.prior.parameters())
    assert model.log_prior(y).requires_grad is False


def test_expected_reconstruction_is_the_q_weighted_sum_of_branch_errors(tmp_path):
    model = tiny_mixture("ours", tmp_path).eval()
    b = degraded_batch()
    y_lr, y_hr = rgb_to_y(b["lr"]), rgb_to_y(b["hr"])
    with torch.no_grad():
        terms = model.elbo_terms(model._parts(b["lr"]), y_hr)
        q = torch.softmax(model.enet(y_lr), 1)
        base = resize(y_lr, scale=2, convention="matlab")
        by_hand = torch.zeros(y_lr.shape[0])
        for m in range(2):
            err = ((base + model.branches.branch(m)(y_lr) - y_hr) ** 2).sum(dim=(1, 2, 3))
            by_hand += q[:, m] * err
    torch.testing.assert_close(terms["recon"], by_hand, rtol=1e-5, atol=1e-6)
    errs = branch_errors(torch.rand(2, 3, 5, 5), torch.rand(2, 1, 5, 5))
    w = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(expected_reconstruction(w, errs), (w * errs).sum(1))


def test_soft_mixture_output_is_the_weighted_sum_of_branches_plus_bicubic(tmp_path):
    model = tiny_mixture("ours", tmp_path).eval()
    lr = degraded_batch()["lr"]
    with torch.no_grad():
        sr = model.super_resolve(lr)
        ycc = rgb_to_ycbcr(lr)
        y_lr = ycc[:, :1]
        q = torch.softmax(model.enet(y_lr), 1)
        by_hand = resize(y_lr, scale=2, convention="matlab")
        for m in range(2):
            by_hand = by_hand + q[:, m, None, None, None] * model.branches.branch(m)(y_lr)
        torch.testing.assert_close(rgb_to_y(sr), by_hand, atol=1e-5, rtol=0)
        torch.testing.assert_close(rgb_to_ycbcr(sr)[:, 1:], resize(ycc[:, 1:], scale=2, convention="matlab"),
                                   atol=1e-5, rtol=0)  # fmt: skip
        # hard selection takes the branch of maximum posterior; the average uses q = 1/M
        res = model.branches(y_lr)
        base = resize(y_lr, scale=2, convention="matlab")
        model.inference = "hard"
        pick = q.argmax(1)
        hard = base + torch.stack([res[i, pick[i]] for i in range(len(pick))])[:, None]
        torch.testing.assert_close(rgb_to_y(model.super_resolve(lr)), hard, atol=1e-5, rtol=0)
        torch.testing.assert_close(hard_mixture(q, res, base), hard)
        model.inference = "average"
        torch.testing.assert_close(rgb_to_y(model.super_resolve(lr)), base + res.mean(1, keepdim=True), atol=1e-5,
                                   rtol=0)  # fmt: skip
    weights, ones, zeros = torch.tensor([[0.25, 0.75]]), torch.ones(1, 2, 3, 3), torch.zeros(1, 1, 3, 3)
    torch.testing.assert_close(soft_mixture(weights, ones * torch.tensor([4.0, 0.0])[None, :, None, None], zeros),
                               torch.ones(1, 1, 3, 3))  # fmt: skip


def test_ycbcr_round_trip_and_matlab_y():
    x = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(x)), x)
    from lightning_modules.metrics import rgb_to_y_matlab

    torch.testing.assert_close(rgb_to_y(x) * 255, rgb_to_y_matlab(x))


def test_tiled_inference_uses_the_whole_image_posterior(tmp_path):
    model = tiny_mixture("ours", tmp_path).eval()
    model.tile_size, model.tile_overlap = 8, 4
    lr = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(model._tiled(lr), model.super_resolve(lr), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- variants
@pytest.mark.parametrize("variant", ["ours", "average", "no_pretrain", "hard", "hard_alternating"])
def test_every_variant_trains_one_step(variant, tmp_path, monkeypatch):
    model = tiny_mixture(variant, tmp_path)
    opt = model.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == ([1e-2] if variant == "average" else [1e-2, 1e-4])
    b = degraded_batch(batch=4, hr_size=48)
    phases = ["branches", "enet"] if variant == "hard_alternating" else [None]
    for phase in phases:
        if phase is not None:
            monkeypatch.setattr(model, "alternating_phase", lambda phase=phase: phase)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt.zero_grad()
        loss = model.training_step(b, 0)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.6)
        opt.step()
        branch_moved = any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if "branches" in k)
        if phase == "branches":  # E-Net fixed: its weights and its BatchNorm statistics
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith("enet."))
        enet_moved = any(not torch.equal(before[k], v) for k, v in model.state_dict().items()
                         if k.startswith("enet.") and "running" not in k and "batches" not in k)  # fmt: skip
        assert branch_moved == (phase != "enet")
        assert enet_moved == (variant != "average" and phase != "branches")
        if model.prior is not None:
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith("prior."))
    assert (model.enet is None) == (variant == "average")
    assert (model.prior is None) == (variant not in ("ours", "hard"))
    expected = {"ours": "soft", "no_pretrain": "soft", "average": "average"}.get(variant, "hard")
    assert model.inference == expected


def test_hard_alternating_selects_with_enet_fixed_in_eval_mode(tmp_path, monkeypatch):
    """Branch phase: E-Net selects in eval mode (no dropout, running statistics used and left as they are)."""
    model = tiny_mixture("hard_alternating", tmp_path, dropout=0.5).train()
    with torch.no_grad():  # pre-trained statistics differ from a fresh BatchNorm's (0, 1)
        for m in model.enet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    monkeypatch.setattr(model, "alternating_phase", lambda: "branches")
    b = degraded_batch(batch=8, hr_size=48)
    before = {k: v.clone() for k, v in model.enet.state_dict().items()}
    assert any(k.endswith("num_batches_tracked") for k in before) and any("running_var" in k for k in before)
    with torch.no_grad():
        losses = [float(model.training_step(b, 0)) for _ in range(6)]
    for key, value in model.enet.state_dict().items():  # running_mean/var and num_batches_tracked included
        assert torch.equal(before[key], value), key
    assert model.enet.training  # the mode is given back for the E-Net phase
    assert len(set(losses)) == 1, losses  # dropout off: the same selection every time
    with torch.no_grad():
        y, y_hr = rgb_to_y(b["lr"]), rgb_to_y(b["hr"])
        model.enet.eval()
        pick = model.enet(y).argmax(1)
        model.enet.train()
        errors = branch_errors(resize(y, scale=2, convention="matlab") + model.branches(y), y_hr)
    assert losses[0] == pytest.approx(float(errors.gather(1, pick[:, None]).mean()), rel=1e-6)


def test_prior_stays_in_eval_mode_and_uniform_without_pretraining(tmp_path):
    model = tiny_mixture("ours", tmp_path).train()
    assert model.enet.training and not model.prior.training
    y = torch.rand(3, 1, 12, 12)
    torch.testing.assert_close(tiny_mixture("no_pretrain").log_prior(y).exp(), torch.full((3, 2), 0.5))


# --------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def enet_ckpt(tmp_path_factory):
    """Run the pre-training stage through the CLI (enet_pretrain.yaml + smoke) and keep its last.ckpt."""
    tmp = tmp_path_factory.mktemp("enet_pretrain")
    ckpt_cfg = tmp / "ckpt.yaml"
    ckpt_cfg.write_text(yaml.safe_dump({"trainer": {"enable_checkpointing": True, "callbacks": [
        {"class_path": "callbacks.checkpoint.StageCheckpoint",
         "init_args": {"dirpath": str(tmp / "enet_x{scale}")}}]}}))  # fmt: skip
    cli = cli_main(["fit", "-c", str(REPO / "configs/mixture/enet_pretrain.yaml"), *SMOKE, "-c", str(ckpt_cfg),
                    *TINY_DATA, f"--model.init_args.enet_channels=[{','.join(map(str, TINY_ENET))}]",
                    "--model.init_args.num_states=2", f"--trainer.default_root_dir={tmp}",
                    f"--data.init_args.degradation.init_args.split_file={tmp / 'split.json'}"])  # fmt: skip
    assert cli.trainer.global_step == 4 and (tmp / "split.json").is_file()
    assert "val/acc" in cli.trainer.callback_metrics
    return tmp / "enet_x2" / "last.ckpt"


def test_mixture_fit_and_test_through_the_cli_with_pca_plot(enet_ckpt, tiny_test_set, tmp_path):
    cli = cli_main(["fit", "-c", str(REPO / "configs/mixture/joint.yaml"), *SMOKE, *TINY_DATA, *TINY_MIXTURE,
                    f"--model.init_args.enet_ckpt={enet_ckpt}", f"--trainer.default_root_dir={tmp_path}",
                    f"--data.init_args.degradation.init_args.split_file={enet_ckpt.parent.parent / 'split.json'}",
                    "--trainer.callbacks+=callbacks.posterior_pca.PosteriorPCALogger"])  # fmt: skip
    model = cli.model
    assert cli.trainer.global_step == 4 and cli.trainer.gradient_clip_val == 0.6
    assert cli.trainer.gradient_clip_algorithm == "value"
    # the prior is the pre-trained E-Net, frozen
    pre = torch.load(enet_ckpt, weights_only=True)["state_dict"]
    for k, v in model.prior.state_dict().items():
        torch.testing.assert_close(v, pre[f"enet.{k}"])
    assert {"val/loss", "val/psnr_y", "train/kl"} <= set(cli.trainer.callback_metrics)
    pngs = sorted(pathlib.Path(model.run_dir).glob("posterior_pca/*.png"))  # in this run's own folder
    assert pngs and str(model.run_dir).startswith(str(tmp_path))
    assert pngs and Image.open(pngs[-1]).size[0] > 300
    pts = np.load(str(pngs[-1]).replace(".png", ".npz"))
    assert pts["q"].shape == (len(pts["kernel_id"]), 2) and set(pts["group"].tolist()) == {0, 1}
    # test the trained model on a written test set, with hard selection chosen at test time
    ckpt = tmp_path / "mixture.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    res = tmp_path / "res"
    cli = cli_main(["test", "-c", str(REPO / "configs/mixture/joint.yaml"), *SMOKE, *TINY_DATA, *TINY_MIXTURE,
                    f"--ckpt_path={ckpt}", "--model.init_args.inference=hard",
                    f"--data.init_args.test_set={tiny_test_set}", f"--model.init_args.output_dir={res}",
                    f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert cli.model.variant == "ours" and cli.model.inference == "hard"
    rows = list(csv.DictReader((res / "test_results.csv").open()))
    assert len(rows) == 24 and rows[-1]["name"] == "mean" and 15 < float(rows[-1]["psnr_y"]) < 60


def test_missing_enet_checkpoint_names_the_file_and_the_pretraining_command(tmp_path):
    missing = tmp_path / "nope" / "last.ckpt"
    with pytest.raises(CheckpointError, match=rf"(?s){missing}.*does not exist.*{PRETRAIN_COMMAND}"):
        cli_main(["fit", "-c", str(REPO / "configs/mixture/joint.yaml"), *SMOKE, *TINY_DATA, *TINY_MIXTURE,
                  f"--model.init_args.enet_ckpt={missing}", f"--trainer.default_root_dir={tmp_path}",
                  f"--data.init_args.degradation.init_args.split_file={tmp_path / 'split.json'}"])  # fmt: skip
    model = MixtureSR(variant="ours", scale=4, enet_channels=TINY_ENET)
    assert model.enet_ckpt_path == "checkpoints/mixture/enet_x4/last.ckpt"
    with pytest.raises(CheckpointError, match="input_norm=True"):
        model2 = tiny_mixture("no_pretrain")
        model2.uses_pretraining = True
        model2.load_pretrained_enet(str(fake_enet_checkpoint(tmp_path / "n.ckpt", input_norm=True)))


def test_enet_checkpoint_of_another_scale_or_stage_is_refused(tmp_path):
    model = tiny_mixture("no_pretrain")
    x4 = fake_enet_checkpoint(tmp_path / "x4.ckpt")
    ckpt = torch.load(x4, weights_only=True)
    ckpt["hyper_parameters"]["scale"] = 4
    torch.save(ckpt, x4)
    with pytest.raises(CheckpointError, match=rf"(?s)x4 but the model is x2.*{PRETRAIN_COMMAND}"):
        model.load_pretrained_enet(str(x4))
    del ckpt["hyper_parameters"]["input_norm"]  # e.g. a joint-stage checkpoint (it has enet.* weights too)
    torch.save(ckpt, x4)
    with pytest.raises(CheckpointError, match=rf"(?s)no hyper-parameters \['input_norm'\].*{PRETRAIN_COMMAND}"):
        model.load_pretrained_enet(str(x4))


@pytest.mark.parametrize("stage", ["enet_pretrain", "joint"])
def test_stage_configs_instantiate_alone_and_with_the_cpu_piece(stage, tmp_path):
    for extra in ([], ["-c", str(REPO / "configs/mixture/cpu/budget.yaml")]):
        cli = cli_main(["-c", str(REPO / f"configs/mixture/{stage}.yaml"), *extra, "--trainer.logger=false",
                        f"--trainer.default_root_dir={tmp_path}"], run=False)  # fmt: skip
        assert cli.model.scale == cli.datamodule.scale == cli.datamodule.degradation.scale == 2
        assert cli.datamodule.degradation.num_kernels == 29
    assert cli.datamodule.hparams.batch_size == 16  # the CPU piece applied


@pytest.mark.parametrize("stage", ["enet_pretrain", "joint"])
def test_stage_configs_validate_on_images_they_do_not_train_on(stage):
    data = yaml.safe_load((REPO / f"configs/mixture/{stage}.yaml").read_text())["data"]["init_args"]
    cpu = yaml.safe_load((REPO / "configs/mixture/cpu/budget.yaml").read_text())["data"]["init_args"]
    train, val = data["train_dirs"], data["val_dirs"]
    assert (train, val) == (cpu["train_dirs"], cpu["val_dirs"])  # the split of the CPU piece
    assert "builtin" not in train + val
    train_roots = [(REPO / t).resolve() for t in train]
    for v in val:  # no validation folder is, holds or lies inside a training folder
        root = (REPO / v).resolve()
        assert not any(root.is_relative_to(t) or t.is_relative_to(root) for t in train_roots), (v, train)
    if all(r.is_dir() for r in [*train_roots, *((REPO / v).resolve() for v in val)]):  # where ../shared is present
        train_files = {p.resolve() for p in find_images([str(r) for r in train_roots])}
        val_files = {p.resolve() for p in find_images([str((REPO / v).resolve()) for v in val])}
        assert val_files and not train_files & val_files


@pytest.fixture(scope="module")
def tiny_test_set(tmp_path_factory):
    """One 40x40 crop of a built-in photo x the 23 unseen kernels, written by ``write_mixture_set``."""
    tmp = tmp_path_factory.mktemp("mixture_set")
    (tmp / "hr").mkdir()
    crop = load_rgb(builtin_photo_paths()[1])[100:141, 100:141]  # 41 px: mod-cropped to 40
    Image.fromarray(np.ascontiguousarray(crop)).save(tmp / "hr" / "cat.png")
    assert write_mixture_set(tmp / "hr", tmp / "set", scale=2, kernels="unseen") == 23
    return tmp / "set"


# ------------------------------------------------------------------------------------------ it learns
PHOTOS = {p.name: p for p in builtin_photo_paths()}
TRAIN = ("astronaut.png", "coffee.png", "ihc.png", "motorcycle_left.png", "rocket.jpg")
HELD_OUT = ("chelsea.png", "motorcycle_right.png")


@functools.cache
def photo(name):
    return torch.from_numpy(load_rgb(PHOTOS[name]).copy()).permute(2, 0, 1).float() / 255


def textured_crops(names, n, size, g):
    """``n`` random ``size`` crops (RGB float) of the named built-in photos, skipping flat ones (std < 0.05)."""
    imgs = [photo(name) for name in names]
    out = []
    while len(out) < n:
        im = imgs[int(torch.randint(len(imgs), (1,), generator=g))]
        top = int(torch.randint(im.shape[1] - size + 1, (1,), generator=g))
        left = int(torch.randint(im.shape[2] - size + 1, (1,), generator=g))
        crop = im[:, top : top + size, left : left + size]
        if crop.std() >= 0.05:
            out.append(crop)
    return torch.stack(out)


def test_enet_pretraining_beats_chance_on_held_out_images(one_thread):
    """300 SGD steps (E-Net with its 2-layer head, tiny widths, standardised input) on 5 photos, 2 kernels
    (isotropic variance 0.75 vs 3): held-out accuracy on 2 other photos well above chance (0.5)."""
    torch.manual_seed(0)
    deg = mdeg.MixtureDegradation(2, kernel_ids=[0, 51])
    model = ENetPretrain(num_kernels=2, enet_channels=(8, 16, 32, 64), dropout=0.0, input_norm=True)
    opt = model.configure_optimizers()["optimizer"]
    g = torch.Generator().manual_seed(0)
    for step in range(300):
        loss = model.training_step(deg(textured_crops(TRAIN, 16, 96, g), g), step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.6)
        opt.step()
    model.eval()
    g = torch.Generator().manual_seed(1)
    held = deg(textured_crops(HELD_OUT, 256, 96, g), g)
    with torch.no_grad():
        acc = (model.classify(held["lr"]).argmax(1) == held["params"]["kernel_index"]).float().mean()
    assert float(acc) > 0.62, float(acc)  # chance 0.5; 256 samples: one standard deviation is 0.031


def y_psnr(sr, hr):
    mse = (rgb_to_y(sr.clamp(0, 1)) - rgb_to_y(hr)).square().mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1 / mse)).mean())


def test_mixture_beats_bicubic_on_held_out_images(one_thread, tmp_path):
    """150 steps of Eq. (12) ("ours", M = 2 tiny branches, the system's SGD with lr 3e-3 and clipping) on the 29
    seen kernels: the soft mixture beats bicubic on held-out photos."""
    torch.manual_seed(0)
    model = tiny_mixture("ours", tmp_path, channels=8, mapping_layers=2, lr_branches=3e-3)
    deg = mdeg.MixtureDegradation(2)
    opt = model.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    for step in range(150):
        loss = model.training_step(deg(textured_crops(TRAIN, 16, 48, g), g), step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.6)
        opt.step()
    model.eval()
    g = torch.Generator().manual_seed(1)
    held = deg(textured_crops(HELD_OUT, 64, 96, g), g)
    with torch.no_grad():
        ours = y_psnr(model.super_resolve(held["lr"]), held["hr"])
    bicubic = y_psnr(resize(held["lr"], scale=2, convention="matlab"), held["hr"])
    assert ours > bicubic + 0.3, (ours, bicubic)


def test_pca_projection_keeps_the_structure():
    torch.manual_seed(0)
    q = torch.softmax(torch.randn(50, 4), 1)
    proj = pca_project(q)
    assert proj.shape == (50, 3)
    centred = (q - q.mean(0)).double()
    # q lies on the simplex (rank 3 after centring): 3 components keep all pairwise distances
    torch.testing.assert_close(torch.cdist(proj, proj), torch.cdist(centred, centred), atol=1e-6, rtol=0)
    assert float(pca_project(q[:, :2]).abs()[:, 2].max()) == 0  # fewer dimensions than 3: zero-padded

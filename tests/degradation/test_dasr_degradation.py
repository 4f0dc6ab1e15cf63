"""DASR's three-level degradation: the sampler, the batched pipeline, its grouping path and the test-set writer."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from datamodules.degradation import ops
from datamodules.degradation.dasr_params import OFFICIAL_KERNEL_SIZES, PER_BATCH, DASRSampler
from datamodules.degradation.dasr_vector import dasr_vector
from datamodules.degradation.pipelines import DASRDegradation
from datamodules.degradation.pipelines.dasr import _filter2d, gaussian_blur_kernels

pytestmark = pytest.mark.usefixtures("one_thread")


def draw(deg, hr, seed=0):
    return deg.sample(hr.shape, torch.Generator().manual_seed(seed), "cpu")


def test_sampler_named_parameters_ranges_and_explicit_absence():
    sampler = DASRSampler()
    for level in range(3):
        p = sampler.sample(64, torch.Generator().manual_seed(level), "cpu", level=level)
        assert all(v.shape == (64,) for v in p.values())
        for key in PER_BATCH:
            assert (p[key] == p[key][0]).all(), key
        assert set(p["kernel1_size"].tolist()) <= set(OFFICIAL_KERNEL_SIZES) and 7 not in p["kernel1_size"]
        iso = p["kernel1_iso"]
        assert 0.3 < iso.float().mean() < 0.95
        assert torch.equal(p["kernel1_sigma_y"][iso], p["kernel1_sigma_x"][iso])
        assert (p["kernel1_theta"][iso] == 0).all() and (p["kernel1_theta"][~iso] != 0).all()
        assert p["kernel1_theta"].abs().max() <= math.pi
        lo, hi = ((0.2, 0.8), (0.2, 1.5), (0.2, 3.0))[level]
        assert p["kernel1_sigma_x"].min() >= lo and p["kernel1_sigma_x"].max() <= hi
        gauss = p["noise1_type"] == 0
        assert (p["noise1_sigma"][~gauss] == 0).all() and (p["noise1_poisson_scale"][gauss] == 0).all()
        assert (p["noise1_sigma"][gauss] >= 1).all()
        if level < 2:  # one stage: every second-stage entry explicitly absent
            assert not p["blur2_applied"].any() and not p["sinc_applied"].any()
            assert (p["kernel2_size"] == 0).all() and (p["sinc_size"] == 0).all() and (p["sinc_cutoff"] == 0).all()
            for key in ("resize2_mode", "noise2_type", "final_order"):
                assert (p[key] == -1).all(), key
        else:
            assert 0.6 < p["blur2_applied"].float().mean() < 0.95 and 0.6 < p["sinc_applied"].float().mean() < 0.95
            off = ~p["blur2_applied"]
            assert (p["kernel2_size"][off] == 0).all() and (p["kernel2_sigma_x"][off] == 0).all()
            on = p["sinc_applied"]
            assert (p["sinc_cutoff"][on] >= math.pi / 3 - 1e-6).all() and (p["sinc_size"][~on] == 0).all()
            assert set(p["final_order"].tolist()) == {0, 1}


def test_level_frequencies_follow_the_official_probabilities():
    sampler = DASRSampler()
    generator = torch.Generator().manual_seed(0)
    levels = torch.tensor([int(sampler.sample(1, generator, "cpu")["level"]) for _ in range(3000)])
    freq = torch.bincount(levels, minlength=3).float() / len(levels)
    torch.testing.assert_close(freq, torch.tensor([0.3, 0.3, 0.4]), atol=0.03, rtol=0)


def test_kernel_sizes_option_allows_the_nominal_seven():
    p = DASRSampler(kernel_sizes=range(7, 22, 2)).sample(256, torch.Generator().manual_seed(0), "cpu", level=2)
    assert 7 in p["kernel1_size"].tolist()
    with pytest.raises(ValueError, match="odd"):
        DASRSampler(kernel_sizes=(8, 21))


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("level", [0, 1, 2])
def test_apply_shapes_range_and_batch_dict(scale, level):
    deg = DASRDegradation(scale, level=level)
    hr = torch.rand(3, 3, 64, 64)
    out = deg.apply(hr, draw(deg, hr, level))
    assert set(out) == {"hr", "hr_usm", "lr", "params", "vector"}
    assert out["lr"].shape == (3, 3, 64 // scale, 64 // scale) and out["hr_usm"].shape == hr.shape
    assert out["vector"].shape == (3, 33) and out["hr"] is hr
    assert out["lr"].min() >= 0 and out["lr"].max() <= 1
    torch.testing.assert_close(out["lr"] * 255, (out["lr"] * 255).round())  # 8 bit
    assert not torch.equal(out["hr_usm"], hr)
    plain = DASRDegradation(scale, level=level, sharpen_target=False)
    assert plain.apply(hr, out["params"])["hr_usm"] is hr
    # the LR is made from the sharpened HR (official training), or from the HR itself with degrade_sharpened=False
    torch.testing.assert_close(plain.apply(out["hr_usm"], out["params"])["lr"], out["lr"], atol=0, rtol=0)
    unsharpened = DASRDegradation(scale, level=level, degrade_sharpened=False).apply(hr, out["params"])
    torch.testing.assert_close(unsharpened["lr"], plain.apply(hr, out["params"])["lr"], atol=0, rtol=0)
    assert not torch.equal(unsharpened["lr"], out["lr"])


def test_apply_is_deterministic_and_each_sample_independent_of_its_batch():
    deg = DASRDegradation(4, level=2, sharpen_target=False)
    hr = torch.rand(4, 3, 48, 48)
    params = draw(deg, hr, 7)
    lr = deg.apply(hr, params)["lr"]
    torch.testing.assert_close(deg.apply(hr, params)["lr"], lr, atol=0, rtol=0)
    for i in range(4):  # per-sample noise seeds: a sample alone gives its row of the batch
        one = deg.apply(hr[i : i + 1], {k: v[i : i + 1] for k, v in params.items()})["lr"]
        torch.testing.assert_close(one, lr[i : i + 1], atol=0, rtol=0)
    params["noise1_seed"] = params["noise1_seed"] + 1
    assert not torch.equal(deg.apply(hr, params)["lr"], lr)


def test_grouping_equals_applying_each_draw_on_its_own():
    """A batch gathered from several draws (validation with repeats) holds several (level, scale, mode) groups."""
    deg = DASRDegradation(2, sharpen_target=False)
    hr = torch.rand(6, 3, 32, 32)
    draws = [DASRDegradation(2, level=lv).sample(torch.Size((2, 3, 32, 32)), torch.Generator().manual_seed(lv), "cpu")
             for lv in range(3)]  # fmt: skip
    params = {k: torch.cat([d[k] for d in draws]) for k in draws[0]}
    order = torch.tensor([4, 0, 2, 5, 1, 3])  # interleave the groups
    mixed = deg.apply(hr[order], {k: v[order] for k, v in params.items()})
    for g in range(3):
        alone = deg.apply(hr[2 * g : 2 * g + 2], draws[g])["lr"]
        rows = [int((order == 2 * g + j).nonzero()) for j in range(2)]
        torch.testing.assert_close(mixed["lr"][rows], alone, atol=0, rtol=0)
    torch.testing.assert_close(mixed["vector"], dasr_vector({k: v[order] for k, v in params.items()}))
    assert set(mixed["params"]["level"].tolist()) == {0, 1, 2}


@pytest.mark.parametrize("size", [5, 40])
def test_blur_is_basicsr_filter2d_reflect_at_any_size(size):
    x = torch.rand(2, 3, size, size + 3, dtype=torch.float64)
    p = DASRSampler().sample(2, torch.Generator().manual_seed(0), "cpu", level=2)
    k = gaussian_blur_kernels(p, "kernel1").double()
    out = _filter2d(x, k)
    ref = [[ndimage.correlate(x[b, c].numpy(), k[b].numpy(), mode="mirror") for c in range(3)] for b in (0, 1)]
    torch.testing.assert_close(out, torch.from_numpy(np.stack(ref)))  # scipy "mirror" = PyTorch "reflect", any pad
    if size > 10:
        torch.testing.assert_close(out, ops.blur(x, k, border="reflect"))


def test_jpeg_pads_sizes_not_multiple_of_16_by_replication():
    x = torch.rand(2, 3, 37, 29)
    q = torch.tensor([40.0, 90.0])
    padded = torch.nn.functional.pad(x, (0, 3, 0, 11), mode="replicate")
    torch.testing.assert_close(ops.jpeg(x, q), ops.jpeg(padded, q)[..., :37, :29])


def test_sr_datamodule_passes_the_dasr_batch_through(tiny_hr_dir):
    from datamodules.sr_datamodule import SRDataModule

    dm = SRDataModule(
        scale=4, degradation=DASRDegradation(4), val_dirs=[str(tiny_hr_dir)], val_patch_size=16,
        val_batch_size=3, val_degradations=2, num_workers=0,
    )  # fmt: skip
    dm.setup("validate")
    assert all(v.shape[0] == 8 for v in dm.val_params.values())
    batch = next(iter(dm.val_dataloader()))
    out = dm.on_after_batch_transfer(batch, 0)
    assert {"hr", "hr_usm", "lr", "params", "vector", "index"} <= set(out)
    assert out["lr"].shape == (3, 3, 16, 16) and out["vector"].shape == (3, 33)


def test_generator_writes_readable_reproducible_sets(tiny_hr_dir, tmp_path):
    from datamodules.generate import main
    from datamodules.test_sets import open_benchmark

    def run(out, *extra):
        args = ["--protocol", "dasr", "--hr", str(tiny_hr_dir), "--out", str(out), "--scale", "4", "--seed", "3"]
        assert main([*args, *extra]) == 0

    run(tmp_path / "a")
    run(tmp_path / "b")
    run(tmp_path / "c", "--limit", "2", "--levels", "III")
    for name in ("I", "II", "III"):
        a, b = tmp_path / "a" / f"level_{name}", tmp_path / "b" / f"level_{name}"
        ds = open_benchmark(a, 4)
        assert len(ds) == 4 and ds[0]["lr"].shape == (3, 24, 24) and ds[0]["hr"].shape == (3, 96, 96)
        for f in sorted((a / "LR").iterdir()):
            assert f.read_bytes() == (b / "LR" / f.name).read_bytes()
        meta = json.loads((a / "params.json").read_text())
        assert meta == json.loads((b / "params.json").read_text())
        assert meta["level"] == name and len(meta["images"]) == 4 and len(meta["vector_names"]) == 33
        assert all(len(item["vector"]) == 33 for item in meta["images"].values())
    lrs = {n: (tmp_path / "a" / f"level_{n}" / "LR" / "im_1.png").read_bytes() for n in ("I", "II", "III")}
    assert len(set(lrs.values())) == 3  # distinct levels, distinct images
    for n in (1, 2):  # --limit gives the same images as the full run
        name = f"im_{n}.png"
        limited = (tmp_path / "c" / "level_III" / "LR" / name).read_bytes()
        assert limited == (tmp_path / "a" / "level_III" / "LR" / name).read_bytes()
    assert not (tmp_path / "c" / "level_I").exists()
    meta = json.loads((tmp_path / "a" / "level_III" / "params.json").read_text())
    assert meta["images"]["im_1"]["params"]["level"] == 2


def test_generator_command_line_refuses_other_protocols_options(tiny_hr_dir, tmp_path, capsys):
    from datamodules.generate import main

    base = ["--hr", str(tiny_hr_dir), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        main(["--protocol", "dasr", *base, "--scales", "2"])
    assert "--scales: only with --protocol div2krk or kenet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--protocol", "kenet", *base, "--levels", "I"])
    assert "--levels: only with --protocol dasr" in capsys.readouterr().err
    assert main(["--protocol", "dasr", *base, "--scale", "3"]) == 2
    assert "scales 2 and 4" in capsys.readouterr().err


def test_the_training_path_draws_noise_batched_and_deterministically():
    """``forward`` (training) draws the batch's noise at once: the same generator seed gives the same LR, and its
    noise level matches the per-sample path's (``apply``) on a flat image."""
    deg = DASRDegradation(4, level=0, sharpen_target=False)
    hr = torch.full((8, 3, 64, 64), 0.5)
    a = deg(hr, torch.Generator().manual_seed(3))
    b = deg(hr, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a["lr"], b["lr"], rtol=0, atol=0)
    per_sample = deg.apply(hr, a["params"])["lr"]
    assert not torch.equal(per_sample, a["lr"])  # other draws ...
    spread = a["lr"].std(dim=(1, 2, 3)), per_sample.std(dim=(1, 2, 3))
    assert torch.allclose(*spread, rtol=0.35, atol=2 / 255)  # ... of the same noise levels, sample by sample

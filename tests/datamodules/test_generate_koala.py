"""The koalanet and spatially_variant protocols of ``python -m datamodules.generate`` and their readers.

Sets are written from the first crops of the module-scoped ``hr_dir`` fixture (``tests/datamodules/conftest.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.degradation import ops
from datamodules.degradation.kernels import block_centre_to_div2krk_kernel
from datamodules.degradation.koala_sampler import KOALAKernelSampler, block_centre_to_koala
from datamodules.degradation.pipelines import ClassicalDegradation
from datamodules.degradation.spatially_variant import FIELDS, field_blur_decimate, field_kernels
from datamodules.generate import generate_spatially_variant, image_generator, main
from datamodules.io import load_kernel
from datamodules.sv_sets import SpatiallyVariantDataset, load_field
from datamodules.test_sets import DIV2KRKDataset, open_benchmark


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.suffix in (".png", ".mat", ".npy"))


def _koala(hr_dir: Path, out: Path, *extra: str) -> None:
    args = ["--protocol", "koalanet", "--hr", str(hr_dir), "--out", str(out), "--scales", "2", "4", *extra]
    assert main(args) == 0


def _sv(hr_dir: Path, out: Path, *extra: str) -> None:
    assert main(["--protocol", "spatially_variant", "--hr", str(hr_dir), "--out", str(out), *extra]) == 0


@pytest.fixture(scope="module")
def koala_set(hr_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("koala") / "set"
    _koala(hr_dir, out, "--limit", "4")
    return out


@pytest.fixture(scope="module")
def sv_set(hr_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sv") / "set"
    _sv(hr_dir, out, "--scale", "4", "--field", "defocus", "--limit", "3", "--seed", "2")
    return out


# --------------------------------------------------------------------------------------------- koalanet protocol


@pytest.mark.filterwarnings("ignore:.*negative taps:UserWarning")  # k_b's lobes: up to -11 % of the peak
def test_koalanet_set_reads_with_open_benchmark_and_regenerates(koala_set):
    block, native = KOALAKernelSampler(centre="block"), KOALAKernelSampler()
    for scale in (2, 4):
        ds = open_benchmark(koala_set, scale)
        assert isinstance(ds, DIV2KRKDataset) and len(ds) == 4 and ds.has_hr and ds.has_kernels
        deg = ClassicalDegradation(scale, kernel_sampler=native)
        for n, (item, entry) in enumerate(zip(ds, ds.entries, strict=True), start=1):
            params = native.sample(1, image_generator(0, n), "cpu")  # the draw seeded from (seed 0, N)
            size = 19 + scale
            assert item["kernel"].shape == (size, size)
            torch.testing.assert_close(item["kernel"], block.kernels(params, scale)[0])
            # cropped back, it is KOALAnet's native 20x20 kernel (Table 4's ground truth)
            torch.testing.assert_close(block_centre_to_koala(item["kernel"], scale), native.kernels(params, scale)[0])
            # the native kernel, decimated at its own phase, remakes the stored LR exactly
            lr = deg.apply(item["hr"][None].float() / 255, params)["lr"][0]
            assert torch.equal((lr * 255).round().to(torch.uint8), item["lr"]), item["name"]
            exact = load_kernel(entry.kernel_path, "KernelBlockCentred")
            div2krk_way = block_centre_to_div2krk_kernel(exact.double()[None], scale)[0]
            torch.testing.assert_close(load_kernel(entry.kernel_path).double(), div2krk_way)
    readme = (koala_set / "README.txt").read_text()
    assert readme.startswith("KOALAnet-protocol test set") and "--protocol koalanet" in readme
    assert "x2 (kernel 21x21), x4 (kernel 23x23)" in readme and "theta ~ U(0, pi/2)" in readme


def test_koalanet_set_is_seeded_per_image(hr_dir, koala_set, tmp_path):
    again, first2, other = tmp_path / "again", tmp_path / "first2", tmp_path / "other"
    _koala(hr_dir, again, "--limit", "4", "--seed", "0")
    _koala(hr_dir, first2, "--limit", "2")
    _koala(hr_dir, other, "--limit", "2", "--seed", "1")
    files = _files(koala_set)
    assert len(files) == 4 * 5
    for rel in files:
        assert (koala_set / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert len(_files(first2)) == 2 * 5
    for rel in _files(first2):  # --limit gives the same images
        assert (koala_set / rel).read_bytes() == (first2 / rel).read_bytes(), rel
    assert (koala_set / "gt_k_x2/kernel_1.mat").read_bytes() != (other / "gt_k_x2/kernel_1.mat").read_bytes()
    assert (koala_set / "gt/im_1.png").read_bytes() == (other / "gt/im_1.png").read_bytes()


def test_cli_refuses_the_other_protocols_options(hr_dir, tmp_path, capsys):
    base = ["--hr", str(hr_dir), "--out", str(tmp_path / "o")]
    for protocol, option, value in (
        ("koalanet", "--field", "defocus"),
        ("koalanet", "--scale", "2"),
        ("spatially_variant", "--scales", "2"),
        ("spatially_variant", "--kernel-size", "13"),
    ):
        with pytest.raises(SystemExit):
            main(["--protocol", protocol, *base, option, value])
        assert f"{option}: only with --protocol" in capsys.readouterr().err
    assert main(["--protocol", "spatially_variant", *base, "--scale", "3"]) == 2
    assert "scales 2 and 4" in capsys.readouterr().err
    assert main(["--protocol", "koalanet", *base, "--sigma-min", "3", "--sigma-max", "2"]) == 2
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["--protocol", "spatially_variant", *base, "--field", "tilt"])


# --------------------------------------------------------------------------------------------- spatially variant


def test_sv_set_layout_and_reader(sv_set):
    assert sorted(p.name for p in (sv_set / "field_x4").iterdir()) == [
        "field_1.npy", "field_2.npy", "field_3.npy", "width_1.png", "width_2.png", "width_3.png",
    ]  # fmt: skip
    meta = json.loads((sv_set / "kernels.json").read_text())
    assert meta["field"] == "defocus" and meta["scale"] == 4 and meta["seed"] == 2
    assert meta["kernel"]["size"] == 20 and meta["kernel"]["decimation_phase"] == 1
    ds = SpatiallyVariantDataset(sv_set, 4)
    assert len(ds) == 3 and ds.names == ["im_1", "im_2", "im_3"]
    for n, item in enumerate(ds, start=1):
        h, w = item["lr"].shape[-2:]
        assert item["hr"].shape == (3, 4 * h, 4 * w) and item["field"].shape == (3, h, w)
        assert item["kernel_map"].shape == (400, h, w) and item["kernel_map"].dtype == torch.float32
        stored = np.load(sv_set / "field_x4" / f"field_{n}.npy")
        assert stored.shape == (h, w, 3) and stored.dtype == np.float32
        assert torch.equal(item["field"], torch.from_numpy(stored).permute(2, 0, 1))
        torch.testing.assert_close(item["kernel_map"].sum(0), torch.ones(h, w))
        picture = np.asarray(Image.open(sv_set / "field_x4" / f"width_{n}.png"))
        assert picture.shape == (h, w, 3)
        width = (item["field"][0] * item["field"][1]).sqrt()
        sharp, wide = np.unravel_index(width.argmin(), width.shape), np.unravel_index(width.argmax(), width.shape)
        assert picture[sharp].astype(int).sum() < picture[wide].astype(int).sum()  # dark purple -> yellow
    assert "kernel_map" not in SpatiallyVariantDataset(sv_set, 4, kernel_maps=False)[0]
    plain = open_benchmark(sv_set, 4)  # SR metrics read it as a DIV2KRK-layout set without kernels
    assert len(plain) == 3 and plain.has_hr and not plain.has_kernels
    with pytest.raises(ValueError, match="x2"):
        SpatiallyVariantDataset(sv_set, 2)


def test_saved_field_rebuilds_the_kernels_that_made_the_lr(sv_set):
    """The stored float32 field, through ``field_kernels`` in float64, remakes the stored 8-bit LR exactly."""
    ds = SpatiallyVariantDataset(sv_set, 4, kernel_maps=False)
    for n, item in enumerate(ds, start=1):
        field = load_field(sv_set / "field_x4" / f"field_{n}.npy").double()
        lr = field_blur_decimate(item["hr"][None].double() / 255, field[None], 4)
        assert torch.equal((ops.quantize(lr)[0] * 255).round().to(torch.uint8), item["lr"]), n
        # and the field is the one drawn for image N from (seed 2, N)
        h, w = item["lr"].shape[-2:]
        drawn = FIELDS["defocus"](h, w, image_generator(2, n)).float()
        assert torch.equal(drawn, item["field"])
    kernel_map = SpatiallyVariantDataset(sv_set, 4)[0]["kernel_map"]
    torch.testing.assert_close(kernel_map, field_kernels(ds[0]["field"].double()).float(), atol=0, rtol=0)


def test_sv_limit_and_seed(hr_dir, sv_set, tmp_path):
    _sv(hr_dir, tmp_path / "one", "--scale", "4", "--limit", "1", "--seed", "2")
    for rel in _files(tmp_path / "one"):
        assert (sv_set / rel).read_bytes() == (tmp_path / "one" / rel).read_bytes(), rel
    _sv(hr_dir, tmp_path / "two", "--scale", "2", "--field", "two_region", "--limit", "2")
    assert json.loads((tmp_path / "two" / "kernels.json").read_text())["kernel"]["decimation_phase"] == 0
    assert len(SpatiallyVariantDataset(tmp_path / "two", 2)) == 2
    with pytest.raises(FileExistsError):
        generate_spatially_variant(str(hr_dir), tmp_path / "two", 2, "two_region", limit=1)


def test_a_constant_field_gives_the_spatially_invariant_lr(hr_dir, tmp_path, monkeypatch):
    """Through the whole writer: a constant field's LR is ClassicalDegradation(KOALAKernelSampler())'s, 8-bit equal."""
    values = (1.5, 0.75, 0.5)  # exact in float32, so the stored field is the one applied

    def constant(height, width, generator, sigma_range):
        return torch.tensor(values, dtype=torch.float64)[:, None, None].expand(3, height, width).clone()

    monkeypatch.setitem(FIELDS, "constant", constant)
    for scale in (2, 4):
        out = tmp_path / f"x{scale}"
        generate_spatially_variant(str(hr_dir), out, scale, "constant", limit=2)
        names = ("sigma_x", "sigma_y", "theta")
        params = {n: torch.tensor([v], dtype=torch.float64) for n, v in zip(names, values, strict=True)}
        deg = ClassicalDegradation(scale, kernel_sampler=KOALAKernelSampler())
        for item in DIV2KRKDataset(out, scale):
            hr = np.array(Image.open(out / "gt" / f"{item['name']}.png"))
            lr = deg.apply(torch.from_numpy(hr).permute(2, 0, 1)[None].double() / 255, params)["lr"][0]
            assert torch.equal((lr * 255).round().to(torch.uint8), item["lr"]), (scale, item["name"])

"""Tests for datamodules.test_sets (test-set readers); the writer's own tests are in test_generate.py.

A tiny DIV2KRK-layout set is generated in a temporary folder from 11 crops of scikit-image's sample photos (so that
``im_10`` / ``im_11`` test numeric ordering) and read back; nothing here reads ``/work/shared/data``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from datamodules.degradation.kernels import block_centre_to_div2krk_kernel, div2krk_kernel_to_block_centre
from datamodules.images import LRFolderDataset
from datamodules.io import ImageReadError, load_kernel
from datamodules.test_sets import (
    DIV2KRKDataset,
    PairedFolderDataset,
    natural_key,
    open_benchmark,
    pairing_key,
)
from tests.datamodules.conftest import CROP_SIZES, N_IMAGES, crops


def _centre_of_mass(kernel: torch.Tensor) -> tuple[float, float]:
    k = kernel.double()
    idx = torch.arange(k.shape[-1], dtype=torch.float64)
    return float((k.sum(1) * idx).sum() / k.sum()), float((k.sum(0) * idx).sum() / k.sum())


# --------------------------------------------------------------------------------------------- generated set


def test_generated_set_reads_back(rk_set):
    for scale, ksize in ((2, 11), (4, 31)):
        ds = DIV2KRKDataset(rk_set, scale, require_hr=True, require_kernels=True)
        assert len(ds) == N_IMAGES
        assert ds.names == [f"im_{n}" for n in range(1, N_IMAGES + 1)]  # im_10 after im_9, not after im_1
        for n, item in enumerate(ds, start=1):
            assert item["name"] == f"im_{n}"
            h, w = CROP_SIZES[n - 1]
            h4, w4 = h // 4 * 4, w // 4 * 4  # mod-lcm(2, 4) top-left crop
            assert item["hr"].dtype == torch.uint8 and item["lr"].dtype == torch.uint8
            assert tuple(item["hr"].shape) == (3, h4, w4)
            assert tuple(item["lr"].shape) == (3, h4 // scale, w4 // scale)
            assert tuple(item["kernel"].shape) == (ksize, ksize)
            assert item["kernel"].dtype == torch.float32
            assert abs(item["kernel"].sum().item() - 1) < 1e-5
            assert item["kernel"].min().item() >= 0
    # The HR images are top-left crops of the sources.
    crop = crops()[3]
    gt = np.asarray(Image.open(rk_set / "gt" / "im_4.png"))
    np.testing.assert_array_equal(gt, crop[:44, :48])


# --------------------------------------------------------------------------------------------- DIV2KRK reader


def test_release_naming_and_rgba_lr(rk_set, tmp_path):
    copy = tmp_path / "release"
    shutil.copytree(rk_set, copy)
    for path in (copy / "gt").iterdir():
        path.rename(path.with_name(f"img_{path.stem.split('_')[1]}_gt.png"))
    for path in (copy / "lr_x2").iterdir():
        Image.open(path).convert("RGBA").save(path)
    assert Image.open(copy / "lr_x2" / "im_1.png").mode == "RGBA"
    ours, theirs = DIV2KRKDataset(rk_set, 2, require_hr=True), DIV2KRKDataset(copy, 2, require_hr=True)
    assert theirs.names == ours.names
    for a, b in zip(ours, theirs, strict=True):
        assert b["lr"].shape[0] == 3
        assert torch.equal(a["lr"], b["lr"]) and torch.equal(a["hr"], b["hr"])
        torch.testing.assert_close(a["kernel"], b["kernel"], rtol=0, atol=0)


def test_lr_without_its_hr_or_kernel_is_an_error_naming_the_files(rk_set, tmp_path):
    """A set with HR images / kernels must have them for every LR image (else a blank row and a mean over fewer)."""
    copy = tmp_path / "partial"
    shutil.copytree(rk_set, copy)
    (copy / "gt" / "im_5.png").unlink()
    (copy / "gt" / "im_7.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of 11 LR images have no HR image .*: im_5\.png, im_7\.png"):
        DIV2KRKDataset(copy, 4)
    shutil.rmtree(copy / "gt")  # no HR at all: kernel accuracy only
    ds = DIV2KRKDataset(copy, 4)
    assert not ds.has_hr and ds.has_kernels and "hr" not in ds[4] and ds[4]["kernel"].shape == (31, 31)
    with pytest.raises(FileNotFoundError, match="no HR image"):
        DIV2KRKDataset(copy, 4, require_hr=True)
    (copy / "gt_k_x4" / "kernel_1.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 11 LR images have no kernel .*kernel_N\.mat\): im_1\.png"):
        DIV2KRKDataset(copy, 4)
    shutil.rmtree(copy / "gt_k_x4")
    assert "kernel" not in DIV2KRKDataset(copy, 4)[0]
    with pytest.raises(FileNotFoundError, match="no kernel"):
        DIV2KRKDataset(copy, 4, require_kernels=True)


def test_released_kernels_with_negative_taps_load_as_stored_with_one_warning(rk_set, tmp_path):
    """Two of DIV2KRK's x2 kernels undershoot to -1.6 % of their peak: the set loads, keeps them, warns once."""
    copy = tmp_path / "negative"
    shutil.copytree(rk_set, copy)
    stored = {}
    for n in (2, 9):
        kernel = np.zeros((11, 11))
        kernel[4:7, 4:7] = 1.0
        kernel[5, 1] = -0.016
        stored[n] = kernel
        scipy.io.savemat(copy / "gt_k_x2" / f"kernel_{n}.mat", {"Kernel": kernel})  # as released: no exact kernel
    with pytest.warns(UserWarning, match=r"2 of 11 kernels have negative taps .*kernel_2\.mat \(-1\.6%\)") as rec:
        ds = DIV2KRKDataset(copy, 2, require_kernels=True)
    assert len([w for w in rec if "negative taps" in str(w.message)]) == 1
    expected = div2krk_kernel_to_block_centre(torch.from_numpy(stored[2] / stored[2].sum()).float(), 2)
    torch.testing.assert_close(ds[1]["kernel"], expected)
    assert ds[1]["kernel"].min() < 0 and ds[8]["kernel"].min() < 0


def test_empty_or_misnamed_lr_folder_raises(tmp_path):
    (tmp_path / "lr_x2").mkdir()
    with pytest.raises(FileNotFoundError, match="lr_x2"):
        DIV2KRKDataset(tmp_path, 2)
    with pytest.raises(FileNotFoundError, match="lr_x4"):
        DIV2KRKDataset(tmp_path, 4)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "lr_x2" / "baby.png")
    with pytest.raises(ValueError, match="baby.png"):
        DIV2KRKDataset(tmp_path, 2)


def test_hr_smaller_than_scale_times_lr_names_both_files(rk_set, tmp_path):
    copy = tmp_path / "small_hr"
    shutil.copytree(rk_set, copy)
    hr_path = copy / "gt" / "im_2.png"
    Image.fromarray(np.asarray(Image.open(hr_path))[:-4]).save(hr_path)
    ds = DIV2KRKDataset(copy, 2)
    with pytest.raises(ValueError, match=r"im_2\.png.*smaller.*lr_x2.*im_2\.png"):
        ds[1]
    # A larger HR image is cropped top-left.
    Image.fromarray(np.pad(np.asarray(Image.open(rk_set / "gt" / "im_1.png")), ((0, 3), (0, 5), (0, 0)))).save(
        copy / "gt" / "im_1.png"
    )
    assert torch.equal(ds[0]["hr"], DIV2KRKDataset(rk_set, 2)[0]["hr"])


def test_load_kernel_validates_and_normalises(tmp_path):
    path = tmp_path / "k.mat"
    scipy.io.savemat(path, {"Kernel": np.full((5, 5), 2.0)})
    k = load_kernel(path)
    assert k.dtype == torch.float32 and k.shape == (5, 5) and abs(k.sum().item() - 1) < 1e-6
    good = np.ones((5, 5))
    good[0, 0] = -0.004  # interpolation undershoot as in the release: accepted, kept
    scipy.io.savemat(path, {"Kernel": good})
    assert load_kernel(path)[0, 0].item() < 0
    deep = np.ones((5, 5))
    deep[0, 0] = -0.05  # deeper than the release: still loaded as stored
    scipy.io.savemat(path, {"Kernel": deep})
    assert load_kernel(path)[0, 0].item() == pytest.approx(-0.05 / deep.sum())
    for bad, message in ((np.ones((5, 4)), "square"), (np.ones((2, 3, 3)), "square"), (-np.ones((3, 3)), "positive")):
        scipy.io.savemat(path, {"Kernel": bad})
        with pytest.raises(ValueError, match=message) as err:
            load_kernel(path)
        assert "k.mat" in str(err.value)
    path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))  # a corrupt file names itself (scipy's error does not)
    with pytest.raises(ValueError, match=r"cannot read kernel file .*k\.mat"):
        load_kernel(path)
    scipy.io.savemat(path, {"K": np.ones((3, 3))})
    with pytest.raises(KeyError, match="k.mat"):
        load_kernel(path)


def test_kernel_centre_conversions_move_the_centre_of_mass():
    from datamodules.degradation.kernels import gaussian_kernels

    for scale, size in ((2, 11), (4, 31)):
        pixel = gaussian_kernels(size, torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.4]), centre="pixel")[0]
        block = div2krk_kernel_to_block_centre(pixel.double(), scale)
        mid = size // 2
        assert np.allclose(_centre_of_mass(block), (mid + 0.5 * (scale - 1),) * 2, atol=0.02)
        assert abs(block.sum().item() - 1) < 1e-9
        back = block_centre_to_div2krk_kernel(block, scale)
        assert np.allclose(_centre_of_mass(back), (mid, mid), atol=0.02)


# --------------------------------------------------------------------------------------------- other layouts


def _save(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def test_pairing_key_and_natural_order():
    for stem in ("baby_LR", "baby_HR", "baby_x2", "babyx2", "baby_gt", "baby", "Baby-lr"):
        assert pairing_key(stem) == "baby", stem
    assert pairing_key("img_001_SRF_4_LR") == pairing_key("img_001_SRF_4_HR") == "img_001"
    assert pairing_key("hr") == "hr"
    assert sorted(["im_10", "im_2", "im_1"], key=natural_key) == ["im_1", "im_2", "im_10"]


def test_paired_folder_dataset(tmp_path):
    lr_dir, hr_dir, k_dir = tmp_path / "LR", tmp_path / "HR", tmp_path / "kernels"
    pairs = {"baby_LR": "baby_HR", "bird_x2": "bird", "img_2_LR": "img_2_HR", "img_10_LR": "img_10_HR"}
    hr_arrays = {}
    for i, (lr_stem, hr_stem) in enumerate(pairs.items()):
        _save(lr_dir / f"{lr_stem}.png", 6, 7, i)
        hr_arrays[lr_stem] = _save(hr_dir / f"{hr_stem}.png", 13, 15, 10 + i)  # one px larger than 2x: cropped
    k_dir.mkdir()
    scipy.io.savemat(k_dir / "baby_LR.mat", {"Kernel": np.ones((3, 3))})
    scipy.io.savemat(k_dir / "kernel_2.mat", {"Kernel": np.ones((5, 5))})
    scipy.io.savemat(k_dir / "bird.mat", {"Kernel": np.ones((3, 3))})
    scipy.io.savemat(k_dir / "kernel_10.mat", {"Kernel": np.ones((3, 3))})
    ds = PairedFolderDataset(lr_dir, hr_dir, scale=2, kernel_dir=k_dir)
    assert ds.names == ["baby_LR", "bird_x2", "img_2_LR", "img_10_LR"]
    for item in ds:
        assert tuple(item["lr"].shape) == (3, 6, 7) and tuple(item["hr"].shape) == (3, 12, 14)
        np.testing.assert_array_equal(item["hr"].permute(1, 2, 0).numpy(), hr_arrays[item["name"]][:12, :14])
    assert ds[0]["kernel"].shape == (3, 3) and ds[2]["kernel"].shape == (5, 5)
    (k_dir / "bird.mat").unlink()
    (k_dir / "kernel_10.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of 4 LR images have no kernel .*: bird_x2\.png, img_10_LR\.png"):
        PairedFolderDataset(lr_dir, hr_dir, scale=2, kernel_dir=k_dir)
    lr_only = PairedFolderDataset(lr_dir, scale=2)
    assert "hr" not in lr_only[0] and len(lr_only) == 4
    _save(lr_dir / "zebra_LR.png", 6, 7, 99)
    with pytest.raises(FileNotFoundError, match="zebra_LR.png"):
        PairedFolderDataset(lr_dir, hr_dir, scale=2)


def test_lr_folder_dataset(tmp_path):
    _save(tmp_path / "img_10.png", 5, 6, 0)
    _save(tmp_path / "img_9.jpg", 7, 4, 1)
    _save(tmp_path / "sub" / "chip.png", 3, 3, 2)
    ds = LRFolderDataset(tmp_path)
    assert ds.names == ["img_9", "img_10", "sub/chip"]
    item = ds[1]
    assert item["name"] == "img_10" and item["path"] == str(tmp_path / "img_10.png")
    assert item["lr"].dtype == torch.uint8 and tuple(item["lr"].shape) == (3, 5, 6)
    single = LRFolderDataset(tmp_path / "img_9.jpg")
    assert single.names == ["img_9"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LRFolderDataset(tmp_path / "nowhere")


def test_open_benchmark_detects_the_layout(rk_set, tmp_path):
    assert type(open_benchmark(rk_set, 2)) is DIV2KRKDataset
    assert type(open_benchmark(rk_set, 4, "div2krk")) is DIV2KRKDataset
    with pytest.raises(FileNotFoundError, match=r"lr_x3.*lr_x2"):  # wrong scale: names what is there
        open_benchmark(rk_set, 3)
    _save(tmp_path / "LR" / "baby_LR.png", 4, 4, 0)
    _save(tmp_path / "HR" / "baby_HR.png", 8, 8, 1)
    paired = open_benchmark(tmp_path, 2)
    assert type(paired) is PairedFolderDataset and paired[0]["hr"].shape == (3, 8, 8)
    kernel = np.zeros((5, 5))
    kernel[1:3, 1:3] = 1.0
    (tmp_path / "kernels").mkdir()
    scipy.io.savemat(tmp_path / "kernels" / "baby.mat", {"Kernel": kernel})
    as_stored = torch.from_numpy(kernel / 4).float()
    torch.testing.assert_close(open_benchmark(tmp_path, 2, kernel_centre="block")[0]["kernel"], as_stored)
    moved = open_benchmark(tmp_path, 2)[0]["kernel"]  # "pixel" (the release's centre) is moved to the block centre
    torch.testing.assert_close(moved, div2krk_kernel_to_block_centre(as_stored, 2))
    with pytest.raises(FileNotFoundError, match="lr_x2"):
        open_benchmark(tmp_path, 2, "div2krk")
    shutil.rmtree(tmp_path / "HR")
    with pytest.raises(FileNotFoundError, match="HR"):
        open_benchmark(tmp_path, 2, "paired")
    with pytest.raises(FileNotFoundError, match="missing"):
        open_benchmark(tmp_path / "missing", 2)


def test_dataset_items_collate(rk_set):
    loader = torch.utils.data.DataLoader(DIV2KRKDataset(rk_set, 2), batch_size=1)
    batch = next(iter(loader))
    assert batch["lr"].shape == (1, 3, 24, 24) and batch["kernel"].shape == (1, 11, 11) and batch["name"] == ["im_1"]


def test_unreadable_lr_names_the_file(rk_set, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(rk_set, copy)
    (copy / "lr_x2" / "im_3.png").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="im_3.png"):
        DIV2KRKDataset(copy, 2)[2]

"""HR image reading and cropping (datamodules/images.py): load_rgb, find_images, HRImageDataset, SeededSampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datamodules.images import BUILTIN_PHOTOS, HRImageDataset, SeededSampler, builtin_photo_paths, find_images
from datamodules.io import ImageReadError, load_rgb


def _noise_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Random RGB pixels: every crop position and dihedral transform gives a different patch."""
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def noise_dir(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """Three random RGB images of different sizes (sorted names = index order)."""
    rng = np.random.default_rng(0)
    arrays = [_noise_image(rng, 40, 52), _noise_image(rng, 37, 33), _noise_image(rng, 64, 48)]
    for i, arr in enumerate(arrays):
        Image.fromarray(arr).save(tmp_path / f"img_{i}.png")
    return tmp_path, arrays


def _dihedral(arr: np.ndarray) -> list[np.ndarray]:
    out = []
    for t in (False, True):
        a = arr.transpose(1, 0, 2) if t else arr
        out += [a, a[:, ::-1], a[::-1], a[::-1, ::-1]]
    return out


def _is_window(crop: np.ndarray, image: np.ndarray) -> bool:
    """Whether ``crop`` (P,P,3) is a dihedral transform of some PxP window of ``image``."""
    p = crop.shape[0]
    h, w = image.shape[:2]
    variants = _dihedral(crop)
    for top in range(h - p + 1):
        for left in range(w - p + 1):
            window = image[top : top + p, left : left + p]
            if any(np.array_equal(window, v) for v in variants):
                return True
    return False


# ------------------------------------------------------------------------------------------------------ load_rgb
def test_load_rgb_grey_replicated(tmp_path):
    grey = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = load_rgb(tmp_path / "g.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_load_rgb_rgba_drops_alpha(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, size=(9, 7, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(7) % 2 == 0, 255, 17)[None, :]  # partly transparent: alpha is not applied
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    assert out.shape == (9, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_load_rgb_palette_expanded(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]
    index = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint8)
    im = Image.fromarray(index, mode="P")
    im.putpalette(palette + [0] * (768 - len(palette)))
    im.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = load_rgb(tmp_path / "p.png")
    expected = np.array(palette, dtype=np.uint8).reshape(4, 3)[index]
    assert out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_load_rgb_16_bit_grey_scaled(tmp_path, suffix):
    values = np.array([[0, 65535, 32768], [257 * 100, 1000, 128]], dtype=np.uint16)
    im = Image.fromarray(values)
    assert im.mode == "I;16"
    im.save(tmp_path / f"d{suffix}")
    out = load_rgb(tmp_path / f"d{suffix}")
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    # 65535 -> 255, 0 -> 0, 257k -> k exactly, others rounded to nearest: 32768 -> 127.50 -> 128, 1000 -> 3.89 -> 4,
    # 128 -> 0.498 -> 0 (not truncated 16->8 bit by the high byte, which would give 127 and 3 for the middle ones).
    expected = np.array([[0, 255, 128], [100, 4, 0]], dtype=np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_load_rgb_corrupt_file_names_it(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(ImageReadError, match="x.png") as info:
        load_rgb(bad)
    assert str(bad) in str(info.value)


def test_load_rgb_truncated_png_names_it(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        load_rgb(tmp_path / "t.png")
    assert str(tmp_path / "t.png") in str(info.value)


def test_image_read_error_is_value_error():
    assert issubclass(ImageReadError, ValueError)


# --------------------------------------------------------------------------------------------------- find_images
def test_find_images_recursive_sorted_case_insensitive(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    Image.fromarray(rgb).save(tmp_path / "z.png")
    Image.fromarray(rgb).save(tmp_path / "a" / "UPPER.PNG", format="PNG")
    Image.fromarray(rgb).save(tmp_path / "b" / "deep" / "c.JpG", format="JPEG")
    Image.fromarray(rgb).save(tmp_path / "b" / "m.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "data.npy").write_bytes(b"\x93NUMPY")
    found = find_images(tmp_path)
    expected = [
        tmp_path / "a" / "UPPER.PNG", tmp_path / "b" / "deep" / "c.JpG", tmp_path / "b" / "m.bmp", tmp_path / "z.png"
    ]  # fmt: skip
    assert found == expected
    assert found == sorted(found)
    # a string path and a list of roots work the same; a file root is taken as is
    assert find_images(str(tmp_path)) == expected
    assert find_images([tmp_path / "a", tmp_path / "z.png"]) == [tmp_path / "a" / "UPPER.PNG", tmp_path / "z.png"]


def test_find_images_builtin():
    found = find_images("builtin")
    assert len(found) == 9 == len(BUILTIN_PHOTOS)
    assert found == builtin_photo_paths()
    assert [p.name for p in found] == list(BUILTIN_PHOTOS)
    for path in found:
        assert path.is_file(), path
        with Image.open(path) as im:
            assert im.mode == "RGB", path
        arr = load_rgb(path)
        # colour: the channels are not all the same
        assert not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])), path
    assert find_images(["builtin"]) == found


def test_find_images_missing_folder_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images(["builtin", str(missing)])


def test_find_images_empty_folder_named(tmp_path):
    empty = tmp_path / "empty_set"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="empty_set"):
        find_images(empty)


# ------------------------------------------------------------------------------------------------ HRImageDataset
@pytest.mark.parametrize("preload", [True, False])
def test_dataset_crop_size_dtype_and_content(noise_dir, preload):
    root, arrays = noise_dir
    ds = HRImageDataset(str(root), patch_size=16, train=True, preload=preload)
    assert len(ds) == 3
    for i in range(3):
        for key in (i, (i, 12345 + i)):
            item = ds[key]
            assert set(item) == {"hr", "index"}
            assert item["index"] == i
            hr = item["hr"]
            assert isinstance(hr, torch.Tensor) and hr.dtype == torch.uint8 and hr.shape == (3, 16, 16)
            assert _is_window(hr.permute(1, 2, 0).numpy(), arrays[i])


def test_dataset_too_small_raises_naming_file(noise_dir):
    root, _ = noise_dir
    Image.fromarray(np.zeros((20, 100, 3), dtype=np.uint8)).save(root / "small.png")
    for preload in (True, False):
        with pytest.raises(ImageReadError, match="small.png") as info:
            HRImageDataset(str(root), patch_size=32, preload=preload)
        assert "--data.init_args.skip_invalid true" in str(info.value)  # the command-line spelling of the fix


@pytest.mark.parametrize("preload", [True, False])
def test_dataset_skip_invalid_warns_and_keeps_others(noise_dir, preload):
    root, arrays = noise_dir
    Image.fromarray(np.zeros((20, 100, 3), dtype=np.uint8)).save(root / "small.png")
    (root / "broken.png").write_bytes(b"definitely not a png")
    with pytest.warns(UserWarning) as record:
        ds = HRImageDataset(str(root), patch_size=32, skip_invalid=True, preload=preload)
    messages = " ".join(str(w.message) for w in record)
    assert "small.png" in messages and "broken.png" in messages
    assert [p.name for p in ds.paths] == ["img_0.png", "img_1.png", "img_2.png"]
    assert len(ds) == 3
    for i in range(3):
        np.testing.assert_array_equal(ds.image(i), arrays[i])


def test_dataset_corrupt_raises_without_skip(noise_dir):
    root, _ = noise_dir
    (root / "broken.png").write_bytes(b"definitely not a png")
    for preload in (True, False):
        with pytest.raises(ImageReadError, match="broken.png"):
            HRImageDataset(str(root), patch_size=16, preload=preload)


def test_dataset_nothing_usable_raises(noise_dir):
    root, _ = noise_dir
    with pytest.warns(UserWarning), pytest.raises(ImageReadError):
        HRImageDataset(str(root), patch_size=200, skip_invalid=True)


@pytest.mark.parametrize("preload", [True, False])
def test_dataset_eval_central_crop(noise_dir, preload):
    root, arrays = noise_dir
    p = 16
    ds = HRImageDataset(str(root), patch_size=p, train=False, preload=preload)
    for i, arr in enumerate(arrays):
        h, w = arr.shape[:2]
        top, left = (h - p) // 2, (w - p) // 2
        expected = torch.from_numpy(np.ascontiguousarray(arr[top : top + p, left : left + p].transpose(2, 0, 1)))
        for key in (i, (i, 1), (i, 999)):  # the seed does not matter for the central crop
            assert torch.equal(ds[key]["hr"], expected)


def test_dataset_same_key_same_crop_different_seed_different_crop(noise_dir):
    root, _ = noise_dir
    ds = HRImageDataset(str(root), patch_size=16, train=True)
    other = HRImageDataset(str(root), patch_size=16, train=True)  # a fresh instance (another worker/process)
    for i in range(3):
        a = ds[(i, 7)]["hr"]
        assert torch.equal(a, ds[(i, 7)]["hr"])
        assert torch.equal(a, other[(i, 7)]["hr"])
        crops = [ds[(i, s)]["hr"] for s in range(8)]
        distinct = {c.numpy().tobytes() for c in crops}
        assert len(distinct) == 8, "different seeds should give different crops"


def test_dataset_repeats_multiplies_length(noise_dir):
    root, arrays = noise_dir
    ds = HRImageDataset(str(root), patch_size=16, train=False, repeats=4)
    assert len(ds) == 12
    for i in range(12):
        item = ds[i]
        assert item["index"] == i
        assert torch.equal(item["hr"], ds[i % 3]["hr"])
    train = HRImageDataset(str(root), patch_size=16, train=True, repeats=4)
    assert len(train) == 12
    assert _is_window(train[(10, 3)]["hr"].permute(1, 2, 0).numpy(), arrays[10 % 3])


def test_dataset_mixed_modes_all_rgb(tmp_path):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, size=(20, 20), dtype=np.uint8), mode="L").save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, size=(20, 20, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "b.png")
    Image.fromarray(rng.integers(0, 65536, size=(20, 20), dtype=np.uint16)).save(tmp_path / "c.png")
    ds = HRImageDataset(str(tmp_path), patch_size=8, train=True)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["hr"].shape == (3, 3, 8, 8) and batch["hr"].dtype == torch.uint8
    assert batch["index"].tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------------------------- SeededSampler
@pytest.fixture
def counted_dataset(tmp_path):
    """A dataset of a given length (3 noise images x repeats)."""

    def make(repeats: int) -> HRImageDataset:
        rng = np.random.default_rng(5)
        root = tmp_path / f"r{repeats}"
        root.mkdir(exist_ok=True)
        for i in range(3):
            Image.fromarray(_noise_image(rng, 30 + i, 34)).save(root / f"{i}.png")
        return HRImageDataset(str(root), patch_size=12, train=True, repeats=repeats)

    return make


def _keys(sampler: SeededSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_yields_index_seed_keys(counted_dataset):
    ds = counted_dataset(4)
    keys = _keys(SeededSampler(ds, seed=3), 0)
    assert len(keys) == len(ds) == 12
    assert all(isinstance(k, tuple) and len(k) == 2 and isinstance(k[0], int) and isinstance(k[1], int) for k in keys)
    assert sorted(k[0] for k in keys) == list(range(12))  # a permutation of the dataset
    assert all(0 <= k[1] < 2**63 for k in keys)
    assert len({k[1] for k in keys}) == 12  # every item gets its own seed
    assert [k[0] for k in keys] != list(range(12))  # shuffled
    unshuffled = _keys(SeededSampler(ds, seed=3, shuffle=False), 0)
    assert [k[0] for k in unshuffled] == list(range(12))


def test_sampler_same_epoch_same_keys(counted_dataset):
    ds = counted_dataset(4)
    a, b = SeededSampler(ds, seed=11), SeededSampler(ds, seed=11)
    assert _keys(a, 2) == _keys(b, 2)
    assert _keys(a, 2) == list(a)  # iterating again without set_epoch repeats the epoch
    assert _keys(a, 0) != _keys(SeededSampler(ds, seed=12), 0)


def test_sampler_different_epoch_different_order(counted_dataset):
    ds = counted_dataset(4)
    s = SeededSampler(ds, seed=11)
    e0, e1 = _keys(s, 0), _keys(s, 1)
    assert [k[0] for k in e0] != [k[0] for k in e1]
    assert not {k[1] for k in e0} & {k[1] for k in e1}  # fresh crop seeds every epoch


@pytest.mark.parametrize("repeats", [4, 5])  # 12 items (even) and 15 items (odd: padded to 16)
def test_sampler_two_ranks_partition_epoch(counted_dataset, repeats):
    ds = counted_dataset(repeats)
    n = len(ds)
    for epoch in (0, 3):
        single = _keys(SeededSampler(ds, num_replicas=1, rank=0, seed=9), epoch)
        r0 = _keys(SeededSampler(ds, num_replicas=2, rank=0, seed=9), epoch)
        r1 = _keys(SeededSampler(ds, num_replicas=2, rank=1, seed=9), epoch)
        assert len(r0) == len(r1) == len(SeededSampler(ds, num_replicas=2, rank=1)) == (n + 1) // 2
        assert not set(r0) & set(r1)  # disjoint positions
        assert {k[0] for k in r0 + r1} == set(range(n))  # together they cover the dataset
        if n % 2 == 0:
            assert sorted(k[0] for k in r0 + r1) == list(range(n))  # exactly once each
        # item seeds do not depend on the rank layout: global position p = rank + 2 * i
        for i in range(len(r0)):
            assert r0[i] == single[2 * i]
            if 2 * i + 1 < n:
                assert r1[i] == single[2 * i + 1]


def test_sampler_crops_independent_of_workers(counted_dataset):
    ds = counted_dataset(4)

    def epoch_crops(num_workers: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        sampler = SeededSampler(ds, seed=21)
        sampler.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=3, sampler=sampler, num_workers=num_workers)
        batches = list(loader)
        return torch.cat([b["hr"] for b in batches]), torch.cat([b["index"] for b in batches])

    hr0, idx0 = epoch_crops(0, 1)
    hr2, idx2 = epoch_crops(2, 1)
    assert hr0.shape == (12, 3, 12, 12)
    assert torch.equal(idx0, idx2)
    assert torch.equal(hr0, hr2)
    # the crops of another epoch differ (so the equality above is not trivial)
    hr_other, _ = epoch_crops(0, 2)
    assert not torch.equal(hr0, hr_other)

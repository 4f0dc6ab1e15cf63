"""HR image datasets: folders of PNG/JPEG/BMP/TIFF (recursive) and the built-in sample photos of scikit-image.

Datasets return ``uint8`` tensors; nothing random about degradation happens here. Training crops are random but
reproducible: the sampler hands each item a seed (``(index, seed)`` keys, see ``SeededSampler``), so the crops of an
epoch do not depend on the number of workers, and a resumed run sees the same crops as an uninterrupted one.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

from datamodules.io import IMAGE_SUFFIXES, ImageReadError, load_rgb, to_tensor

BUILTIN = "builtin"
# How to skip unreadable images, quoted in errors (the command-line spelling of ``skip_invalid=True``).
SKIP_HINT = "to skip such files with a warning: --data.init_args.skip_invalid true"
# The colour photographs that scikit-image ships in skimage/data (no download); synthetic and grey images excluded.
BUILTIN_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
    "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
)  # fmt: skip


def builtin_photo_paths() -> list[Path]:
    """Paths of the built-in colour sample photos (scikit-image's bundled data folder)."""
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [root / name for name in BUILTIN_PHOTOS]


def find_images(roots: str | Path | Sequence[str | Path]) -> list[Path]:
    """All image files under the given folders (recursive, sorted); ``"builtin"`` stands for the sample photos.

    Raises:
        FileNotFoundError: A folder does not exist, or holds no image (the message names it).
    """
    if isinstance(roots, (str, Path)):
        roots = [roots]
    files: list[Path] = []
    for root in roots:
        if str(root) == BUILTIN:
            files.extend(builtin_photo_paths())
            continue
        path = Path(root).expanduser()
        if path.is_file():
            files.append(path)
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"image folder {path} does not exist")
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {path}")
        files.extend(found)
    return files


def augment(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip, vertical flip and transpose (the 8 dihedral transforms), ``(H, W, C)``."""
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    if rng.random() < 0.5:
        arr = arr[::-1]
    if rng.random() < 0.5:
        arr = arr.transpose(1, 0, 2)
    return arr


class HRImageDataset(Dataset):
    """HR crops from image folders, as ``{"hr": (3, P, P) uint8, "index": int}``.

    Args:
        roots: Image folders (searched recursively) and/or files; ``"builtin"`` = scikit-image's colour photos.
        patch_size: HR crop side ``P`` (LR patch x scale).
        train: Random crops and dihedral augmentation (True), or the central crop of each image (False).
        repeats: Crops per image and epoch (the dataset length is ``len(images) * repeats``).
        skip_invalid: Skip unreadable or too-small images with a warning instead of raising.
        preload: Decode every image once at start-up and keep it in memory (fast; use False for huge folders).
    """

    def __init__(
        self,
        roots: str | Sequence[str],
        patch_size: int,
        train: bool = True,
        repeats: int = 1,
        skip_invalid: bool = False,
        preload: bool = True,
    ) -> None:
        self.patch_size = patch_size
        self.train = train
        self.repeats = max(1, repeats)
        self.preload = preload
        self.paths: list[Path] = []
        self._cache: list[np.ndarray] = []
        for path in find_images(roots):
            try:
                if preload:
                    arr = load_rgb(path)
                    self._check_size(path, arr.shape[:2])
                    self._cache.append(arr)
                else:
                    with Image.open(path) as im:
                        self._check_size(path, (im.height, im.width))
            except (ImageReadError, OSError) as err:
                if not skip_invalid:
                    raise ImageReadError(f"{err} ({SKIP_HINT})") from err
                warnings.warn(f"skipping {path}: {err}", stacklevel=2)
                continue
            self.paths.append(path)
        if not self.paths:
            raise ImageReadError(f"no usable image of at least {patch_size}x{patch_size} px in {roots}")

    def _check_size(self, path: Path, hw: tuple[int, int]) -> None:
        if min(hw) < self.patch_size:
            raise ImageReadError(f"image {path} is {hw[1]}x{hw[0]} px, smaller than the {self.patch_size} px crop")

    def __len__(self) -> int:
        return len(self.paths) * self.repeats

    def image(self, i: int) -> np.ndarray:
        """The ``i``-th image, ``(H, W, 3) uint8``."""
        return self._cache[i] if self.preload else load_rgb(self.paths[i])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, key)
        arr = self.image(index % len(self.paths))
        p = self.patch_size
        h, w = arr.shape[:2]
        if self.train:
            rng = np.random.default_rng(seed)
            top, left = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            crop = augment(arr[top : top + p, left : left + p], rng)
        else:
            top, left = (h - p) // 2, (w - p) // 2
            crop = arr[top : top + p, left : left + p]
        return {"hr": to_tensor(crop), "index": index}


class SeededSampler(DistributedSampler):
    """Epoch-seeded shuffling that yields ``(index, item_seed)`` keys; rank-aware, resumable.

    The permutation of epoch ``e`` comes from ``seed + e``; the item seed from ``(seed, e, position)``, so the crops
    of an epoch are fixed whatever the number of workers. It subclasses ``DistributedSampler`` so that Lightning
    keeps it under DDP (and calls ``set_epoch``); ``num_replicas``/``rank`` are passed explicitly.

    ``skip`` drops this rank's first ``skip`` keys when epoch ``skip_epoch`` is iterated, once: a run resumed from a
    mid-epoch checkpoint continues that epoch where it stopped instead of starting it again (if the resumed run goes
    straight on to the next epoch, nothing is skipped).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        skip: int = 0,
        skip_epoch: int = 0,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = skip
        self.skip_epoch = skip_epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        while len(order) < self.total_size:  # pad by repetition so every rank gets the same count
            order += order[: self.total_size - len(order)]
        positions = range(self.rank, self.total_size, self.num_replicas)
        seeds = np.random.SeedSequence([self.seed, self.epoch]).generate_state(self.total_size, dtype=np.uint64)
        keys = [(order[p], int(seeds[p] % (2**63))) for p in positions]
        skip = self.skip if self.epoch == self.skip_epoch else 0
        self.skip = 0
        return iter(keys[skip:])


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders digit runs numerically: ``"im_2" < "im_10"``; letters compare case-insensitively."""
    parts = re.split(r"(\d+)", text)
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)]


class LRFolderDataset(Dataset):
    """Every image under a folder (recursive) or one image file, without ground truth (for ``predict``).

    Items are ``{"lr": (3, h, w) uint8, "name": str, "path": str}``. ``name`` is the file's path relative to the
    folder without its suffix (the stem for files directly in it; POSIX separators for nested files, so outputs
    named after it do not collide); items are sorted naturally by name.

    Args:
        root: A folder, an image file, or ``"builtin"`` (scikit-image's sample photos).
        skip_invalid: Decode every image once now and leave out (with a warning, listed in ``skipped``) those that
            cannot be read; otherwise only their headers are checked now and an unreadable file stops the run.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no image (named).
        ImageReadError: An image cannot be read (named; all are, with ``skip_invalid``).
    """

    def __init__(self, root: str | Path, skip_invalid: bool = False) -> None:
        self.root = Path(root).expanduser() if str(root) != "builtin" else None
        paths = find_images(root)
        base = self.root if self.root is not None and self.root.is_dir() else None
        named = [(p.relative_to(base).with_suffix("").as_posix() if base else p.stem, p) for p in paths]
        self.entries: list[tuple[str, Path]] = []
        self.skipped: list[str] = []
        for name, path in sorted(named, key=lambda t: natural_key(t[0])):
            try:
                if skip_invalid:
                    load_rgb(path)
                else:
                    Image.open(path).close()  # the header only: a file that is no image fails here
            except (ImageReadError, OSError) as err:
                if not skip_invalid:
                    raise ImageReadError(f"cannot read image {path}: {err} ({SKIP_HINT})") from err
                warnings.warn(f"skipping {path}: {err}", stacklevel=2)
                self.skipped.append(str(path))
                continue
            self.entries.append((name, path))
        if not self.entries:
            raise ImageReadError(f"no readable image in {root}")

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> list[str]:
        """Item names in dataset order."""
        return [name for name, _ in self.entries]

    def __getitem__(self, index: int) -> dict:
        name, path = self.entries[index]
        try:
            lr = load_rgb(path)
        except ImageReadError as err:
            raise ImageReadError(f"{err} ({SKIP_HINT})") from err
        return {"lr": to_tensor(lr), "name": name, "path": str(path)}

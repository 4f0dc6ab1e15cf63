"""Fixed test sets read from disk: DIV2KRK (and sets written in its layout), paired LR/HR folders.

Every benchmark item is a dict (bare LR folders for ``predict``: ``datamodules.images.LRFolderDataset``)::

    {"lr": (3, h, w) uint8, "hr": (3, s*h, s*w) uint8, "kernel": (k, k) float32, "name": str}

``"hr"`` and ``"kernel"`` are present where the set has them, and then in every item: an LR image without its HR image
or kernel is an error naming the files when the set is opened. ``"name"`` is the LR file's stem. The HR image is
cropped top-left to exactly ``scale`` times the LR size (smaller is an error naming both files). Items are sorted
numerically (``im_2`` before ``im_10``). Kernels: ``.mat`` files, all read when the set is opened, as stored
(``datamodules.io.load_kernel``: negative taps kept; deep ones reported in one warning).

Kernel convention of the items (see DESIGN.md, "Conventions that are easy to get wrong"):
    ``item["kernel"]`` is always **the kernel that made the LR image, as the degradation engine applies it**:
    correlated with the HR image, every ``s``-th pixel kept from pixel 0. For the DIV2KRK protocol that kernel is
    block-centred (centre of mass at ``k // 2 + 0.5 * (scale - k % 2)``), the convention of the DIV2KRK and MoESR
    training batches, so a system compares its estimates with training and test kernels alike. Files may store
    kernels otherwise; the datasets convert once, on reading:

    * the released DIV2KRK ``.mat`` kernels (key ``Kernel``) are centred on the middle pixel, but the LR images were
      made with the kernel shifted to the block centre, ``+0.5 * (scale - 1)`` px: they are moved there with
      ``kernels.div2krk_kernel_to_block_centre`` (measured on the 8-image sample: x2 LR regenerated at 43-51 dB
      with it, 37-39 dB without; x4 50-51 dB vs 33-35 dB);
    * sets written by ``datamodules.generate`` also store the exact kernel as the engine applies it (DIV2KRK
      protocol: ``KernelBlockCentred``; mixture protocol, decimated from pixel ``s // 2``: ``KernelAsApplied``),
      which is read as it is when present (``io.EXACT_KERNEL_KEYS``);
    * other files state their centre with ``kernel_centre`` (``"pixel"``, as the DIV2KRK release, by default).

    Evaluate SR on the shipped LR files, never regenerated ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import Tensor
from torch.utils.data import Dataset

from datamodules.degradation.kernels import div2krk_kernel_to_block_centre
from datamodules.images import natural_key
from datamodules.io import EXACT_KERNEL_KEYS, IMAGE_SUFFIXES, load_kernel, load_rgb, report_negative_taps, to_tensor

KernelCentre = Literal["pixel", "block"]
# Folder names of the "paired" layout of ``open_benchmark``, in order of preference.
PAIRED_LR_DIRS = ("LR", "lr")
PAIRED_HR_DIRS = ("HR", "hr")
PAIRED_KERNEL_DIRS = ("kernels", "Kernels", "kernel")
# Trailing name tokens stripped by ``pairing_key`` (case-insensitive, repeatedly, optional "_", "-" or "." before).
_STRIP_TOKENS = re.compile(r"[_\-.]?(?:lr|hr|gt|srf_?\d+|x\d+)$", re.IGNORECASE)
_DIV2KRK_LR = re.compile(r"^im_(\d+)$")
_DIV2KRK_HR = re.compile(r"^(?:im_(\d+)|img_(\d+)_gt)$")


def pairing_key(stem: str) -> str:
    """The name under which an LR file and its HR / kernel file are paired.

    Lower-cases the stem and strips, repeatedly, a trailing ``LR``, ``HR``, ``GT``, ``x<digits>`` or
    ``SRF_<digits>`` token, optionally preceded by ``_``, ``-`` or ``.``. So ``baby_LR``, ``baby_HR``, ``baby_x2``,
    ``babyx2``, ``baby_gt`` and ``baby`` all give ``baby``, and ``img_001_SRF_4_LR`` gives ``img_001``. The key is
    only used for matching (both sides are reduced the same way); items keep the LR file's own stem as ``name``.
    A stem that would be stripped to nothing is kept whole.
    """
    key = stem.lower()
    while True:
        shorter = _STRIP_TOKENS.sub("", key)
        if shorter == key or not shorter:
            return key
        key = shorter


@dataclass(frozen=True)
class BenchmarkEntry:
    """One test image on disk: its LR file and, where the set has them, its HR and kernel files."""

    name: str
    lr_path: Path
    hr_path: Path | None = None
    kernel_path: Path | None = None


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def _list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), naturally sorted; an error names a missing/empty folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {folder}")
    return sorted(files, key=lambda p: natural_key(p.name))


class _BenchmarkDataset(Dataset):
    """Shared reading logic: ``entries`` (set by subclasses through ``_finish``) -> item dicts (module docstring)."""

    scale: int
    kernel_key: str
    kernel_centre: KernelCentre
    entries: list[BenchmarkEntry]
    kernels: list[Tensor | None]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> list[str]:
        """Item names in dataset order."""
        return [e.name for e in self.entries]

    @property
    def has_hr(self) -> bool:
        """Whether every item has an HR image."""
        return all(e.hr_path is not None for e in self.entries)

    @property
    def has_kernels(self) -> bool:
        """Whether every item has a ground-truth kernel."""
        return all(e.kernel_path is not None for e in self.entries)

    def _finish(self, entries: list[BenchmarkEntry], hr_where: str | None, kernels_where: str | None) -> None:
        """Keep ``entries``, read their kernels; a missing HR / kernel where the set has them is an error."""
        self.entries = entries
        for what, where, attr in (("HR image", hr_where, "hr_path"), ("kernel", kernels_where, "kernel_path")):
            missing = [e.lr_path.name for e in entries if getattr(e, attr) is None]
            if where is not None and missing:
                raise FileNotFoundError(
                    f"{len(missing)} of {len(entries)} LR images have no {what} (looked for {where}): "
                    f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}; add the files or remove the LR "
                    "images, so that every image is evaluated alike"
                )
        stored = [None if e.kernel_path is None else self.stored_kernel(e.kernel_path) for e in entries]
        report_negative_taps({e.kernel_path.name: s[0] for e, s in zip(entries, stored, strict=True) if s})
        self.kernels = [s and (div2krk_kernel_to_block_centre(s[0], self.scale) if s[1] else s[0]) for s in stored]

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        lr = load_rgb(entry.lr_path)
        item: dict = {"lr": to_tensor(lr), "name": entry.name}
        if entry.hr_path is not None:
            hr = load_rgb(entry.hr_path)
            h, w = lr.shape[0] * self.scale, lr.shape[1] * self.scale
            if hr.shape[0] < h or hr.shape[1] < w:
                raise ValueError(
                    f"HR image {entry.hr_path} is {hr.shape[1]}x{hr.shape[0]} px, smaller than x{self.scale} its LR "
                    f"image {entry.lr_path} ({lr.shape[1]}x{lr.shape[0]} px -> needs {w}x{h})"
                )
            item["hr"] = to_tensor(hr[:h, :w])
        if self.kernels[index] is not None:
            item["kernel"] = self.kernels[index]
        return item

    def _kernel_source(self, key: str, centre: KernelCentre) -> None:
        if centre not in ("pixel", "block"):
            raise ValueError(f"kernel_centre must be 'pixel' or 'block', got {centre!r}")
        self.kernel_key, self.kernel_centre = key, centre

    def stored_kernel(self, path: Path) -> tuple[Tensor, bool]:
        """The file's exact kernel if it has one, else its ``kernel_key``; and whether it is to be block-centred."""
        for key in EXACT_KERNEL_KEYS:
            try:
                return load_kernel(path, key), False
            except KeyError:
                continue
        return load_kernel(path, self.kernel_key), self.kernel_centre == "pixel"


class DIV2KRKDataset(_BenchmarkDataset):
    """DIV2KRK (KernelGAN, NeurIPS 2019) and sets in its layout (``datamodules.generate``: BSD100RK, Urban100RK, ...).

    Layout under ``root``::

        lr_x{s}/im_N.png            LR (DIV2KRK stores RGBA with alpha 255; read as RGB)
        gt/im_N.png                 HR, or gt/img_N_gt.png (the original release's naming); optional folder
        gt_k_x{s}/kernel_N.mat      ground-truth kernel, key "Kernel"; optional folder

    Items are sorted by ``N``. Kernels are returned block-centred (module docstring), normalised to sum 1, of the
    files' size (the release: 11x11 for x2, 31x31 for x4).

    Args:
        root: The set's folder.
        scale: Scale factor ``s`` (selects ``lr_x{s}`` and ``gt_k_x{s}``).
        require_hr: Raise if the set has no HR images (without, items lack ``"hr"``: kernel accuracy only).
        require_kernels: Raise if the set has no kernels.
        kernel_key: The ``.mat`` variable to read when a file lacks an exact kernel.
        kernel_centre: Centre of the ``kernel_key`` kernels in the files (``"pixel"``: the DIV2KRK release).

    Raises:
        FileNotFoundError: ``lr_x{s}`` is missing or empty, or an LR image lacks its HR image / kernel while others
            have theirs (or they are required): the message names the files.
        ValueError: A file in ``lr_x{s}`` does not follow the ``im_N`` naming, or two HR files claim the same ``N``.
    """

    def __init__(
        self,
        root: str | Path,
        scale: int,
        require_hr: bool = False,
        require_kernels: bool = False,
        kernel_key: str = "Kernel",
        kernel_centre: KernelCentre = "pixel",
    ) -> None:
        self.root = Path(root).expanduser()
        self.scale = _check_scale(scale)
        self._kernel_source(kernel_key, kernel_centre)
        lr_dir = self.root / f"lr_x{self.scale}"
        if not lr_dir.is_dir():
            raise FileNotFoundError(f"DIV2KRK layout: {lr_dir} does not exist (expected lr_x{self.scale}/im_N.png)")
        hr_files = self._index_hr(self.root / "gt")
        kernel_dir = self.root / f"gt_k_x{self.scale}"
        entries: list[tuple[int, BenchmarkEntry]] = []
        for lr_path in _list_images(lr_dir):
            match = _DIV2KRK_LR.match(lr_path.stem)
            if match is None:
                raise ValueError(f"DIV2KRK layout: {lr_path} is not named im_N{lr_path.suffix} (N an integer)")
            n = int(match.group(1))
            kernel_path = kernel_dir / f"kernel_{n}.mat"
            kernel_path = kernel_path if kernel_path.is_file() else None
            entries.append((n, BenchmarkEntry(lr_path.stem, lr_path, hr_files.get(n), kernel_path)))
        numbers = [n for n, _ in entries]
        if len(set(numbers)) != len(numbers):
            dup = sorted({n for n in numbers if numbers.count(n) > 1})
            raise ValueError(f"DIV2KRK layout: {lr_dir} holds several files for image number(s) {dup}")
        has_kernels = kernel_dir.is_dir() and any(kernel_dir.glob("*.mat"))
        self._finish(
            [e for _, e in sorted(entries, key=lambda t: t[0])],
            f"{self.root / 'gt'}/im_N.* or img_N_gt.*" if hr_files or require_hr else None,
            f"{kernel_dir}/kernel_N.mat" if has_kernels or require_kernels else None,
        )

    @staticmethod
    def _index_hr(gt_dir: Path) -> dict[int, Path]:
        """``{N: path}`` of ``gt/im_N.*`` and ``gt/img_N_gt.*``; ``im_N`` wins if both exist for one ``N``."""
        if not gt_dir.is_dir():
            return {}
        found: dict[int, Path] = {}
        for path in sorted(gt_dir.iterdir(), key=lambda p: natural_key(p.name)):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            match = _DIV2KRK_HR.match(path.stem)
            if match is None:
                continue
            n = int(match.group(1) or match.group(2))
            previous = found.get(n)
            if previous is not None:
                if previous.stem.startswith("im_") == path.stem.startswith("im_"):
                    raise ValueError(f"DIV2KRK layout: both {previous} and {path} claim HR image {n}")
                if not path.stem.startswith("im_"):
                    continue
            found[n] = path
        return found


class PairedFolderDataset(_BenchmarkDataset):
    """LR images in one folder, optionally paired with HR images and ``.mat`` kernels from others (Set5-style sets).

    Files are paired by ``pairing_key`` of their stems, so ``baby_LR.png`` / ``baby_HR.png``,
    ``baby_x2.png`` / ``baby.png`` and ``img_001_SRF_2_LR.png`` / ``img_001_SRF_2_HR.png`` all match. Kernels are
    looked up in ``kernel_dir`` as ``<LR stem>.mat``, ``<key>.mat``, ``kernel_<N>.mat`` (``N`` = the trailing
    number of the key, with and without leading zeros), first found wins; they are returned block-centred (the
    module docstring), normalised to sum 1. Folders are read non-recursively; items are sorted naturally by LR name.

    Args:
        lr_dir: Folder of LR images.
        hr_dir: Folder of HR images; when given, every LR image must have one.
        scale: Scale factor (HR is cropped top-left to ``scale`` x the LR size).
        kernel_dir: Folder of ``.mat`` kernels; when given, every LR image must have one.
        kernel_key: The ``.mat`` variable to read when a file lacks an exact kernel.
        kernel_centre: Centre of the ``kernel_key`` kernels in the files (``"pixel"``: as DIV2KRK releases them).

    Raises:
        FileNotFoundError: A folder is missing or empty, or an LR image has no HR image / kernel (named).
        ValueError: Two files of one folder reduce to the same pairing key (the message names both).
    """

    def __init__(
        self,
        lr_dir: str | Path,
        hr_dir: str | Path | None = None,
        *,
        scale: int,
        kernel_dir: str | Path | None = None,
        kernel_key: str = "Kernel",
        kernel_centre: KernelCentre = "pixel",
    ) -> None:
        self.scale = _check_scale(scale)
        self._kernel_source(kernel_key, kernel_centre)
        self.lr_dir = Path(lr_dir).expanduser()
        self.hr_dir = None if hr_dir is None else Path(hr_dir).expanduser()
        self.kernel_dir = None if kernel_dir is None else Path(kernel_dir).expanduser()
        lr_files = _list_images(self.lr_dir)
        _keyed(lr_files, self.lr_dir)  # raises on ambiguous LR names
        hr_by_key = {} if self.hr_dir is None else _keyed(_list_images(self.hr_dir), self.hr_dir)
        if self.kernel_dir is not None and not self.kernel_dir.is_dir():
            raise FileNotFoundError(f"kernel folder {self.kernel_dir} does not exist")
        entries = []
        for lr_path in lr_files:
            key = pairing_key(lr_path.stem)
            hr_path = hr_by_key.get(key)
            entries.append(BenchmarkEntry(lr_path.stem, lr_path, hr_path, self._find_kernel(lr_path.stem, key)))
        self._finish(
            entries,
            None if self.hr_dir is None else f"{self.hr_dir}/<name>.png, <name>_HR.png, ...: same pairing_key",
            None if self.kernel_dir is None else f"{self.kernel_dir}/<LR stem>.mat, <name>.mat or kernel_<N>.mat",
        )

    def _find_kernel(self, stem: str, key: str) -> Path | None:
        if self.kernel_dir is None:
            return None
        candidates = [stem, key]
        number = re.search(r"(\d+)$", key)
        if number is not None:
            candidates += [f"kernel_{number.group(1)}", f"kernel_{int(number.group(1))}"]
        for candidate in candidates:
            path = self.kernel_dir / f"{candidate}.mat"
            if path.is_file():
                return path
        return None


def _keyed(files: Sequence[Path], folder: Path) -> dict[str, Path]:
    """``{pairing_key(stem): path}``; raises naming both files when two reduce to the same key."""
    out: dict[str, Path] = {}
    for path in files:
        key = pairing_key(path.stem)
        if key in out:
            raise ValueError(f"{out[key].name} and {path.name} in {folder} both pair as {key!r}; rename one")
        out[key] = path
    return out


def open_benchmark(
    path: str | Path,
    scale: int,
    layout: Literal["auto", "div2krk", "paired"] = "auto",
    kernel_centre: KernelCentre = "pixel",
) -> DIV2KRKDataset | PairedFolderDataset:
    """Open a test set by folder, detecting its layout.

    Layouts:
        ``"div2krk"``: ``path/lr_x{s}/im_N.png`` (+ ``gt/``, ``gt_k_x{s}/``), see ``DIV2KRKDataset``.
        ``"paired"``: ``path/LR`` and ``path/HR`` (also ``lr`` / ``hr``), optional ``path/kernels``, see
        ``PairedFolderDataset``.
        ``"auto"``: ``"div2krk"`` if ``path/lr_x{s}`` exists, else ``"paired"`` if ``path/LR`` exists.

    Args:
        path: The set's root folder.
        scale: Scale factor.
        layout: One of the above.
        kernel_centre: Centre of the files' ``Kernel`` kernels (``"pixel"``: the DIV2KRK release); items always
            hold block-centred kernels (module docstring).

    Raises:
        FileNotFoundError: The folder, or a folder its layout needs, does not exist; the message says what was
            looked for and lists the layouts and the sub-folders that are there.
    """
    root = Path(path).expanduser()
    scale = _check_scale(scale)
    if layout not in ("auto", "div2krk", "paired"):
        raise ValueError(f"layout must be 'auto', 'div2krk' or 'paired', got {layout!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder {root} does not exist")
    div2krk_lr = root / f"lr_x{scale}"
    paired_lr = _first_dir(root, PAIRED_LR_DIRS)
    if layout == "div2krk" or (layout == "auto" and div2krk_lr.is_dir()):
        if not div2krk_lr.is_dir():
            raise FileNotFoundError(_layout_message(root, scale, f"{div2krk_lr} (layout 'div2krk')"))
        return DIV2KRKDataset(root, scale, kernel_centre=kernel_centre)
    if paired_lr is None:
        looked_for = f"{root}/{' or '.join(PAIRED_LR_DIRS)} (layout 'paired')"
        if layout == "auto":
            looked_for = f"{div2krk_lr} (layout 'div2krk') or {looked_for}"
        raise FileNotFoundError(_layout_message(root, scale, looked_for))
    hr_dir = _first_dir(root, PAIRED_HR_DIRS)
    if hr_dir is None:
        looked_for = f"{root}/{' or '.join(PAIRED_HR_DIRS)} beside {paired_lr.name}/ (layout 'paired')"
        raise FileNotFoundError(_layout_message(root, scale, looked_for))
    kernel_dir = _first_dir(root, PAIRED_KERNEL_DIRS)
    return PairedFolderDataset(paired_lr, hr_dir, scale=scale, kernel_dir=kernel_dir, kernel_centre=kernel_centre)


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _layout_message(root: Path, scale: int, looked_for: str) -> str:
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    return (
        f"no benchmark at {root} for x{scale}: looked for {looked_for}. Layouts: 'div2krk' = lr_x{{s}}/im_N.png "
        f"[+ gt/, gt_k_x{{s}}/]; 'paired' = LR/ + HR/ [+ kernels/]. Sub-folders present: {subdirs or 'none'}. "
        "For a folder of LR images without ground truth use LRFolderDataset."
    )

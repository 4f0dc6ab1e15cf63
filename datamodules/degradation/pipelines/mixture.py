"""The degradation model of the variational mixture of networks (Wang et al., Pattern Recognition 2020).

Eq. (1): ``L = S(B * H)``: blur with one of a fixed set of 11x11 Gaussian kernels, then decimate (no noise).

Kernel set (paper Sec. 4.1, "following [8]")
--------------------------------------------
2-D Gaussians on an 11x11 grid, **centred on the middle pixel (5, 5)**, covariance ``R(theta) diag(l1, l2) R^T``
with eigenvalues (variances) ``l1 >= l2`` from ``{0.75, 1.5, 2.25, 3}`` and orientations in steps of ``pi / 8``.

How 58 / 52 / 29 reconcile (``paper_kernel_list``, ``distinct_kernel_params``):

* The eigenvalue pairs are 4 isotropic (``l1 == l2``: orientation is meaningless, one kernel each) and 6
  anisotropic ones. Counting orientations ``0, pi/8, ..., pi`` *inclusive* (9 angles) gives ``4 + 6 * 9 = 58``:
  the paper's count. But ``theta = pi`` describes the same kernel as ``theta = 0`` (a covariance is invariant to a
  half turn), so 6 of the 58 are duplicates and the set has **52 distinct kernels** (``4 + 6 * 8``, orientations
  over ``[0, pi)``). Ordered pairs with ``l1 < l2`` add nothing either (they are the ``l1 > l2`` kernels turned by
  ``pi / 2``, which is again on the ``pi / 8`` grid).
* The official test file holds 29 kernels, 4 isotropic and 25 anisotropic. Since only 48 distinct anisotropic
  kernels exist, the paper's 29 seen + 25 unseen anisotropic *entries* (54) must include the 6 duplicates: the
  paper's seen and unseen lists either share kernels or repeat some. We do neither: the split is made over the
  **52 distinct kernels**, ``num_seen = 29`` seen (the paper's training count, so the E-Net classifies ``K = 29``
  kernels and chance is ``1 / 29``) and the remaining **23 unseen** (with ``isotropic="unseen"``, the default:
  4 isotropic + 19 anisotropic, all 4 isotropic kernels unseen as in the official test file). The unseen averages
  are therefore over 23 kernels that are truly unseen, rather than over 29 entries of which some would be seen
  kernels or counted twice.

The split comes from ``numpy.random.RandomState(seed)`` (the legacy generator, whose stream NumPy keeps fixed across
versions), so a seed always gives the same split; ``KernelSplit.save`` / ``load_or_make_split`` write it to a JSON
file (global ids, parameters, seed) that later runs read and check.

Decimation and alignment (the official evaluation code)
-------------------------------------------------------
The official code correlates the Y channel with the kernel (``scipy.ndimage.correlate``, default border
``'reflect'`` = half-sample symmetric) and decimates with PIL ``NEAREST`` resizing, which keeps HR pixel
``floor((i + 0.5) * s)``, i.e. phase ``s // 2`` (x2: 1, x3: 1, x4: 2). ``MixtureDegradation`` does the same
(``border="symmetric"``, ``phase=None`` -> ``s // 2``). With a pixel-centred kernel, a bicubic upsample lines up
with the HR image for phase ``(s - 1) / 2``: at x3 the official phase is exactly aligned; at x2 and x4 it is
**half an HR pixel off** (down and right). The paper's networks learn that shift as part of the residual; we follow
the official code and say so here rather than silently "fixing" it (pass ``phase`` to change it).

Colour: we blur and decimate the RGB image and the systems take the Y channel of the LR RGB. Y is an affine
function of RGB and the kernels sum to 1, so this equals blurring Y (the official code) up to the 8-bit rounding
of the RGB LR (``quantize=True``, as when the LR is saved as PNG).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from datamodules.degradation import ops
from datamodules.degradation.kernels import gaussian_kernels
from datamodules.degradation.ops import Border
from datamodules.degradation.pipelines import Degradation
from datamodules.degradation.samplers import KernelBankSampler

EIGENVALUES: tuple[float, ...] = (0.75, 1.5, 2.25, 3.0)
"""Covariance eigenvalues (variances) of the paper's kernels: 0.75 to 3 in steps of 0.75."""
ANGLE_STEPS = 8
"""Orientations ``k * pi / ANGLE_STEPS``: ``k = 0..7`` distinct, ``k = 8`` (``pi``) is the paper's duplicate."""
KERNEL_SIZE = 11
NUM_SEEN = 29

KernelGroup = Literal["seen", "unseen", "all"]
IsotropicPolicy = Literal["unseen", "seen", "random"]


def _entries(include_pi: bool) -> list[tuple[float, float, int]]:
    """``(l1, l2, k)`` with ``theta = k * pi / 8``: pairs ``l1 >= l2`` in ascending order, isotropic once."""
    out = []
    last_k = ANGLE_STEPS if include_pi else ANGLE_STEPS - 1
    for i, l1 in enumerate(EIGENVALUES):
        for l2 in EIGENVALUES[: i + 1]:
            if l1 == l2:
                out.append((l1, l2, 0))
            else:
                out.extend((l1, l2, k) for k in range(last_k + 1))
    return out


def _as_params(entries: list[tuple[float, float, int]]) -> dict[str, Tensor]:
    return {
        "lambda1": torch.tensor([e[0] for e in entries], dtype=torch.float64),
        "lambda2": torch.tensor([e[1] for e in entries], dtype=torch.float64),
        "theta": torch.tensor([e[2] * math.pi / ANGLE_STEPS for e in entries], dtype=torch.float64),
        "angle_step": torch.tensor([e[2] for e in entries], dtype=torch.long),
    }


def distinct_kernel_params() -> dict[str, Tensor]:
    """The 52 distinct kernels (global ids ``0..51``): ``lambda1, lambda2, theta`` (float64), ``angle_step`` (k).

    Order: eigenvalue pairs ``(l1, l2)``, ``l1`` ascending then ``l2`` ascending up to ``l1``; an isotropic pair is
    one kernel (``theta = 0``), an anisotropic pair gives ``theta = k pi / 8`` for ``k = 0..7``.
    """
    return _as_params(_entries(include_pi=False))


def paper_kernel_list() -> dict[str, Tensor]:
    """The paper's 58 entries (orientations ``0..pi`` inclusive) and ``distinct_id``: each entry's id in the 52.

    The 6 entries with ``theta = pi`` have the ``distinct_id`` of their ``theta = 0`` twin (the same kernel).
    """
    entries = _entries(include_pi=True)
    distinct = {e: i for i, e in enumerate(_entries(include_pi=False))}
    ids = [distinct[(l1, l2, 0 if k == ANGLE_STEPS else k)] for l1, l2, k in entries]
    params = _as_params(entries)
    params["distinct_id"] = torch.tensor(ids, dtype=torch.long)
    return params


def mixture_kernels(ids: Tensor | list[int], size: int = KERNEL_SIZE, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(N, size, size)`` pixel-centred kernels of the given global ids (of ``distinct_kernel_params``)."""
    p = distinct_kernel_params()
    idx = torch.as_tensor(ids, dtype=torch.long)
    k = gaussian_kernels(size, p["lambda1"][idx], p["lambda2"][idx], p["theta"][idx], param="var", centre="pixel")
    return k.to(dtype)


def is_isotropic(ids: Tensor | list[int]) -> Tensor:
    """``(N,)`` bool: which global ids are isotropic kernels."""
    p = distinct_kernel_params()
    idx = torch.as_tensor(ids, dtype=torch.long)
    return p["lambda1"][idx] == p["lambda2"][idx]


@dataclass(frozen=True)
class KernelSplit:
    """Seen (training) and unseen (testing) kernels as sorted global ids of ``distinct_kernel_params``.

    ``seen[i]`` is the kernel of class ``i`` of the E-Net pre-training (``kernel_index`` of the seen bank).
    """

    seed: int
    isotropic: str
    seen: tuple[int, ...]
    unseen: tuple[int, ...]

    def ids(self, group: KernelGroup) -> tuple[int, ...]:
        """The global ids of ``"seen"``, ``"unseen"`` or ``"all"`` (all 52, in global order)."""
        if group == "seen":
            return self.seen
        if group == "unseen":
            return self.unseen
        if group == "all":
            return tuple(sorted(self.seen + self.unseen))
        raise ValueError(f"kernel group must be 'seen', 'unseen' or 'all', got {group!r}")

    def to_json(self) -> dict:
        """JSON-ready dict: seed, policy, ids, and each id's parameters (for humans and for checking)."""
        p = distinct_kernel_params()

        def describe(ids: tuple[int, ...]) -> list[dict]:
            return [
                {"id": i, "lambda1": float(p["lambda1"][i]), "lambda2": float(p["lambda2"][i]),
                 "theta_pi_over_8": int(p["angle_step"][i])}
                for i in ids
            ]  # fmt: skip

        return {
            "method": "Wang et al. 2020 mixture of networks: 52 distinct 11x11 Gaussians, see "
            "datamodules/degradation/mixture.py",
            "seed": self.seed,
            "isotropic": self.isotropic,
            "seen": list(self.seen),
            "unseen": list(self.unseen),
            "seen_kernels": describe(self.seen),
            "unseen_kernels": describe(self.unseen),
        }

    def save(self, path: str | Path) -> None:
        """Write the split as JSON (atomically: a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)


def make_split(seed: int = 0, num_seen: int = NUM_SEEN, isotropic: IsotropicPolicy = "unseen") -> KernelSplit:
    """Split the 52 distinct kernels into ``num_seen`` seen and ``52 - num_seen`` unseen ones, from ``seed``.

    Args:
        seed: Seed of ``numpy.random.RandomState`` (a stream NumPy keeps fixed).
        num_seen: Number of seen (training) kernels (the paper: 29).
        isotropic: ``"unseen"``: the 4 isotropic kernels are all unseen, as in the official test file (4 isotropic +
            25 anisotropic), and the seen ones are drawn from the 48 anisotropic kernels; ``"seen"``: all 4 are
            seen; ``"random"``: no constraint.
    """
    p = distinct_kernel_params()
    n = p["lambda1"].shape[0]
    iso = [i for i in range(n) if p["lambda1"][i] == p["lambda2"][i]]
    aniso = [i for i in range(n) if p["lambda1"][i] != p["lambda2"][i]]
    rng = np.random.RandomState(seed)
    if isotropic == "unseen":
        forced, pool, draw = [], aniso, num_seen
    elif isotropic == "seen":
        forced, pool, draw = iso, aniso, num_seen - len(iso)
    elif isotropic == "random":
        forced, pool, draw = [], list(range(n)), num_seen
    else:
        raise ValueError(f"isotropic must be 'unseen', 'seen' or 'random', got {isotropic!r}")
    if not 0 <= draw <= len(pool) or num_seen < 1:
        raise ValueError(f"cannot draw {num_seen} seen kernels with isotropic={isotropic!r} from {n} kernels")
    chosen = rng.choice(np.asarray(pool), size=draw, replace=False).tolist()
    seen = tuple(sorted(forced + [int(c) for c in chosen]))
    unseen = tuple(i for i in range(n) if i not in seen)
    return KernelSplit(seed=seed, isotropic=isotropic, seen=seen, unseen=unseen)


def load_or_make_split(
    path: str | Path | None, seed: int = 0, num_seen: int = NUM_SEEN, isotropic: IsotropicPolicy = "unseen"
) -> KernelSplit:
    """The split of ``seed``; if ``path`` exists, the split stored there (checked against the arguments).

    Raises:
        ValueError: The file was written for another seed / policy / size, or its ids are not a partition of the 52
            kernels, or its parameters do not match this enumeration (the message names the file).
    """
    split = make_split(seed, num_seen, isotropic)
    if path is None or not Path(path).is_file():
        return split
    data = json.loads(Path(path).read_text())
    stored = KernelSplit(
        seed=int(data["seed"]), isotropic=str(data["isotropic"]),
        seen=tuple(int(i) for i in data["seen"]), unseen=tuple(int(i) for i in data["unseen"]),
    )  # fmt: skip
    if (stored.seed, stored.isotropic, len(stored.seen)) != (seed, isotropic, num_seen):
        raise ValueError(
            f"kernel split file {path} was written for seed={stored.seed}, isotropic={stored.isotropic!r}, "
            f"{len(stored.seen)} seen kernels, but this run asks for seed={seed}, isotropic={isotropic!r}, "
            f"{num_seen}: delete the file or point split_file elsewhere"
        )
    if sorted(stored.seen + stored.unseen) != list(range(len(split.seen) + len(split.unseen))):
        raise ValueError(f"kernel split file {path}: seen + unseen ids are not a partition of the 52 kernels")
    fresh = stored.to_json()
    if any(fresh[key] != data.get(key) for key in ("seen_kernels", "unseen_kernels")):
        raise ValueError(f"kernel split file {path} does not match this code's kernel enumeration")
    return stored


def blur_decimate(
    hr: Tensor, kernels: Tensor, scale: int, phase: int | None = None, border: Border = "symmetric"
) -> Tensor:
    """Eq. (1) without noise, with the official code's conventions (``ops.blur_decimate``).

    Correlation with scipy's symmetric border, keeping every ``scale``-th pixel from ``phase`` (``None``:
    ``scale // 2``, as PIL ``NEAREST``).

    Returns:
        ``(B, C, H // scale, W // scale)``, not quantised.
    """
    phase = scale // 2 if phase is None else phase
    return ops.blur_decimate(hr, kernels, scale, phase, border=border)


class MixtureDegradation(Degradation):
    """Wang et al. 2020's degradation: a uniformly drawn kernel of the seen (or unseen) set, blur, decimation.

    ``sample`` draws ``kernel_index`` (the index in the chosen group: the E-Net pre-training label) and returns
    the kernel's ``lambda1``, ``lambda2``, ``theta`` and ``kernel_id`` (its global id of the 52). The kernel split is
    made from ``split_seed`` (see the module docstring); with ``split_file`` the split is read from that JSON file
    when it exists (and checked), and written there the first time the degradation is used when it does not.

    Args:
        scale: Downscaling factor (linked from the DataModule's ``scale``).
        kernels: Which kernels to draw from: ``"seen"`` (training), ``"unseen"`` or ``"all"``.
        split_seed: Seed of the seen/unseen split.
        num_seen: Number of seen kernels (paper: 29).
        isotropic: Where the 4 isotropic kernels go (``"unseen"``: as in the official test file).
        split_file: JSON file of the split (read if present, written on first use if not); ``None``: not saved.
        kernel_ids: Draw from these global kernel ids instead of ``kernels`` (e.g. a small subset for quick checks;
            ``kernel_index`` then indexes this list).
        phase: First kept pixel of the decimation; ``None``: ``scale // 2`` (PIL NEAREST, official code).
        border: Blur border: ``"symmetric"`` (scipy ``ndimage.correlate`` default) or a Kornia border type.
        quantize: Round the LR to 8-bit levels (as saved to PNG).
    """

    def __init__(
        self,
        scale: int = 2,
        kernels: KernelGroup = "seen",
        split_seed: int = 0,
        num_seen: int = NUM_SEEN,
        isotropic: IsotropicPolicy = "unseen",
        split_file: str | None = None,
        kernel_ids: list[int] | None = None,
        phase: int | None = None,
        border: Border = "symmetric",
        quantize: bool = True,
    ) -> None:
        super().__init__(scale)
        self.split = load_or_make_split(split_file, split_seed, num_seen, isotropic)
        self.split_file = split_file
        self.group = kernels
        ids = self.split.ids(kernels) if kernel_ids is None else tuple(int(i) for i in kernel_ids)
        if not ids or len(set(ids)) != len(ids) or not all(0 <= i < 52 for i in ids):
            raise ValueError(f"kernel_ids must be distinct ids in 0..51, got {kernel_ids}")
        self.ids = torch.tensor(ids, dtype=torch.long)
        p = distinct_kernel_params()
        self.kernel_sampler = KernelBankSampler(
            KERNEL_SIZE, a=p["lambda1"][self.ids].tolist(), b=p["lambda2"][self.ids].tolist(),
            theta=p["theta"][self.ids].tolist(), param="var", centre="pixel", product=False,
        )  # fmt: skip
        self.phase = scale // 2 if phase is None else phase
        if not 0 <= self.phase < scale:
            raise ValueError(f"phase must be in [0, {scale}), got {phase}")
        self.border = border
        self.quantize = quantize

    @property
    def num_kernels(self) -> int:
        """Number of kernels drawn from (the E-Net pre-training's ``K``)."""
        return len(self.ids)

    def _save_split(self) -> None:
        if self.split_file is not None and not Path(self.split_file).is_file():
            self.split.save(self.split_file)

    def sample(self, hr_shape: torch.Size, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """``kernel_index`` ``(B,)`` uniform over the group, plus ``kernel_id``, ``lambda1``, ``lambda2``, ``theta``."""
        self._save_split()
        params = self.kernel_sampler.sample(hr_shape[0], generator, device)
        params["kernel_id"] = self.ids.to(device)[params["kernel_index"]]
        return params

    def kernels(self, kernel_index: Tensor) -> Tensor:
        """``(B, 11, 11)`` kernels of the group for ``kernel_index``."""
        return self.kernel_sampler.kernels({"kernel_index": kernel_index}, self.scale)

    def degrade(self, hr: Tensor, kernels: Tensor) -> Tensor:
        """Blur and decimate ``hr`` with the given kernels (any kernels; used to render every kernel of a set)."""
        lr = blur_decimate(hr, kernels.to(hr), self.scale, self.phase, self.border)
        return ops.quantize(lr) if self.quantize else lr.clamp(0, 1)

    def apply(self, hr: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Blur with the drawn kernels, decimate at ``phase``, quantise."""
        kernel = self.kernels(params["kernel_index"]).to(hr)
        return {"hr": hr, "lr": self.degrade(hr, kernel), "kernel": kernel, "params": params}


def write_test_set(
    hr_dir: str | Path,
    out: str | Path,
    scale: int = 2,
    kernels: KernelGroup = "unseen",
    split_seed: int = 0,
    split_file: str | None = None,
    isotropic: IsotropicPolicy = "unseen",
    kernels_per_image: int | None = None,
    max_images: int | None = None,
) -> int:
    """Write a test set: every HR image blurred and decimated with every kernel of a group, "paired" layout.

    ``kernels_per_image`` (for small budgets; the paper uses every kernel) gives image ``i`` (in sorted order) only
    the kernels at positions ``(i * n + j) mod K``, ``j < n``, of the group, so consecutive images cycle through all
    ``K`` kernels; ``max_images`` keeps the first images only.

    ``out/HR_full/<stem>.png`` (the HR image mod-cropped to ``scale``), ``out/HR/<stem>_k<id>.png`` (hard links to
    it, copies where links fail), ``out/LR/<stem>_k<id>.png`` and ``out/kernels/<stem>_k<id>.mat`` (key
    ``Kernel``, as applied: pixel-centred, correlation), plus ``out/split.json``. ``<id>`` is the kernel's global id.
    ``datamodules.test_sets.open_benchmark(out, scale)`` reads it (layout ``"paired"``); a test's mean over its
    items is the paper's average over images x kernels.

    Returns:
        The number of LR images written.
    """
    import scipy.io
    from PIL import Image

    hr_dir, out = Path(hr_dir), Path(out)
    deg = MixtureDegradation(scale, kernels, split_seed=split_seed, isotropic=isotropic, split_file=split_file)
    for sub in ("HR_full", "HR", "LR", "kernels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    deg.split.save(out / "split.json")
    files = sorted(p for p in hr_dir.iterdir() if p.suffix.lower() in (".png", ".bmp", ".jpg", ".jpeg", ".tif"))
    if not files:
        raise FileNotFoundError(f"no images in {hr_dir}")
    files = files[:max_images] if max_images else files
    all_ids, all_kernels = deg.ids, mixture_kernels(deg.ids.tolist())
    per_image = len(all_ids) if not kernels_per_image else min(kernels_per_image, len(all_ids))
    count = 0
    for index, path in enumerate(files):
        pick = (index * per_image + torch.arange(per_image)) % len(all_ids)
        ids, bank = all_ids[pick], all_kernels[pick]
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        h, w = arr.shape[0] // scale * scale, arr.shape[1] // scale * scale
        arr = arr[:h, :w].copy()
        full = out / "HR_full" / f"{path.stem}.png"
        Image.fromarray(arr).save(full)
        hr = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
        lrs = deg.degrade(hr.expand(len(bank), -1, -1, -1), bank)  # every kernel in one batched pass
        for kid, kernel, lr in zip(ids.tolist(), bank, lrs, strict=True):
            name = f"{path.stem}_k{kid:02d}"
            lr8 = (lr * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
            Image.fromarray(lr8).save(out / "LR" / f"{name}.png")
            link = out / "HR" / f"{name}.png"
            link.unlink(missing_ok=True)
            try:
                os.link(full, link)
            except OSError:
                Image.fromarray(arr).save(link)
            scipy.io.savemat(out / "kernels" / f"{name}.mat", {"Kernel": kernel.double().numpy()})
            count += 1
    return count


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m datamodules.degradation.pipelines.mixture",
        description="Write a Wang-2020 test set (every HR image x every seen or unseen kernel) in the paired layout.",
    )
    parser.add_argument("--hr", required=True, help="folder of HR images (e.g. ../shared/data/test/Set5)")
    parser.add_argument("--out", required=True, help="output folder (e.g. data_local/mixture/Set5_unseen_x2)")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--kernels", choices=["seen", "unseen", "all"], default="unseen")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--split-file", default="checkpoints/mixture/kernel_split.json")
    parser.add_argument(
        "--kernels-per-image", type=int, default=None,
        help="only this many kernels per image, cycling through the group over the images (default: all)",
    )  # fmt: skip
    parser.add_argument("--max-images", type=int, default=None, help="only the first N images (sorted by name)")
    args = parser.parse_args(argv)
    n = write_test_set(
        args.hr, args.out, args.scale, args.kernels, args.split_seed, args.split_file,
        kernels_per_image=args.kernels_per_image, max_images=args.max_images,
    )  # fmt: skip
    print(f"wrote {n} LR images to {args.out}")


if __name__ == "__main__":
    _main()

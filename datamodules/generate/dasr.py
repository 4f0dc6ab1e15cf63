"""The DASR writer: any folder of HR images -> fixed Level-I / II / III test sets (DASR's three-level space).

Usage::

    python -m datamodules.generate --protocol dasr --hr /path/DIV2K_valid_HR --out /path/DIV2K_DASR --scale 4 --seed 0

The paper evaluates on the 100 DIV2K validation images degraded at each level (its Table 1). The official scripts
(``create_realsr_validation_set_type{1,2,3}.py``) draw without a seed and write all three levels to the same folder
name; here every level has its own folder and every draw its own seed:

* images in sorted order (``images.find_images``), numbered from 1; image ``N`` of level ``L`` draws every
  parameter from a CPU ``torch.Generator`` seeded from ``(seed, L, N)`` (``level_generator``), so ``--limit`` and
  added images never change the earlier ones, and the same arguments give the same files;
* the HR image is cropped top-left to a multiple of ``scale`` and degraded on the CPU by
  ``pipelines.dasr.DASRDegradation(scale, level=L)`` (the noise draws follow the device, so sets are always made on
  the CPU); LR = 8-bit PNG.

Output, one "paired" set per level (``datamodules.test_sets.open_benchmark(OUT/level_I, scale)`` reads it)::

    OUT/level_I/HR/im_N.png  OUT/level_I/LR/im_N.png  OUT/level_I/params.json   (and level_II, level_III)
    OUT/README.txt

``HR`` files of the second and third level are hard links to the first level's (copies where links fail).
``params.json`` holds, per image, its source file, the named parameters (``dasr_params``) and the 33-number vector
(``dasr_vector``; ``vector_names`` lists its entries).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from datamodules.degradation.dasr_params import LEVEL_NAMES
from datamodules.degradation.dasr_vector import VECTOR_NAMES
from datamodules.degradation.pipelines.dasr import DASRDegradation
from datamodules.generate.common import crop_to_multiple, prepare_out, save_lr_png
from datamodules.images import find_images
from datamodules.io import ImageReadError, load_rgb, save_png, to_tensor

LEVEL_DIRS = tuple(f"level_{name}" for name in LEVEL_NAMES)
"""Output sub-folder of each level (index 0, 1, 2 = Level-I, II, III = weak, standard, severe)."""
OWN_FILES = re.compile(r"^im_\d+\.png$")
"""Names of the files a run writes in ``HR/`` and ``LR/`` (``--overwrite`` deletes only these)."""


def level_generator(seed: int, level: int, index: int) -> torch.Generator:
    """The CPU generator of image ``index`` (1-based) at ``level`` (0..2), seeded from ``(seed, level, index)``.

    Args:
        seed: Non-negative base seed.
        level: 0, 1 or 2.
        index: 1-based image number.
    """
    state = np.random.SeedSequence([seed, level, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state % (2**63)))


def _level_index(level: int | str) -> int:
    if isinstance(level, str) and level in LEVEL_NAMES:
        return LEVEL_NAMES.index(level)
    if isinstance(level, int) and level in (0, 1, 2):
        return level
    raise ValueError(f"levels are {', '.join(LEVEL_NAMES)} (or 0, 1, 2), got {level!r}")


def _jsonable(params: dict[str, torch.Tensor]) -> dict[str, bool | int | float]:
    """The first sample's named parameters as plain Python values."""
    return {k: v[0].item() for k, v in params.items()}


def write_dasr_sets(
    hr: str | Sequence[str],
    out: str | Path,
    scale: int = 4,
    seed: int = 0,
    levels: Sequence[int | str] = LEVEL_NAMES,
    limit: int | None = None,
    overwrite: bool = False,
    command: str | None = None,
) -> int:
    """Write one fixed DASR test set per level (module docstring); prints ``N/total name`` per image.

    Args:
        hr: HR folder(s) / files / ``"builtin"`` (``images.find_images``).
        out: Output folder.
        scale: 2 or 4 (the paper: 4).
        seed: Non-negative base seed.
        levels: Levels to write, by name (``"I"``, ``"II"``, ``"III"``) or index (0, 1, 2).
        limit: Only the first ``limit`` images (sorted order).
        overwrite: Replace an earlier run's files in ``out``.
        command: The command line recorded in ``README.txt`` (default: reconstructed from the arguments).

    Returns:
        The number of HR images written (each at every level).

    Raises:
        FileNotFoundError: An HR folder is missing or holds no image (named).
        ImageReadError: An HR file cannot be read or is smaller than ``scale`` (named).
        FileExistsError: ``out`` holds an earlier run and ``overwrite`` is False.
        ValueError: An argument is out of range.
    """
    if scale not in (2, 4):
        raise ValueError(f"the DASR protocol is written for scales 2 and 4, got {scale}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    indices = sorted({_level_index(lv) for lv in levels})
    if not indices:
        raise ValueError("give at least one level")
    paths = find_images(hr)[:limit] if limit is not None else find_images(hr)
    out = Path(out).expanduser()
    owned = {f"{LEVEL_DIRS[i]}/{sub}": OWN_FILES for i in indices for sub in ("HR", "LR")}
    prepare_out(out, owned, ["README.txt"] + [f"{LEVEL_DIRS[i]}/params.json" for i in indices], overwrite)
    degradations = {i: DASRDegradation(scale, level=i, sharpen_target=False) for i in indices}
    records: dict[int, dict[str, dict]] = {i: {} for i in indices}
    sources: list[str] = []
    total, start = len(paths), time.perf_counter()
    print(f"writing {total} image(s) x{scale}, levels {', '.join(LEVEL_NAMES[i] for i in indices)} to {out}")
    with torch.no_grad():
        for n, path in enumerate(paths, start=1):
            arr = crop_to_multiple(load_rgb(path), scale)
            h, w = arr.shape[:2]
            if min(h, w) < scale:
                raise ImageReadError(f"image {path} is smaller than x{scale} after cropping to a multiple of it")
            name = f"im_{n}"
            hr_float = to_tensor(arr)[None].float() / 255
            first = out / LEVEL_DIRS[indices[0]] / "HR" / f"{name}.png"
            for i in indices:
                hr_file = out / LEVEL_DIRS[i] / "HR" / f"{name}.png"
                if i == indices[0]:
                    save_png(arr, hr_file)
                else:
                    _link_or_copy(first, hr_file, arr)
                deg = degradations[i]
                params = deg.sample(hr_float.shape, level_generator(seed, i, n), "cpu")
                result = deg.apply(hr_float, params)
                save_lr_png(result["lr"][0], out / LEVEL_DIRS[i] / "LR" / f"{name}.png")
                records[i][name] = {
                    "source": str(path), "hr_size": [w, h], "params": _jsonable(params),
                    "vector": result["vector"][0].tolist(),
                }  # fmt: skip
            sources.append(f"{name}\t{path}\t{w}x{h}")
            print(f"{n}/{total} {path.name} -> {name} (HR {w}x{h}, LR {w // scale}x{h // scale})", flush=True)
    for i in indices:
        meta = {
            "protocol": "DASR", "level": LEVEL_NAMES[i], "level_index": i, "scale": scale, "seed": seed,
            "vector_names": list(VECTOR_NAMES), "images": records[i],
        }  # fmt: skip
        (out / LEVEL_DIRS[i] / "params.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    _write_readme(out, hr, scale, seed, indices, limit, command, sources)
    print(f"done: {total} image(s) in {time.perf_counter() - start:.1f} s -> {out}", flush=True)
    return total


def _link_or_copy(source: Path, target: Path, arr: np.ndarray) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        save_png(arr, target)


def _write_readme(
    out: Path,
    hr: str | Sequence[str],
    scale: int,
    seed: int,
    indices: Sequence[int],
    limit: int | None,
    command: str | None,
    sources: Sequence[str],
) -> None:
    hr_list = [hr] if isinstance(hr, (str, Path)) else list(hr)
    if command is None:
        args = ["--protocol", "dasr", "--hr", *map(str, hr_list), "--out", str(out), "--scale", str(scale)]
        args += ["--seed", str(seed), "--levels", *(LEVEL_NAMES[i] for i in indices)]
        args += ["--limit", str(limit)] if limit is not None else []
        command = "python -m datamodules.generate " + shlex.join(args)
    text = "\n".join(
        [
            "DASR-protocol test sets written by blindsr (python -m datamodules.generate --protocol dasr)",
            "",
            f"command: {command}",
            f"seed: {seed}",
            f"scale: x{scale}",
            f"levels: {', '.join(f'{LEVEL_NAMES[i]} -> {LEVEL_DIRS[i]}/' for i in indices)}",
            f"images: {len(sources)}",
            "",
            "protocol: DASR's three-level degradation space (datamodules.degradation.pipelines.dasr, official ranges):",
            "Level-I = weak one-stage, II = standard one-stage, III = severe two-stage. Image N of level L draws every",
            "parameter from a CPU torch.Generator seeded from (seed, L, N); HR cropped top-left to a multiple of the",
            "scale; LR rounded to 8 bit. Degraded on the CPU (the noise draws depend on the device).",
            "",
            "files: level_X/HR/im_N.png  level_X/LR/im_N.png  level_X/params.json (per image: source, named",
            "parameters, the 33-number DASR vector; 'vector_names' lists its entries). Each level_X folder is a",
            "'paired' set: datamodules.test_sets.open_benchmark('OUT/level_X', scale).",
            "",
            "name\tsource\tHR size (after crop)",
            *sources,
            "",
        ]
    )
    (out / "README.txt").write_text(text, encoding="utf-8")

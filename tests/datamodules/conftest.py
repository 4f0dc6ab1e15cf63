"""Fixtures of the data tests: small HR crops of the built-in photos and a DIV2KRK-protocol set made from them."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from datamodules.generate import main

N_IMAGES = 11
# (rows, cols) of the crops; image 2 is 40x56 (landscape), image 4 is 45x50 (mod-4 crop to 44x48).
CROP_SIZES = [(48, 48), (40, 56), (48, 48), (45, 50)] + [(48, 48)] * (N_IMAGES - 4)


def crops() -> list[np.ndarray]:
    sources = [skdata.astronaut(), skdata.chelsea()]
    out = []
    for i, (h, w) in enumerate(CROP_SIZES):
        src = sources[i % 2]
        top = 30 + 23 * i
        left = 60 + 31 * i
        out.append(np.ascontiguousarray(src[top : top + h, left : left + w, :3]))
    return out


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hr")
    for i, crop in enumerate(crops()):
        Image.fromarray(crop).save(folder / f"photo_{i:02d}.png")
    return folder


def generate_set(hr: Path, out: Path, *extra: str) -> None:
    assert main(["--hr", str(hr), "--out", str(out), "--scales", "2", "4", *extra]) == 0


@pytest.fixture(scope="module")
def rk_set(hr_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rk") / "set"
    generate_set(hr_dir, out, "--seed", "0")
    return out

"""Shared fixtures: tiny on-disk image sets built from scikit-image's sample photos (no network, no shared data)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_hr_dir(tmp_path_factory) -> Path:
    """Four 96x96 HR crops of the built-in colour photos."""
    import skimage.data

    out = tmp_path_factory.mktemp("tiny_hr")
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    for i, photo in enumerate(photos):
        h, w = photo.shape[:2]
        crop = np.ascontiguousarray(photo[h // 2 - 48 : h // 2 + 48, w // 2 - 48 : w // 2 + 48])
        Image.fromarray(crop).save(out / f"photo_{i}.png")
    return out


@pytest.fixture(scope="session")
def tiny_div2krk(tiny_hr_dir, tmp_path_factory) -> Path:
    """A DIV2KRK-layout set (x2 and x4, seed 0) generated from ``tiny_hr_dir``."""
    from datamodules.generate import generate

    out = tmp_path_factory.mktemp("tiny_div2krk")
    generate(str(tiny_hr_dir), out, scales=(2, 4), seed=0)
    return out


@pytest.fixture
def one_thread():
    """Single-threaded torch: on two shared cores, two threads are often far slower than one (tiny convolutions)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""Resume is exact: a run SIGKILLed mid-epoch and resumed with --ckpt_path last ends with the same weights."""

import os
import signal
import subprocess
import sys

import torch
import yaml

from tests.conftest import REPO
from tests.helpers import resume_trainer


def fit(tmp_path, name: str, extra_callbacks: list, extra_args: list) -> subprocess.CompletedProcess:
    cfg = {
        "seed_everything": 0,
        "trainer": resume_trainer(tmp_path, name, extra_callbacks),
        "model": {"init_args": {"num_layers": 3, "channels": 8}},
        # 9 built-in photos, batch 2, drop_last: 4 batches per epoch, so step 3 is mid-epoch 0
        "data": {"init_args": {"batch_size": 2, "patch_size": 12, "val_patch_size": 16, "num_workers": 0,
                               "repeats": 1}},
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "main.py", "fit", "-c", "configs/baselines/single_net.yaml", "-c", str(path), *extra_args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkilled_run_resumed_from_last_matches_uninterrupted(tmp_path):
    full = fit(tmp_path, "full", [], [])
    assert full.returncode == 0, full.stderr[-2000:]

    killer = [{"class_path": "tests.helpers.KillAtStep", "init_args": {"step": 5}}]
    crashed = fit(tmp_path, "crash", killer, [])
    assert crashed.returncode == -signal.SIGKILL
    last = tmp_path / "crash" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3  # the last checkpoint is mid-epoch 0

    resumed = fit(tmp_path, "crash", [], ["--ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = weights(tmp_path / "full" / "ckpt" / "last.ckpt"), weights(last)
    assert torch.load(last, weights_only=True)["global_step"] == 9
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

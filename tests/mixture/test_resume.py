"""Joint-stage resume: a run SIGKILLed mid-epoch resumes with --ckpt_path last without the pre-training checkpoint
(E-Net and the prior come from the run's own checkpoint) and ends with the same weights as an uninterrupted run,
dropout included (the global RNG state travels with the checkpoint)."""

import os
import signal
import subprocess
import sys

import torch
import yaml

from tests.conftest import REPO
from tests.helpers import resume_trainer
from tests.mixture.helpers import TINY_ENET, fake_enet_checkpoint


def fit(tmp_path, name: str, enet_ckpt, extra_callbacks: list, extra_args: list) -> subprocess.CompletedProcess:
    cfg = {
        "seed_everything": 0,
        "trainer": resume_trainer(tmp_path, name, extra_callbacks),
        "model": {"init_args": {"num_branches": 2, "channels": 4, "mapping_layers": 1, "enet_channels": list(TINY_ENET),
                                "enet_ckpt": str(enet_ckpt), "dropout": 0.5, "plateau_patience": 1}},
        # 9 built-in photos, batch 2, drop_last: 4 batches per epoch, so step 3 is mid-epoch 0
        "data": {"init_args": {"batch_size": 2, "patch_size": 12, "val_patch_size": 16, "val_batch_size": 4,
                               "num_workers": 0, "repeats": 1, "train_dirs": ["builtin"], "val_dirs": ["builtin"]}},
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "main.py", "fit", "-c", "configs/mixture/joint.yaml", "-c", str(path),
           f"--data.init_args.degradation.init_args.split_file={tmp_path / 'split.json'}", *extra_args]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkilled_joint_run_resumes_without_the_pretraining_checkpoint_and_matches_uninterrupted(tmp_path):
    (tmp_path / "enet").mkdir()
    enet = fake_enet_checkpoint(tmp_path / "enet" / "last.ckpt", num_states=2)
    full = fit(tmp_path, "full", enet, [], [])
    assert full.returncode == 0, full.stderr[-2000:]

    killer = [{"class_path": "tests.helpers.KillAtStep", "init_args": {"step": 5}}]
    crashed = fit(tmp_path, "crash", enet, killer, [])
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    last = tmp_path / "crash" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3  # the last checkpoint is mid-epoch 0

    enet.rename(tmp_path / "moved.ckpt")  # the pre-training file is gone: a resume must not need it
    resumed = fit(tmp_path, "crash", enet, [], ["--ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(last, weights_only=True)["global_step"] == 9
    a, b = weights(tmp_path / "full" / "ckpt" / "last.ckpt"), weights(last)
    assert a.keys() == b.keys() and any(k.startswith("prior.") for k in a) and any(k.startswith("enet.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key

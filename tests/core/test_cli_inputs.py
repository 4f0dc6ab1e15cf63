"""Bad input at the command line (issue 11, items 10-16): checked first, reported last, outputs never overwritten.

Most tests call ``cli_main`` in-process; ``short_errors=True`` is what ``python main.py`` does (one subprocess test
checks that).
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from lightning_modules.core.cli import WANDB_ID_KEY, cli_main
from lightning_modules.core.errors import parser_error
from lightning_modules.core.stages import CheckpointError
from lightning_modules.moesr.experts import MoESRExperts
from tests.conftest import REPO

BASELINE = str(REPO / "configs/baselines/single_net.yaml")
SMOKE = ["-c", str(REPO / "configs/trainer/smoke.yaml")]
TINY = [
    "--model.init_args.num_layers=3", "--model.init_args.channels=8", "--data.init_args.batch_size=2",
    "--data.init_args.patch_size=12", "--data.init_args.val_patch_size=16", "--data.init_args.num_workers=0",
    "--data.init_args.val_batch_size=4",
]  # fmt: skip


def callbacks_yaml(path: Path, class_path: str, **init_args) -> str:
    """A config piece whose trainer has this one callback (written to ``path``)."""
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [{"class_path": class_path, "init_args": init_args}]}}))
    return str(path)


def checkpoints_yaml(root: Path) -> list[str]:
    """``-c`` options that save ``root/ckpt/last.ckpt``."""
    path = callbacks_yaml(root / "ckpt.yaml", "callbacks.checkpoint.StageCheckpoint", dirpath=str(root / "ckpt"))
    return ["-c", path, "--trainer.enable_checkpointing=true"]


@pytest.fixture(scope="module")
def baseline_ckpt(tmp_path_factory) -> Path:
    """A SingleNetSR checkpoint (3 layers, 8 channels, x2) from a 4-step fit."""
    root = tmp_path_factory.mktemp("baseline")
    cli_main(["fit", "-c", BASELINE, *SMOKE, *checkpoints_yaml(root), *TINY, f"--trainer.default_root_dir={root}"])
    return root / "ckpt" / "last.ckpt"


def stop_message(args: list[str], capsys) -> list[str]:
    """Run the CLI as ``python main.py`` does; returns the lines of stderr (the run must stop with exit code 2)."""
    with pytest.raises(SystemExit) as info:
        cli_main(args, short_errors=True)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------------------------------ 10, 11: --ckpt_path


def test_checkpoint_of_another_system_stops_naming_both_classes(tmp_path, tiny_div2krk):
    experts = MoESRExperts(lambdas=[0.85, 2.27, 4.37], num_layers=3, channels=4)
    path = tmp_path / "experts.ckpt"
    hparams = {"_class_path": "lightning_modules.moesr.experts.MoESRExperts", "lambdas": [0.85, 2.27, 4.37],
               "num_layers": 3, "channels": 4, "scale": 2}  # fmt: skip
    torch.save({"state_dict": experts.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.6"},
               path)  # fmt: skip
    args = ["test", "-c", BASELINE, *SMOKE, *TINY, f"--trainer.default_root_dir={tmp_path}",
            f"--data.init_args.test_set={tiny_div2krk}", f"--ckpt_path={path}"]  # fmt: skip
    with pytest.raises(CheckpointError) as info:
        cli_main(args)
    message = str(info.value)
    assert "experts.ckpt is a MoESRExperts checkpoint" in message and "model is SingleNetSR" in message
    assert "-c configs/moesr/" in message and "python main.py fit -c" in message
    assert not (tmp_path / "test").exists()  # nothing ran


def test_checkpoint_hyper_parameters_win_and_each_difference_is_printed(tmp_path, baseline_ckpt, caplog):
    args = ["validate", "-c", BASELINE, *SMOKE, *TINY, "--model.init_args.channels=16",
            f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={baseline_ckpt}"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        cli = cli_main(args)
    assert cli.model.hparams.channels == 8  # the weights' width, not the command line's
    notes = [r.getMessage() for r in caplog.records if "hyper-parameters replace" in r.getMessage()]
    assert len(notes) == 1 and "channels 8 (config: 16)" in notes[0] and "num_layers" not in notes[0]


def test_checkpoint_of_another_scale_stops_before_running(tmp_path, baseline_ckpt, capsys):
    args = ["validate", "-c", BASELINE, *SMOKE, *TINY, "--data.init_args.scale=4", f"--ckpt_path={baseline_ckpt}"]
    lines = stop_message([*args, f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert "is x2 but the data is x4: pass --data.init_args.scale 2" in lines[-2]


def test_truncated_checkpoint_names_file_and_command_before_lightning_reads_it(tmp_path, baseline_ckpt):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(baseline_ckpt.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match=r"(?s)truncated.ckpt cannot be read.*python main.py fit -c .*single_"):
        cli_main(["test", "-c", BASELINE, *SMOKE, *TINY, f"--ckpt_path={truncated}",
                  f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip


# ------------------------------------------------------------------------------------------ 13: short errors


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--data.init_args.scale=3", "error: the DIV2KRK protocol is defined for x2 and x4, got x3"),
        ("--data.init_args.scale=abc", "error: --data.init_args.scale: Expected a <class 'int'>. Got value: abc"),
        ("--model.init_args.metric_protocol=foo", "error: unknown metric_protocol 'foo'; choose from"),
    ],
)
def test_bad_values_end_the_output_with_a_short_error(option, expected, tmp_path, capsys):
    lines = stop_message(["fit", "-c", BASELINE, *SMOKE, *TINY, f"--trainer.default_root_dir={tmp_path}", option],
                         capsys)  # fmt: skip
    assert lines[-1].startswith(expected) and len(lines) <= 2  # no traceback, no parser usage


def test_unreadable_training_image_names_it_with_the_cli_spelling_of_the_fix(tmp_path, capsys, tiny_hr_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in tiny_hr_dir.iterdir():
        (photos / path.name).write_bytes(path.read_bytes())
    (photos / "broken.png").write_bytes(b"not a png")
    lines = stop_message(["fit", "-c", BASELINE, *SMOKE, *TINY, f"--trainer.default_root_dir={tmp_path}",
                          f"--data.init_args.train_dirs=[{photos}]"], capsys)  # fmt: skip
    assert lines[-1].startswith("error: cannot read image") and "broken.png" in lines[-1]
    assert lines[-1].endswith("--data.init_args.skip_invalid true)")


def test_parser_error_is_one_line_naming_the_option():
    message = (
        "Parser key \"data\":\n  Does not validate against any of the Union subtypes\n  Subtypes: [<class 'X'>, "
        "<class 'NoneType'>]\n  Errors:\n    - Problem with given class_path 'X':\n        Option 'foo' is not "
        "accepted\n    - Expected a <class 'NoneType'>\n  Given value type: <class 'NestedArg'>\n  Given value: ..."
    )
    assert parser_error(message) == "--data: Option 'foo' is not accepted (--help lists the options)"


def test_main_py_reports_input_errors_in_one_line_with_exit_code_2(tmp_path):
    cmd = [sys.executable, "main.py", "fit", "-c", BASELINE, *SMOKE, *TINY, "--data.init_args.scale=3",
           f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "error: the DIV2KRK protocol is defined for x2 and x4, got x3"
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------ 14: no logger


def test_no_logger_leaves_out_the_learning_rate_monitor(tmp_path):
    callbacks = callbacks_yaml(tmp_path / "lr.yaml", "lightning.pytorch.callbacks.LearningRateMonitor")
    cli = cli_main(["fit", "-c", BASELINE, *SMOKE, "-c", callbacks, *TINY, "--trainer.logger=false",
                    "--trainer.max_steps=2", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert cli.trainer.global_step == 2
    assert not any(type(c).__name__ == "LearningRateMonitor" for c in cli.trainer.callbacks)


# ------------------------------------------------------------------------------------------ 15: run folders


def test_each_test_and_predict_run_writes_its_own_folder(tmp_path, baseline_ckpt, tiny_div2krk, capsys):
    common = ["-c", BASELINE, *SMOKE, *TINY, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={baseline_ckpt}"]
    common += [f"--data.init_args.test_set={tiny_div2krk}"]
    cli_main(["test", *common])
    cli_main(["test", *common, "--model.init_args.metric_protocol=koalanet"])
    runs = sorted((tmp_path / "test").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("SingleNetSR-") for r in runs)
    tables = [list(csv.DictReader((r / "test_results.csv").open())) for r in runs]
    assert tables[0][-1]["psnr_y"] != tables[1][-1]["psnr_y"]  # the second run did not overwrite the first
    assert [yaml.safe_load((r / "config.yaml").read_text())["model"]["init_args"]["metric_protocol"] for r in runs] == [
        "standard", "koalanet"]  # fmt: skip
    assert not (tmp_path / "test_results.csv").exists() and not (tmp_path / "config.yaml").exists()
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"outputs of this run: {runs[1]}"
    cli_main(["predict", *common, f"--data.init_args.predict_dir={tiny_div2krk / 'lr_x2'}"])
    (predict_run,) = (tmp_path / "predict").iterdir()
    assert len(list((predict_run / "predictions").glob("*.png"))) == 4 and (predict_run / "config.yaml").is_file()


def test_resumed_fit_continues_its_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    args = ["fit", "-c", BASELINE, *SMOKE, *checkpoints_yaml(tmp_path), *TINY, "--trainer.max_steps=2",
            "--trainer.logger=lightning.pytorch.loggers.WandbLogger", f"--trainer.logger.save_dir={tmp_path}",
            "--trainer.logger.offline=true", f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    first = cli_main(args)
    run_id = first.trainer.logger.version
    first.trainer.logger.experiment.finish()
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)[WANDB_ID_KEY] == run_id
    resumed = cli_main([*args, "--ckpt_path=last"])
    assert resumed.trainer.logger.version == run_id
    resumed.trainer.logger.experiment.finish()


# ------------------------------------------------------------------------------------------ 16: predict, tiny sets


def test_predict_skips_unreadable_files_when_asked(tmp_path, baseline_ckpt, tiny_div2krk, capsys):
    folder = tmp_path / "lr"
    folder.mkdir()
    for path in sorted((tiny_div2krk / "lr_x2").iterdir())[:2]:
        Image.open(path).save(folder / path.name)
    (folder / "broken.png").write_bytes(b"not a png")
    common = ["predict", "-c", BASELINE, *SMOKE, *TINY, f"--trainer.default_root_dir={tmp_path}",
              f"--ckpt_path={baseline_ckpt}", f"--data.init_args.predict_dir={folder}"]  # fmt: skip
    lines = stop_message(common, capsys)
    assert "broken.png" in lines[-1] and "--data.init_args.skip_invalid true" in lines[-1]
    with pytest.warns(UserWarning, match="broken.png"):
        cli_main([*common, "--data.init_args.skip_invalid=true"])
    (run,) = (tmp_path / "predict").iterdir()
    assert sorted(p.name for p in (run / "predictions").iterdir()) == ["im_1_x2.png", "im_2_x2.png"]
    assert "skipped 1 unreadable" in capsys.readouterr().out

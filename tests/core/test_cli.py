import csv
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from lightning_modules.core.cli import cli_main
from lightning_modules.core.stages import CheckpointError
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
STAGES = [p for p in CONFIGS if "class_path" in ((yaml.safe_load(p.read_text()) or {}).get("model") or {})]
PIECES = [p for p in CONFIGS if p not in STAGES]
TINY = [
    "--model.init_args.num_layers=3", "--model.init_args.channels=8", "--data.init_args.batch_size=2",
    "--data.init_args.patch_size=12", "--data.init_args.val_patch_size=16", "--data.init_args.num_workers=0",
    "--data.init_args.val_batch_size=4",
]  # fmt: skip
SMOKE = ["-c", str(REPO / "configs/trainer/smoke.yaml")]


def run(args, **kw):
    return cli_main(args, **kw)


@pytest.mark.parametrize("config", STAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_stage_config_instantiates(config, tmp_path):
    cli = run(["-c", str(config), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"], run=False)
    assert cli.model.scale == cli.datamodule.scale


def base_of(piece: Path) -> Path:
    """The stage a piece is written for: ``configs/<method>/cpu/<stage>.yaml`` -> ``configs/<method>/<stage>.yaml``
    where that exists, else the single-network baseline."""
    stage = piece.parent.parent / piece.name
    return stage if piece.parent.name == "cpu" and stage.is_file() else REPO / "configs/baselines/single_net.yaml"


@pytest.mark.parametrize("piece", PIECES, ids=lambda p: str(p.relative_to(REPO)))
def test_config_piece_composes_onto_its_stage(piece, tmp_path):
    args = [
        "-c",
        str(base_of(piece)),
        "-c",
        str(piece),
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = run([*args, "--trainer.logger=false"], run=False)
    assert cli.model.scale == cli.datamodule.scale == cli.datamodule.degradation.scale


def test_scale_is_linked_from_data_to_degradation_and_model(tmp_path):
    base = [
        "-c",
        str(REPO / "configs/baselines/single_net.yaml"),
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = run([*base, "--data.init_args.scale=4"], run=False)
    assert cli.datamodule.scale == 4
    assert cli.datamodule.degradation.scale == 4
    assert cli.model.scale == 4 and len(cli.model.net) == 2  # x4 = two chained x2 stages
    assert cli.datamodule.degradation.kernel_sampler.kernel_size(4) == 31
    # the model's own default is x2: the link is what made it x4
    assert run([*base], run=False).model.scale == 2


def test_help_explains_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--model.help", "SingleNetSR"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for arg in ("num_layers", "Feature maps per hidden layer", "metric_protocol", "tile_size"):
        assert arg in out


def write_yaml(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_fit_test_predict_chain(tmp_path, tiny_div2krk):
    ckpt_dir = tmp_path / "ckpt" / "x{scale}"
    ckpt_cfg = write_yaml(
        tmp_path / "ckpt.yaml",
        {"trainer": {"enable_checkpointing": True, "callbacks": [
            {"class_path": "callbacks.checkpoint.StageCheckpoint", "init_args": {"dirpath": str(ckpt_dir)}}
        ]}},
    )  # fmt: skip
    common = ["-c", str(REPO / "configs/baselines/single_net.yaml"), *SMOKE, "-c", ckpt_cfg, *TINY]
    root = f"--trainer.default_root_dir={tmp_path}"
    run(["fit", *common, root])
    last = tmp_path / "ckpt" / "x2" / "last.ckpt"
    assert last.is_file()
    first = torch.load(last, weights_only=True)["state_dict"]
    run(["fit", *common, root, "--seed_everything=1"])  # a second run into the same folder must not fail
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # overwritten, not last-v1.ckpt
    second = torch.load(last, weights_only=True)["state_dict"]
    assert any(not torch.equal(first[k], second[k]) for k in first)
    out_dir = tmp_path / "out"
    run(["test", *common, root, f"--data.init_args.test_set={tiny_div2krk}", f"--ckpt_path={last}",
         f"--model.init_args.output_dir={out_dir}", "--model.init_args.save_images=true"])  # fmt: skip
    rows = list(csv.DictReader((out_dir / "test_results.csv").open()))
    assert [r["name"] for r in rows] == ["im_1", "im_2", "im_3", "im_4", "mean"]
    assert all(15 < float(r["psnr_y"]) < 60 for r in rows)
    assert len(list((out_dir / "test_images").glob("*.png"))) == 4
    run(["predict", *common, root, f"--data.init_args.predict_dir={tiny_div2krk / 'lr_x2'}", f"--ckpt_path={last}",
         f"--model.init_args.output_dir={out_dir}"])  # fmt: skip
    preds = sorted((out_dir / "predictions").glob("*.png"))
    assert [p.name for p in preds] == [f"im_{i}_x2.png" for i in range(1, 5)]
    assert Image.open(preds[0]).size == (96, 96)


def test_missing_or_mismatched_checkpoint_stops_with_message(tmp_path):
    base = [
        "validate",
        "-c",
        str(REPO / "configs/baselines/single_net.yaml"),
        *SMOKE,
        *TINY,
        f"--trainer.default_root_dir={tmp_path}",
    ]
    with pytest.raises(CheckpointError, match=r"(?s)nope.ckpt does not exist.*python main.py fit -c .*single_net.yaml"):
        run([*base, f"--ckpt_path={tmp_path / 'nope.ckpt'}"])
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"net.0.body.0.weight": torch.zeros(1)}, "pytorch-lightning_version": "2.6"}, bad)
    with pytest.raises(CheckpointError, match=r"(?s)bad.ckpt does not fit SingleNetSR.*missing keys.*shape mismatches"):
        run([*base, f"--ckpt_path={bad}"])


def test_wandb_is_default_logger_offline_and_grouped(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    config = str(REPO / "configs/baselines/single_net.yaml")
    cli = run(["-c", config, *TINY, f"--trainer.logger.init_args.save_dir={tmp_path}"], run=False)
    logger = cli.trainer.logger
    assert type(logger).__name__ == "WandbLogger"
    assert logger.experiment.group == "baselines"
    assert logger.experiment.job_type == "SingleNetSR-None" or logger.experiment.job_type.startswith("SingleNetSR")
    logger.experiment.finish()


def val_psnr(tmp_path, devices: int) -> float:
    cli = run(["validate", "-c", str(REPO / "configs/baselines/single_net.yaml"), *SMOKE, *TINY,
               "--trainer.limit_val_batches=1.0", "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
               f"--trainer.strategy={'ddp_fork' if devices > 1 else 'auto'}", f"--trainer.default_root_dir={tmp_path}",
               "--data.init_args.val_batch_size=2"])  # fmt: skip
    return float(cli.trainer.callback_metrics["val/psnr_y"])


def test_two_process_ddp_gives_the_same_validation_psnr(tmp_path):
    """9 validation crops split 5/4 over two gloo processes: the synced mean equals the single-process mean."""
    one = val_psnr(tmp_path, 1)
    two = val_psnr(tmp_path, 2)
    assert abs(one - two) < 1e-6, (one, two)


def table_of(tmp_path, tiny_div2krk, devices: int) -> list[dict]:
    out = tmp_path / f"out{devices}"
    run(["test", "-c", str(REPO / "configs/baselines/bicubic.yaml"), *SMOKE,
         f"--data.init_args.test_set={tiny_div2krk}", "--data.init_args.num_workers=0", "--trainer.accelerator=cpu",
         f"--trainer.devices={devices}",
         f"--trainer.strategy={'ddp_fork' if devices > 1 else 'auto'}", f"--model.init_args.output_dir={out}",
         f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    return list(csv.DictReader((out / "test_results.csv").open()))


def test_two_process_test_table_gathers_every_image(tmp_path, tiny_div2krk):
    one = table_of(tmp_path, tiny_div2krk, 1)
    two = table_of(tmp_path, tiny_div2krk, 2)
    assert [r["name"] for r in two] == [r["name"] for r in one] == ["im_1", "im_2", "im_3", "im_4", "mean"]
    for a, b in zip(one, two, strict=True):
        assert abs(float(a["psnr_y"]) - float(b["psnr_y"])) < 1e-9
        # the bicubic reference column of every test table is MATLAB bicubic: for the Bicubic system, itself
        assert float(a["bicubic_psnr_y"]) == float(a["psnr_y"]) and float(a["bicubic_ssim_y"]) == float(a["ssim_y"])


@pytest.mark.slow
def test_plain_ddp_fit_in_subprocess(tmp_path):
    """The real `ddp` launcher (re-executes main.py per rank) with gloo on CPU."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "main.py", "fit", "-c", "configs/baselines/single_net.yaml", *SMOKE, *TINY,
           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
           f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max_steps=4` reached" in proc.stderr + proc.stdout

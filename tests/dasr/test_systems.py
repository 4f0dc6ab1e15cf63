"""DASR's three stages through the CLI: MSRResNet -> DASR (PSNR) -> DASR (GAN), test on a level set, predict."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from datamodules.generate.dasr import write_dasr_sets
from lightning_modules.core.cli import cli_main
from lightning_modules.core.stages import CheckpointError
from lightning_modules.dasr.psnr import DASRSystem
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")
SMOKE = ["-c", str(REPO / "configs/trainer/smoke.yaml")]
TINY = ["--model.init_args.num_feat=8", "--model.init_args.num_block=1"]


def data(scale: int) -> list[str]:
    lr = 64 // scale  # HR crops of 64 px: USM mirrors 50 px
    return ["--data.init_args.num_workers=0", "--data.init_args.batch_size=2", "--data.init_args.val_batch_size=2",
            f"--data.init_args.patch_size={lr}", f"--data.init_args.val_patch_size={lr}",
            f"--data.init_args.scale={scale}"]  # fmt: skip


def stage(name: str, tmp_path: Path, scale: int = 4) -> list[str]:
    return ["-c", str(REPO / f"configs/dasr/{name}.yaml"), *SMOKE, *data(scale), *TINY,
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip


def with_checkpoint(folder: Path) -> list[str]:
    return ["--trainer.enable_checkpointing=true", "--trainer.callbacks+=callbacks.checkpoint.StageCheckpoint",
            f"--trainer.callbacks.dirpath={folder}"]  # fmt: skip


def finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


def test_three_stages_then_test_on_a_level_set_and_predict_with_override(tmp_path, tiny_hr_dir):
    ck = {name: tmp_path / name for name in ("msrresnet", "psnr", "gan")}
    cli_main(["fit", *stage("msrresnet", tmp_path), *with_checkpoint(ck["msrresnet"])])
    cli_main(["fit", *stage("dasr_psnr", tmp_path), *with_checkpoint(ck["psnr"]),
              f"--model.init_args.msrresnet_ckpt={ck['msrresnet'] / 'last.ckpt'}"])  # fmt: skip
    gan = cli_main(["fit", *stage("dasr_gan", tmp_path), *with_checkpoint(ck["gan"]),
                    f"--model.init_args.dasr_ckpt={ck['psnr'] / 'last.ckpt'}", "--model.init_args.random_vgg=true",
                    "--model.init_args.disc_feat=8"]).model  # fmt: skip
    assert finite(gan.net) and finite(gan.net_ema.module)
    # Lightning counts every optimizer step: 4 trainer steps = 2 iterations (generator + discriminator each)
    assert int(gan.net_ema.n_averaged) == 2
    diff = [(a - b).abs().max() for a, b in zip(gan.net.parameters(), gan.net_ema.module.parameters(), strict=True)]
    assert max(diff) > 0  # the EMA lags the trained weights
    saved = torch.load(ck["gan"] / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("net_ema.") for k in saved) and not any(k.startswith("perceptual.") for k in saved)

    sets = tmp_path / "sets"
    write_dasr_sets(str(tiny_hr_dir), sets, scale=4, seed=0, levels=("II",), limit=2)
    out = tmp_path / "test"
    cli_main(["test", *stage("dasr_gan", tmp_path), f"--data.init_args.test_set={sets / 'level_II'}",
              f"--model.init_args.output_dir={out}", f"--ckpt_path={ck['gan'] / 'last.ckpt'}"])  # fmt: skip
    with (out / "test_results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and all(math.isfinite(float(r["psnr_y"])) for r in rows)

    pred = tmp_path / "pred"
    cli_main(["predict", *stage("dasr_psnr", tmp_path), f"--data.init_args.predict_dir={sets / 'level_II' / 'LR'}",
              f"--model.init_args.output_dir={pred}", f"--ckpt_path={ck['psnr'] / 'last.ckpt'}",
              "--model.init_args.override={noise1_level: 0.25}"])  # fmt: skip
    infos = [json.loads(p.read_text()) for p in sorted((pred / "predictions").glob("*.json"))]
    assert len(infos) == 2 and len(list((pred / "predictions").glob("*.png"))) == 2
    assert all(i["parameters"]["vector"]["noise1_level"] == 0.25 for i in infos)
    assert all(len(i["parameters"]["vector"]) == 33 for i in infos)


def test_a_few_x2_steps_stay_finite(tmp_path):
    """The official code NaNs at x2 (its issue #6); full-width experts, 4 steps, the non-finite guard on."""
    model = cli_main(["fit", "-c", str(REPO / "configs/dasr/dasr_psnr.yaml"), *SMOKE, *data(2),
                      "--model.init_args.msrresnet_ckpt=null", "--model.init_args.num_block=2",
                      "--trainer.callbacks+=callbacks.NonFiniteLossGuard",
                      f"--trainer.default_root_dir={tmp_path}"]).model  # fmt: skip
    assert model.scale == 2 and finite(model.net)
    sr = model.super_resolve(torch.rand(1, 3, 12, 12))
    assert sr.shape == (1, 3, 24, 24) and torch.isfinite(sr).all()


def test_a_resumed_run_does_not_read_the_earlier_stage_again(tmp_path):
    ck = {name: tmp_path / name for name in ("msrresnet", "psnr")}
    cli_main(["fit", *stage("msrresnet", tmp_path), *with_checkpoint(ck["msrresnet"])])
    args = [*stage("dasr_psnr", tmp_path), *with_checkpoint(ck["psnr"]),
            f"--model.init_args.msrresnet_ckpt={ck['msrresnet'] / 'last.ckpt'}"]  # fmt: skip
    cli_main(["fit", *args])
    (ck["msrresnet"] / "last.ckpt").unlink()
    model = cli_main(["fit", *args, "--trainer.max_steps=6", f"--ckpt_path={ck['psnr'] / 'last.ckpt'}"]).model
    assert model.global_step == 6


def test_a_missing_msrresnet_checkpoint_names_the_file_and_the_command(tmp_path):
    missing = tmp_path / "nothing" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"(?s)nothing/last\.ckpt does not exist.*configs/dasr/msrresnet\.yaml"):
        cli_main(["fit", *stage("dasr_psnr", tmp_path), f"--model.init_args.msrresnet_ckpt={missing}"])


def test_an_msrresnet_of_another_width_is_refused(tmp_path):
    ckpt = tmp_path / "m"
    cli_main(["fit", *stage("msrresnet", tmp_path), *with_checkpoint(ckpt)])
    with pytest.raises(ValueError, match="MSRResNet of 8 features x 1 blocks but DASR's experts are 16 x 1"):
        cli_main(["fit", *stage("dasr_psnr", tmp_path), "--model.init_args.num_feat=16",
                  f"--model.init_args.msrresnet_ckpt={ckpt / 'last.ckpt'}"])  # fmt: skip


@pytest.mark.parametrize("weights", [None, "missing.pth"])
def test_the_gan_stage_without_vgg_weights_says_where_to_get_them(tmp_path, weights):
    given = [] if weights is None else [f"--model.init_args.vgg_weights={tmp_path / weights}"]
    with pytest.raises((ValueError, FileNotFoundError), match=r"(?s)vgg19-dcbb9e9d\.pth.*perceptual_weight 0"):
        cli_main(["fit", *stage("dasr_gan", tmp_path), "--model.init_args.dasr_ckpt=null", *given])


def test_override_replaces_named_entries_and_refuses_unknown_names():
    model = DASRSystem(num_feat=8, num_block=1, msrresnet_ckpt=None, override={"jpeg1_quality": 0.5}).eval()
    lr = torch.rand(2, 3, 12, 12)
    v = model.predict_vector(lr)
    assert torch.equal(v[:, 26], torch.full((2,), 0.5))
    plain = model.net.predict_vector(lr)
    assert torch.equal(torch.cat([v[:, :26], v[:, 27:]], 1), torch.cat([plain[:, :26], plain[:, 27:]], 1))
    with pytest.raises(ValueError, match="unknown degradation parameter.*noise_level"):
        DASRSystem(num_feat=8, num_block=1, msrresnet_ckpt=None, override={"noise_level": 0.0})


def test_tiled_inference_predicts_the_vector_from_the_whole_image():
    torch.manual_seed(0)
    model = DASRSystem(num_feat=8, num_block=1, msrresnet_ckpt=None, tile_size=8, tile_overlap=6).eval()
    lr = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        whole = model.net.restore(lr, model.net.predict_vector(lr))
        tiled = model._tiled(lr)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)

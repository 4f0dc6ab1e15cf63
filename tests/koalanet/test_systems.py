"""KOALAnet's three stages through the CLI: stage 1 -> stage 2 -> stage 3, tests on a KOALAnet-protocol set."""

import csv
import math
from pathlib import Path

import pytest

from datamodules.generate.koalanet import generate_koalanet
from lightning_modules.core.cli import cli_main
from lightning_modules.core.stages import CheckpointError
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")
SMOKE = ["-c", str(REPO / "configs/trainer/smoke.yaml")]
DATA = ["--data.init_args.num_workers=0", "--data.init_args.batch_size=2", "--data.init_args.val_batch_size=2",
        "--data.init_args.patch_size=8", "--data.init_args.val_patch_size=8"]  # fmt: skip
TINY = {1: ["--model.init_args.width=4"], 2: ["--model.init_args.num_blocks=2", "--model.init_args.feat=8"],
        3: ["--model.init_args.width=4", "--model.init_args.num_blocks=2", "--model.init_args.feat=8",
            "--model.init_args.num_koala=1"]}  # fmt: skip


def stage(n: int, tmp_path: Path) -> list[str]:
    return ["-c", str(REPO / f"configs/koalanet/stage{n}.yaml"), *SMOKE, *DATA, *TINY[n],
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip


def with_checkpoint(folder: Path) -> list[str]:
    return ["--trainer.enable_checkpointing=true", "--trainer.callbacks+=callbacks.checkpoint.StageCheckpoint",
            f"--trainer.callbacks.dirpath={folder}"]  # fmt: skip


def table(folder: Path) -> list[dict]:
    with (folder / "test_results.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def koala_set(tiny_hr_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("koala_set")
    generate_koalanet(str(tiny_hr_dir), out, scales=(4,), seed=0, limit=2)
    return out


def test_three_stages_then_kernel_and_sr_tests(tmp_path, koala_set):
    ck = {n: tmp_path / f"stage{n}" for n in (1, 2, 3)}
    cli_main(["fit", *stage(1, tmp_path), *with_checkpoint(ck[1])])
    cli_main(["fit", *stage(2, tmp_path), *with_checkpoint(ck[2])])
    model = cli_main(["fit", *stage(3, tmp_path), *with_checkpoint(ck[3]),
                      f"--model.init_args.stage1_ckpt={ck[1] / 'last.ckpt'}",
                      f"--model.init_args.stage2_ckpt={ck[2] / 'last.ckpt'}"]).model  # fmt: skip
    assert model.scale == 4
    out1, out3 = tmp_path / "t1", tmp_path / "t3"
    cli_main(["test", *stage(1, tmp_path), f"--data.init_args.test_set={koala_set}",
              f"--model.init_args.output_dir={out1}", f"--ckpt_path={ck[1] / 'last.ckpt'}"])  # fmt: skip
    rows = table(out1)
    assert len(rows) == 3 and all(math.isfinite(float(r["kernel_sae"])) for r in rows)
    assert all(math.isfinite(float(r["mean_kernel_sae"])) for r in rows)  # the constant reference beside it
    cli_main(["test", *stage(3, tmp_path), f"--data.init_args.test_set={koala_set}",
              f"--model.init_args.output_dir={out3}", f"--ckpt_path={ck[3] / 'last.ckpt'}",
              "--model.init_args.metric_protocol=koalanet"])  # fmt: skip
    rows = table(out3)
    assert all(math.isfinite(float(r["psnr_y"])) and math.isfinite(float(r["kernel_l2"])) for r in rows)


@pytest.mark.parametrize("which", [1, 2])
def test_a_missing_stage_checkpoint_names_the_file_and_the_command(tmp_path, which):
    missing = tmp_path / "nothing" / "last.ckpt"
    other = 2 if which == 1 else 1
    with pytest.raises(CheckpointError, match=rf"(?s)nothing/last\.ckpt does not exist.*configs/koalanet/stage{which}"):
        cli_main(["fit", *stage(3, tmp_path), f"--model.init_args.stage{which}_ckpt={missing}",
                  f"--model.init_args.stage{other}_ckpt=null"])  # fmt: skip


def test_stage1_refuses_kernels_of_another_convention(tmp_path):
    with pytest.raises(ValueError, match="native 20x20 kernels, the batch has 23x23"):
        cli_main(["fit", *stage(1, tmp_path),
                  "--data.init_args.degradation.init_args.kernel_sampler.init_args.centre=block"])  # fmt: skip

"""KENet's systems through the CLI: the two training stages, GT + USRNet, the two-step test and predict."""

import csv
import math
from pathlib import Path

import pytest
import scipy.io
import torch

from lightning_modules.core.cli import cli_main
from lightning_modules.kenet.usrnet import USRNetSystem
from tests.conftest import REPO
from tests.kenet.helpers import TINY_KENET, TINY_USRNET, write_kenet_checkpoint, write_usrnet_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
SMOKE = ["-c", str(REPO / "configs/trainer/smoke.yaml")]
DATA = ["--data.init_args.num_workers=0", "--data.init_args.batch_size=2", "--data.init_args.val_batch_size=2",
        "--data.init_args.patch_size=16", "--data.init_args.val_patch_size=24"]  # fmt: skip
USRNET_TINY = REPO.parent / "shared" / "pretrained" / "usrnet_tiny.pth"


def table(folder: Path) -> list[dict]:
    with (folder / "test_results.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_kenet_fit_checkpoint_loads_into_the_estimator(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    cli_main(["fit", "-c", str(REPO / "configs/kenet/kenet.yaml"), *SMOKE, *DATA,
              *[f"--model.init_args.{k}={v}" for k, v in TINY_KENET.items()],
              "--trainer.enable_checkpointing=true", "--trainer.callbacks+=callbacks.checkpoint.StageCheckpoint",
              f"--trainer.callbacks.dirpath={ckpt_dir}", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    from lightning_modules.kenet.components import KENetKernelEstimator

    est = KENetKernelEstimator(str(ckpt_dir / "last.ckpt"))
    est.load(2)
    k = est.estimate(torch.rand(2, 3, 20, 24), {})
    assert k.shape == (2, 11, 11)
    assert torch.allclose(k.sum(dim=(-2, -1)), torch.ones(2), atol=1e-5)


def test_kenet_refuses_data_of_another_kernel_size(tmp_path):
    with pytest.raises(ValueError, match="kernels are 11x11 but KENet estimates 21x21"):
        cli_main(["fit", "-c", str(REPO / "configs/kenet/kenet.yaml"), *SMOKE, *DATA,
                  "--model.init_args.kernel_size=21",
                  *[f"--model.init_args.{k}={v}" for k, v in TINY_KENET.items()],
                  f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip


def test_usrnet_fit_then_ground_truth_test(tmp_path, tiny_div2krk):
    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "out"
    sizes = [f"--model.init_args.{k}={v}" for k, v in TINY_USRNET.items()]
    common = [
        "-c",
        str(REPO / "configs/kenet/usrnet.yaml"),
        *SMOKE,
        *DATA,
        *sizes,
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli_main(
        [
            "fit",
            *common,
            "--trainer.enable_checkpointing=true",
            "--trainer.callbacks+=callbacks.checkpoint.StageCheckpoint",
            f"--trainer.callbacks.dirpath={ckpt_dir}",
        ]
    )
    cli_main(["test", *common, f"--data.init_args.test_set={tiny_div2krk}", f"--model.init_args.output_dir={out}",
              f"--ckpt_path={ckpt_dir / 'last.ckpt'}"])  # fmt: skip
    rows = table(out)
    assert [r["name"] for r in rows] == ["im_1", "im_2", "im_3", "im_4", "mean"]
    assert all(math.isfinite(float(r["psnr_y"])) for r in rows)  # 4 steps of a 4-channel net: plumbing only
    assert "kernel_sae" not in rows[0]  # the ground truth is given, not estimated


def test_usrnet_alone_refuses_to_guess_a_kernel():
    system = USRNetSystem(**{**TINY_USRNET, "nc": tuple(TINY_USRNET["nc"])})
    with pytest.raises(RuntimeError, match="non-blind"):
        system.super_resolve(torch.rand(1, 3, 8, 8))


def blind_args(tmp_path, estimator: str, restorer: list[str]) -> list[str]:
    return ["-c", str(REPO / "configs/kenet/blind.yaml"), *SMOKE, "--data.init_args.num_workers=0",
            f"--model.init_args.estimator={estimator}", *restorer,
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip


def test_blind_test_and_predict_with_kenet_and_usrnet(tmp_path, tiny_div2krk):
    kenet = write_kenet_checkpoint(tmp_path / "kenet_x{scale}.ckpt", 2)
    usrnet = write_usrnet_checkpoint(tmp_path / "usrnet_x{scale}.ckpt", 2)
    args = blind_args(
        tmp_path,
        "lightning_modules.kenet.components.KENetKernelEstimator",
        [f"--model.init_args.restorer.init_args.ckpt={usrnet}"],
    )
    args += [f"--model.init_args.estimator.init_args.ckpt={kenet}"]  # fmt: skip
    out = tmp_path / "test"
    cli_main(["test", *args, f"--data.init_args.test_set={tiny_div2krk}", f"--model.init_args.output_dir={out}"])
    rows = table(out)
    assert {"psnr_y", "ssim_y", "kernel_psnr", "kernel_sae", "kernel_l2", "bicubic_psnr_y"} <= set(rows[0])
    mat = scipy.io.loadmat(out / "test_images" / "im_1_x2_kernel.mat")
    assert mat["Kernel"].shape == mat["KernelBlockCentred"].shape == (11, 11)
    pred = tmp_path / "pred"
    cli_main(["predict", *args, f"--data.init_args.predict_dir={tiny_div2krk / 'lr_x2'}",
              f"--model.init_args.output_dir={pred}"])  # fmt: skip
    names = sorted(p.name for p in (pred / "predictions").iterdir())
    assert "im_1_x2.png" in names and "im_1_x2_kernel.mat" in names and "im_1_x2_kernel.png" in names


@pytest.mark.skipif(not USRNET_TINY.is_file(), reason=f"the official USRNet-tiny weights are not at {USRNET_TINY}")
def test_ground_truth_with_official_usrnet_tiny_beats_bicubic(tmp_path, tiny_div2krk):
    out = tmp_path / "gt"
    args = blind_args(
        tmp_path,
        "lightning_modules.core.two_step.GroundTruthKernel",
        [f"--model.init_args.restorer.init_args.pretrained={USRNET_TINY}"],
    )
    cli_main(["test", *args, f"--data.init_args.test_set={tiny_div2krk}", f"--model.init_args.output_dir={out}"])
    mean = table(out)[-1]
    assert "kernel_sae" not in mean  # the oracle's kernel accuracy is not a measurement
    assert float(mean["psnr_y"]) > float(mean["bicubic_psnr_y"]) + 1.0, mean


def test_two_step_refuses_fit(tmp_path):
    kenet = write_kenet_checkpoint(tmp_path / "kenet_x{scale}.ckpt", 2)
    usrnet = write_usrnet_checkpoint(tmp_path / "usrnet_x{scale}.ckpt", 2)
    args = blind_args(
        tmp_path,
        "lightning_modules.kenet.components.KENetKernelEstimator",
        [f"--model.init_args.restorer.init_args.ckpt={usrnet}"],
    )
    with pytest.raises(RuntimeError, match="nothing to fit"):
        cli_main(["fit", *args, f"--model.init_args.estimator.init_args.ckpt={kenet}", *DATA])

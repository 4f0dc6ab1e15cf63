import csv
import math
from pathlib import Path

import lightning
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from datamodules.degradation import ops
from datamodules.degradation.kernels import block_centre_to_div2krk_kernel, gaussian_kernels
from datamodules.degradation.kernels.moesr import MoESRGrid, apply_transform, invert_transform, moesr_kernels
from datamodules.io import load_kernel, save_kernel_mat, save_png
from datamodules.sr_datamodule import SRDataModule
from datamodules.test_sets import DIV2KRKDataset
from lightning_modules.core import precision
from lightning_modules.core.cli import cli_main
from lightning_modules.core.stages import CheckpointError
from lightning_modules.moesr.grid_eval import fold_transform_into_weights, grid_outputs
from lightning_modules.moesr.inference import MoESR
from lightning_modules.moesr.kernels import fit_kernel_size, gaussians_like, kernel_moments
from lightning_modules.nets.moesr import ISE, KEN, ExpertBank
from tests.conftest import REPO

LAMBDAS = (0.85, 2.27, 4.37)  # 27 grid kernels, 9 experts
CONFIG = str(REPO / "configs/moesr/test.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: one thread is much faster


def tiny_stages(scale: int = 2, seed: int = 0) -> tuple[ExpertBank, MoESRGrid, ISE, KEN]:
    torch.manual_seed(seed)
    grid = MoESRGrid(scale, LAMBDAS)
    return ExpertBank(grid.num_experts, scale, 3, 4), grid, ISE((4, 4, 4, 4, 4)), KEN(grid.num_kernels, 8)


def write_checkpoints(folder: Path, scale: int = 2) -> dict[str, str]:
    """Lightning-style checkpoints of random tiny stages, with the hyper-parameters the stage systems save."""
    bank, _, ise, ken = tiny_stages(scale)
    parts = {
        "experts": (bank, "bank.", {"lambdas": list(LAMBDAS), "num_layers": 3, "channels": 4}),
        "ise": (ise, "ise.", {"ise_channels": [4, 4, 4, 4, 4]}),
        "ken": (ken, "ken.", {"hidden": 8}),
    }
    paths = {}
    for name, (module, prefix, hp) in parts.items():
        path = folder / f"{name}_x{scale}" / "last.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "state_dict": {prefix + k: v for k, v in module.state_dict().items()},
                "pytorch-lightning_version": lightning.__version__,
                "hyper_parameters": {"scale": scale, **hp},
            },
            path,
        )
        paths[name] = str(folder / f"{name}_x{{scale}}" / "last.ckpt")
    return paths


def model(scale: int = 2, **kwargs) -> MoESR:
    m = MoESR(scale=scale, progress=False, **kwargs)
    m.set_stages(*tiny_stages(scale))
    return m


def read_table(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_folded_expert_equals_the_grid_output_of_its_kernel():
    m = model()
    lr = torch.rand(1, 3, 14, 18)
    picks = [int((m.grid.transform == t).nonzero()[0]) for t in range(4)]  # one grid kernel per transform
    with torch.no_grad():
        reference = grid_outputs(m.bank, m.grid, lr, indices=torch.tensor(picks))
        for slot, index in enumerate(picks):
            torch.testing.assert_close(m.expert_for(index)(lr), reference[:, slot], atol=1e-5, rtol=0)
    net = m.bank.expert(3)
    with torch.no_grad():
        for t in range(4):
            folded = fold_transform_into_weights(m.bank.expert(3), t)
            torch.testing.assert_close(folded(lr), invert_transform(net(apply_transform(lr, t)), t), atol=1e-5, rtol=0)
    assert all(p.requires_grad for p in m.expert_for(0).parameters())


def test_kernel_moments_and_sizes():
    params = torch.tensor([[3.0, 0.9, 0.7], [1.5, 1.5, 0.0], [4.0, 0.7, 2.6]], dtype=torch.float64)
    k = moesr_kernels(params[:, 0], params[:, 1], params[:, 2], 21, 2)
    est = kernel_moments(k)
    torch.testing.assert_close(est[:, :2], params[:, :2], atol=0.02, rtol=0)
    assert abs(float(est[0, 2]) - 0.7) < 1e-3 and abs(float(est[2, 2]) - 2.6) < 1e-3
    padded = fit_kernel_size(k.float(), 25)
    assert padded.shape == (3, 25, 25) and torch.allclose(padded[:, 2:-2, 2:-2], k.float())
    cropped = fit_kernel_size(padded, 21)
    torch.testing.assert_close(cropped, k.float())


def test_kernel_accuracy_is_measured_in_the_batch_convention():
    """The estimate is evaluated block-centred on the ground truth's grid: the convention of the test batches."""
    params = torch.tensor([[3.0, 1.0, 0.4]], dtype=torch.float64)
    gt = gaussian_kernels(11, *params.T, param="var", centre="block", scale=2).float()
    torch.testing.assert_close(gaussians_like(params, 11, "block", 2).float(), gt)
    pixel = gaussian_kernels(11, *params.T, param="var", centre="pixel").float()
    # the pixel-centred kernel compared as is would count the half-pixel shift as an error
    assert (pixel - gt).abs().sum() > 0.1


def test_pipeline_without_finetuning_is_the_chosen_expert_and_x4_runs():
    m = model(finetune_iters=0, estimate_crop=16)
    lr = torch.rand(1, 3, 30, 26)
    with torch.no_grad():
        choice = m.choose(lr)
        sr = m.super_resolve(lr)
    assert choice.kernel.shape == (1, 13, 13) and choice.intermediate is None
    assert m._estimation_input(lr).shape[-2:] == (25, 25)  # 16 raised to ISE's 49 px / 2
    index = m.grid.nearest(m.estimate_parameters(lr))
    torch.testing.assert_close(index.cpu(), choice.grid_index)
    with torch.no_grad():
        torch.testing.assert_close(sr, grid_outputs(m.bank, m.grid, lr, indices=index)[:, 0], atol=1e-5, rtol=0)
    m4 = model(4, finetune_iters=2)
    lr4 = torch.rand(1, 3, 40, 36)
    with torch.inference_mode():
        choice4 = m4.choose(lr4)
        sr4 = m4.super_resolve(lr4)
    assert choice4.kernel.shape == (1, 33, 33) and choice4.intermediate.shape == (1, 13, 13)
    assert sr4.shape == (1, 3, 160, 144) and torch.isfinite(sr4).all()


@pytest.mark.slow  # inductor: ~15 s of compilation and a C++ compiler
def test_compiled_expert_fine_tunes_and_reconstructs_like_the_eager_one():
    torch.manual_seed(3)
    lr = torch.rand(1, 3, 40, 36)
    out = {}
    for compiled in (False, True):
        m = model(4, finetune_iters=2, compile_expert=compiled, crop_size=24)
        with torch.inference_mode():
            out[compiled] = m.super_resolve(lr)
    assert out[True].shape == (1, 3, 160, 144)
    torch.testing.assert_close(out[True], out[False], atol=1e-4, rtol=0)
    stages = list(model(4, compile_expert=True).expert_for(0))
    assert len(stages) == 2 and all(isinstance(s, torch._dynamo.eval_frame.OptimizedModule) for s in stages)


def test_grouped_finetuning_option_gives_the_one_by_one_result():
    torch.manual_seed(4)
    lr = torch.rand(2, 3, 48, 40)
    out = {}
    for grouped in (False, True):
        m = model(finetune_iters=3, finetune_lr=1e-3, crop_size=32, finetune_group=grouped)
        with torch.inference_mode(), m._prepare({"lr": lr}, None) as (choice, seconds):
            out[grouped] = m.super_resolve(lr)
        assert len(seconds) == 2
    plain = model(finetune_iters=0)
    with torch.inference_mode():
        untuned = plain.super_resolve(lr)
    assert (out[False] - untuned).abs().max() > 1e-4  # fine-tuning moved the output
    torch.testing.assert_close(out[True], out[False], atol=1e-5, rtol=0)


def test_expert_choice_option(monkeypatch, tmp_path):
    """Issue 11 item 4: the official snapping by default; Eq. 12 as written and the pixel-nearest kernel as options."""
    rho = torch.tensor([[1.4278, 1.5698, 0.5297], [1.5533, 3.3806, 1.5768]])  # the three rules disagree on both
    lr = torch.rand(2, 3, 30, 26)
    chosen = {}
    for rule in ("snap", "eq12", "kernel"):
        m = model(finetune_iters=0, expert_choice=rule)
        monkeypatch.setattr(m, "estimate_parameters", lambda x, r=rho: r.clone())
        chosen[rule] = m.choose(lr).grid_index.tolist()
        assert chosen[rule] == m.grid.choose(rho, rule).tolist()
    assert chosen["snap"] == [6, 10] and chosen["eq12"] == [0, 9] and chosen["kernel"] == [5, 18]
    assert model().expert_choice == "snap"  # the official code's rule is the default
    with pytest.raises(ValueError, match="expert_choice"):
        MoESR(expert_choice="nearest")
    cli = cli_main(["-c", CONFIG, "--model.init_args.expert_choice=eq12", "--trainer.logger=false",
                    f"--trainer.default_root_dir={tmp_path}"], run=False)  # fmt: skip
    assert cli.model.expert_choice == "eq12"


def test_use_gt_kernel_takes_the_block_centred_batch_kernel_and_picks_the_nearest_grid_kernel(tiny_div2krk):
    item = DIV2KRKDataset(tiny_div2krk, 2)[0]
    gt = item["kernel"][None]  # block-centred (the kernel that made the LR), 11x11
    stored = load_kernel(DIV2KRKDataset(tiny_div2krk, 2).entries[0].kernel_path)  # pixel-centred, as released
    assert (gt - stored).abs().sum() > 0.1
    m = model(use_gt_kernel=True)
    lr = item["lr"][None].float() / 255
    choice = m.choose(lr, gt)
    block = fit_kernel_size(gt, 13)
    torch.testing.assert_close(choice.kernel, block)
    sae = (m.grid.kernels()[None] - block[:, None]).abs().sum(dim=(-2, -1))
    assert int(choice.grid_index[0]) == int(sae.argmin()) and not choice.estimated
    assert 0 <= float(choice.params[0, 2]) < math.pi and choice.params[0, 0] >= choice.params[0, 1]


def test_cli_test_and_predict_write_sr_kernels_and_kernel_accuracy(tmp_path, tiny_div2krk):
    ckpts = write_checkpoints(tmp_path / "ckpt")
    out = tmp_path / "out"
    common = [
        f"--model.init_args.experts_ckpt={ckpts['experts']}", f"--model.init_args.ise_ckpt={ckpts['ise']}",
        f"--model.init_args.ken_ckpt={ckpts['ken']}", "--model.init_args.finetune_iters=3",
        f"--model.init_args.output_dir={out}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", "--data.init_args.num_workers=0",
    ]  # fmt: skip
    cli_main(["test", "-c", CONFIG, f"--data.init_args.test_set={tiny_div2krk}", *common])
    rows = read_table(out / "test_results.csv")
    assert [r["name"] for r in rows] == ["im_1", "im_2", "im_3", "im_4", "mean"]
    for row in rows:
        assert float(row["kernel_sae"]) > 0 and float(row["kernel_l2"]) >= 0 and math.isfinite(float(row["psnr_y"]))
        assert float(row["finetune_s"]) > 0 and 0 <= float(row["grid_kernel"]) < 27
    for name in ("im_1", "im_4"):
        sr = np.asarray(Image.open(out / "test_images" / f"{name}_x2.png"))
        assert sr.shape == (96, 96, 3)
        mat = scipy.io.loadmat(out / "test_images" / f"{name}_x2_kernel.mat")
        assert mat["Kernel"].shape == mat["KernelBlockCentred"].shape == (13, 13)
        assert abs(mat["Kernel"].sum() - 1) < 1e-5 and mat["params"].size == 3
        assert Image.open(out / "test_images" / f"{name}_x2_kernel.png").size == (13 * 16, 13 * 16)
    lr_dir = tiny_div2krk / "lr_x2"
    cli_main(["predict", "-c", CONFIG, f"--data.init_args.predict_dir={lr_dir}", *common])
    assert (out / "predictions" / "im_2_x2.png").is_file() and (out / "predictions" / "im_2_x2_kernel.mat").is_file()


def test_cli_gt_kernel_needs_no_ise_or_ken_and_missing_checkpoints_name_their_command(tmp_path, tiny_div2krk):
    ckpts = write_checkpoints(tmp_path / "ckpt")
    out = tmp_path / "gt"
    base = [
        "test", "-c", CONFIG, f"--data.init_args.test_set={tiny_div2krk}", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
        "--data.init_args.num_workers=0", "--model.init_args.finetune_iters=0",
    ]  # fmt: skip
    cli_main([
        *base, f"--model.init_args.experts_ckpt={ckpts['experts']}", "--model.init_args.use_gt_kernel=true",
        f"--model.init_args.ise_ckpt={tmp_path}/none.ckpt", f"--model.init_args.ken_ckpt={tmp_path}/none.ckpt",
        f"--model.init_args.output_dir={out}",
    ])  # fmt: skip
    rows = read_table(out / "test_results.csv")
    assert len(rows) == 5 and "kernel_sae" not in rows[0] and math.isfinite(float(rows[-1]["psnr_y"]))
    assert (out / "test_images" / "im_3_x2.png").is_file() and not list((out / "test_images").glob("*.mat"))
    with pytest.raises(CheckpointError, match=r"(?s)nowhere/experts_x2/last.ckpt.*configs/moesr/experts.yaml"):
        cli_main([*base, f"--model.init_args.experts_ckpt={tmp_path}/nowhere/experts_x{{scale}}/last.ckpt"])
    with pytest.raises(CheckpointError, match=r"(?s)missing_ken.ckpt.*configs/moesr/ken.yaml"):
        cli_main([
            *base, f"--model.init_args.experts_ckpt={ckpts['experts']}", f"--model.init_args.ise_ckpt={ckpts['ise']}",
            f"--model.init_args.ken_ckpt={tmp_path}/missing_ken.ckpt",
        ])  # fmt: skip


def test_runtime_options_stay_out_of_hparams():
    m = MoESR(finetune_iters=7, use_gt_kernel=True, estimate_crop=64, real=True, output_dir="x", scale=2)
    assert set(m.hparams) == {"experts_ckpt", "ise_ckpt", "ken_ckpt", "scale"}
    assert m.finetune_iters == 7 and m.checkpoint_path("ken") == "checkpoints/moesr/ken_x2/last.ckpt"
    with pytest.raises(RuntimeError, match="nothing to fit"):
        m.configure_optimizers()


@pytest.mark.parametrize("scale", [2, 4])
def test_a_perfect_kernel_estimate_scores_zero_through_moesr_test_path(tmp_path, scale):
    """MoESR's kernel accuracy (an analytic Gaussian evaluated on the ground truth's grid) against the batch kernel.

    A noise-free DIV2KRK-layout set stores the release convention (pixel-centred ``Kernel``) beside the exact kernel;
    an estimator returning the true parameters must score SAE ~0 (measured: < 1e-6).
    """
    params = torch.tensor([[3.1, 1.2, 0.7], [1.6, 0.9, 2.2]], dtype=torch.float64)
    if scale == 4:
        params = params * torch.tensor([5.0, 5.0, 1.0], dtype=torch.float64)
    size = 11 if scale == 2 else 31
    exact = gaussian_kernels(size, *params.T, param="var", centre="block", scale=scale)
    root = tmp_path / "set"
    for folder in ("gt", f"lr_x{scale}", f"gt_k_x{scale}"):
        (root / folder).mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(2):
        hr = torch.rand(1, 3, 48, 48, generator=gen, dtype=torch.float64)
        hr = (hr * 255).round() / 255
        lr = ops.quantize(ops.blur_decimate(hr, exact[i : i + 1], scale))
        save_png((hr[0] * 255).round().byte().permute(1, 2, 0).numpy(), root / "gt" / f"im_{i + 1}.png")
        save_png((lr[0] * 255).round().byte().permute(1, 2, 0).numpy(), root / f"lr_x{scale}" / f"im_{i + 1}.png")
        stored = block_centre_to_div2krk_kernel(exact[i], scale)
        save_kernel_mat(root / f"gt_k_x{scale}" / f"kernel_{i + 1}.mat",
                        {"Kernel": stored.numpy(), "KernelBlockCentred": exact[i].numpy()})  # fmt: skip
    m = model(scale, finetune_iters=0, output_dir=str(tmp_path / "out"))
    calls = iter(range(2))
    m.estimate_parameters = lambda lr: params[next(calls)][None].to(lr)
    data = SRDataModule(scale=scale, test_set=str(root), num_workers=0)
    trainer = lightning.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.test(m, datamodule=data, verbose=False)[0]
    assert out["test/kernel_sae"] < 1e-6 and out["test/kernel_l2"] < 1e-10, out


def first_conv_weight(net: torch.nn.Module) -> torch.Tensor:
    return next(p for p in net.parameters() if p.dim() == 4)


def test_auto_fine_tunes_in_nchw_and_reconstructs_in_channels_last_where_bfloat16_is_emulated(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    torch.manual_seed(5)
    lr = torch.rand(1, 3, 48, 40)
    tuned = {}
    for choice in ("fp32", "auto"):
        m = model(finetune_iters=3, finetune_lr=1e-3, crop_size=32, inference_path=choice)
        m.apply_inference_layout()
        with torch.inference_mode():
            kernels = m.choose(lr)
        assert m.inference_path == ("channels_last" if choice == "auto" else "fp32") and m.finetune_path == "fp32"
        assert first_conv_weight(m.expert_for(0)).is_contiguous()  # NCHW while fine-tuning
        net, _ = m.adapt(lr, kernels)
        w = first_conv_weight(net)
        nhwc = w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        assert nhwc == (choice == "auto")  # reconstruction in the inference path's layout
        with torch.no_grad():
            tuned[choice] = m._reconstruct(net, lr)
    torch.testing.assert_close(tuned["auto"], tuned["fp32"], atol=1e-5, rtol=0)
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert m.inference_path == m.finetune_path == "bf16"  # where bfloat16 is native, auto fine-tunes in it too

import lightning as L
import pytest
import torch

from datamodules.degradation import ops
from datamodules.images import builtin_photo_paths
from datamodules.sr_datamodule import SRDataModule
from lightning_modules.baselines.bicubic import BicubicSR
from lightning_modules.baselines.single_net import SingleNetSR
from lightning_modules.core.tiling import tiled_forward
from lightning_modules.nets.vdsr import VDSR, ChainedVDSR


def test_vdsr_parameter_count_matches_moesr_expert():
    # 3->64, 10 x 64->64, 64->3 (3x3 convs with bias)
    assert sum(p.numel() for p in VDSR(2, 12, 64).parameters()) == 372_803
    assert sum(p.numel() for p in ChainedVDSR(4, 12, 64).parameters()) == 2 * 372_803
    assert len(ChainedVDSR(4)) == 2 and len(ChainedVDSR(2)) == 1
    with pytest.raises(ValueError, match="x5"):
        ChainedVDSR(5)


def test_vdsr_shapes_residual_and_gradients():
    torch.manual_seed(0)
    net = ChainedVDSR(4, num_layers=4, channels=8)
    x = torch.rand(2, 3, 10, 12)
    y = net(x)
    assert y.shape == (2, 3, 40, 48)
    y.abs().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    stage = VDSR(2, 3, 8)
    torch.nn.init.zeros_(stage.body[-1].weight)
    torch.nn.init.zeros_(stage.body[-1].bias)
    up = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    torch.testing.assert_close(stage(x), up)  # the body predicts a residual over the PyTorch bicubic upsample


@pytest.mark.parametrize("scale", [2, 4])
def test_tiled_equals_untiled(scale):
    torch.manual_seed(0)
    model = SingleNetSR(num_layers=12, channels=8, scale=scale).eval()
    lr = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        full = model.super_resolve(lr)
        tiled = tiled_forward(model.super_resolve, lr, scale, tile=32, overlap=16)
        no_overlap = tiled_forward(model.super_resolve, lr, scale, tile=32, overlap=0)
    assert tiled.shape == full.shape
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=0)
    assert (no_overlap - full).abs().max() > 1e-3  # without context the seams differ: the check can fail


def test_bicubic_system_is_matlab_resize_and_refuses_fit():
    sys = BicubicSR(scale=3)
    x = torch.rand(1, 3, 20, 20)
    torch.testing.assert_close(sys.super_resolve(x), ops.resize(x, scale=3, convention="matlab"))
    torch.testing.assert_close(
        BicubicSR(convention="torch", scale=2).super_resolve(x), ops.resize(x, scale=2, convention="torch")
    )
    with pytest.raises(RuntimeError, match="nothing to train"):
        sys.configure_optimizers()
    with pytest.raises(ValueError, match="metric_protocol"):
        BicubicSR(metric_protocol="nope")


def test_single_network_learns_to_beat_bicubic_on_real_photos():
    """A tiny baseline trained for 300 steps on 6 built-in photos beats bicubic on 3 held-out natural photos."""
    L.seed_everything(0)
    paths = {p.name: str(p) for p in builtin_photo_paths()}
    held_out = [paths[n] for n in ("chelsea.png", "coffee.png", "motorcycle_right.png")]
    train = [p for p in paths.values() if p not in held_out]
    dm = SRDataModule(
        scale=2, train_dirs=train, val_dirs=held_out, patch_size=24, val_patch_size=64,
        batch_size=8, val_batch_size=9, num_workers=0, repeats=100,
    )  # fmt: skip
    model = SingleNetSR(num_layers=6, channels=16, lr=2e-3)
    trainer = L.Trainer(
        max_steps=300, limit_val_batches=1.0, val_check_interval=300, check_val_every_n_epoch=None, logger=False,
        num_sanity_val_steps=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    gain = float(metrics["val/psnr_y"] - metrics["val/bicubic_psnr_y"])
    assert gain > 0.5, (
        f"PSNR-Y {float(metrics['val/psnr_y']):.2f} vs bicubic {float(metrics['val/bicubic_psnr_y']):.2f}"
    )
    assert float(metrics["val/ssim_y"]) > float(metrics["val/bicubic_ssim_y"])

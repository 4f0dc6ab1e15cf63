"""Tests for callbacks/: real (tiny) Lightning fits on CPU with in-memory SR batches."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.strategies import SingleDeviceStrategy
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from callbacks import KernelGridLogger, NonFiniteLossGuard, SRImageLogger

SCALE = 2
LR_SIZE = 8
HR_SIZE = LR_SIZE * SCALE


def gaussian_kernels(sigmas: Tensor, size: int) -> Tensor:
    """Isotropic Gaussians centred on the middle pixel, (N,size,size), each summing to 1."""
    r = torch.arange(size, dtype=torch.float32) - size // 2
    d2 = r[:, None] ** 2 + r[None, :] ** 2
    k = torch.exp(-d2 / (2 * sigmas.view(-1, 1, 1) ** 2))
    return k / k.sum(dim=(-2, -1), keepdim=True)


class PairSet(Dataset):
    """Six fixed LR/HR pairs (HR random, LR = 2x2 average), optionally with a 5x5 blur kernel per sample."""

    def __init__(self, with_hr: bool = True, with_kernel: bool = True) -> None:
        g = torch.Generator().manual_seed(0)
        self.hr = torch.rand(6, 3, HR_SIZE, HR_SIZE, generator=g)
        self.lr = F.avg_pool2d(self.hr, SCALE)
        self.kernel = gaussian_kernels(torch.linspace(0.6, 2.0, 6), 5)
        self.with_hr = with_hr
        self.with_kernel = with_kernel

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {"lr": self.lr[i], "index": torch.tensor(i)}
        if self.with_hr:
            item["hr"] = self.hr[i]
        if self.with_kernel:
            item["kernel"] = self.kernel[i]
        return item


class TinySR(pl.LightningModule):
    """1-conv residual net on a bicubic upsample; records what the callbacks ask of it.

    Args:
        sr_colour: If given, super_resolve returns this constant RGB colour (to identify the SR panel).
        nan_at_step: If given, training_step returns NaN when global_step equals it.
    """

    def __init__(self, sr_colour: tuple[float, float, float] | None = None, nan_at_step: int | None = None) -> None:
        super().__init__()
        self.scale = SCALE
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.sr_colour = sr_colour
        self.nan_at_step = nan_at_step
        self.sr_calls: list[tuple[int, Tensor, bool]] = []  # (epoch, lr, grad enabled) of calls outside the steps
        self.val_first_lr: list[Tensor] = []  # lr of validation batch 0, every validation run
        self.train_steps = 0

    def _forward(self, lr: Tensor) -> Tensor:
        up = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return up + self.conv(up)

    def super_resolve(self, lr: Tensor) -> Tensor:
        self.sr_calls.append((self.current_epoch, lr.detach().cpu().clone(), torch.is_grad_enabled()))
        out = self._forward(lr)
        if self.sr_colour is not None:
            out = torch.tensor(self.sr_colour, device=lr.device).view(1, 3, 1, 1).expand_as(out).clone()
        return out

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self.train_steps += 1
        loss = F.l1_loss(self._forward(batch["lr"]), batch["hr"])
        if self.global_step == self.nan_at_step:
            loss = loss * float("nan")
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if batch_idx == 0:
            self.val_first_lr.append(batch["lr"].cpu().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TinyKernelSR(TinySR):
    """TinySR plus a kernel estimator that returns 7x7 Gaussians of sigma 1.0 (a size different from the data's)."""

    def estimate_kernel(self, lr: Tensor) -> Tensor:
        return gaussian_kernels(torch.ones(lr.shape[0], device=lr.device), 7)


def make_trainer(tmp_path: Path, callbacks: list, max_epochs: int = 2, **kwargs) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": max_epochs,
        "limit_train_batches": 2,
        "limit_val_batches": 2,
        "enable_checkpointing": False,
        "logger": False,
        "default_root_dir": str(tmp_path),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "callbacks": callbacks,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def loaders(val_data: PairSet, val_shuffle: bool = False) -> tuple[DataLoader, DataLoader]:
    """Training on the full PairSet, validation on ``val_data``."""
    val_gen = torch.Generator().manual_seed(1) if val_shuffle else None
    val = DataLoader(val_data, batch_size=2, shuffle=val_shuffle, generator=val_gen)
    return DataLoader(PairSet(), batch_size=2), val


def to_u8(x: Tensor) -> np.ndarray:
    """(3,H,W) float -> (H,W,3) uint8, the same rounding as the callbacks."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# --------------------------------------------------------------------------------------------------------- images


def test_sr_images_png_without_logger(tmp_path: Path) -> None:
    data = PairSet()
    colour = (0.2, 0.5, 0.8)
    model = TinySR(sr_colour=colour)
    trainer = make_trainer(tmp_path, [SRImageLogger(max_images=2)])
    trainer.fit(model, *loaders(data))

    files = sorted(p.name for p in (tmp_path / "images").iterdir())
    # Sanity check (step 0) logs nothing; epochs 0 and 1 end at steps 2 and 4.
    assert files == [
        "epoch0000_step0000002_0.png",
        "epoch0000_step0000002_1.png",
        "epoch0001_step0000004_0.png",
        "epoch0001_step0000004_1.png",
    ]
    for i in range(2):
        image = read_png(tmp_path / "images" / f"epoch0001_step0000004_{i}.png")
        assert image.shape == (HR_SIZE, 3 * HR_SIZE, 3) and image.dtype == np.uint8
        lr_panel, sr_panel, hr_panel = np.split(image, 3, axis=1)
        lr_up = data.lr[i].repeat_interleave(SCALE, dim=-2).repeat_interleave(SCALE, dim=-1)
        np.testing.assert_array_equal(lr_panel, to_u8(lr_up))
        assert (sr_panel == np.array([51, 128, 204], dtype=np.uint8)).all()
        np.testing.assert_array_equal(hr_panel, to_u8(data.hr[i]))
    # super_resolve ran only for the two logged epochs, in no_grad, on the first max_images samples.
    assert [(epoch, lr.shape[0], grad) for epoch, lr, grad in model.sr_calls] == [(0, 2, False), (1, 2, False)]


def test_sr_images_csv_log_dir_no_hr_and_clamped(tmp_path: Path) -> None:
    data = PairSet(with_hr=False)
    model = TinySR(sr_colour=(1.5, -0.5, 0.5))
    logger = CSVLogger(str(tmp_path / "csv"))
    trainer = make_trainer(tmp_path, [SRImageLogger(max_images=1)], max_epochs=1, logger=logger)
    trainer.fit(model, *loaders(data))

    images_dir = Path(trainer.log_dir) / "images"
    assert images_dir.parent != tmp_path and images_dir.is_dir()
    files = sorted(images_dir.iterdir())
    assert [p.name for p in files] == ["epoch0000_step0000002_0.png"]
    image = read_png(files[0])
    assert image.shape == (HR_SIZE, 2 * HR_SIZE, 3)  # LR | SR only
    assert (image[:, HR_SIZE:] == np.array([255, 0, 128], dtype=np.uint8)).all()
    assert not (tmp_path / "images").exists()


@pytest.mark.filterwarnings("ignore:.*shuffling enabled:UserWarning")
def test_fixed_batch_reused_and_every_n_epochs(tmp_path: Path) -> None:
    model = TinySR()
    trainer = make_trainer(tmp_path, [SRImageLogger(every_n_epochs=2, max_images=1)], max_epochs=3)
    trainer.fit(model, *loaders(PairSet(), val_shuffle=True))

    # The shuffled validation loader gives a different first batch in some epoch, so re-capturing would show.
    first = model.val_first_lr  # sanity check + 3 epochs
    assert len(first) == 4 and any(not torch.equal(first[0], other) for other in first[1:])
    assert [epoch for epoch, _, _ in model.sr_calls] == [0, 2]
    for _, lr, _ in model.sr_calls:
        torch.testing.assert_close(lr, first[0][:1], rtol=0, atol=0)
    assert sorted(p.name.split("_")[0] for p in (tmp_path / "images").iterdir()) == ["epoch0000", "epoch0002"]


@pytest.mark.parametrize(
    ("model_cls", "with_kernel", "expected_shape"),
    [
        (TinyKernelSR, True, (2 * 70 + 2, 2 * 70 + 2)),  # GT 5x5 padded to 7x7, x10 -> 70 px cells, 2x2 grid
        (TinySR, True, (65, 2 * 65 + 2)),  # GT only: 5x5 x13 -> 65 px cells, one row
        (TinyKernelSR, False, None),  # no kernels in the batch: nothing
    ],
)
def test_kernel_grid_png(tmp_path: Path, model_cls: type, with_kernel: bool, expected_shape: tuple | None) -> None:
    data = PairSet(with_kernel=with_kernel)
    trainer = make_trainer(tmp_path, [KernelGridLogger(max_kernels=8)], max_epochs=1)
    trainer.fit(model_cls(), *loaders(data))

    kernels_dir = tmp_path / "kernels"
    if expected_shape is None:
        assert not kernels_dir.exists()
        return
    files = sorted(kernels_dir.iterdir())
    assert [p.name for p in files] == ["epoch0000_step0000002.png"]
    grid = read_png(files[0])
    assert grid.shape == (*expected_shape, 3)
    cell = 70 if model_cls is TinyKernelSR else 65
    factor = cell // (7 if model_cls is TinyKernelSR else 5)
    gt = data.kernel[:2]
    if model_cls is TinyKernelSR:
        gt = F.pad(gt, (1, 1, 1, 1))  # centred in 7x7
    for col in range(2):
        left = col * (cell + 2)
        top_cell = grid[:cell, left : left + cell, 0]
        np.testing.assert_array_equal(
            top_cell[::factor, ::factor], to_u8((gt[col] / gt[col].max()).expand(3, -1, -1))[..., 0]
        )
        assert top_cell.max() == 255
        if model_cls is TinyKernelSR:
            est = gaussian_kernels(torch.ones(1), 7)[0]
            bottom_cell = grid[cell + 2 :, left : left + cell, 0]
            np.testing.assert_array_equal(
                bottom_cell[::factor, ::factor], to_u8((est / est.max()).expand(3, -1, -1))[..., 0]
            )
    assert (grid[:, cell : cell + 2] == 128).all()  # grey separator between columns


def test_wandb_offline_logs_images_and_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path))
    logger = WandbLogger(project="blindsr-tests", offline=True, save_dir=str(tmp_path))
    callbacks = [SRImageLogger(max_images=2), KernelGridLogger(save_png=True)]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=1, logger=logger)
    try:
        trainer.fit(TinyKernelSR(), *loaders(PairSet()))
    finally:
        wandb.finish()

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = [p.relative_to(runs[0] / "files" / "media" / "images").as_posix() for p in runs[0].rglob("*.png")]
    assert sum(name.startswith(("val/images", "val_images")) for name in media) == 2, media
    assert sum(name.startswith(("val/kernels", "val_kernels")) for name in media) == 1, media
    # With W&B on, PNG files only where save_png=True (KernelGridLogger), below the logger's save_dir.
    assert not list(tmp_path.rglob("images/epoch*.png"))
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == ["epoch0000_step0000002.png"]


def test_logger_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="every_n_epochs"):
        SRImageLogger(every_n_epochs=0)
    with pytest.raises(ValueError, match=">= 1"):
        KernelGridLogger(max_kernels=0)
    with pytest.raises(ValueError, match="check_every_n_steps"):
        NonFiniteLossGuard(check_every_n_steps=0)


# ---------------------------------------------------------------------------------------------------------- guard


def test_guard_raises_on_nan_and_names_step_and_checkpoint(tmp_path: Path) -> None:
    model = TinySR(nan_at_step=2)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_train_steps=1)
    trainer = make_trainer(tmp_path, [NonFiniteLossGuard(), ckpt], max_epochs=3, enable_checkpointing=True)
    with pytest.raises(RuntimeError, match="step") as excinfo:
        trainer.fit(model, *loaders(PairSet()))

    message = str(excinfo.value)
    assert "nan" in message and "global step 2" in message and "epoch 1" in message
    assert "last.ckpt" in message and "--ckpt_path" in message
    assert "learning rate" in message and "--trainer.gradient_clip_val" in message
    assert model.train_steps == 3  # stopped right after the bad batch


def test_guard_lets_finite_run_finish(tmp_path: Path) -> None:
    model = TinySR()
    trainer = make_trainer(tmp_path, [NonFiniteLossGuard()], max_epochs=2)
    trainer.fit(model, *loaders(PairSet()))
    assert trainer.global_step == 4 and model.train_steps == 4


class ManualNaN(TinySR):
    """Manual optimisation that returns nothing and only logs train/loss (NaN at global step 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.train_steps += 1
        opt = self.optimizers()
        loss = F.l1_loss(self._forward(batch["lr"]), batch["hr"])
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log("train/loss", loss.detach() * (math.nan if self.train_steps == 2 else 1.0))


def test_guard_reads_logged_loss_under_manual_optimisation(tmp_path: Path) -> None:
    model = ManualNaN()
    trainer = make_trainer(tmp_path, [NonFiniteLossGuard()], max_epochs=2)
    with pytest.raises(RuntimeError, match="global step 1 "):
        trainer.fit(model, *loaders(PairSet()))
    assert model.train_steps == 2


class OtherRankSawNaN(SingleDeviceStrategy):
    """Single process standing in for DDP: reduce_boolean_decision reports a bad loss 'on another rank' at call 3."""

    def __init__(self) -> None:
        super().__init__(device=torch.device("cpu"))
        self.calls = 0

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        self.calls += 1
        return decision or self.calls == 3


@pytest.mark.parametrize("sync_ranks", [True, False])
def test_guard_syncs_verdict_across_ranks(tmp_path: Path, sync_ranks: bool) -> None:
    strategy = OtherRankSawNaN()
    model = TinySR()
    trainer = make_trainer(tmp_path, [NonFiniteLossGuard(sync_ranks=sync_ranks)], max_epochs=2, strategy=strategy)
    if sync_ranks:
        with pytest.raises(RuntimeError, match="another rank") as excinfo:
            trainer.fit(model, *loaders(PairSet()))
        assert "global step 2" in str(excinfo.value)
        assert strategy.calls == 3 and model.train_steps == 3
    else:
        trainer.fit(model, *loaders(PairSet()))
        assert strategy.calls == 0 and model.train_steps == 4


def test_guard_check_every_n_steps_skips_batches(tmp_path: Path) -> None:
    # NaN at global step 1 is not checked with n=2 (batches 0, 2 are); batch 2's loss is NaN too once the weights are.
    model = TinySR(nan_at_step=1)
    trainer = make_trainer(tmp_path, [NonFiniteLossGuard(check_every_n_steps=2)], max_epochs=2)
    with pytest.raises(RuntimeError, match="global step 2 "):
        trainer.fit(model, *loaders(PairSet()))


# ------------------------------------------------------------------------------------------------------ two ranks


class RankMarkingSR(TinyKernelSR):
    """Writes a marker file per rank when super_resolve / estimate_kernel run; NaN loss on rank 1 at step 1 if asked.

    Args:
        marker_dir: Folder for the marker files.
        nan_on_rank1: Make rank 1's loss NaN at global step 1.
    """

    def __init__(self, marker_dir: str, nan_on_rank1: bool = False) -> None:
        super().__init__()
        self.marker_dir = marker_dir
        self.nan_on_rank1 = nan_on_rank1

    def super_resolve(self, lr: Tensor) -> Tensor:
        Path(self.marker_dir, f"sr_rank{self.global_rank}_epoch{self.current_epoch}").touch()
        return super().super_resolve(lr)

    def estimate_kernel(self, lr: Tensor) -> Tensor:
        Path(self.marker_dir, f"kernel_rank{self.global_rank}_epoch{self.current_epoch}").touch()
        return super().estimate_kernel(lr)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.nan_on_rank1 and self.global_rank == 1 and self.global_step == 1:
            loss = loss * math.nan
        return loss


def test_two_ranks_render_on_rank_zero_and_stop_together(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    callbacks = [SRImageLogger(max_images=1), KernelGridLogger(), NonFiniteLossGuard()]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=2, devices=2, strategy="ddp_fork")
    trainer.fit(RankMarkingSR(str(markers)), *loaders(PairSet()))
    assert sorted(p.name for p in markers.iterdir()) == [
        "kernel_rank0_epoch0",
        "kernel_rank0_epoch1",
        "sr_rank0_epoch0",
        "sr_rank0_epoch1",
    ]
    assert len(list((tmp_path / "images").glob("epoch*.png"))) == 2
    assert len(list((tmp_path / "kernels").glob("epoch*.png"))) == 2

    trainer = make_trainer(tmp_path, [NonFiniteLossGuard()], max_epochs=2, devices=2, strategy="ddp_fork")
    with pytest.raises(Exception, match="Non-finite training loss"):
        trainer.fit(RankMarkingSR(str(markers), nan_on_rank1=True), *loaders(PairSet()))

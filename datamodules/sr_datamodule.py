"""SRDataModule: HR crops on CPU workers, degradation on the device in ``on_after_batch_transfer``.

Data flow (DESIGN.md): workers return ``uint8`` HR crops; after Lightning moves the batch to the device, the
configured ``Degradation`` turns it into ``{"hr", "lr", "kernel", "params"}`` in one batched pass.

* Training: parameters come from a ``torch.Generator`` on the batch's device, seeded from ``(seed, rank, n)`` where
  ``n`` counts this rank's training batches. ``n``, the epoch and the batches consumed in it are saved in
  checkpoints (``state_dict``); a run resumed from a mid-epoch checkpoint skips the crops already used in that epoch
  (``SeededSampler.skip``), so it sees the same crops and degradations as an uninterrupted one.
* Validation: parameters for every validation crop are drawn once at set-up from ``val_seed`` (on the CPU) and
  gathered by sample index, so validation is the same on 1 or N processes and at every epoch.
* Test: a benchmark set on disk (DIV2KRK layout or paired LR/HR folders); LR files are used as stored.
* Predict: every image of a folder, LR only.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.degradation.pipelines import ClassicalDegradation, Degradation
from datamodules.images import HRImageDataset, LRFolderDataset, SeededSampler
from datamodules.test_sets import open_benchmark

_SEED_STRIDE = 1_000_003  # keeps (seed, rank, batch) streams apart


def _to_float(x: Tensor) -> Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x


class SRDataModule(L.LightningDataModule):
    """Data for every blind-SR stage: synthetic training/validation pairs, benchmark test sets, predict folders.

    Args:
        scale: Super-resolution factor, stated once: the CLI links it to the degradation and to the model.
        degradation: Degradation model applied on the device (default: the DIV2KRK protocol at ``scale``).
        train_dirs: HR training folders (recursive) or files; ``"builtin"`` = scikit-image's colour photos.
        val_dirs: HR validation folders; their central crops are degraded once with fixed parameters.
        val_degradations: Fixed degradations per validation crop: the validation set holds every central crop this
            many times, each with its own parameters (all drawn once from ``val_seed``), for less coarse metrics
            on small validation sets (e.g. MoESR's kernel-ranking metrics).
        patch_size: LR training patch side (HR crops are ``patch_size * scale``).
        val_patch_size: LR side of the central validation crops.
        batch_size: Training batch size per process.
        val_batch_size: Validation batch size per process.
        num_workers: CPU workers per dataloader.
        repeats: Random crops per training image and epoch.
        seed: Seed of the training crops and degradations.
        val_seed: Seed of the fixed validation degradations.
        test_set: Benchmark folder for ``test`` (DIV2KRK layout or ``LR``/``HR`` sub-folders).
        test_layout: ``"auto"``, ``"div2krk"`` or ``"paired"``.
        test_kernel_centre: Centre of the test set's ``Kernel`` kernels in their files (``"pixel"``: the DIV2KRK
            release). Test batches always carry block-centred kernels, the convention of the training batches
            (``datamodules.test_sets``).
        predict_dir: Folder (or file) of LR images for ``predict``.
        skip_invalid: Skip unreadable or too-small training/validation images, and unreadable predict images, with
            a warning instead of failing.
        preload: Decode all training images once and keep them in memory.
    """

    def __init__(
        self,
        scale: int = 2,
        degradation: Degradation | None = None,
        train_dirs: list[str] | None = None,
        val_dirs: list[str] | None = None,
        patch_size: int = 48,
        val_patch_size: int = 96,
        batch_size: int = 16,
        val_batch_size: int = 8,
        val_degradations: int = 1,
        num_workers: int = 2,
        repeats: int = 1,
        seed: int = 0,
        val_seed: int = 1234,
        test_set: str | None = None,
        test_layout: Literal["auto", "div2krk", "paired"] = "auto",
        test_kernel_centre: Literal["pixel", "block"] = "pixel",
        predict_dir: str | None = None,
        skip_invalid: bool = False,
        preload: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["degradation"])
        if val_degradations < 1:
            raise ValueError(f"val_degradations must be >= 1, got {val_degradations}")
        self.scale = scale
        self.degradation = degradation if degradation is not None else ClassicalDegradation(scale)
        if self.degradation.scale != scale:
            raise ValueError(f"degradation scale x{self.degradation.scale} differs from the data scale x{scale}")
        self.train_dirs = train_dirs if train_dirs is not None else ["builtin"]
        self.val_dirs = val_dirs if val_dirs is not None else ["builtin"]
        self.batches_seen = 0
        self.epoch = 0
        self.epoch_batches = 0
        self._restored = False
        self.train_set: HRImageDataset | None = None
        self.val_set: HRImageDataset | None = None
        self.val_params: dict[str, Tensor] | None = None
        self.test_set: Dataset | None = None
        self.predict_set: Dataset | None = None

    # ----------------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        """Build the datasets a stage needs and draw the fixed validation degradations."""
        hp = self.hparams
        if stage == "fit" and self.train_set is None:
            self.train_set = HRImageDataset(
                self.train_dirs, hp.patch_size * self.scale, train=True, repeats=hp.repeats,
                skip_invalid=hp.skip_invalid, preload=hp.preload,
            )  # fmt: skip
            self._check_one_batch(len(self.train_set.paths))
        if stage in ("fit", "validate") and self.val_set is None:
            self.val_set = HRImageDataset(
                self.val_dirs, hp.val_patch_size * self.scale, train=False, repeats=hp.val_degradations,
                skip_invalid=hp.skip_invalid,
            )  # fmt: skip
            size = hp.val_patch_size * self.scale
            crops = len(self.val_set) // hp.val_degradations
            with torch.no_grad():  # repeat r of every crop draws from val_seed + r (repeat 0: as without repeats)
                draws = [
                    self.degradation.sample(
                        torch.Size((crops, 3, size, size)), torch.Generator().manual_seed(hp.val_seed + r), "cpu"
                    )
                    for r in range(hp.val_degradations)
                ]
            self.val_params = {key: torch.cat([d[key] for d in draws]) for key in draws[0]}
        if stage == "test" and self.test_set is None:
            if hp.test_set is None:
                raise ValueError(
                    "`test` needs a benchmark: pass --data.init_args.test_set PATH (e.g. a DIV2KRK folder)"
                )
            self.test_set = open_benchmark(hp.test_set, self.scale, hp.test_layout, hp.test_kernel_centre)
        if stage == "predict" and self.predict_set is None:
            if hp.predict_dir is None:
                raise ValueError("`predict` needs images: pass --data.init_args.predict_dir PATH")
            self.predict_set = LRFolderDataset(hp.predict_dir, skip_invalid=hp.skip_invalid)

    def _check_one_batch(self, images: int) -> None:
        """Refuse a training set smaller than one batch per process (``drop_last``: Lightning would train nothing)."""
        world, _ = self._world()
        hp = self.hparams
        if len(self.train_set) // world < hp.batch_size:
            repeats = -(-hp.batch_size * world // images)
            raise ValueError(
                f"{images} training image(s) x {hp.repeats} repeats = {len(self.train_set)} crops per epoch"
                f"{f' over {world} processes' if world > 1 else ''}, fewer than one batch of {hp.batch_size}: pass "
                f"--data.init_args.repeats {repeats}, a smaller --data.init_args.batch_size or more images"
            )

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _eval_loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        world, rank = self._world()
        sampler = (
            UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        )
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
            num_workers=self.hparams.num_workers, persistent_workers=False,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        """Random HR crops with epoch-seeded shuffling (``SeededSampler``), ``drop_last``."""
        world, rank = self._world()
        # after a restore: if the checkpoint's epoch is iterated again, skip the crops it already used
        skip = self.epoch_batches * self.hparams.batch_size if self._restored else 0
        self._restored = False
        sampler = SeededSampler(
            self.train_set, num_replicas=world, rank=rank, seed=self.hparams.seed, skip=skip, skip_epoch=self.epoch
        )
        return DataLoader(
            self.train_set, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=True,
            num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        """Central HR crops of the validation images (degraded with the fixed parameters)."""
        return self._eval_loader(self.val_set, self.hparams.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        """The benchmark set, one image per batch (sizes differ)."""
        return self._eval_loader(self.test_set, 1)

    def predict_dataloader(self) -> DataLoader:
        """The predict folder, one image per batch."""
        return self._eval_loader(self.predict_set, 1)

    # ---------------------------------------------------------------------------------------------- degradation
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Degrade HR crops on the device; pass benchmark/predict batches through as float images."""
        if "lr" in batch:  # benchmark or predict: already degraded on disk
            out = dict(batch)
            out["lr"] = _to_float(batch["lr"])
            if "hr" in batch:
                out["hr"] = _to_float(batch["hr"])
            return out
        hr = _to_float(batch["hr"])
        trainer = self.trainer
        with torch.no_grad():
            if trainer is not None and trainer.training:
                world, rank = self._world()
                generator = torch.Generator(device=hr.device)
                generator.manual_seed(self.hparams.seed + _SEED_STRIDE * (rank + world * self.batches_seen))
                self.batches_seen += 1
                if trainer.current_epoch != self.epoch:
                    self.epoch, self.epoch_batches = trainer.current_epoch, 0
                self.epoch_batches += 1
                out = self.degradation(hr, generator)
            else:
                index = batch["index"].cpu()
                params = {k: v[index].to(hr.device) for k, v in self.val_params.items()}
                out = self.degradation.apply(hr, params)
        out["index"] = batch["index"]
        return out

    # ---------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Degradation stream and epoch position (per rank; every rank counts the same number of batches)."""
        return {
            "batches_seen": self.batches_seen, "epoch": self.epoch, "epoch_batches": self.epoch_batches,
            "seed": self.hparams.seed,
        }  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the stream position; the next training epoch skips the crops its interrupted run already used.

        Lightning keeps the restored count of batches done in an unfinished epoch and stops that epoch at its usual
        length, so skipping the same number of this rank's keys makes the resumed epoch identical.
        """
        self.batches_seen = int(state_dict["batches_seen"])
        self.epoch = int(state_dict.get("epoch", 0))
        self.epoch_batches = int(state_dict.get("epoch_batches", 0))
        self._restored = True

"""SRDataModule (datamodules/sr_datamodule.py): on-device degradation in on_after_batch_transfer, fixed validation,
resumable training degradations, scale checks, benchmark/predict pass-through."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.degradation.pipelines import ClassicalDegradation
from datamodules.io import ImageReadError
from datamodules.sr_datamodule import SRDataModule


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory) -> Path:
    """Five small colour HR images (crops of the built-in photos), sizes differing, in a nested folder."""
    import skimage.data

    out = tmp_path_factory.mktemp("dm_hr")
    (out / "sub").mkdir()
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket(),
              skimage.data.astronaut()[::-1]]  # fmt: skip
    sizes = [(48, 56), (40, 40), (64, 48), (44, 52), (40, 60)]
    for i, (photo, (h, w)) in enumerate(zip(photos, sizes, strict=True)):
        top, left = photo.shape[0] // 2 - h // 2, photo.shape[1] // 2 - w // 2
        crop = np.ascontiguousarray(photo[top : top + h, left : left + w])
        Image.fromarray(crop).save((out / "sub" if i % 2 else out) / f"hr_{i}.png")
    return out


class Recorder(L.LightningModule):
    """Records (on CPU) every batch that reaches training_step / validation_step."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.train_batches: list[dict] = []
        self.val_batches: list[dict] = []
        self.val_epochs: list[list[dict]] = []

    @staticmethod
    def _cpu(batch: dict) -> dict:
        out = {}
        for k, v in batch.items():
            if isinstance(v, dict):
                out[k] = {n: t.detach().cpu().clone() for n, t in v.items()}
            elif isinstance(v, torch.Tensor):
                out[k] = v.detach().cpu().clone()
            else:
                out[k] = v
        return out

    def training_step(self, batch, batch_idx):
        self.train_batches.append(self._cpu(batch))
        return self.weight * batch["lr"].mean()

    def on_validation_epoch_start(self) -> None:
        self.val_batches = []

    def validation_step(self, batch, batch_idx):
        self.val_batches.append(self._cpu(batch))

    def on_validation_epoch_end(self) -> None:
        self.val_epochs.append(self.val_batches)

    def test_step(self, batch, batch_idx):
        self.val_batches.append(self._cpu(batch))

    def predict_step(self, batch, batch_idx):
        self.val_batches.append(self._cpu(batch))
        return batch["lr"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def _dm(hr_dir: Path, **kwargs) -> SRDataModule:
    defaults = dict(
        scale=2, train_dirs=[str(hr_dir)], val_dirs=[str(hr_dir)], patch_size=8, val_patch_size=10, batch_size=2,
        val_batch_size=2, num_workers=0, seed=5, val_seed=77,
    )  # fmt: skip
    defaults.update(kwargs)
    return SRDataModule(**defaults)


def _stand_in(training: bool = True) -> SimpleNamespace:
    return SimpleNamespace(training=training, world_size=1, global_rank=0, current_epoch=0)


def _hr_batch(n: int = 2, size: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"hr": torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), "index": torch.arange(n)}


def _per_index(batches: list[dict], key: str = "lr") -> dict[int, torch.Tensor]:
    out = {}
    for b in batches:
        for i, x in zip(b["index"].tolist(), b[key], strict=True):
            assert i not in out, f"sample {i} seen twice"
            out[i] = x
    return out


# --------------------------------------------------------------------------------------------------- real fit
def test_fit_batches_have_documented_keys_and_shapes(hr_dir):
    dm = _dm(hr_dir)
    model = Recorder()
    _trainer(max_steps=3, limit_val_batches=2).fit(model, datamodule=dm)
    assert len(model.train_batches) == 3
    assert dm.batches_seen == 3
    for batch in model.train_batches:
        assert {"hr", "lr", "kernel", "params", "index"} <= set(batch)
        hr, lr, kernel = batch["hr"], batch["lr"], batch["kernel"]
        assert hr.shape == (2, 3, 16, 16) and lr.shape == (2, 3, 8, 8)
        assert hr.dtype == lr.dtype == torch.float32
        for x in (hr, lr):
            assert x.min() >= 0 and x.max() <= 1
        assert hr.max() > 1 / 255  # scaled from uint8, not clipped to {0, 1}
        assert kernel.shape == (2, 11, 11)
        torch.testing.assert_close(kernel.sum(dim=(1, 2)), torch.ones(2), atol=1e-4, rtol=0)
        assert isinstance(batch["params"], dict) and batch["params"]
        for name, value in batch["params"].items():
            assert value.shape[0] == 2, name
        assert batch["index"].shape == (2,)
        assert ((batch["index"] >= 0) & (batch["index"] < 5)).all()
    # consecutive training batches get different degradations
    for a, b in zip(model.train_batches, model.train_batches[1:], strict=False):
        assert not torch.allclose(a["kernel"], b["kernel"])
    # and the two samples of one batch too
    k = model.train_batches[0]["kernel"]
    assert not torch.allclose(k[0], k[1])
    # validation batches: the same keys, central crops of val_patch_size * scale
    assert model.val_epochs, "validation did not run"
    for batch in model.val_epochs[-1]:
        assert {"hr", "lr", "kernel", "params", "index"} <= set(batch)
        assert batch["hr"].shape[1:] == (3, 20, 20) and batch["lr"].shape[1:] == (3, 10, 10)
        assert batch["kernel"].shape[1:] == (11, 11)


def test_training_degradations_reproducible_across_runs(hr_dir):
    runs = []
    for _ in range(2):
        model = Recorder()
        _trainer(max_steps=2, limit_val_batches=0).fit(model, datamodule=_dm(hr_dir))
        runs.append(model.train_batches)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["hr"], b["hr"])
        assert torch.equal(a["lr"], b["lr"])
        assert torch.equal(a["kernel"], b["kernel"])


def test_validation_fixed_across_epochs_and_batch_sizes(hr_dir):
    dm = _dm(hr_dir, val_batch_size=2)
    model = Recorder()
    _trainer(max_epochs=2, limit_train_batches=1).fit(model, datamodule=dm)
    assert len(model.val_epochs) == 2
    first, second = (_per_index(epoch) for epoch in model.val_epochs)
    assert sorted(first) == sorted(second) == list(range(5))
    for i in first:
        assert torch.equal(first[i], second[i]), f"validation LR of sample {i} changed between epochs"
    # the fixed degradations differ between samples (they are drawn per sample, not once)
    kernels = _per_index(model.val_epochs[0], "kernel")
    assert not torch.allclose(kernels[0], kernels[1])

    by_batch_size = {}
    for bs in (1, 3):
        model = Recorder()
        _trainer().validate(model, datamodule=_dm(hr_dir, val_batch_size=bs))
        assert len(model.val_epochs[-1]) == (5 + bs - 1) // bs
        by_batch_size[bs] = model.val_epochs[-1]
    one, three = _per_index(by_batch_size[1]), _per_index(by_batch_size[3])
    k1, k3 = _per_index(by_batch_size[1], "kernel"), _per_index(by_batch_size[3], "kernel")
    assert sorted(one) == sorted(three) == list(range(5))
    for i in range(5):
        assert torch.equal(one[i], three[i]), f"validation LR of sample {i} depends on val_batch_size"
        assert torch.equal(one[i], first[i]), f"validation LR of sample {i} differs between fit and validate"
        assert torch.equal(k1[i], k3[i])


def test_val_degradations_repeat_each_crop_with_its_own_fixed_degradation(hr_dir):
    model = Recorder()
    _trainer().validate(model, datamodule=_dm(hr_dir, val_degradations=3, val_batch_size=4))
    lr, hr, kernels = (_per_index(model.val_epochs[-1], key) for key in ("lr", "hr", "kernel"))
    assert sorted(lr) == list(range(15))  # 5 crops x 3 degradations
    for i in range(5):
        for r in (1, 2):
            assert torch.equal(hr[i], hr[i + 5 * r]), "a repeat must be the same HR crop"
            assert not torch.allclose(kernels[i], kernels[i + 5 * r]), "each repeat has its own degradation"
    # the first repeat is the validation set of val_degradations=1
    single = Recorder()
    _trainer().validate(single, datamodule=_dm(hr_dir, val_batch_size=4))
    one = _per_index(single.val_epochs[-1])
    for i in range(5):
        assert torch.equal(one[i], lr[i])
    with pytest.raises(ValueError, match="val_degradations"):
        _dm(hr_dir, val_degradations=0)


def test_validation_seed_changes_degradations(hr_dir):
    batch = _hr_batch(5, 20)
    outs = []
    for val_seed in (1, 2):
        dm = _dm(hr_dir, val_seed=val_seed)
        dm.setup("validate")
        dm.trainer = _stand_in(training=False)
        outs.append(dm.on_after_batch_transfer(dict(batch), 0))
    assert not torch.allclose(outs[0]["kernel"], outs[1]["kernel"])


# ---------------------------------------------------------------------------------------------- checkpointing
def test_state_dict_round_trip_and_resumed_stream(hr_dir):
    batch = _hr_batch()
    uninterrupted = _dm(hr_dir)
    uninterrupted.trainer = _stand_in()
    reference = [uninterrupted.on_after_batch_transfer(dict(batch), 0) for _ in range(4)]
    assert uninterrupted.batches_seen == 4

    first = _dm(hr_dir)
    first.trainer = _stand_in()
    assert first.state_dict()["batches_seen"] == 0
    for step in range(2):
        out = first.on_after_batch_transfer(dict(batch), 0)
        assert torch.equal(out["lr"], reference[step]["lr"])
    state = first.state_dict()
    assert state["batches_seen"] == 2

    path = Path(str(hr_dir) + "_state.pt")
    torch.save(state, path)  # as in a checkpoint file
    resumed = _dm(hr_dir)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.batches_seen == 2
    assert resumed.state_dict()["batches_seen"] == 2
    resumed.trainer = _stand_in()
    for step in (2, 3):
        out = resumed.on_after_batch_transfer(dict(batch), 0)
        assert torch.equal(out["kernel"], reference[step]["kernel"])
        assert torch.equal(out["lr"], reference[step]["lr"])
    assert not torch.equal(reference[1]["kernel"], reference[2]["kernel"])
    # a module that was not restored would repeat the first degradation instead
    fresh = _dm(hr_dir)
    fresh.trainer = _stand_in()
    assert not torch.equal(fresh.on_after_batch_transfer(dict(batch), 0)["kernel"], reference[2]["kernel"])


def test_validation_does_not_advance_training_stream(hr_dir):
    dm = _dm(hr_dir)
    dm.setup("validate")
    dm.trainer = _stand_in(training=False)
    dm.on_after_batch_transfer(_hr_batch(2, 20), 0)
    assert dm.batches_seen == 0


def _resume_run(hr_dir: Path, tmp_path: Path, resume_step: int) -> tuple[Recorder, Recorder, SRDataModule]:
    """A 4-step run saving a checkpoint after every step (2 batches per epoch), and a run resumed from one of them."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    full = Recorder()
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    _trainer(max_steps=4, limit_val_batches=0, enable_checkpointing=True, callbacks=[ckpt_cb]).fit(
        full, datamodule=_dm(hr_dir)
    )
    ckpt = tmp_path / f"step={resume_step}.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["SRDataModule"]["batches_seen"] == resume_step

    resumed = Recorder()
    dm = _dm(hr_dir)
    _trainer(max_steps=4, limit_val_batches=0).fit(resumed, datamodule=dm, ckpt_path=ckpt)
    assert dm.batches_seen == 4
    assert len(resumed.train_batches) == 4 - resume_step
    return full, resumed, dm


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_from_epoch_end_checkpoint_matches_uninterrupted(hr_dir, tmp_path):
    """End to end: 5 images, batch 2, drop_last -> 2 batches per epoch; resuming at step 2 (end of epoch 0)
    replays steps 3-4 exactly: same crops (epoch-seeded sampler) and same degradations (batches_seen)."""
    full, resumed, _ = _resume_run(hr_dir, tmp_path, resume_step=2)
    for got, want in zip(resumed.train_batches, full.train_batches[2:], strict=True):
        assert torch.equal(got["kernel"], want["kernel"])
        assert torch.equal(got["index"], want["index"])
        assert torch.equal(got["hr"], want["hr"])
        assert torch.equal(got["lr"], want["lr"])


@pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended")
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_mid_epoch_checkpoint_matches_uninterrupted(hr_dir, tmp_path):
    full, resumed, _ = _resume_run(hr_dir, tmp_path, resume_step=1)
    for got, want in zip(resumed.train_batches, full.train_batches[1:], strict=True):
        assert torch.equal(got["kernel"], want["kernel"])  # this part holds: batches_seen is restored
        assert torch.equal(got["hr"], want["hr"]), "the resumed run sees other crops than the uninterrupted one"


# ------------------------------------------------------------------------------------------------------ scales
def test_scale_4(hr_dir):
    dm = _dm(hr_dir, scale=4, patch_size=4, val_patch_size=5)
    assert dm.degradation.scale == 4
    model = Recorder()
    _trainer(max_steps=2, limit_val_batches=1).fit(model, datamodule=dm)
    for batch in model.train_batches:
        assert batch["hr"].shape == (2, 3, 16, 16)
        assert batch["lr"].shape == (2, 3, 4, 4)
        assert batch["kernel"].shape == (2, 31, 31)
        assert batch["lr"].min() >= 0 and batch["lr"].max() <= 1
    val = model.val_epochs[-1][0]
    assert val["hr"].shape[1:] == (3, 20, 20) and val["lr"].shape[1:] == (3, 5, 5)
    assert val["kernel"].shape[1:] == (31, 31)


def test_scale_mismatch_raises(hr_dir):
    with pytest.raises(ValueError) as info:
        SRDataModule(scale=4, degradation=ClassicalDegradation(2), train_dirs=[str(hr_dir)], val_dirs=[str(hr_dir)])
    message = str(info.value)
    assert "2" in message and "4" in message
    # a matching explicit degradation is used as given
    deg = ClassicalDegradation(4)
    assert SRDataModule(scale=4, degradation=deg).degradation is deg


# ---------------------------------------------------------------------------------------------- pass-through
@pytest.mark.parametrize("training", [None, False, True])
def test_benchmark_batch_passes_through_as_float(hr_dir, training):
    dm = _dm(hr_dir)
    if training is not None:
        dm.trainer = _stand_in(training=training)
    g = torch.Generator().manual_seed(1)
    lr = torch.randint(0, 256, (1, 3, 6, 7), generator=g, dtype=torch.uint8)
    hr = torch.randint(0, 256, (1, 3, 12, 14), generator=g, dtype=torch.uint8)
    kernel = torch.rand(1, 11, 11, generator=g)
    batch = {"lr": lr, "hr": hr, "kernel": kernel, "name": ["img_001"]}
    out = dm.on_after_batch_transfer(batch, 0)
    assert set(out) == set(batch)
    assert out["lr"].dtype == out["hr"].dtype == torch.float32
    torch.testing.assert_close(out["lr"], lr.float() / 255, atol=0, rtol=0)
    torch.testing.assert_close(out["hr"], hr.float() / 255, atol=0, rtol=0)
    assert out["lr"].min() >= 0 and out["lr"].max() <= 1
    assert torch.equal(out["kernel"], kernel)
    assert out["name"] == ["img_001"]
    assert batch["lr"].dtype == torch.uint8  # the input batch is not modified
    assert dm.batches_seen == 0

    predict = {"lr": lr, "name": ["a"], "path": ["/x/a.png"]}
    out = dm.on_after_batch_transfer(predict, 0)
    assert set(out) == {"lr", "name", "path"}
    torch.testing.assert_close(out["lr"], lr.float() / 255, atol=0, rtol=0)
    # float inputs are left as they are
    already = {"lr": lr.float() / 255}
    assert torch.equal(dm.on_after_batch_transfer(already, 0)["lr"], already["lr"])


def test_trainer_test_and_predict_get_float_benchmark_batches(tmp_path):
    """trainer.test on a paired LR/HR folder and trainer.predict on an LR folder: the stored LR is used as is."""
    rng = np.random.default_rng(4)
    (tmp_path / "LR").mkdir()
    (tmp_path / "HR").mkdir()
    stored = {}
    for name, (h, w) in {"img_1": (6, 8), "img_2": (7, 5)}.items():
        lr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        hr = rng.integers(0, 256, size=(2 * h, 2 * w, 3), dtype=np.uint8)
        Image.fromarray(lr).save(tmp_path / "LR" / f"{name}.png")
        Image.fromarray(hr).save(tmp_path / "HR" / f"{name}.png")
        stored[name] = (lr, hr)

    dm = SRDataModule(scale=2, test_set=str(tmp_path), predict_dir=str(tmp_path / "LR"), num_workers=0)
    model = Recorder()
    _trainer().test(model, datamodule=dm)
    batches = model.val_batches
    assert [b["name"] for b in batches] == [["img_1"], ["img_2"]]
    for b in batches:
        lr, hr = stored[b["name"][0]]
        assert "params" not in b and "kernel" not in b  # nothing was re-degraded
        assert b["lr"].dtype == b["hr"].dtype == torch.float32
        torch.testing.assert_close(b["lr"][0], torch.from_numpy(lr).permute(2, 0, 1).float() / 255, atol=0, rtol=0)
        torch.testing.assert_close(b["hr"][0], torch.from_numpy(hr).permute(2, 0, 1).float() / 255, atol=0, rtol=0)

    model = Recorder()
    _trainer().predict(model, datamodule=dm)
    assert [b["name"] for b in model.val_batches] == [["img_1"], ["img_2"]]
    for b in model.val_batches:
        assert set(b) == {"lr", "name", "path"}
        lr, _ = stored[b["name"][0]]
        torch.testing.assert_close(b["lr"][0], torch.from_numpy(lr).permute(2, 0, 1).float() / 255, atol=0, rtol=0)
    assert dm.batches_seen == 0


# ------------------------------------------------------------------------------------------------------- setup
def test_setup_test_without_test_set_explains(hr_dir):
    dm = _dm(hr_dir)
    with pytest.raises(ValueError, match="test_set"):
        dm.setup("test")


def test_setup_predict_without_predict_dir_explains(hr_dir):
    dm = _dm(hr_dir)
    with pytest.raises(ValueError, match="predict_dir"):
        dm.setup("predict")


def test_setup_fit_builds_sets_and_val_params(hr_dir):
    dm = _dm(hr_dir, repeats=3)
    dm.setup("fit")
    assert len(dm.train_set) == 15 and dm.train_set.patch_size == 16
    assert len(dm.val_set) == 5 and dm.val_set.patch_size == 20 and not dm.val_set.train
    assert dm.val_params and all(v.shape[0] == 5 for v in dm.val_params.values())
    params = {k: v.clone() for k, v in dm.val_params.items()}
    dm.setup("fit")  # idempotent: the fixed parameters are not redrawn
    for k, v in params.items():
        assert torch.equal(dm.val_params[k], v)


def test_fewer_training_crops_than_one_batch_stop_with_the_fix(hr_dir):
    """Lightning would run an epoch of zero batches ("No training batches") and exit 0."""
    dm = _dm(hr_dir, repeats=1, batch_size=8)  # 5 images x 1 repeat: 5 crops < 8
    with pytest.raises(ValueError, match=r"5 training image\(s\) x 1 repeats = 5 crops .* --data.init_args.repeats 2"):
        dm.setup("fit")
    _dm(hr_dir, repeats=2, batch_size=8).setup("fit")  # 10 crops: one batch


def test_predict_set_skips_unreadable_images_when_asked(tmp_path):
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"broken.png.*--data.init_args.skip_invalid true"):
        SRDataModule(scale=2, predict_dir=str(tmp_path), num_workers=0).setup("predict")
    dm = SRDataModule(scale=2, predict_dir=str(tmp_path), num_workers=0, skip_invalid=True)
    with pytest.warns(UserWarning, match="broken.png"):
        dm.setup("predict")
    assert dm.predict_set.names == ["a", "b"] and dm.predict_set.skipped == [str(tmp_path / "broken.png")]

"""Stage checkpoints at stable paths that the next stage's config names by default."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class StageCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with the defaults of a training stage: ``last.ckpt`` kept up to date, no top-k copies.

    ``dirpath`` may contain ``{scale}`` (e.g. ``checkpoints/baseline/x{scale}``): ``main.py`` fills it from
    ``data.init_args.scale`` before anything is built, so ``--ckpt_path last`` finds the file and the x2 and x4 runs
    of one config stay apart without restating the scale.

    A new run into the same folder **overwrites** ``last.ckpt`` (``enable_version_counter=False``): Lightning's
    default would write ``last-v1.ckpt`` beside the old file, and the next stage would silently read the stale one.

    Args:
        dirpath: Folder of the checkpoints (``last.ckpt`` is what ``--ckpt_path last`` and later stages read).
        save_last: Keep ``last.ckpt`` up to date.
        save_top_k: Best-k checkpoints to keep by ``monitor`` (0: none).
        enable_version_counter: Write ``last-v1.ckpt`` etc. instead of overwriting (Lightning's default; off here).
        **kwargs: Further ``ModelCheckpoint`` arguments (``monitor``, ``every_n_train_steps``, ...).
    """

    def __init__(
        self, dirpath: str, save_last: bool = True, save_top_k: int = 0, enable_version_counter: bool = False, **kwargs
    ) -> None:
        if "{scale}" in dirpath:
            raise ValueError(f"dirpath {dirpath!r} still holds '{{scale}}': run through main.py or format it first")
        super().__init__(
            dirpath=dirpath, save_last=save_last, save_top_k=save_top_k,
            enable_version_counter=enable_version_counter, **kwargs,
        )  # fmt: skip

"""KOALAnet stage 3: the downsampling network and the KOALA upsampling network trained jointly.

Initialisation (official ``training_stage 3``): stage 1's downsampling network, and stage 2's baseline weights loaded
into the KOALA network by name (``load_stage_weights``: every baseline tensor used, strictly; the kernel branch and
the KOALA modules' ``mul``/``filt`` start fresh). A missing or wrong stage checkpoint stops with its file and the
command that makes it (the official code silently runs random weights: its issue #2). Loss: ``L1(HR, SR) +
L1(LR, local_downsample(HR, normalize(k_hat))) + L1(mean kernel, k_gt)``, ``[-1, 1]`` units, weights 1; all trained.

Inference runs on whole images by default (``tile_size 0``): the U-Net's receptive field is large, and the official
``test_patch`` tiling without overlap changes results (its issue #3). LR sides are padded to multiples of 4
(``common.pad_to_multiple``) and the outputs cropped back.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from lightning_modules.core.base import RUNTIME_HPARAMS, SRSystem
from lightning_modules.core.stages import CheckpointError, check_state_dict, read_checkpoint, stage_hparams
from lightning_modules.koalanet.common import (
    adam_with_decay,
    block_kernel,
    command,
    kernel_losses,
    load_downsampling_net,
    load_stage_weights,
    pad_to_multiple,
    read_baseline_state,
    to_signed,
    to_unit,
)
from lightning_modules.nets.koalanet import KOALADownsamplingNet, KOALAUpsamplingNet


class KOALAnetSystem(SRSystem):
    """KOALAnet: per-pixel degradation kernels -> KOALA modules and per-pixel upsampling filters.

    Args:
        width: First-level channels of the downsampling network (64; must match stage 1's).
        num_blocks: Upsampling blocks (12; must match stage 2's).
        num_koala: How many of the first blocks are KOALA modules (5).
        feat: Upsampling feature channels (64; must match stage 2's).
        stage1_ckpt: Stage 1's checkpoint (``{scale}`` filled in), loaded when a new ``fit`` starts; ``None``: random
            weights (tests only).
        stage2_ckpt: Stage 2's checkpoint, as ``stage1_ckpt``.
        lr: Adam learning rate (1e-4), divided by 10 at 80 % and 90 % of ``max_steps``.
        sr_weight: Weight of ``L1(HR, SR)``.
        recon_weight: Weight of the LR reconstruction L1.
        kernel_weight: Weight of the mean-kernel L1.
        koala_init: ``"official"`` (Xavier, the TF code) or ``"identity"`` (deviation: KOALA modules start as the
            plain res-blocks, so stage 3 starts at stage 2's output; see ``KOALAUpsamplingNet``).
        **kwargs: ``SRSystem`` arguments (scale, metric_protocol, tiling, output).
    """

    def __init__(
        self,
        width: int = 64,
        num_blocks: int = 12,
        num_koala: int = 5,
        feat: int = 64,
        stage1_ckpt: str | None = "checkpoints/koalanet/stage1_x{scale}/last.ckpt",
        stage2_ckpt: str | None = "checkpoints/koalanet/stage2_x{scale}/last.ckpt",
        lr: float = 1e-4,
        sr_weight: float = 1.0,
        recon_weight: float = 1.0,
        kernel_weight: float = 1.0,
        koala_init: Literal["official", "identity"] = "official",
        **kwargs,
    ) -> None:
        kwargs.setdefault("scale", 4)
        kwargs.setdefault("tile_size", 0)
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=list(RUNTIME_HPARAMS))
        self.down = KOALADownsamplingNet(self.scale, width=width)
        self.up = KOALAUpsamplingNet(
            self.scale, num_blocks=num_blocks, num_koala=num_koala, feat=feat, koala_init=koala_init
        )

    def on_fit_start(self) -> None:
        """A new ``fit`` loads the stage 1 and stage 2 weights; a resumed one does not read those files.

        Not in ``setup``: Lightning sets ``trainer.ckpt_path`` after ``setup``, when it restores the checkpoint, which
        it does before ``on_fit_start``.
        """
        super().on_fit_start()
        if self.trainer.ckpt_path is None:
            self.initialise()

    def initialise(self) -> None:
        """Stage 1's downsampling net and stage 2's baseline weights (strict, every tensor accounted for)."""
        hp = self.hparams
        if hp.stage1_ckpt:
            path = hp.stage1_ckpt.format(scale=self.scale)
            self.down.load_state_dict(
                check_state_dict(self.down, load_downsampling_net(path, self.scale).state_dict(), path,
                                 command(1, self.scale)), strict=True)  # fmt: skip
        if hp.stage2_ckpt:
            path = hp.stage2_ckpt.format(scale=self.scale)
            state = read_baseline_state(path, self.scale)
            try:
                load_stage_weights(self.up, state)
            except ValueError as err:
                raise CheckpointError(
                    f"checkpoint {path} does not fit the KOALA upsampling net ({err}); train a matching stage 2 with:"
                    f"\n    {command(2, self.scale)}"
                ) from err

    def _run(self, lr: Tensor) -> tuple[Tensor, Tensor]:
        """``(raw kernels (B, 400, H, W), SR in [-1, 1] (B, 3, sH, sW))`` of ``[0, 1]`` LR, padded to 4 px inside."""
        padded, h, w = pad_to_multiple(to_signed(lr))
        raw = self.down(padded)
        sr = self.up(padded, raw)
        return raw[..., :h, :w], sr[..., : h * self.scale, : w * self.scale]

    def super_resolve(self, lr: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, sH, sW)``."""
        return to_unit(self._run(lr)[1])

    def estimate_kernel(self, lr: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> the block-centred mean kernel ``(B, 19 + s, 19 + s)``."""
        padded, h, w = pad_to_multiple(to_signed(lr))
        return block_kernel(self.down(padded)[..., :h, :w], self.scale)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """SR + reconstruction + kernel L1; logs ``train/loss`` and each term."""
        raw, sr = self._run(batch["lr"])
        terms = kernel_losses(batch, raw, self.scale)
        terms["sr"] = F.l1_loss(sr, to_signed(batch["hr"]))
        hp = self.hparams
        loss = hp.sr_weight * terms["sr"] + hp.recon_weight * terms["recon"] + hp.kernel_weight * terms["kernel"]
        bsz = batch["lr"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bsz)
        return loss

    def configure_optimizers(self) -> dict:
        """One Adam over both networks, x0.1 at 80 % and 90 % of the run (official)."""
        return adam_with_decay(self.parameters(), self.hparams.lr, self.trainer.estimated_stepping_batches)


def load_koalanet(path: str, scale: int) -> KOALAnetSystem:
    """A trained stage-3 system from its checkpoint (sizes from its hyper-parameters), strictly, in eval mode."""
    cmd = command(3, scale)
    ckpt = read_checkpoint(path, cmd)
    hp = stage_hparams(ckpt, path, ("width", "num_blocks", "num_koala", "feat"), cmd, scale)
    sizes = {k: int(hp[k]) for k in ("width", "num_blocks", "num_koala", "feat")}
    model = KOALAnetSystem(**sizes, stage1_ckpt=None, stage2_ckpt=None, scale=scale)
    model.load_state_dict(check_state_dict(model, ckpt["state_dict"], path, cmd), strict=True)
    return model.eval()

"""Shared by the mixture tests: tiny widths and a fake E-Net pre-training checkpoint."""

import torch

from lightning_modules.mixture.enet_pretrain import ENetPretrain

TINY_ENET = (4, 8, 8, 8)


def fake_enet_checkpoint(path, num_states=2, channels=TINY_ENET, input_norm=False, seed=0):
    """A Lightning-format pre-training checkpoint (random weights) holding ``enet.*`` and ``head.*``."""
    torch.manual_seed(seed)
    model = ENetPretrain(num_states=num_states, enet_channels=channels, num_kernels=29, input_norm=input_norm)
    torch.save(
        {"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.6",
         "hyper_parameters": dict(model.hparams)},
        path,
    )  # fmt: skip
    return path

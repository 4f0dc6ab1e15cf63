"""The SR systems (one LightningModule per training stage), imported here so the CLI knows them by short name."""

from lightning_modules.base import SRSystem
from lightning_modules.baseline import SingleNetSR
from lightning_modules.bicubic import BicubicSR
from lightning_modules.enet_pretrain import ENetPretrain
from lightning_modules.mixture import MixtureSR
from lightning_modules.moesr import MoESR
from lightning_modules.moesr_experts import MoESRExperts
from lightning_modules.moesr_ise import MoESRISE
from lightning_modules.moesr_ken import MoESRKEN

__all__ = [
    "BicubicSR", "ENetPretrain", "MixtureSR", "MoESR", "MoESRExperts", "MoESRISE", "MoESRKEN", "SRSystem",
    "SingleNetSR",
]  # fmt: skip

"""The SR systems (one LightningModule per training stage), imported here so the CLI knows them by short name."""

from lightning_modules.base import SRSystem
from lightning_modules.baseline import SingleNetSR
from lightning_modules.bicubic import BicubicSR
from lightning_modules.enet_pretrain import ENetPretrain
from lightning_modules.mixture import MixtureSR

__all__ = ["BicubicSR", "ENetPretrain", "MixtureSR", "SRSystem", "SingleNetSR"]

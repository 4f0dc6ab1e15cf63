"""The on-device degradation engine: kernels, operators, parameter samplers and pipelines (no Lightning)."""

from datamodules.degradation import kernels, ops, samplers
from datamodules.degradation.pipelines.moesr import GridDegradation, MoESRGrid, MoESRKernelDegradation
from datamodules.degradation.pipelines import ClassicalDegradation, Degradation
from datamodules.degradation.samplers import DIV2KRKKernelSampler, KernelBankSampler

__all__ = [
    "ClassicalDegradation",
    "DIV2KRKKernelSampler",
    "Degradation",
    "GridDegradation",
    "KernelBankSampler",
    "MoESRGrid",
    "MoESRKernelDegradation",
    "kernels",
    "ops",
    "samplers",
]

"""Inference paths: the precision and memory layout every system runs ``test``/``predict`` in (``inference_path``).

* ``"fp32"``: PyTorch's default NCHW layout in float32 (the reference).
* ``"channels_last"``: float32, weights and inputs in NHWC (``torch.channels_last``): oneDNN's convolutions avoid
  the layout reorders of NCHW (1.2x on a 3x3 64->64 convolution on 2 Sapphire Rapids threads,
  ``benchmarks/throughput.py``).
* ``"bf16"``: channels-last under ``torch.autocast(dtype=torch.bfloat16)``: convolutions and matrix products in
  bfloat16 with float32 accumulation (oneDNN uses AMX on CPUs that have it, tensor cores on GPUs); weights stay
  float32 (so fine-tuning under this path keeps float32 master weights); fixed operators that must stay exact
  switch autocast off where they are computed (MATLAB bicubic and colour conversion, MoESR's KEN and fine-tuning
  downsampler, targets and mask, KOALAnet's filter normalisation, USRNet's FFT data steps; ``full_precision`` here
  for the systems' own). Outputs are returned as float32. Only fast where the hardware computes bfloat16 natively
  (``native_bf16``: AMX or AVX512-BF16 CPUs, GPUs with bfloat16 units); elsewhere oneDNN emulates it, ~10-13x
  slower than float32 on an AVX2-only AMD EPYC, and the systems warn (``slow_path_warning``).
* ``"auto"`` (a choice, not a path): ``resolve_path`` picks ``"bf16"`` where bfloat16 is native, else on CPUs
  ``"channels_last"`` for forward passes (MoESR's reconstruction 1.3-1.7x faster than NCHW on an AVX2-only EPYC)
  and ``"fp32"`` for MoESR's fine-tuning (forward and backward: 1.5-1.8x slower in channels-last there),
  ``"fp32"`` on other devices.

``inference_context(path, device)`` opens the path around a forward (and MoESR's fine-tuning);
``to_layout(module, path)`` / ``as_layout(x, path)`` put weights and inputs in its layout. The accuracy cost of
each path is tested per system (``tests/core/test_inference_path.py``) and its speed measured by
``python -m benchmarks.throughput``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Literal, get_args

import torch
from torch import Tensor, nn

InferencePath = Literal["fp32", "channels_last", "bf16"]
INFERENCE_PATHS: tuple[str, ...] = get_args(InferencePath)
PathChoice = Literal["fp32", "channels_last", "bf16", "auto"]
PATH_CHOICES: tuple[str, ...] = get_args(PathChoice)


def check_path(path: str) -> InferencePath:
    """``path`` itself if it is one of ``INFERENCE_PATHS``, else a ``ValueError`` naming the choices."""
    if path not in INFERENCE_PATHS:
        raise ValueError(f"unknown inference_path {path!r}; choose from {', '.join(INFERENCE_PATHS)}")
    return path  # type: ignore[return-value]


def check_choice(choice: str) -> PathChoice:
    """``choice`` itself if it is a path or ``"auto"`` (``PATH_CHOICES``), else a ``ValueError`` naming them."""
    if choice not in PATH_CHOICES:
        raise ValueError(f"unknown inference_path {choice!r}; choose from {', '.join(PATH_CHOICES)}")
    return choice  # type: ignore[return-value]


@functools.cache
def _native_bf16_cpu() -> bool:
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return bool(amx() or avx512_bf16())


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 convolutions in hardware (CPU: AMX or AVX512-BF16; CUDA: bf16 units)."""
    device = torch.device(device)
    if device.type == "cpu":
        return _native_bf16_cpu()
    if device.type == "cuda":
        with torch.cuda.device(device):  # the asked-for GPU, not the current one
            try:
                return torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:  # torch < 2.4: no emulation argument (and no emulation)
                return torch.cuda.is_bf16_supported()
    return False


def resolve_path(choice: str, device: torch.device | str, training: bool = False) -> InferencePath:
    """The path a choice runs on ``device``: itself, or for ``"auto"`` bf16 where native, else as measured below.

    ``"auto"`` without native bfloat16: ``"channels_last"`` on CPUs for inference (forward passes), ``"fp32"`` for
    ``training`` (MoESR's test-time fine-tuning: forward + backward, where channels-last was 1.5-1.8x *slower*
    than NCHW on an AVX2-only AMD EPYC, ``benchmarks.moesr``), ``"fp32"`` on other devices.
    """
    if check_choice(choice) != "auto":
        return choice  # type: ignore[return-value]
    device = torch.device(device)
    if native_bf16(device):
        return "bf16"
    return "channels_last" if device.type == "cpu" and not training else "fp32"


def slow_path_warning(path: str, device: torch.device | str) -> str | None:
    """A one-line warning when ``path`` is ``"bf16"`` on a device without native bfloat16, else ``None``."""
    if check_path(path) != "bf16" or native_bf16(device):
        return None
    where = torch.device(device).type
    if where == "cpu":
        where = f"this CPU (torch capability {torch.backends.cpu.get_cpu_capability()}, no AMX or AVX512-BF16)"
    return (f"inference_path bf16 on {where}: bfloat16 is emulated there, convolutions run several times slower "
            f"than float32 (python -m benchmarks.throughput); use channels_last or auto")  # fmt: skip


def uses_channels_last(path: str) -> bool:
    """Whether ``path`` keeps 4-D weights and activations in NHWC."""
    return check_path(path) in ("channels_last", "bf16")


def to_layout(module: nn.Module, path: str) -> nn.Module:
    """``module`` (in place) with its 4-D parameters and buffers in ``path``'s memory format; returns it.

    Other ranks are left alone (``nn.Module.to(memory_format=...)`` refuses them); submodules that slice 5-D stacked
    weights into convolution weights at run time (MoESR's ``ExpertBank``) are told the format through their
    ``set_memory_format``. Safe inside ``torch.inference_mode`` (Lightning's test hooks): the new tensors are
    ordinary ones, so the module can still be trained afterwards.
    """
    fmt = torch.channels_last if uses_channels_last(path) else torch.contiguous_format
    with torch.inference_mode(False), torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.dim() == 4:
                tensor.data = tensor.data.clone(memory_format=fmt)
        for sub in module.modules():
            if hasattr(sub, "set_memory_format"):
                sub.set_memory_format(fmt)
    return module


def as_layout(x: Tensor, path: str) -> Tensor:
    """A 4-D ``x`` in ``path``'s memory format (other ranks unchanged)."""
    if x.dim() != 4:
        return x
    fmt = torch.channels_last if uses_channels_last(path) else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


@contextlib.contextmanager
def inference_context(path: str, device: torch.device | str) -> Iterator[None]:
    """Autocast to bfloat16 on ``device``'s type for ``"bf16"``; nothing for the float32 paths.

    Parameters stay float32 and gradients flow back to them; an optimiser loop *inside* this context must run each
    step under ``fresh_casts`` (autocast caches weight casts until the outermost context exits).
    """
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=check_path(path) == "bf16"):
        yield


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    """``(enabled, dtype)`` of the autocast on ``device_type`` (torch >= 2.4 API, with the 2.3 fallbacks)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
        return enabled, torch.get_autocast_dtype(device_type) if enabled else None
    except TypeError:  # torch 2.3: per-device functions
        if device_type == "cpu":
            enabled = torch.is_autocast_cpu_enabled()
            return enabled, torch.get_autocast_cpu_dtype() if enabled else None
        enabled = torch.is_autocast_enabled()
        return enabled, torch.get_autocast_gpu_dtype() if enabled else None


@contextlib.contextmanager
def fresh_casts(device: torch.device | str) -> Iterator[None]:
    """Keep the enclosing autocast (if any) but cache no weight casts: for each step of a training loop inside it.

    Autocast caches the bfloat16 copy of every float32 parameter it casts until the *outermost* autocast context
    exits; an optimiser loop inside one context would keep running the first step's weights while the float32
    master weights move. Fine-tuning under the ``bf16`` path therefore runs each iteration inside this context.
    """
    device_type = torch.device(device).type
    enabled, dtype = _autocast_state(device_type)
    with torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=False):
        yield


@contextlib.contextmanager
def full_precision(device: torch.device | str) -> Iterator[None]:
    """Switch an enclosing autocast on ``device``'s type off (for ops without bfloat16 kernels, e.g. FFTs)."""
    with torch.autocast(torch.device(device).type, enabled=False):
        yield

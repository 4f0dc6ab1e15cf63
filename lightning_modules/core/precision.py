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
  for the systems' own). Outputs are returned as float32.

``inference_context(path, device)`` opens the path around a forward (and MoESR's fine-tuning);
``to_layout(module, path)`` / ``as_layout(x, path)`` put weights and inputs in its layout. The accuracy cost of
each path is tested per system (``tests/core/test_inference_path.py``) and its speed measured by
``python -m benchmarks.throughput``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, get_args

import torch
from torch import Tensor, nn

InferencePath = Literal["fp32", "channels_last", "bf16"]
INFERENCE_PATHS: tuple[str, ...] = get_args(InferencePath)


def check_path(path: str) -> InferencePath:
    """``path`` itself if it is one of ``INFERENCE_PATHS``, else a ``ValueError`` naming the choices."""
    if path not in INFERENCE_PATHS:
        raise ValueError(f"unknown inference_path {path!r}; choose from {', '.join(INFERENCE_PATHS)}")
    return path  # type: ignore[return-value]


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

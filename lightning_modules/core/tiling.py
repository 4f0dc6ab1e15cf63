"""Tiled inference: bounded memory for large images, identical output to the untiled call.

The LR image is cut into ``tile x tile`` cores; each core is processed with ``overlap`` extra LR pixels of context
on every side (clipped at the image border) and only the core's ``scale``-times-larger output is kept. When the
overlap covers the network's receptive-field radius (in LR pixels), the result equals the untiled output up to float
rounding, because every kept pixel sees exactly the same input and the same image-border padding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def tiled_forward(fn: Callable[[Tensor], Tensor], lr: Tensor, scale: int, tile: int, overlap: int) -> Tensor:
    """Apply ``fn`` (``(B,C,h,w) -> (B,C',s h,s w)``) to ``lr`` tile by tile.

    Args:
        fn: The super-resolution function.
        lr: ``(B, C, H, W)``.
        scale: Output/input size ratio of ``fn``.
        tile: Core tile side in LR pixels; ``<= 0`` or an image that fits in one tile runs untiled.
        overlap: Context added around each core, in LR pixels.

    Returns:
        ``(B, C', sH, sW)`` on ``lr``'s device, in the wider of ``lr``'s and ``fn``'s dtypes (a bfloat16 ``fn``
        under autocast fills a float32 image).
    """
    h, w = lr.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        return fn(lr)
    out: Tensor | None = None
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            bottom, right = min(top + tile, h), min(left + tile, w)
            t0, l0 = max(top - overlap, 0), max(left - overlap, 0)
            t1, l1 = min(bottom + overlap, h), min(right + overlap, w)
            piece = fn(lr[..., t0:t1, l0:l1])
            if out is None:
                dtype = torch.promote_types(piece.dtype, lr.dtype)
                out = torch.empty(*piece.shape[:2], h * scale, w * scale, dtype=dtype, device=piece.device)
            out[..., top * scale : bottom * scale, left * scale : right * scale] = piece[
                ..., (top - t0) * scale : (bottom - t0) * scale, (left - l0) * scale : (right - l0) * scale
            ]
    return out

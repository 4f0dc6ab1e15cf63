"""Per-pixel (spatially-variant) local filtering, as KOALAnet uses it (Sec. 3, Eq. 2-6; official ``ops.py``).

Every op here computes, for a zero-padded input ``x_pad``, a stride ``s`` and ``k x k`` taps,

    ``out[b, c, (g,) h, w] = sum_{i, j} x_pad[b, c, h*s + i, w*s + j] * f[b, i*k + j, (g,) h, w]``

that is a **correlation** (no flip) with **tap index ``t = i*k + j`` row-major** (``i`` the row offset, ``j`` the
column offset inside the window), the order in which TF's ``extract_image_patches`` lays out a patch (rows, then
columns, then channels: tap-major over the ``k*k`` chunks of ``C`` channels), and with **the same filter for every
channel** ``c`` (RGB images and 64-channel feature maps alike).

Padding is TF's ``"SAME"`` with zeros, the padding of the official ``extract_image_patches`` calls: for an input side
``n``, stride ``s`` and ``k`` taps the output side is ``ceil(n / s)`` and ``max((ceil(n/s) - 1) s + k - n, 0)`` zeros
are added, ``floor`` of half of them before and the rest after. Stride 1, odd ``k``: ``(k-1)/2`` each side.

The filters are applied **as given**: none of these ops normalises. The official ``local_conv_ds``, ``local_conv_us``
and ``local_conv_feat`` each call ``kernel_normalize`` inside; here the caller does (``kernel_normalize`` first), so
that the op stays a plain bilinear map and the raw kernels stay visible to the caller.

Memory: no ``unfold`` of shape ``(B, C k^2, H W)`` is ever built. One autograd ``Function`` loops over the ``k^2`` taps
(never over pixels) and accumulates ``x_window * f_tap`` **in place** into the output (``addcmul_``, no temporary);
its backward loops over the taps again, accumulating into the gradient of the padded input and writing the gradient
of each tap's filter slice. Peak extra memory, beyond the inputs and the output: forward, the zero-padded copy of the
input only (``(1 + (k-s)/(s H))^2`` times the input); backward, the gradients autograd must return anyway (of the
padded input and of the filters) plus **one output-sized temporary** per tap, freed before the next. Measured
(``python -m benchmarks.koalanet``, 100x100 LR, batch 1, CPU; forward / forward + backward): the 20x20 downsampling
at x4 (HR 3 x 400 x 400) needs 1.8 / 22 MB, i.e. 16 x / 192 x its 0.11 MB output (the padded HR, 3 x 416^2, is
17.3 x; the 16 MB of the backward is the kernels' gradient), where the unfold form needs 92 / 153 MB (its columns
alone are k^2 = 400 x the output); x4 upsampling 3.7 / 28 MB (unfold 50 / 104); 7x7 on 64 channels 5.1 / 31 MB
(unfold 241 / 364). Ours is also 3-28 x faster there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["kernel_normalize", "local_downsample", "local_filter", "local_upsample", "same_padding"]


def same_padding(size: int, k_size: int, stride: int = 1) -> tuple[int, int]:
    """Zeros TF's ``"SAME"`` padding adds before and after one axis.

    Args:
        size: Input side ``n``.
        k_size: Window side ``k``.
        stride: Stride ``s``.

    Returns:
        ``(before, after)``: ``total = max((ceil(n / s) - 1) s + k - n, 0)``, ``before = total // 2``.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + k_size - size, 0)
    return total // 2, total - total // 2


def kernel_normalize(kernels: Tensor, k_size: int) -> Tensor:
    """Make every per-pixel filter sum to 1: subtract its mean over the taps, add ``1 / k^2`` (official; no softmax).

    Taps may stay negative; the sum is exactly 1 (up to rounding) whatever the input.

    Args:
        kernels: ``(B, k*k, ...)`` filters, the taps along dimension 1 (``(B, k*k, H, W)``, or ``(B, k*k, s*s, H, W)``
            for the upsampling filters viewed per sub-pixel).
        k_size: Filter side ``k``.

    Returns:
        The normalised filters, same shape, in at least float32 (bfloat16 taps would not sum to 1).

    Raises:
        ValueError: If dimension 1 is not ``k*k`` long.
    """
    if kernels.ndim < 2 or kernels.shape[1] != k_size * k_size:
        raise ValueError(f"kernels must be (B, {k_size * k_size}, ...), got shape {tuple(kernels.shape)}")
    if kernels.dtype not in (torch.float32, torch.float64):
        kernels = kernels.float()
    return kernels - kernels.mean(dim=1, keepdim=True) + 1.0 / (k_size * k_size)


def _window(x: Tensor, i: int, j: int, out_h: int, out_w: int, stride: int) -> Tensor:
    """The ``(B, C, out_h, out_w)`` strided view of ``x`` that tap ``(i, j)`` reads (no copy)."""
    return x[..., i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride]


class _LocalConv(torch.autograd.Function):
    """``out[b, c, g, h, w] = sum_t x_pad[b, c, h s + i_t, w s + j_t] f[b, t, g, h, w]``, looped over taps ``t``."""

    @staticmethod
    def forward(ctx: FunctionCtx, x_pad: Tensor, filters: Tensor, k_size: int, stride: int) -> Tensor:
        """``x_pad`` ``(B, C, Hp, Wp)``, ``filters`` ``(B, k*k, G, H, W)`` -> ``(B, C, G, H, W)``."""
        batch, channels = x_pad.shape[:2]
        _, taps, groups, out_h, out_w = filters.shape
        out = x_pad.new_zeros(batch, channels, groups, out_h, out_w)
        for t in range(taps):
            i, j = divmod(t, k_size)
            out.addcmul_(_window(x_pad, i, j, out_h, out_w, stride).unsqueeze(2), filters[:, t].unsqueeze(1))
        ctx.save_for_backward(x_pad, filters)
        ctx.k_size, ctx.stride = k_size, stride
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        """Gradients of the padded input and of the filters, again one tap at a time."""
        x_pad, filters = ctx.saved_tensors
        k_size, stride = ctx.k_size, ctx.stride
        _, taps, _, out_h, out_w = filters.shape
        grad_out = grad_out.contiguous()
        grad_x = torch.zeros_like(x_pad) if ctx.needs_input_grad[0] else None
        grad_f = torch.empty_like(filters) if ctx.needs_input_grad[1] else None
        for t in range(taps):
            i, j = divmod(t, k_size)
            if grad_x is not None:
                _window(grad_x, i, j, out_h, out_w, stride).add_((grad_out * filters[:, t].unsqueeze(1)).sum(2))
            if grad_f is not None:
                window = _window(x_pad, i, j, out_h, out_w, stride).unsqueeze(2)
                grad_f[:, t] = (grad_out * window).sum(1)
        return grad_x, grad_f, None, None


def _check(x: Tensor, filters: Tensor, channels: int, name: str) -> tuple[int, int, int, int]:
    if x.ndim != 4:
        raise ValueError(f"{name} input must be (B, C, H, W), got shape {tuple(x.shape)}")
    if filters.ndim != 4 or filters.shape[0] != x.shape[0] or filters.shape[1] != channels:
        raise ValueError(f"{name} filters must be (B={x.shape[0]}, {channels}, H, W), got shape {tuple(filters.shape)}")
    return filters.shape[0], filters.shape[1], filters.shape[2], filters.shape[3]


def _common_dtype(x: Tensor, filters: Tensor) -> tuple[Tensor, Tensor]:
    """Both in at least float32 and NCHW (also under the bf16 / channels-last inference paths).

    The tap loop accumulates up to 400 products (a bfloat16 sum would lose them) and its strided windows are fastest
    on contiguous planes.
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, filters.dtype), torch.float32)
    return x.to(dtype).contiguous(), filters.to(dtype).contiguous()


def local_filter(x: Tensor, filters: Tensor, k_size: int) -> Tensor:
    """Filter every pixel with its own ``k x k`` filter, the same for all channels (KOALA's 7x7 feature filtering).

    Args:
        x: ``(B, C, H, W)`` images or feature maps.
        filters: ``(B, k*k, H, W)``; channel ``t = i*k + j`` is the tap at row offset ``i``, column offset ``j`` of
            the window centred (TF ``"SAME"``) on the pixel. Applied as given (normalise first if wanted).
        k_size: Filter side ``k``.

    Returns:
        ``(B, C, H, W)``: ``out[b, c, h, w] = sum_{i,j} x[b, c, h + i - p, w + j - p] f[b, i k + j, h, w]``, zeros
        outside, ``p = (k - 1) // 2``.

    Raises:
        ValueError: If the shapes do not match.
    """
    _check(x, filters, k_size * k_size, "local_filter")
    if filters.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"filters cover {tuple(filters.shape[-2:])} px, the input is {tuple(x.shape[-2:])}")
    x, filters = _common_dtype(x, filters)
    top, bottom = same_padding(x.shape[-2], k_size)
    left, right = same_padding(x.shape[-1], k_size)
    x_pad = F.pad(x, (left, right, top, bottom))
    return _LocalConv.apply(x_pad, filters.unsqueeze(2), k_size, 1).squeeze(2)


def local_downsample(hr: Tensor, kernels: Tensor, kernel_size: int, scale: int) -> Tensor:
    """Blur-and-decimate the HR image with one ``K x K`` kernel per **LR** pixel (official ``local_conv_ds``).

    The window of LR pixel ``(h, w)`` starts at HR pixel ``(h s - p, w s - p)`` with ``p = (K - s) // 2`` (TF
    ``"SAME"`` at stride ``s`` on an ``sH``-pixel side: ``K - s`` zeros in all, ``(K - s) / 2`` each side for even
    ``K - s``, e.g. 9 at x2 and 8 at x4 for ``K = 20``). Outside the image the HR is **zero**, as in the official
    op. The official training degradation pads the same amounts **symmetrically** (mirrored HR) instead, so with the
    true kernel the two agree everywhere but in (at most) the outermost ``ceil(p / s)`` LR rows and columns.

    Args:
        hr: ``(B, C, sH, sW)`` HR images.
        kernels: ``(B, K*K, H, W)`` per-LR-pixel kernels, tap ``t = i*K + j`` row-major (row ``i``, column ``j``),
            applied by correlation, as given (``kernel_normalize`` them first for the official behaviour).
        kernel_size: Kernel side ``K`` (20 in KOALAnet).
        scale: Stride ``s``.

    Returns:
        ``(B, C, H, W)`` LR images.

    Raises:
        ValueError: If the shapes do not match or the HR is not exactly ``s`` times the kernels' grid.
    """
    _, _, height, width = _check(hr, kernels, kernel_size * kernel_size, "local_downsample")
    if scale < 1 or hr.shape[-2:] != (scale * height, scale * width):
        raise ValueError(
            f"HR must be {scale} x the kernel grid {(height, width)}, i.e. {(scale * height, scale * width)} px, "
            f"got {tuple(hr.shape[-2:])}"
        )
    hr, kernels = _common_dtype(hr, kernels)
    top, bottom = same_padding(hr.shape[-2], kernel_size, scale)
    left, right = same_padding(hr.shape[-1], kernel_size, scale)
    hr_pad = F.pad(hr, (left, right, top, bottom))
    return _LocalConv.apply(hr_pad, kernels.unsqueeze(2), kernel_size, scale).squeeze(2)


def local_upsample(lr: Tensor, filters: Tensor, k_size: int, scale: int) -> Tensor:
    """Dynamic upsampling filters (official ``local_conv_us``): ``s^2`` per-pixel ``k x k`` filters, pixel-shuffled.

    Channel layout of ``filters`` (ours = the official TF layout, so a ported last convolution needs no permutation):
    **channel ``t * s^2 + q``** holds tap ``t = i*k + j`` (row-major, correlation, window centred TF ``"SAME"``) of the
    filter for **sub-pixel ``q = dy * s + dx``**, the HR pixel ``(h s + dy, w s + dx)``; i.e. ``filters.view(B, k*k,
    s*s, H, W)``. Sub-pixel ``q`` of every channel is ``sum_t lr_window_t * f[:, t*s^2 + q]``; the ``(B, C, s^2, H, W)``
    result is arranged with PyTorch's ``pixel_shuffle`` (channel ``c s^2 + q`` -> ``(c, h s + dy, w s + dx)``), which
    places it exactly where TF's ``depth_to_space`` (DCR, channel ``q C + c``) puts the official result.

    Args:
        lr: ``(B, C, H, W)`` LR images.
        filters: ``(B, k*k*s*s, H, W)`` in the layout above, applied as given (normalise per sub-pixel first:
            ``kernel_normalize(filters.view(B, k*k, s*s, H, W), k)``, as the official op does inside).
        k_size: Filter side ``k`` (5 in KOALAnet).
        scale: Scale ``s``.

    Returns:
        ``(B, C, sH, sW)``.

    Raises:
        ValueError: If the shapes do not match.
    """
    batch, _, height, width = _check(lr, filters, k_size * k_size * scale * scale, "local_upsample")
    if filters.shape[-2:] != lr.shape[-2:]:
        raise ValueError(f"filters cover {tuple(filters.shape[-2:])} px, the LR is {tuple(lr.shape[-2:])}")
    lr, filters = _common_dtype(lr, filters)
    top, bottom = same_padding(height, k_size)
    left, right = same_padding(width, k_size)
    lr_pad = F.pad(lr, (left, right, top, bottom))
    per_sub_pixel = filters.reshape(batch, k_size * k_size, scale * scale, height, width)
    out = _LocalConv.apply(lr_pad, per_sub_pixel, k_size, 1)  # (B, C, s^2, H, W)
    return F.pixel_shuffle(out.reshape(batch, -1, height, width), scale)

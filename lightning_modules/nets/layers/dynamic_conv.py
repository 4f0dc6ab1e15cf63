"""Dynamic convolution mixed in parameter space (CondConv / DASR style): one conv per sample from K weight banks.

A ``DynamicConv2d`` holds ``K`` weight banks ``W_k`` of shape ``(out, in, kh, kw)`` and bias banks ``b_k`` of shape
``(out,)``. Given per-sample routing coefficients ``a`` of shape ``(B, K)``, sample ``b`` is convolved with

    ``W[b] = sum_k a[b, k] W_k``   and   ``bias[b] = sum_k a[b, k] b_k``,

so the layer is linear in the routing: a one-hot ``a`` selects one expert's plain convolution, and when all banks
hold the same weights any ``a`` summing to 1 gives that convolution back. The mixture is one ``einsum``; the ``B``
different convolutions run as **one grouped convolution** (the batch folded into the channels, ``groups = B``), with
no Python loop over samples or experts. The coefficients are not constrained (no softmax, any sign), as in DASR.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DynamicConv2d"]


class DynamicConv2d(nn.Module):
    """Per-sample convolution whose weights are a routing-weighted sum of ``K`` expert banks.

    Parameters: ``weight`` ``(K, out, in, kh, kw)`` and ``bias`` ``(K, out)`` (absent with ``bias=False``); each bank
    is initialised independently as ``nn.Conv2d`` initialises its weight and bias.

    Args:
        in_ch: Input channels ``C``.
        out_ch: Output channels.
        kernel_size: Side of the square kernel.
        num_experts: Number of banks ``K``.
        stride: Convolution stride.
        padding: Zero padding on each side; ``None`` (the default) means ``kernel_size // 2`` ("same" for odd sizes
            at stride 1).
        bias: Whether each bank has a bias.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        num_experts: int,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if min(in_ch, out_ch, kernel_size, num_experts, stride) < 1:
            raise ValueError(
                f"sizes must be positive, got in_ch={in_ch}, out_ch={out_ch}, kernel_size={kernel_size}, "
                f"num_experts={num_experts}, stride={stride}"
            )
        self.in_ch = in_ch
        self.out_ch = out_ch
        self.kernel_size = kernel_size
        self.num_experts = num_experts
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.weight = nn.Parameter(torch.empty(num_experts, out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(num_experts, out_ch)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every bank as ``nn.Conv2d.reset_parameters`` does (Kaiming-uniform, ``a = sqrt(5)``)."""
        fan_in = self.in_ch * self.kernel_size * self.kernel_size
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            for k in range(self.num_experts):  # init only; the forward pass has no loop
                nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
                if self.bias is not None:
                    nn.init.uniform_(self.bias[k], -bound, bound)

    def extra_repr(self) -> str:
        """Sizes, as ``nn.Conv2d`` prints them."""
        return (
            f"{self.in_ch}, {self.out_ch}, kernel_size={self.kernel_size}, num_experts={self.num_experts}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )

    def mix(self, routing: Tensor) -> tuple[Tensor, Tensor | None]:
        """The per-sample weights and biases for the given routing.

        Args:
            routing: ``(B, K)`` coefficients.

        Returns:
            ``weight`` ``(B, out, in, kh, kw)`` and ``bias`` ``(B, out)`` (``None`` without bias).

        Raises:
            ValueError: If ``routing`` is not ``(B, K)``.
        """
        if routing.ndim != 2 or routing.shape[1] != self.num_experts:
            raise ValueError(f"routing must be (B, {self.num_experts}), got shape {tuple(routing.shape)}")
        routing = routing.to(self.weight.dtype)
        weight = torch.einsum("bk,koihw->boihw", routing, self.weight)
        bias = routing @ self.bias if self.bias is not None else None
        return weight, bias

    def forward(self, x: Tensor, routing: Tensor) -> Tensor:
        """Convolve each sample with its own mixed kernel, as one grouped convolution.

        Args:
            x: ``(B, C, H, W)`` features, ``C = in_ch``.
            routing: ``(B, K)`` mixing coefficients, one row per sample (any real values).

        Returns:
            ``(B, out, H', W')`` with ``H' = (H + 2 padding - kernel_size) // stride + 1`` (likewise ``W'``).

        Raises:
            ValueError: If ``x`` is not ``(B, in_ch, H, W)`` or ``routing`` is not ``(B, K)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"x must be (B, {self.in_ch}, H, W), got shape {tuple(x.shape)}")
        if routing.shape[:1] != x.shape[:1]:
            raise ValueError(f"routing has {routing.shape[0]} rows for a batch of {x.shape[0]}")
        batch, _, height, width = x.shape
        weight, bias = self.mix(routing)
        out = F.conv2d(
            x.reshape(1, batch * self.in_ch, height, width),
            weight.reshape(batch * self.out_ch, self.in_ch, self.kernel_size, self.kernel_size),
            None if bias is None else bias.reshape(-1),
            stride=self.stride,
            padding=self.padding,
            groups=batch,
        )
        return out.view(batch, self.out_ch, out.shape[-2], out.shape[-1])

"""MoESR's networks: a bank of kernel-specific experts run as one grouped convolution, ISE and KEN.

* ``ExpertBank``: ``E`` experts, each architecturally identical to ``nets.vdsr.ChainedVDSR(scale, num_layers,
  channels)`` (x4: two x2 stages), stored as stacked weights ``(E, C_out, C_in, 3, 3)`` per layer. A forward pass
  gathers the requested experts' weights and runs every layer as **one** grouped convolution (groups = experts), so
  all experts' forward and backward passes are one batched computation (``per_expert=True``: each distinct expert
  once on all its slots with plain convolutions, the faster form on CPUs). ``expert(i)`` / ``load_expert(i, net)``
  convert one expert to and from a standalone ``ChainedVDSR`` (for test-time fine-tuning).
* ``ISE`` (Image Sharpness Evaluator; paper Sec. 3.2/4.1, official ``ISE_Net``): input ``concat(SR, bicubic-upsampled
  LR)`` (6 channels); six 3x3 convolutions with **no padding**, strides ``1, 2, 2, 2, 1, 1``, widths
  ``6 -> 64 -> 64 -> 128 -> 256 -> 512 -> 1``, ReLU after the first four only (none after ``256 -> 512``, none at
  the output). Receptive field 49 px, output stride 8: output pixel ``(i, j)`` sees input pixels
  ``[8i, 8i + 48] x [8j, 8j + 48]``.
* ``ise_target`` (Eq. 6-7): the pixel-wise squared error (mean over the colour channels) average-pooled with a
  49-pixel window at stride 8 and no padding. Pooling output ``(i, j)`` averages exactly the window ISE's output
  ``(i, j)`` sees, so target and prediction are aligned pixel for pixel and have the same shape,
  ``floor((H - 49) / 8) + 1`` (``ise_output_size``; the target is cropped to it all the same).
* ``KEN`` (Kernel Estimation Network; official ``KEN_Net``): per-sample standardisation of the ``N`` ISE errors
  ``(x - mean) / std`` (unbiased std, as ``torch.std``), then ``N -> 50 -> ReLU -> 50 -> ReLU -> 3``; outputs
  ``lambda1, lambda2`` clamped to ``>= 0.01`` and ``theta = output * pi / 16`` (radians); ``ken_params`` names the
  three columns (the one place that knows their order).

Parameter counts (tests): one 12-layer, 64-channel expert stage 372,803; ISE 1,594,241; KEN (85 inputs) 7,003.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.nets.vdsr import ChainedVDSR

THETA_UNIT = math.pi / 16
KEN_PARAMS = ("lambda1", "lambda2", "theta")  # the columns of KEN's output, in order
ISE_STRIDES = (1, 2, 2, 2, 1, 1)
ISE_RECEPTIVE_FIELD = 49
ISE_OUTPUT_STRIDE = 8
# Most output pixels per convolution call on the per-expert (CPU) path: 64-channel maps of one 256x256 image (16 MiB)
# stay near the caches; batches of 8 such images made the 85-kernel estimation on a 128-px LR crop 1.43x (NCHW) and
# 1.1-1.2x (channels-last) slower than one image per call on 2 AVX2 EPYC cores.
PER_CALL_PIXELS = 256 * 256


def per_call_batch(height: int, width: int) -> int:
    """Images of ``height x width`` per CPU call under ``PER_CALL_PIXELS`` (at least one)."""
    return max(1, PER_CALL_PIXELS // (height * width))


_STAGE_FACTORS = {2: [2], 3: [3], 4: [2, 2], 8: [2, 2, 2]}


# ----------------------------------------------------------------------------------------------------------------
# Expert bank
# ----------------------------------------------------------------------------------------------------------------


class _BankStage(nn.Module):
    """One residual VDSR stage for ``E`` experts: stacked weights, run as grouped convolutions."""

    def __init__(self, num_experts: int, factor: int, num_layers: int, channels: int, zero_last: bool = False) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers must be >= 2, got {num_layers}")
        self.factor = factor
        self.memory_format = torch.contiguous_format  # ExpertBank.set_memory_format
        widths = [3] + [channels] * (num_layers - 1) + [3]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            # Kaiming-normal (fan-in = C_in * 9, ReLU gain) per expert, as nets.vdsr.VDSR; zero biases.
            w = torch.randn(num_experts, cout, cin, 3, 3) * math.sqrt(2.0 / (cin * 9))
            if zero_last and cout == 3 and len(self.weights) == num_layers - 1:
                w.zero_()
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(num_experts, cout)))

    def forward(
        self, x: Tensor, experts: Tensor | None, slot_source: Tensor | None = None, per_expert: bool = False
    ) -> Tensor:
        """``x`` ``(B, G, 3, h, w)`` -> ``(B, G, 3, f*h, f*w)``, slot ``g`` run by expert ``experts[g]`` (all: None).

        With ``slot_source`` ``(G,)`` long, ``x`` is ``(B, S, 3, h, w)`` distinct inputs and slot ``g`` reads input
        ``slot_source[g]``: each input is upsampled once, not once per slot. ``per_expert``: see ``ExpertBank``.
        """
        bsz, n_in, ch, h, w = x.shape
        up = F.interpolate(x.reshape(bsz * n_in, ch, h, w), scale_factor=self.factor, mode="bicubic",
                           align_corners=False)  # fmt: skip
        hh, ww = up.shape[-2:]
        up = up.reshape(bsz, n_in, ch, hh, ww)
        if slot_source is not None:
            up = up[:, slot_source.to(up.device)]
        groups = up.shape[1]
        if per_expert:
            return up + self._per_expert(up, torch.arange(groups) if experts is None else experts)
        y = up.reshape(bsz, groups * ch, hh, ww).contiguous(memory_format=self.memory_format)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if experts is not None:
                weight, bias = weight[experts], bias[experts]
            weight = weight.flatten(0, 1).contiguous(memory_format=self.memory_format)
            y = F.conv2d(y, weight, bias.flatten(), padding=1, groups=groups)
            if i < last:
                y = F.relu(y, inplace=True)
        return up + y.reshape(bsz, groups, ch, hh, ww)

    def _per_expert(self, up: Tensor, experts: Tensor) -> Tensor:
        """The residuals of ``up`` ``(B, G, 3, H, W)``: each distinct expert on its slots, PER_CALL_PIXELS a call."""
        bsz, _, _, hh, ww = up.shape
        out = torch.empty_like(up)
        experts = experts.cpu()
        last = len(self.weights) - 1
        chunk = per_call_batch(hh, ww)
        for e in experts.unique().tolist():
            slots = (experts == e).nonzero().flatten().to(up.device)
            layers = [(w[e].contiguous(memory_format=self.memory_format), b[e]) for w, b in zip(self.weights,
                      self.biases, strict=True)]  # fmt: skip
            ys = []
            for y in up[:, slots].flatten(0, 1).split(chunk):
                y = y.contiguous(memory_format=self.memory_format)
                for i, (weight, bias) in enumerate(layers):
                    y = F.conv2d(y, weight, bias, padding=1)
                    if i < last:
                        y = F.relu(y, inplace=True)
                ys.append(y)
            out[:, slots] = torch.cat(ys).reshape(bsz, len(slots), *up.shape[2:]).to(out.dtype)
        return out


class ExpertBank(nn.Module):
    """``E`` kernel-specific experts, each a ``ChainedVDSR(scale, num_layers, channels)``, run as one batched call.

    Args:
        num_experts: ``E`` (25 for MoESR's grid).
        scale: Total factor (x4 = two x2 stages, as MoESR's x4 experts).
        num_layers: Convolutions per stage (paper: 12).
        channels: Feature maps per hidden layer (paper: 64).
        zero_last: Initialise the last convolution of every stage to zero, so that every expert starts as the
            PyTorch bicubic upsample (not in the paper, whose experts are Kaiming-initialised throughout; it speeds up
            short CPU trainings).
    """

    def __init__(
        self, num_experts: int, scale: int = 2, num_layers: int = 12, channels: int = 64, zero_last: bool = False
    ) -> None:
        super().__init__()
        factors = _STAGE_FACTORS.get(scale)
        if factors is None:
            raise ValueError(f"ExpertBank supports x2, x3, x4 and x8, got x{scale}")
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.num_experts = num_experts
        self.scale = scale
        self.num_layers = num_layers
        self.channels = channels
        self.stages = nn.ModuleList(_BankStage(num_experts, f, num_layers, channels, zero_last) for f in factors)

    def _flatten(self, lr: Tensor, experts: Tensor | None) -> tuple[Tensor, Tensor | None, tuple[int, ...]]:
        if lr.dim() != 5 or lr.shape[2] != 3:
            raise ValueError(f"lr must be (B, E', 3, h, w), got shape {tuple(lr.shape)}")
        bsz, slots = lr.shape[:2]
        if experts is None:
            if slots != self.num_experts:
                raise ValueError(f"without `experts`, lr must hold all {self.num_experts} experts' slots, got {slots}")
            return lr, None, (bsz, slots)
        experts = experts.to(device=self.stages[0].weights[0].device, dtype=torch.long)
        if experts.dim() == 1:
            if experts.shape[0] != slots:
                raise ValueError(f"experts has {experts.shape[0]} entries for {slots} slots")
            return lr, experts, (bsz, slots)
        if experts.shape != (bsz, slots):
            raise ValueError(f"per-sample experts must be (B, E') = {(bsz, slots)}, got {tuple(experts.shape)}")
        # a different expert per (sample, slot): fold the batch into the groups (one grouped conv all the same)
        return lr.reshape(1, bsz * slots, *lr.shape[2:]), experts.reshape(-1), (bsz, slots)

    def set_memory_format(self, memory_format: torch.memory_format) -> ExpertBank:
        """Run the grouped convolutions in ``memory_format`` (``torch.channels_last``: NHWC; see core.precision)."""
        for stage in self.stages:
            stage.memory_format = memory_format
        return self

    def stage_outputs(
        self, lr: Tensor, experts: Tensor | None = None, slot_source: Tensor | None = None, per_expert: bool = False
    ) -> list[Tensor]:
        """Outputs of every stage (x4: the intermediate x2 result, then the x4 result).

        Args:
            lr: ``(B, E', 3, h, w)`` in ``[0, 1]``; with ``slot_source``: ``(B, S, 3, h, w)`` distinct inputs.
            experts: ``None`` (``E' = E``, slot ``i`` -> expert ``i``), ``(E',)`` long (may repeat), or ``(B, E')``
                long (a different expert per sample and slot).
            slot_source: ``(E',)`` long, with 1-D ``experts``: slot ``g`` reads ``lr[:, slot_source[g]]`` (shared
                inputs are upsampled once; e.g. the 85 grid kernels read 2 transformed copies of one image).
            per_expert: Run each distinct expert once with plain convolutions on all its slots (a loop over the
                requested experts) instead of one grouped convolution: the same result; faster on CPUs, where
                oneDNN's grouped convolutions reach about half the speed of its plain ones (``benchmarks.moesr``).

        Returns:
            One ``(B, E', 3, f*h, f*w)`` tensor per stage (not clamped).
        """
        if slot_source is not None:
            if experts is None or experts.dim() != 1 or slot_source.shape != experts.shape:
                raise ValueError("slot_source needs 1-D experts of the same length")
            x, idx = lr, experts.to(device=self.stages[0].weights[0].device, dtype=torch.long)
            bsz, slots = lr.shape[0], experts.shape[0]
        else:
            x, idx, (bsz, slots) = self._flatten(lr, experts)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x, idx, slot_source if i == 0 else None, per_expert)
            outs.append(x.reshape(bsz, slots, *x.shape[2:]))
        return outs

    def forward(
        self, lr: Tensor, experts: Tensor | None = None, slot_source: Tensor | None = None, per_expert: bool = False
    ) -> Tensor:
        """Super-resolve slot ``g`` of ``lr`` ``(B, E', 3, h, w)`` with expert ``experts[g]`` -> ``(B, E', 3, sh, sw)``.

        Args:
            lr: ``(B, E', 3, h, w)`` in ``[0, 1]`` (``(B, S, 3, h, w)`` with ``slot_source``).
            experts: ``None`` (all ``E`` in order), ``(E',)`` or ``(B, E')`` long expert indices (may repeat).
            slot_source: See ``stage_outputs``.
            per_expert: See ``stage_outputs``.
        """
        return self.stage_outputs(lr, experts, slot_source, per_expert)[-1]

    def expert(self, i: int) -> ChainedVDSR:
        """A standalone ``ChainedVDSR`` holding a copy of expert ``i``'s weights (own parameters, same device/dtype)."""
        net = ChainedVDSR(self.scale, self.num_layers, self.channels)
        ref = self.stages[0].weights[0]
        net.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for stage, vdsr in zip(self.stages, net, strict=True):
                convs = [m for m in vdsr.body if isinstance(m, nn.Conv2d)]
                for conv, weight, bias in zip(convs, stage.weights, stage.biases, strict=True):
                    conv.weight.copy_(weight[i])
                    conv.bias.copy_(bias[i])
        return net

    def load_expert(self, i: int, net: ChainedVDSR) -> None:
        """Copy the weights of a ``ChainedVDSR`` of the same architecture into expert ``i``."""
        if len(net) != len(self.stages):
            raise ValueError(f"net has {len(net)} stages, the bank {len(self.stages)}")
        with torch.no_grad():
            for stage, vdsr in zip(self.stages, net, strict=True):
                convs = [m for m in vdsr.body if isinstance(m, nn.Conv2d)]
                if len(convs) != len(stage.weights):
                    raise ValueError(f"net has {len(convs)} convolutions per stage, the bank {len(stage.weights)}")
                for conv, weight, bias in zip(convs, stage.weights, stage.biases, strict=True):
                    weight[i].copy_(conv.weight)
                    bias[i].copy_(conv.bias)


# ----------------------------------------------------------------------------------------------------------------
# ISE
# ----------------------------------------------------------------------------------------------------------------


def ise_output_size(size: int) -> int:
    """ISE output side for an input side ``size``: ``floor((size - 49) / 8) + 1`` (0 if smaller than 49)."""
    return max(0, (size - ISE_RECEPTIVE_FIELD) // ISE_OUTPUT_STRIDE + 1)


class ISE(nn.Module):
    """Image Sharpness Evaluator: ``(SR, bicubic up) -> (B, 1, H', W')`` predicted local mean squared error.

    The official ISE convolves the 6-channel concatenation ``(SR, up)``. With ``residual_gain = g > 0`` its first
    convolution sees ``(g * (SR - up), up - 0.5)`` instead: an invertible linear map of the same six channels, so the
    function class and the parameter count are those of the official net (any first-layer weights on one input are
    weights on the other), but the detail an expert adds to the bicubic image, the only thing that separates the
    experts' outputs on one image and a few percent of the intensity, reaches the first layer at the scale of the
    image instead of 20-50 times below it. At a CPU budget (600 steps, ``MoESRISE(target="relative")``) this
    took the Spearman correlation of ISE errors with the true errors over a 27-kernel grid from 0.06 to 0.38;
    ``residual_gain = 0`` is the official input (deliberate deviation, default 10).

    Args:
        channels: Widths of the five hidden convolutions (paper/official: 64, 64, 128, 256, 512).
        residual_gain: Gain on ``SR - up`` in the input (0: the official ``(SR, up)``).
    """

    def __init__(self, channels: Sequence[int] = (64, 64, 128, 256, 512), residual_gain: float = 10.0) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 5:
            raise ValueError(f"ISE has five hidden widths, got {list(channels)}")
        if residual_gain < 0:
            raise ValueError(f"residual_gain must be >= 0 (0: the official input), got {residual_gain}")
        self.channels = channels
        self.residual_gain = float(residual_gain)
        widths = (6, *channels, 1)
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, 3, stride=s, padding=0)
            for cin, cout, s in zip(widths[:-1], widths[1:], ISE_STRIDES, strict=True)
        )
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, sr: Tensor, up: Tensor) -> Tensor:
        """``sr``, ``up`` ``(B, 3, H, W)`` (SR and bicubic-upsampled LR) -> ``(B, 1, ise_output_size(H), ...(W))``."""
        if sr.shape != up.shape:
            raise ValueError(f"sr {tuple(sr.shape)} and up {tuple(up.shape)} must have the same shape")
        if min(sr.shape[-2:]) < ISE_RECEPTIVE_FIELD:
            raise ValueError(f"ISE needs images of at least 49x49 px, got {tuple(sr.shape[-2:])}")
        g = self.residual_gain
        x = torch.cat([g * (sr - up), up - 0.5] if g > 0 else [sr, up], dim=1)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < 4:  # no ReLU after 256 -> 512 nor after the output layer
                x = F.relu(x)
        return x


def ise_target(sr: Tensor, hr: Tensor) -> Tensor:
    """Eq. 6-7 labels: avg-pool (window 49, stride 8, no padding) of the channel-mean squared error.

    Pooling output ``(i, j)`` averages HR pixels ``[8i, 8i + 48] x [8j, 8j + 48]``, exactly the receptive field of
    ISE's output ``(i, j)``; the result is cropped to ``ise_output_size`` (a no-op: the sizes agree).

    Args:
        sr: ``(B, 3, H, W)`` expert output.
        hr: ``(B, 3, H, W)`` ground truth.

    Returns:
        ``(B, 1, ise_output_size(H), ise_output_size(W))``.
    """
    if sr.shape != hr.shape:
        raise ValueError(f"sr {tuple(sr.shape)} and hr {tuple(hr.shape)} must have the same shape")
    err = (sr - hr).square().mean(dim=1, keepdim=True)
    pooled = F.avg_pool2d(err, ISE_RECEPTIVE_FIELD, stride=ISE_OUTPUT_STRIDE)
    return pooled[..., : ise_output_size(sr.shape[-2]), : ise_output_size(sr.shape[-1])]


# ----------------------------------------------------------------------------------------------------------------
# KEN
# ----------------------------------------------------------------------------------------------------------------


class KEN(nn.Module):
    """Kernel Estimation Network: ``N`` ISE errors -> ``(lambda1, lambda2, theta)``.

    The clamp passes no gradient below ``min_lambda``: with PyTorch's default initialisation about half of the
    untrained outputs are negative, and a variance that starts clamped never moves (we saw KEN stuck at
    ``lambda2 = 0.01``). ``init_lambda`` (not in the paper) sets the last layer's biases so that training starts at
    ``(init_lambda, init_lambda, pi/2)``, e.g. the middle of the grid's variances.

    Args:
        num_kernels: ``N``, the grid size (85 for MoESR's grid).
        hidden: Width of the two hidden layers (paper: 50).
        min_lambda: Lower clamp of the variances (official: 0.01).
        init_lambda: Initial bias of the two variance outputs (``None``: PyTorch's default initialisation).
    """

    def __init__(
        self, num_kernels: int = 85, hidden: int = 50, min_lambda: float = 0.01, init_lambda: float | None = None
    ) -> None:
        super().__init__()
        if num_kernels < 2:
            raise ValueError(f"KEN standardises its input over the grid: num_kernels must be >= 2, got {num_kernels}")
        self.num_kernels = num_kernels
        self.min_lambda = min_lambda
        self.net = nn.Sequential(
            nn.Linear(num_kernels, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3)
        )
        if init_lambda is not None:
            with torch.no_grad():
                self.net[-1].bias.copy_(torch.tensor([init_lambda, init_lambda, 8.0]))  # theta: 8 x pi/16 = pi/2

    @staticmethod
    def standardise(errors: Tensor) -> Tensor:
        """``(x - mean) / std`` per sample over the ``N`` errors (unbiased std; floored at 1e-12 against 0/0)."""
        mean = errors.mean(dim=1, keepdim=True)
        std = errors.std(dim=1, keepdim=True).clamp_min(1e-12)
        return (errors - mean) / std

    def forward(self, errors: Tensor) -> Tensor:
        """``(B, N)`` raw ISE errors -> ``(B, 3)``: ``lambda1, lambda2`` (``>= min_lambda``), ``theta`` in radians."""
        if errors.dim() != 2 or errors.shape[1] != self.num_kernels:
            raise ValueError(f"errors must be (B, {self.num_kernels}), got {tuple(errors.shape)}")
        with torch.autocast(errors.device.type, enabled=False):  # a tiny MLP whose outputs are kernel parameters
            out = self.net(self.standardise(errors.float()))
        lam = out[:, :2].clamp(min=self.min_lambda)
        return torch.cat([lam, out[:, 2:] * THETA_UNIT], dim=1)


def ken_params(out: Tensor) -> dict[str, Tensor]:
    """Name the columns of a ``(B, 3)`` KEN output (or any MoESR parameter triple in its order).

    Returns:
        ``{"lambda1", "lambda2", "theta"}``, each ``(B,)`` (views of ``out``): the covariance eigenvalues
        (variances, ``lambda1 >= lambda2`` for the kernel generator) and the angle in radians; the keys of
        ``MoESRKernelDegradation``'s parameters.
    """
    if out.dim() != 2 or out.shape[1] != len(KEN_PARAMS):
        raise ValueError(f"KEN parameters must be (B, 3) (lambda1, lambda2, theta), got {tuple(out.shape)}")
    return dict(zip(KEN_PARAMS, out.unbind(dim=1), strict=True))

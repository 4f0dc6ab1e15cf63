"""DASR's three-level degradation (Liang et al., ECCV 2022) as one batched, deterministic-given-parameters module.

``sample`` draws the named parameters (``dasr_params.DASRSampler``: one level, resize scales and modes per batch,
everything else per sample); ``apply`` runs, for the one-stage levels (weak, standard)::

    blur(k1) -> resize(s1, mode1) -> noise1 -> JPEG(q1) -> resize to H/s (final mode) -> 8 bit

and for the severe two-stage level::

    blur(k1) -> resize(s1) -> noise1 -> JPEG(q1) -> [blur(k2), p 0.8] -> resize to (H/s) * s2 -> noise2
    -> {resize to H/s -> sinc -> JPEG(q2)  |  JPEG(q2) -> resize to H/s -> sinc}  (per sample, p 0.5) -> 8 bit

as the official ``DASRModel.feed_data``: Gaussians (iso / aniso, standard deviations, pixel-centred) and sinc filters
zero-padded to 21 x 21 and correlated with a reflected border (BasicSR's ``filter2D``; ``_filter2d`` also reflects
images smaller than the kernel, where ``F.pad`` refuses); ``F.interpolate`` resizes (``align_corners=False``, no
antialiasing; the first resize by ``scale_factor``, the others to a size); noise clipped to ``[0, 1]``; a missing
second blur or sinc filter leaves the image unchanged (the official pulse kernel).

JPEG: ``ops.jpeg`` (Kornia's differentiable codec, batched, per-sample quality). Sizes that are not multiples of 16
need no handling here: the codec pads the bottom and right by replication and crops back (the JPEG standard's edge
extension; ``tests/degradation/test_dasr_degradation.py`` checks it), where BasicSR's ``DiffJPEG`` pads with zeros.
Its rounding is a differentiable approximation; the official codec (``differentiable=False``) rounds exactly.

Noise determinism: ``apply`` must be deterministic given the parameters, but Poisson noise depends on the image at
that stage, and both noise fields have the size of an intermediate image, which depends on the per-batch resize
scale (a batch gathered from several draws holds several sizes). So ``sample`` stores one integer seed per sample
and stage (``noise1_seed``, ``noise2_seed``), and ``apply`` draws each sample's Gaussian field (``ops.add_noise``)
or Poisson noise (``ops.poisson_noise``) from a generator seeded with it, on the image's device. A sample's noise
then depends neither on the other samples of its batch nor on the grouping, and the parameters stay ``(B,)``
tensors (validation stores them for every crop: a pre-drawn field at the largest possible size would take 4 MB per
384 x 384 crop). That per-sample draw is a short loop over the samples, so it is kept out of training: ``forward``
(sample and apply in one pass, the training path) draws the whole batch's noise from one generator seeded from the
draw (no loop). The same seeds on another device give other (equally distributed) noise.

Output: ``{"hr", "hr_usm" (``ops.unsharp_mask(hr)``, or ``hr`` itself with ``sharpen_target=False``), "lr",
"params", "vector" (``dasr_vector.dasr_vector(params)``, (B, 33))}``; no ``"kernel"`` (three kernels per sample).
The official training (``DASRModel.feed_data``) sharpens the ground truth first and degrades the **sharpened** image;
its validation-set scripts degrade the plain HR. ``degrade_sharpened`` (default True, with ``sharpen_target``)
follows the training; the test-set writer (``sharpen_target=False``) follows the scripts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.degradation import ops
from datamodules.degradation.dasr_params import MAX_KERNEL_SIZE, PER_BATCH, RESIZE_MODES, DASRSampler
from datamodules.degradation.dasr_vector import dasr_vector
from datamodules.degradation.kernels import gaussian_kernels, restrict_support, sinc_kernels
from datamodules.degradation.ops._checks import check_image
from datamodules.degradation.pipelines.base import Degradation

USM_MIN_SIDE = 51
"""``ops.unsharp_mask`` pads 50 px by reflection: the HR sides must be at least 51 px with ``sharpen_target``."""


def _reflect_index(n: int, pad: int, device) -> Tensor:
    """Indices ``-pad .. n + pad - 1`` mirrored into ``0 .. n - 1`` without repeating the edge (any ``pad``)."""
    i = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(i)
    i = i.remainder(2 * (n - 1))
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def _filter2d(x: Tensor, kernels: Tensor) -> Tensor:
    """Correlate each sample with its odd ``(B, k, k)`` kernel, reflected border (BasicSR ``filter2D``), same size.

    Equals ``ops.blur(x, kernels, border="reflect")`` where that works, and also reflects images smaller than
    ``k // 2 + 1`` (repeatedly), where ``F.pad`` refuses.
    """
    b, c, h, w = x.shape
    p = kernels.shape[-1] // 2
    if p < h and p < w:
        padded = F.pad(x, (p, p, p, p), mode="reflect")
    else:
        padded = x.index_select(2, _reflect_index(h, p, x.device)).index_select(3, _reflect_index(w, p, x.device))
    weight = kernels.to(x).repeat_interleave(c, dim=0)[:, None]
    out = F.conv2d(padded.reshape(1, b * c, h + 2 * p, w + 2 * p), weight, groups=b * c)
    return out.reshape(b, c, h, w)


def _trim(kernels: Tensor, sizes: Tensor) -> Tensor:
    """Crop centred ``(B, K, K)`` kernels to the largest support ``max(sizes)`` (exact: zeros outside it)."""
    k = int(sizes.max())
    cut = (kernels.shape[-1] - k) // 2
    return kernels[:, cut : cut + k, cut : cut + k] if cut > 0 else kernels


def _resize(x: Tensor, mode: str, scale: float | None = None, size: tuple[int, int] | None = None) -> Tensor:
    """``F.interpolate`` by ``scale`` (output ``floor(H * scale)``) or to ``size``, in DASR's modes."""
    extra = {} if mode == "area" else {"align_corners": False}
    if size is not None:
        return F.interpolate(x, size=size, mode=mode, **extra)
    return F.interpolate(x, scale_factor=scale, mode=mode, **extra)


def gaussian_blur_kernels(params: dict[str, Tensor], prefix: str) -> Tensor:
    """``(B, 21, 21)`` pixel-centred Gaussians of ``{prefix}_size / sigma_x / sigma_y / theta`` (standard deviations).

    Absent kernels (size 0) get a placeholder Gaussian: ``apply`` leaves those samples unblurred.

    Args:
        params: Named parameters (``DASRSampler``).
        prefix: ``"kernel1"`` or ``"kernel2"``.
    """
    size = params[f"{prefix}_size"]
    present = size > 0
    one = torch.ones_like(params[f"{prefix}_sigma_x"])
    sx = torch.where(present, params[f"{prefix}_sigma_x"], one)
    sy = torch.where(present, params[f"{prefix}_sigma_y"], one)
    k = gaussian_kernels(MAX_KERNEL_SIZE, sx, sy, params[f"{prefix}_theta"], param="std", centre="pixel")
    return restrict_support(k, torch.where(present, size, torch.full_like(size, MAX_KERNEL_SIZE)))


def final_sinc_kernels(params: dict[str, Tensor]) -> Tensor:
    """``(B, 21, 21)`` final sinc filters of ``sinc_size`` and ``sinc_cutoff`` (placeholder where absent).

    Args:
        params: Named parameters (``DASRSampler``).
    """
    size = params["sinc_size"]
    present = size > 0
    cutoff = torch.where(present, params["sinc_cutoff"], torch.full_like(params["sinc_cutoff"], math.pi))
    k = sinc_kernels(MAX_KERNEL_SIZE, cutoff.float())
    return restrict_support(k, torch.where(present, size, torch.full_like(size, MAX_KERNEL_SIZE)))


class DASRDegradation(Degradation):
    """DASR's three-level degradation space (module docstring), batched on the device.

    Args:
        scale: Downscaling factor, 2 or 4 (linked from the DataModule's ``scale``; the paper: 4).
        sampler: Draws the parameters (default ``DASRSampler()``: the official ranges and level probabilities).
        level: Always use this level (0 weak / Level-I, 1 standard / II, 2 severe / III) instead of drawing it,
            e.g. for per-level validation; ``None``: drawn with the sampler's probabilities.
        sharpen_target: Add ``"hr_usm"``, the USM-sharpened HR that DASR's losses compare with (official); False:
            ``"hr_usm"`` is ``"hr"``. Needs HR sides of at least 51 px (``USM_MIN_SIDE``).
        degrade_sharpened: With ``sharpen_target``, make the LR from the sharpened HR (the official training);
            False: from ``hr`` (the official validation sets, or whenever the LR should not see the USM).
        quantize: Round the LR to 8-bit levels (as the official code); False: only clamp to ``[0, 1]``.
    """

    def __init__(
        self,
        scale: int = 4,
        sampler: DASRSampler | None = None,
        level: int | None = None,
        sharpen_target: bool = True,
        degrade_sharpened: bool = True,
        quantize: bool = True,
    ) -> None:
        super().__init__(scale)
        if scale not in (2, 4):
            raise ValueError(f"DASR's degradation is defined here for x2 and x4, got x{scale}")
        if level is not None and level not in (0, 1, 2):
            raise ValueError(f"level must be 0 (weak), 1 (standard), 2 (severe) or None, got {level}")
        self.sampler = sampler if sampler is not None else DASRSampler()
        self.level = level
        self.sharpen_target = sharpen_target
        self.degrade_sharpened = degrade_sharpened
        self.quantize = quantize

    def sample(self, hr_shape: torch.Size, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        """Named ``(B,)`` parameters (``dasr_params``) for HR images of ``hr_shape`` ``(B, 3, sH, sW)``."""
        return self.sampler.sample(hr_shape[0], generator, device, level=self.level)

    def forward(self, hr: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Sample and apply in one pass (training): the batch is one whole draw, so its noise is drawn batched.

        The noise comes from one generator seeded with the draw's first ``noise{stage}_seed`` (no loop over samples);
        ``apply`` on the same parameters draws each sample's own noise instead (other values, same distribution).
        """
        return self._apply(hr, self.sample(hr.shape, generator, hr.device), batched_noise=True)

    def apply(self, hr: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Degrade ``hr`` ``(B, 3, sH, sW)`` in ``[0, 1]`` with ``params`` (deterministic); returns the batch dict.

        Samples whose per-batch parameters (``dasr_params.PER_BATCH``) agree run as one batch; a batch holding
        several combinations (gathered from several draws) runs one group after another. Each sample's noise comes
        from its own seed, so its LR does not depend on the other samples of the batch (validation crops gathered in
        any batches, on any number of processes; the test-set writer).
        """
        return self._apply(hr, params, batched_noise=False)

    def _apply(self, hr: Tensor, params: dict[str, Tensor], batched_noise: bool) -> dict[str, Tensor]:
        check_image(hr, "hr")
        bsz, _, h, w = hr.shape
        if h % self.scale or w % self.scale:
            raise ValueError(f"HR sides {h}x{w} must be multiples of the scale {self.scale}")
        if self.sharpen_target and min(h, w) < USM_MIN_SIDE:
            raise ValueError(
                f"sharpen_target needs HR sides of at least {USM_MIN_SIDE} px, got {h}x{w}: raise "
                f"--data.init_args.patch_size (LR side; HR = LR x {self.scale})"
            )
        hr_usm = ops.unsharp_mask(hr) if self.sharpen_target else hr
        source = hr_usm if self.degrade_sharpened else hr
        keys = torch.stack([params[k].double() for k in PER_BATCH], dim=1)
        combos, inverse = torch.unique(keys, dim=0, return_inverse=True)
        if len(combos) == 1:
            lr = self._degrade(source, params, combos[0].tolist(), batched_noise)
        else:
            lr = hr.new_empty(bsz, hr.shape[1], h // self.scale, w // self.scale)
            for g, combo in enumerate(combos.tolist()):
                idx = (inverse == g).nonzero().squeeze(1)
                sub = {k: v[idx] for k, v in params.items()}
                lr[idx.to(hr.device)] = self._degrade(source[idx.to(hr.device)], sub, combo, batched_noise)
        vector = dasr_vector(params).to(hr.device)
        return {"hr": hr, "hr_usm": hr_usm, "lr": lr, "params": params, "vector": vector}

    def _degrade(self, hr: Tensor, p: dict[str, Tensor], combo: list[float], batched_noise: bool) -> Tensor:
        """One group: every sample shares ``combo`` = the values of ``PER_BATCH``."""
        level, scale1, mode1, scale2, mode2, final_mode = combo
        p = {k: v.to(hr.device) for k, v in p.items()}
        _, _, h, w = hr.shape
        lr_size = (h // self.scale, w // self.scale)
        x = _filter2d(hr, _trim(gaussian_blur_kernels(p, "kernel1"), p["kernel1_size"]))
        x = _resize(x, RESIZE_MODES[int(mode1)], scale=scale1)
        x = self._noise(x, p, "1", batched_noise)
        x = ops.jpeg(x, p["jpeg1_quality"])
        if int(level) < 2:
            x = _resize(x, RESIZE_MODES[int(final_mode)], size=lr_size)
        else:
            modes = RESIZE_MODES[int(mode2)], RESIZE_MODES[int(final_mode)]
            x = self._second_stage(x, p, lr_size, scale2, *modes, batched_noise)
        return ops.quantize(x) if self.quantize else x.clamp(0, 1)

    def _second_stage(
        self,
        x: Tensor,
        p: dict[str, Tensor],
        lr_size: tuple[int, int],
        scale2: float,
        mode2: str,
        final_mode: str,
        batched_noise: bool,
    ) -> Tensor:
        """The severe level's second blur, resize, noise, then the final steps in each sample's order."""
        applied = p["blur2_applied"] & (p["kernel2_size"] > 0)
        if bool(applied.any()):
            sizes = torch.where(applied, p["kernel2_size"], torch.ones_like(p["kernel2_size"]))
            blurred = _filter2d(x, _trim(gaussian_blur_kernels(p, "kernel2"), sizes))
            x = torch.where(applied.view(-1, 1, 1, 1), blurred, x)
        size2 = (max(1, int(lr_size[0] * scale2)), max(1, int(lr_size[1] * scale2)))
        x = _resize(x, mode2, size=size2)
        x = self._noise(x, p, "2", batched_noise)
        sinc = final_sinc_kernels(p)
        sinc_on = p["sinc_applied"] & (p["sinc_size"] > 0)

        def resize_sinc(y: Tensor, idx: Tensor) -> Tensor:
            y = _resize(y, final_mode, size=lr_size)
            on = sinc_on[idx]
            if not bool(on.any()):
                return y
            sizes = torch.where(on, p["sinc_size"][idx], torch.ones_like(p["sinc_size"][idx]))
            return torch.where(on.view(-1, 1, 1, 1), _filter2d(y, _trim(sinc[idx], sizes)), y)

        order = p["final_order"]
        out = x.new_empty(x.shape[0], x.shape[1], *lr_size)
        for first in (0, 1):  # 0: resize + sinc then JPEG; 1: JPEG then resize + sinc
            idx = (order == first).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            y, quality = x[idx], p["jpeg2_quality"][idx]
            y = ops.jpeg(resize_sinc(y, idx), quality) if first == 0 else resize_sinc(ops.jpeg(y, quality), idx)
            out[idx] = y
        return out

    @staticmethod
    def _noise(x: Tensor, p: dict[str, Tensor], stage: str, batched: bool) -> Tensor:
        """Gaussian or Poisson noise (``noise{stage}_type``), clipped; see ``forward`` / ``apply`` for the draws."""
        if batched:
            return DASRDegradation._noise_batched(x, p, stage)
        n, c, h, w = x.shape
        kinds = p[f"noise{stage}_type"].tolist()
        seeds = p[f"noise{stage}_seed"].tolist()
        grays = p[f"noise{stage}_gray"].tolist()
        sigma = p[f"noise{stage}_sigma"].to(x) / 255
        fields = []
        for i in range(n):  # evaluation only (``apply``): a per-sample generator keeps each sample's noise its own
            generator = torch.Generator(device=x.device).manual_seed(int(seeds[i]))
            if kinds[i] == 0:
                planes = 1 if grays[i] else c
                field = torch.randn(1, planes, h, w, generator=generator, device=x.device, dtype=x.dtype)
                fields.append(field.expand(1, c, h, w) * sigma[i])
            elif kinds[i] == 1:
                one = x[i : i + 1]
                scale, gray = p[f"noise{stage}_poisson_scale"][i : i + 1], p[f"noise{stage}_gray"][i : i + 1]
                fields.append(ops.poisson_noise(one, scale, gray, generator) - one)
            else:
                fields.append(torch.zeros_like(x[i : i + 1]))
        return ops.add_noise(x, torch.cat(fields)).clamp(0, 1)

    @staticmethod
    def _noise_batched(x: Tensor, p: dict[str, Tensor], stage: str) -> Tensor:
        """The whole batch's noise from one generator seeded with the first sample's seed: no loop over samples.

        One Gaussian draw for the samples with Gaussian noise and one Poisson draw for those with Poisson noise.
        """
        n, c, h, w = x.shape
        generator = torch.Generator(device=x.device).manual_seed(int(p[f"noise{stage}_seed"][0]))
        kind = p[f"noise{stage}_type"].to(x.device)
        gray = p[f"noise{stage}_gray"].to(x.device)
        noise = torch.zeros_like(x)
        g = (kind == 0).nonzero().squeeze(1)
        if g.numel():
            field = torch.randn(len(g), c, h, w, generator=generator, device=x.device, dtype=x.dtype)
            field = torch.where(gray[g].view(-1, 1, 1, 1), field[:, :1].expand_as(field), field)
            noise[g] = field * (p[f"noise{stage}_sigma"].to(x)[g] / 255).view(-1, 1, 1, 1)
        q = (kind == 1).nonzero().squeeze(1)
        if q.numel():
            scale = p[f"noise{stage}_poisson_scale"].to(x)[q]
            noise[q] = ops.poisson_noise(x[q], scale, gray[q], generator) - x[q]
        return ops.add_noise(x, noise).clamp(0, 1)

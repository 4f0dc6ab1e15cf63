"""Degradation operators: pure, batched tensor functions on the input's device, one module per job.

Images are ``(B, C, H, W)`` float tensors in ``[0, 1]``. Kernels are ``(B, k, k)`` (one per sample) or ``(k, k)``
(shared). Nothing here draws random numbers except where a ``generator`` argument says so (Poisson noise, whose
draw depends on the signal); parameters come from ``samplers``.

* ``blurring``: ``blur``, ``decimate``, ``blur_decimate`` (both in one strided convolution), ``blur_decimate_bank``
  (every image x every kernel), ``pad_symmetric``.
* ``resampling``: ``resize``, bicubic in the ``"torch"`` or the ``"matlab"`` convention (see that module).
* ``noise``: ``add_noise``, ``poisson_noise``; ``compression``: ``jpeg``; ``sharpening``: ``unsharp_mask``.
* ``quantization``: ``quantize`` (8-bit, halves to even); ``colour``: ``rgb_to_y``, ``rgb_to_ycbcr``, ``ycbcr_to_rgb``.

Every public name is re-exported here: ``from datamodules.degradation import ops; ops.resize(...)``.
"""

from datamodules.degradation.ops.blurring import BlurMode as BlurMode
from datamodules.degradation.ops.blurring import Border as Border
from datamodules.degradation.ops.blurring import blur as blur
from datamodules.degradation.ops.blurring import blur_decimate as blur_decimate
from datamodules.degradation.ops.blurring import blur_decimate_bank as blur_decimate_bank
from datamodules.degradation.ops.blurring import decimate as decimate
from datamodules.degradation.ops.blurring import pad_symmetric as pad_symmetric
from datamodules.degradation.ops.colour import rgb_to_y as rgb_to_y
from datamodules.degradation.ops.colour import rgb_to_ycbcr as rgb_to_ycbcr
from datamodules.degradation.ops.colour import ycbcr_to_rgb as ycbcr_to_rgb
from datamodules.degradation.ops.compression import jpeg as jpeg
from datamodules.degradation.ops.noise import add_noise as add_noise
from datamodules.degradation.ops.noise import poisson_noise as poisson_noise
from datamodules.degradation.ops.quantization import quantize as quantize
from datamodules.degradation.ops.resampling import ResizeConvention as ResizeConvention
from datamodules.degradation.ops.resampling import resize as resize
from datamodules.degradation.ops.sharpening import unsharp_mask as unsharp_mask

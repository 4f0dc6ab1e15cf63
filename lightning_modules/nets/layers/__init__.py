"""Layers several networks share.

* ``fft``: the circular FFT blur, zero-insertion upsampling, upper-left decimation and the closed-form data step of
  deep-unfolding SR (USRNet).
* ``local_filter``: per-pixel (spatially-variant) local filtering, downsampling and dynamic upsampling (KOALAnet).

Every public name is re-exported here: ``from lightning_modules.nets.layers import data_step``.
"""

from lightning_modules.nets.layers.dynamic_conv import DynamicConv2d as DynamicConv2d
from lightning_modules.nets.layers.fft import DataTerms as DataTerms
from lightning_modules.nets.layers.fft import circular_convolve as circular_convolve
from lightning_modules.nets.layers.fft import data_step as data_step
from lightning_modules.nets.layers.fft import data_terms as data_terms
from lightning_modules.nets.layers.fft import downsample_upper_left as downsample_upper_left
from lightning_modules.nets.layers.fft import psf2otf as psf2otf
from lightning_modules.nets.layers.fft import splits_mean as splits_mean
from lightning_modules.nets.layers.fft import upsample_zeros as upsample_zeros
from lightning_modules.nets.layers.local_filter import kernel_normalize as kernel_normalize
from lightning_modules.nets.layers.local_filter import local_downsample as local_downsample
from lightning_modules.nets.layers.local_filter import local_filter as local_filter
from lightning_modules.nets.layers.local_filter import local_upsample as local_upsample
from lightning_modules.nets.layers.local_filter import same_padding as same_padding

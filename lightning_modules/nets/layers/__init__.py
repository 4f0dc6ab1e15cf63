"""Layers several networks share.

* ``fft``: the circular FFT blur, zero-insertion upsampling, upper-left decimation and the closed-form data step of
  deep-unfolding SR (USRNet).

Every public name is re-exported here: ``from lightning_modules.nets.layers import data_step``.
"""

from lightning_modules.nets.layers.fft import DataTerms as DataTerms
from lightning_modules.nets.layers.fft import circular_convolve as circular_convolve
from lightning_modules.nets.layers.fft import data_step as data_step
from lightning_modules.nets.layers.fft import data_terms as data_terms
from lightning_modules.nets.layers.fft import downsample_upper_left as downsample_upper_left
from lightning_modules.nets.layers.fft import psf2otf as psf2otf
from lightning_modules.nets.layers.fft import splits_mean as splits_mean
from lightning_modules.nets.layers.fft import upsample_zeros as upsample_zeros

"""Blur-kernel families and their conventions: pure tensor functions, ``(B, k, k)`` kernels summing to 1.

* ``conventions``: the ``param`` / ``centre`` / ``convention`` choices, ``kernel_mean``, ``decimation_phase``,
  ``pad_centred``, ``shift_kernel``, ``centre_of_mass``, batched ``shift_kernels`` / ``recentre_kernels`` and the
  DIV2KRK <-> block-centre and block-centre <-> USRNet (``block_centre_to_usrnet``: rot180) conversions.
* ``gaussian``: anisotropic / isotropic Gaussians, banks from parameter grids, ``compose_x2_twice``.
* ``cubic``: Keys' cubic, the bicubic kernel, KOALAnet's kernels; ``sinc``: DASR's sinc filters and supports.
* ``moesr`` (MoESR's grid and its folding) and ``mixture`` (the mixture paper's kernel set and split): import
  those submodules; they are not re-exported here.

Every public name of the first four is re-exported: ``from datamodules.degradation import kernels as K``.
"""

from datamodules.degradation.kernels.conventions import Centre as Centre
from datamodules.degradation.kernels.conventions import Convention as Convention
from datamodules.degradation.kernels.conventions import Param as Param
from datamodules.degradation.kernels.conventions import block_centre_to_div2krk_kernel as block_centre_to_div2krk_kernel
from datamodules.degradation.kernels.conventions import block_centre_to_usrnet as block_centre_to_usrnet
from datamodules.degradation.kernels.conventions import centre_of_mass as centre_of_mass
from datamodules.degradation.kernels.conventions import decimation_phase as decimation_phase
from datamodules.degradation.kernels.conventions import div2krk_kernel_to_block_centre as div2krk_kernel_to_block_centre
from datamodules.degradation.kernels.conventions import kernel_mean as kernel_mean
from datamodules.degradation.kernels.conventions import pad_centred as pad_centred
from datamodules.degradation.kernels.conventions import recentre_kernels as recentre_kernels
from datamodules.degradation.kernels.conventions import shift_kernel as shift_kernel
from datamodules.degradation.kernels.conventions import shift_kernels as shift_kernels
from datamodules.degradation.kernels.conventions import usrnet_to_block_centre as usrnet_to_block_centre
from datamodules.degradation.kernels.cubic import bicubic_kernel as bicubic_kernel
from datamodules.degradation.kernels.cubic import cubic as cubic
from datamodules.degradation.kernels.cubic import koala_kernels as koala_kernels
from datamodules.degradation.kernels.gaussian import compose_x2_twice as compose_x2_twice
from datamodules.degradation.kernels.gaussian import gaussian_kernel_bank as gaussian_kernel_bank
from datamodules.degradation.kernels.gaussian import gaussian_kernels as gaussian_kernels
from datamodules.degradation.kernels.gaussian import isotropic_gaussian_kernels as isotropic_gaussian_kernels
from datamodules.degradation.kernels.gaussian import parameter_grid as parameter_grid
from datamodules.degradation.kernels.sinc import restrict_support as restrict_support
from datamodules.degradation.kernels.sinc import sinc_kernels as sinc_kernels

"""Every test-set writer, one command line: ``python -m datamodules.generate --protocol NAME ...``.

* ``div2krk`` (default): DIV2KRK-protocol sets from any HR folder (random anisotropic Gaussians, x2 and x4,
  DIV2KRK's layout and ``.mat`` convention): ``generate``.
* ``mixture``: Wang et al. 2020's sets, every HR image x every seen or unseen kernel, "paired" layout:
  ``write_mixture_set``.
* ``kenet``, ``dasr``: KENet's and DASR's sets (``generate_kenet``, ``write_dasr_sets`` in their modules).
* ``koalanet``: KOALAnet's random anisotropic Gaussian sets, DIV2KRK layout: ``generate_koalanet``.
* ``spatially_variant``: a kernel field varying across each image (``defocus``, ``two_region``), read by
  ``datamodules.sv_sets``: ``generate_spatially_variant``.
* ``common``: the output folder (an earlier run is refused unless ``--overwrite``), the HR crop, the 8-bit LR PNG;
  ``cli``: ``build_parser`` and ``main``.
"""

from datamodules.generate.cli import build_parser as build_parser
from datamodules.generate.cli import main as main
from datamodules.generate.div2krk import generate as generate
from datamodules.generate.div2krk import image_generator as image_generator
from datamodules.generate.koalanet import generate_koalanet as generate_koalanet
from datamodules.generate.mixture import write_mixture_set as write_mixture_set
from datamodules.generate.spatially_variant import generate_spatially_variant as generate_spatially_variant

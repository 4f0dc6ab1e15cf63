"""Losses several systems use, as plain tensor functions and ``nn.Module`` wrappers (no Lightning).

* :mod:`.kernel`: blur-kernel regression losses, ``(B, k, k)`` estimate vs ground truth -> scalar: KENet's adaptive
  attention loss (Cao et al., Sec. 2.3), the plain L1 of its Table 2 ablation, and the configurable ``KernelLoss``.
* :mod:`.perceptual`: the VGG perceptual loss of BasicSR / DASR (L1 between pre-ReLU VGG19 features of SR and HR,
  RGB in ``[0, 1]``), on ``VGGFeatures``, a VGG built here in torchvision's state-dict layout and loaded strictly from
  torchvision's ImageNet file (no torchvision dependency, no silent random fallback).
* :mod:`.adversarial`: the vanilla GAN loss (BCE with logits) for generator and discriminator.

Every public name is re-exported here; import from ``lightning_modules.losses``.
"""

from lightning_modules.losses.adversarial import GANLoss, gan_loss
from lightning_modules.losses.kernel import KernelLoss, adaptive_attention_loss, kernel_l1_loss
from lightning_modules.losses.perceptual import (
    DEFAULT_LAYER_WEIGHTS,
    VGG19_URL,
    PerceptualLoss,
    VGG19Features,
    VGGFeatures,
    vgg_layer_indices,
)

__all__ = [
    "DEFAULT_LAYER_WEIGHTS",
    "VGG19_URL",
    "GANLoss",
    "KernelLoss",
    "PerceptualLoss",
    "VGG19Features",
    "VGGFeatures",
    "adaptive_attention_loss",
    "gan_loss",
    "kernel_l1_loss",
    "vgg_layer_indices",
]

"""Losses several systems use, as plain tensor functions and ``nn.Module`` wrappers (no Lightning).

* :mod:`.kernel`: blur-kernel regression losses, ``(B, k, k)`` estimate vs ground truth -> scalar: KENet's adaptive
  attention loss (Cao et al., Sec. 2.3), the plain L1 of its Table 2 ablation, and the configurable ``KernelLoss``.

Every public name is re-exported here; import from ``lightning_modules.losses``.
"""

from lightning_modules.losses.kernel import KernelLoss, adaptive_attention_loss, kernel_l1_loss

__all__ = ["KernelLoss", "adaptive_attention_loss", "kernel_l1_loss"]

"""User control of DASR's predicted degradation (the paper's Sec. 4.5): override entries of the 33-number vector.

The vector's layout lives in ``datamodules.degradation.dasr_vector`` (one table); overrides name its entries
(``VECTOR_NAMES``) and give values in the vector's own units: ``norm(x) = (x - lo) / (hi - lo)`` over the ranges
``RANGES``, one-hot blocks and size codes as that table says. Examples: ``{noise1_level: 0.0}`` asks for the
weakest noise of the range (Gaussian sigma 1 or Poisson 0.05), ``{noise1_gaussian: 0.0, noise1_poisson: 0.0}``
for no noise, ``{kernel1_sigma_x: 0.0, kernel1_sigma_y: 0.0}`` for the sharpest blur.
"""

from __future__ import annotations

from torch import Tensor

from datamodules.degradation.dasr_vector import VECTOR_NAMES, vector_to_named


def check_override(override: dict[str, float]) -> None:
    """Refuse names that are not entries of the vector (listing the valid ones)."""
    unknown = sorted(set(override) - set(VECTOR_NAMES))
    if unknown:
        raise ValueError(f"unknown degradation parameter(s) {unknown} in override; the 33 names: {list(VECTOR_NAMES)}")


def apply_override(vector: Tensor, override: dict[str, float]) -> Tensor:
    """``(B, 33)`` predicted vector with the named entries replaced by the given values (every image the same)."""
    check_override(override)
    out = vector.clone()
    for name, value in override.items():
        out[:, VECTOR_NAMES.index(name)] = float(value)
    return out


def describe_vector(vector: Tensor) -> dict:
    """One image's ``(33,)`` vector as JSON-ready numbers: the raw entries by name and the decoded physical values."""
    v = vector.detach().float().cpu()[None]
    decoded = {k: t[0].item() for k, t in vector_to_named(v).items()}
    return {"vector": dict(zip(VECTOR_NAMES, v[0].tolist(), strict=True)), "decoded": decoded}


__all__ = ["apply_override", "check_override", "describe_vector"]

"""Named evaluation protocols: presets, shaves and the numbers they give."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from lightning_modules.metrics import METRIC_PROTOCOLS, PSNRY, SSIMY, MetricProtocol, make_sr_metrics, resolve_shave
from tests.metrics.reference import np_y, to_torch


def test_protocol_presets_and_resolve_shave() -> None:
    assert set(METRIC_PROTOCOLS) == {"standard", "koalanet", "mixture"}
    std, koala, mix = (METRIC_PROTOCOLS[k] for k in ("standard", "koalanet", "mixture"))
    assert (std.shave, std.round_y, std.ssim_window, std.quantize) == ("scale", False, "gaussian", True)
    assert (koala.shave, koala.round_y, koala.ssim_window) == (0, True, "gaussian")
    assert (mix.shave, mix.round_y, mix.ssim_window) == ("scale", True, "uniform7")
    assert resolve_shave(std, 4) == 4 and resolve_shave("mixture", 3) == 3 and resolve_shave(koala, 4) == 0
    custom = MetricProtocol(shave=16, round_y=False, ssim_window="gaussian", quantize=True, description="sf^2")
    assert resolve_shave(custom, 4) == 16
    with pytest.raises(ValueError):
        resolve_shave(MetricProtocol(-1, False, "gaussian", True, ""), 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        std.shave = 3  # type: ignore[misc]


def test_protocols_give_different_numbers(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    srs, hrs = pairs
    sr, hr = to_torch(srs), to_torch(hrs)
    values = {}
    for name in METRIC_PROTOCOLS:
        p, s = PSNRY(scale=4, protocol=name), SSIMY(scale=4, protocol=name)
        p.update(sr, hr)
        s.update(sr, hr)
        values[name] = (p.compute().item(), s.compute().item())
    assert abs(values["koalanet"][0] - values["standard"][0]) > 1e-3
    assert abs(values["mixture"][1] - values["standard"][1]) > 1e-4
    # koalanet = rounded Y, no shave: check against skimage on rounded numpy Y.
    ref = np.mean(
        [
            peak_signal_noise_ratio(np_y(h, round_y=True), np_y(s, round_y=True), data_range=255)
            for s, h in zip(srs, hrs, strict=True)
        ]
    )
    assert abs(values["koalanet"][0] - ref) < 1e-6


def test_unknown_protocol_raises() -> None:
    with pytest.raises(ValueError, match="koalanet.*mixture.*standard"):
        PSNRY(scale=2, protocol="matlab")
    with pytest.raises(ValueError, match="valid protocols"):
        SSIMY(scale=2, protocol="nope")
    with pytest.raises(ValueError, match="valid protocols"):
        make_sr_metrics(2, protocol="nope")

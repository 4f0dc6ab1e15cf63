"""DASR's 33-number vector: layout, decoding, value range, and issue #14's three bugs against the old behaviour."""

import math

import pytest
import torch

from datamodules.degradation.dasr_params import OFFICIAL_LEVELS, DASRSampler
from datamodules.degradation.dasr_vector import (
    RANGES,
    VECTOR_NAMES,
    dasr_vector,
    dasr_vector_names,
    vector_to_named,
)


def draw(level, n=16, seed=0, sampler=None):
    return (sampler or DASRSampler()).sample(n, torch.Generator().manual_seed(seed), "cpu", level=level)


def old_vector(params):
    """The official vector (DASR_model.py), reduced to what issue #14 is about, as a reference of the OLD behaviour:
    per-level ranges, kernel sizes normalised on [7, 21] (size 0 when there is no sinc), and index 9 overwritten with
    1 when the second blur is applied."""
    level = int(params["level"][0])
    lv = OFFICIAL_LEVELS[level]
    s1 = lv.stage1

    def norm(x, lo, hi):
        return (x.float() - lo) / (hi - lo)

    v = torch.zeros(params["level"].shape[0], 33)
    v[:, 0] = norm(params["kernel1_size"], 7, 21)
    v[:, 1] = norm(params["kernel1_sigma_x"], *s1.sigma)
    v[:, 2] = norm(params["kernel1_sigma_y"], *s1.sigma)
    v[:, 3] = norm(params["kernel1_theta"], -math.pi, math.pi)
    v[:, 10] = norm(params["resize1_scale"], *s1.resize_range)
    v[:, 26] = norm(params["jpeg1_quality"], *s1.jpeg_range)
    if lv.stage2 is not None:
        v[:, 4] = norm(params["kernel2_size"], 7, 21)
        v[:, 5] = norm(params["kernel2_sigma_x"], *lv.stage2.sigma)
        v[:, 8] = norm(params["sinc_size"], 7, 21)  # no sinc: size 0 -> -0.5
        v[:, 9] = norm(params["sinc_cutoff"], math.pi / 3, math.pi)
        v[params["blur2_applied"], 9] = 1.0  # the official "second blur applied" write lands on the cut-off
    return v


def test_layout_names_and_blocks():
    assert len(VECTOR_NAMES) == 33 and dasr_vector_names() == VECTOR_NAMES
    assert len(set(VECTOR_NAMES)) == 33
    # the official blocks [0, 10, 18, 26, 33]: kernels, resizes, noises, JPEG / order / final mode
    assert VECTOR_NAMES[0] == "kernel1_size" and VECTOR_NAMES[9] == "sinc_cutoff"
    assert VECTOR_NAMES[10] == "resize1_scale" and VECTOR_NAMES[18] == "noise1_level"
    assert VECTOR_NAMES[26] == "jpeg1_quality" and VECTOR_NAMES[28] == "order_resize_sinc_then_jpeg"
    assert VECTOR_NAMES[30:] == ("final_area", "final_bilinear", "final_bicubic")
    p = draw(2, n=4)
    p["resize1_mode"][:] = 2
    p["resize2_mode"][:] = 0
    p["final_mode"][:] = 1
    p["noise1_type"] = torch.tensor([0, 1, 0, 1])
    p["final_order"] = torch.tensor([0, 1, 1, 0])
    v = dasr_vector(p)
    assert v.shape == (4, 33) and v.dtype == torch.float32
    torch.testing.assert_close(v[:, 11:14], torch.tensor([[0.0, 0, 1]]).expand(4, 3))
    torch.testing.assert_close(v[:, 15:18], torch.tensor([[1.0, 0, 0]]).expand(4, 3))
    torch.testing.assert_close(v[:, 30:33], torch.tensor([[0.0, 1, 0]]).expand(4, 3))
    torch.testing.assert_close(v[:, 20:22], torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]]))
    torch.testing.assert_close(v[:, 28:30], torch.tensor([[1.0, 0], [0, 1], [0, 1], [1, 0]]))
    lo, hi = RANGES["jpeg_quality"]
    torch.testing.assert_close(v[:, 26], (p["jpeg1_quality"] - lo) / (hi - lo))


@pytest.mark.parametrize("level", [0, 1])
def test_one_stage_levels_leave_stage_two_entries_zero(level):
    v = dasr_vector(draw(level))
    for i in [*range(4, 10), *range(14, 18), *range(22, 26), 27, 28, 29]:
        assert (v[:, i] == 0).all(), VECTOR_NAMES[i]
    assert (v[:, 0] > 0).all() and (v[:, 11:14].sum(1) == 1).all() and (v[:, 30:33].sum(1) == 1).all()


def test_every_entry_is_finite_and_in_unit_interval():
    sampler = DASRSampler()
    for seed in range(60):  # drawn levels and the forced ones
        for level in (None, 0, 1, 2):
            v = dasr_vector(draw(level, n=8, seed=seed, sampler=sampler))
            assert torch.isfinite(v).all()
            assert v.min() >= 0 and v.max() <= 1, (seed, level)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_vector_decodes_back_to_the_named_parameters(level):
    p = draw(level, n=32, seed=level)
    named = vector_to_named(dasr_vector(p))
    for key, value in named.items():
        expected = p[key]
        if expected.is_floating_point():
            torch.testing.assert_close(value, expected.float(), atol=2e-5, rtol=1e-5, msg=key)
        else:
            assert torch.equal(value, expected), key
    with pytest.raises(ValueError, match="33"):
        vector_to_named(torch.zeros(2, 32))


def test_bug1_sinc_cutoff_survives_the_second_blur():
    p = draw(2, n=64, seed=1)
    both = p["blur2_applied"] & p["sinc_applied"]
    assert both.sum() > 10
    lo, hi = RANGES["sinc_cutoff"]
    expected = (p["sinc_cutoff"][both] - lo) / (hi - lo)
    torch.testing.assert_close(dasr_vector(p)[both, 9], expected)
    torch.testing.assert_close(vector_to_named(dasr_vector(p))["sinc_cutoff"][both], p["sinc_cutoff"][both])
    # the old behaviour erases the cut-off: every such sample reads 1, i.e. omega_c = pi
    assert (old_vector(p)[both, 9] == 1).all()
    assert not torch.allclose(old_vector(p)[both, 9], expected)
    # the second blur is still visible, through its own size entry (> 0 exactly when applied)
    assert torch.equal(dasr_vector(p)[:, 4] > 0, p["blur2_applied"])


def test_bug2_no_negative_value_without_final_sinc():
    p = draw(2, n=64, seed=2)
    absent = ~p["sinc_applied"]
    assert absent.sum() > 3
    v = dasr_vector(p)
    assert (v[absent, 8] == 0).all() and (v[absent, 9] == 0).all()  # size code 0 = absent
    assert (v[~absent, 8] >= 0.125).all()  # every real sinc filter (sides 7..21) codes above 0
    assert v.min() >= 0
    assert (old_vector(p)[absent, 8] == -0.5).all()  # the old size normalisation: (0 - 7) / 14


def test_bug3_one_range_for_every_level():
    """A sigma of 0.5 px (or a JPEG quality of 92, a resize of 1.0) must read the same at every level."""
    vectors_new, vectors_old = [], []
    for level in range(3):
        p = draw(level, n=1, seed=3)
        p["kernel1_sigma_x"][:] = 0.5
        p["kernel1_sigma_y"][:] = 0.5
        p["jpeg1_quality"][:] = 92.0
        p["resize1_scale"][:] = 1.0
        vectors_new.append(dasr_vector(p)[0])
        vectors_old.append(old_vector(p)[0])
    for i in (1, 2, 10, 26):
        assert len({round(float(v[i]), 6) for v in vectors_new}) == 1, VECTOR_NAMES[i]
        assert len({round(float(v[i]), 6) for v in vectors_old}) == 3, VECTOR_NAMES[i]
    assert RANGES["sigma"] == (0.2, 3.0) and RANGES["resize_scale"] == (0.15, 1.5)
    assert RANGES["noise_sigma"] == (1.0, 30.0) and RANGES["poisson_scale"] == (0.05, 3.0)
    assert RANGES["jpeg_quality"] == (30.0, 95.0)


def test_nominal_kernel_size_seven_is_not_read_as_absent():
    p = draw(2, n=64, seed=4, sampler=DASRSampler(kernel_sizes=range(7, 22, 2)))
    assert (p["kernel1_size"] == 7).any()
    v = dasr_vector(p)
    assert (v[p["kernel1_size"] == 7, 0] == 0.125).all()
    torch.testing.assert_close(vector_to_named(v)["kernel1_size"], p["kernel1_size"])

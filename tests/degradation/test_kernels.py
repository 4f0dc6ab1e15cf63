import math

import pytest
import torch

from datamodules.degradation import kernels as K


def centre_of_mass(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,k,k) -> row and column centres of mass."""
    idx = torch.arange(k.shape[-1], dtype=k.dtype)
    return (k.sum(-1) * idx).sum(-1), (k.sum(-2) * idx).sum(-1)


def second_moments(k: torch.Tensor) -> torch.Tensor:
    """(B,k,k) -> (B,2,2) covariance in (x=column, y=row) order."""
    cy, cx = centre_of_mass(k)
    idx = torch.arange(k.shape[-1], dtype=k.dtype)
    dy = idx[None, :, None] - cy[:, None, None]
    dx = idx[None, None, :] - cx[:, None, None]
    sxx = (k * dx * dx).sum((-2, -1))
    syy = (k * dy * dy).sum((-2, -1))
    sxy = (k * dx * dy).sum((-2, -1))
    return torch.stack([torch.stack([sxx, sxy], -1), torch.stack([sxy, syy], -1)], -2)


def test_gaussian_sums_to_one_and_shape():
    k = K.gaussian_kernels(13, torch.tensor([4.0, 1.0]), torch.tensor([1.0, 0.6]), torch.tensor([0.3, 2.0]))
    assert k.shape == (2, 13, 13)
    torch.testing.assert_close(k.sum((-2, -1)), torch.ones(2))
    assert (k >= 0).all()


@pytest.mark.parametrize(
    ("size", "scale", "centre", "convention", "expected"),
    [
        (13, 2, "block", "correlate", 6.5),  # MoESR x2: k//2 + 0.5
        (33, 4, "block", "correlate", 17.5),  # MoESR x4
        (11, 2, "block", "correlate", 5.5),  # DIV2KRK x2
        (11, 2, "block", "convolve", 4.5),  # KAIR/USRNet "upper-left" shift
        (21, 4, "pixel", "correlate", 10.0),
        (20, 2, "pixel", "correlate", 9.5),
    ],
)
def test_kernel_mean_conventions(size, scale, centre, convention, expected):
    assert K.kernel_mean(size, scale, centre, convention) == expected
    k = K.gaussian_kernels(
        size,
        torch.tensor([0.8]),
        torch.tensor([0.8]),
        torch.tensor([0.0]),
        centre=centre,
        scale=scale,
        convention=convention,
    )
    cy, cx = centre_of_mass(k.double())
    assert abs(cy.item() - expected) < 1e-3 and abs(cx.item() - expected) < 1e-3


def test_covariance_matches_parameters_and_orientation():
    lam1, lam2, theta = 4.0, 1.0, math.pi / 6
    k = K.gaussian_kernels(41, torch.tensor([lam1], dtype=torch.float64), torch.tensor([lam2]), torch.tensor([theta]))
    cov = second_moments(k)[0]
    r = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    expected = r @ torch.diag(torch.tensor([lam1, lam2], dtype=torch.float64)) @ r.T
    torch.testing.assert_close(cov, expected, atol=1e-3, rtol=1e-3)
    # theta = 0: the first axis is x (columns): wider along columns than rows
    k0 = K.gaussian_kernels(21, torch.tensor([4.0]), torch.tensor([1.0]), torch.tensor([0.0]))[0]
    assert k0.sum(0).std() < k0.sum(1).std() or second_moments(k0[None])[0, 0, 0] > second_moments(k0[None])[0, 1, 1]
    assert second_moments(k0[None].double())[0, 0, 0] > 3.5 * second_moments(k0[None].double())[0, 1, 1]


def test_std_parameterisation_is_squared_variance():
    a = K.gaussian_kernels(15, torch.tensor([1.5]), torch.tensor([0.7]), torch.tensor([0.4]), param="std")
    b = K.gaussian_kernels(15, torch.tensor([2.25]), torch.tensor([0.49]), torch.tensor([0.4]), param="var")
    torch.testing.assert_close(a, b)


def test_multiplicative_noise_and_bad_inputs():
    clean = K.gaussian_kernels(11, torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.0]))
    noise = torch.full((1, 11, 11), 0.2)
    torch.testing.assert_close(
        K.gaussian_kernels(11, torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.0]), noise=noise), clean
    )
    noise[0, 5, 5] = -0.5
    noisy = K.gaussian_kernels(11, torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.0]), noise=noise)
    assert noisy[0, 5, 5] < clean[0, 5, 5]
    with pytest.raises(ValueError, match="positive"):
        K.gaussian_kernels(11, torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="centre"):
        K.kernel_mean(11, 2, "middle")


def test_compose_x2_twice_size_covariance_and_centre():
    k2 = K.gaussian_kernels(
        11, torch.tensor([1.2], dtype=torch.float64), torch.tensor([0.7]), torch.tensor([1.0]), centre="block", scale=2
    )
    k4 = K.compose_x2_twice(k2)
    assert k4.shape == (1, 31, 31)
    torch.testing.assert_close(k4.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(second_moments(k4), 5 * second_moments(k2), atol=2e-3, rtol=2e-3)
    cy, cx = centre_of_mass(k4)
    assert abs(cy.item() - K.kernel_mean(31, 4, "block")) < 1e-3  # 16.5: the x4 block centre


def test_bicubic_and_koala_kernels():
    kb = K.bicubic_kernel(20)
    assert kb.shape == (20, 20)
    assert (kb.abs() > 0).sum() == 16  # only the 4x4 central taps are non-zero
    row = kb.sum(0)
    torch.testing.assert_close(row[8:12], torch.tensor([-0.0625, 0.5625, 0.5625, -0.0625]))
    g = K.gaussian_kernels(15, torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.5]), param="std")
    kk = K.koala_kernels(g)
    assert kk.shape == (1, 20, 20)
    cy, cx = centre_of_mass(kk.double())
    assert abs(cy.item() - 9.5) < 1e-3 and abs(cx.item() - 9.5) < 1e-3
    with pytest.raises(ValueError):
        K.koala_kernels(torch.ones(1, 14, 14) / 196)


def test_sinc_and_support():
    s = K.sinc_kernels(13, torch.tensor([math.pi / 3, math.pi]), pad_to=21)
    assert s.shape == (2, 21, 21)
    torch.testing.assert_close(s.sum((-2, -1)), torch.ones(2))
    assert s[:, 10, 10].argmax() >= 0 and (s[:, 10, 10] == s.amax((-2, -1))).all()
    assert (s[:, :4] == 0).all()  # padding
    assert (s[0] < 0).any()  # ringing lobes
    big = K.gaussian_kernels(
        21, torch.tensor([3.0, 3.0]), torch.tensor([2.0, 2.0]), torch.tensor([0.0, 0.0]), param="std"
    )
    r = K.restrict_support(big, torch.tensor([7, 21]))
    assert (r[0, :7] == 0).all() and (r[0, 7:14, 7:14] > 0).all()
    torch.testing.assert_close(r.sum((-2, -1)), torch.ones(2))
    torch.testing.assert_close(r[1], big[1])


def test_shift_kernel_moves_centre():
    k = K.gaussian_kernels(15, torch.tensor([1.0], dtype=torch.float64), torch.tensor([1.0]), torch.tensor([0.0]))
    s = K.shift_kernel(k, 0.5, 1.0)
    cy, cx = centre_of_mass(s)
    assert abs(cy.item() - 7.5) < 1e-6 and abs(cx.item() - 8.0) < 1e-6


def test_parameter_grid_and_bank():
    g = K.parameter_grid(lambda1=[1.0, 2.0], lambda2=[1.0], theta=[0.0, 0.5])
    assert g["lambda1"].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert g["theta"].tolist() == [0.0, 0.5, 0.0, 0.5]
    bank = K.gaussian_kernel_bank(13, g, centre="block", scale=2)
    assert bank.shape == (4, 13, 13)
    single = K.gaussian_kernels(
        13, torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.5]), centre="block", scale=2
    )
    torch.testing.assert_close(bank[3:4], single)
    with pytest.raises(KeyError, match="lambda1"):
        K.gaussian_kernel_bank(13, {"theta": torch.zeros(1)})


def test_decimation_phase_rejects_unalignable():
    assert K.decimation_phase(11, 2, "block") == 0
    assert K.decimation_phase(21, 3, "pixel") == 1
    assert K.decimation_phase(20, 4, "pixel") == 1
    with pytest.raises(ValueError, match="cannot be aligned"):
        K.decimation_phase(11, 2, "pixel")

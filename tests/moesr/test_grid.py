"""MoESR's grid, folding, kernel generator and the degradations of its training stages."""

import math

import pytest
import torch

from datamodules.degradation import ops
from datamodules.degradation.kernels import decimation_phase, gaussian_kernels
from datamodules.degradation.kernels.moesr import (
    THETA_UNIT,
    X2_LAMBDAS,
    MoESRGrid,
    apply_transform,
    canonical_params,
    fold_theta,
    invert_transform,
    moesr_kernels,
)
from datamodules.degradation.pipelines.moesr import GridDegradation, MoESRKernelDegradation

U = THETA_UNIT


def test_official_grid_counts_order_and_experts():
    grid = MoESRGrid(2)
    assert (grid.num_kernels, grid.num_experts, grid.kernel_size) == (85, 25, 13)
    first = [
        (0.85, 0.85, 0.0),
        *[(1.47, 0.85, (2 * j + 1) * U) for j in range(8)],
        (1.47, 1.47, 0.0),
        (2.27, 0.85, U),
    ]
    torch.testing.assert_close(grid.params[: len(first)], torch.tensor(first, dtype=torch.float64))
    assert grid.params[-1].tolist() == [4.37, 4.37, 0.0]
    # every (l1 >= l2) pair once; isotropic kernels only at theta 0; anisotropic at the 8 odd multiples of pi/16
    iso = grid.params[:, 0] == grid.params[:, 1]
    assert int(iso.sum()) == 5 and bool((grid.params[iso, 2] == 0).all())
    assert bool((grid.params[:, 0] >= grid.params[:, 1]).all())
    units = (grid.params[~iso, 2] / U).round()
    assert sorted(set(units.tolist())) == [1, 3, 5, 7, 9, 11, 13, 15]
    # stored experts: model angles 0 (isotropic), pi/16, 3pi/16 only; 5 + 10 x 2
    model_units = sorted(set((grid.experts[:, 2] / U).round().tolist()))
    assert model_units == [0, 1, 3]
    assert grid.experts[:4].tolist() == [[0.85, 0.85, 0.0], [1.47, 0.85, U], [1.47, 0.85, 3 * U], [1.47, 1.47, 0.0]]
    # each expert is used by 1 (isotropic) or 4 (one per transform) grid kernels
    counts = torch.bincount(grid.expert_index, minlength=25)
    assert sorted(set(counts.tolist())) == [1, 4]
    assert grid.transform[:9].tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_reduced_grid_and_x4_grid():
    small = MoESRGrid(2, [0.85, 2.27, 4.37])
    assert (small.num_kernels, small.num_experts) == (27, 9)
    x4 = MoESRGrid(4)
    assert x4.kernel_size == 33 and x4.num_kernels == 85
    assert x4.lambdas == pytest.approx([5 * v for v in X2_LAMBDAS])
    assert x4.lambdas == pytest.approx([4.25, 7.35, 11.35, 16.15, 21.85])  # the official x4 set
    torch.testing.assert_close(x4.params[:, 2], MoESRGrid(2).params[:, 2])
    with pytest.raises(ValueError, match="x3"):
        MoESRGrid(3)
    with pytest.raises(ValueError, match="increasing"):
        MoESRGrid(2, [2.0, 1.0])
    assert MoESRGrid(2) == MoESRGrid(2, list(X2_LAMBDAS)) != small


def test_grid_kernels_are_block_centred_moesr_kernels():
    grid = MoESRGrid(2)
    k = grid.kernels(torch.float64)
    assert k.shape == (85, 13, 13)
    torch.testing.assert_close(k.sum(dim=(1, 2)), torch.ones(85, dtype=torch.float64))
    ref = gaussian_kernels(13, grid.params[:, 0], grid.params[:, 1], grid.params[:, 2], centre="block", scale=2)
    torch.testing.assert_close(k, ref)
    # an isotropic kernel's centre of mass sits at the block centre 6.5 up to its truncated tail
    coords = torch.arange(13, dtype=torch.float64)
    com = (k[0].sum(0) * coords).sum()
    assert abs(com - 6.5) < 1e-3
    assert grid.expert_kernels().shape == (25, 13, 13)


def test_transforms_are_inverse_and_fold_theta():
    x = torch.rand(2, 3, 6, 8)
    for t in range(4):
        y = apply_transform(x, t)
        assert y.shape[-2:] == ((8, 6) if t in (1, 2) else (6, 8))
        torch.testing.assert_close(invert_transform(y, t), x)
    with pytest.raises(ValueError):
        apply_transform(x, 4)
    grid = MoESRGrid(2)
    model, t = fold_theta(grid.params[:, 2])
    aniso = grid.params[:, 0] != grid.params[:, 1]
    torch.testing.assert_close(model[aniso], grid.experts[grid.expert_index, 2][aniso])
    assert t[aniso].tolist() == grid.transform[aniso].tolist()
    # angles are taken mod pi
    torch.testing.assert_close(fold_theta(torch.tensor([5 * U + math.pi]))[0], torch.tensor([3 * U]))


def _symmetric(size: int, params: torch.Tensor) -> torch.Tensor:
    """The grid's Gaussians on a support symmetric about the block centre (side k + s - 1, pixel-centred)."""
    return gaussian_kernels(size, params[:, 0], params[:, 1], params[:, 2], centre="pixel")


def _max_folding_error(hr, grid, kernels, expert_kernels, scale, phase, transforms):
    """Max over grid kernels i of |blur_decimate(hr, k_i) - invert(blur_decimate(apply(hr, t_i), e_i), t_i)|."""
    n = grid.num_kernels
    batch = hr.expand(n, *hr.shape[1:])
    direct = ops.blur_decimate(batch, kernels, scale, phase)
    worst = torch.zeros(n, dtype=hr.dtype)
    for t in range(4):
        sel = (transforms == t).nonzero().flatten()
        folded = invert_transform(
            ops.blur_decimate(apply_transform(batch[sel], t), expert_kernels[sel], scale, phase), t
        )
        worst[sel] = (direct[sel] - folded).abs().amax(dim=(1, 2, 3))
    return worst


@pytest.mark.parametrize("scale", [2, 4])
def test_folding_is_exact_for_every_grid_kernel(scale):
    """blur_decimate(hr, k_i) == invert(blur_decimate(apply(hr, t_i), expert kernel of i), t_i), every i.

    Exact (float32 round-off) with a support symmetric about the block centre; with the official 13x13 (33x33)
    block-centred support the difference is the truncated tail only (< 2e-3 on noise images). Swapping the two
    rotation transforms breaks it, so the test can fail.
    """
    grid = MoESRGrid(scale)
    torch.manual_seed(0)
    hr = torch.rand(1, 3, 12 * scale, 10 * scale)  # sides multiples of the scale, non-square
    size = grid.kernel_size + scale - 1
    phase = decimation_phase(size, scale, "pixel")
    sym = _symmetric(size, grid.params).float()
    sym_expert = _symmetric(size, grid.experts[grid.expert_index]).float()
    exact = _max_folding_error(hr, grid, sym, sym_expert, scale, phase, grid.transform)
    assert float(exact.max()) < 1e-5
    official = _max_folding_error(
        hr,
        grid,
        grid.kernels(torch.float64),
        grid.expert_kernels(torch.float64)[grid.expert_index],
        scale,
        0,
        grid.transform,
    )
    assert float(official.max()) < 2e-3
    rotated = (grid.transform == 1) | (grid.transform == 2)
    swapped = torch.where(rotated, 3 - grid.transform, grid.transform)
    wrong = _max_folding_error(hr, grid, sym, sym_expert, scale, phase, swapped)
    assert float(wrong[rotated].min()) > 1e-3


def test_moesr_kernels_differentiable_and_sum_to_one():
    lam1 = torch.tensor([4.0, 0.5, 2.0, 0.01], requires_grad=True)
    lam2 = torch.tensor([1.0, 0.5, 0.3, 0.01], requires_grad=True)
    theta = torch.tensor([0.3, 0.0, 2.5, 1.0], requires_grad=True)
    k = moesr_kernels(lam1, lam2, theta, 13, 2)
    assert k.shape == (4, 13, 13)
    torch.testing.assert_close(k.sum(dim=(1, 2)), torch.ones(4))
    target = torch.rand(4, 13, 13)
    (k - target / target.sum(dim=(1, 2), keepdim=True)).abs().sum().backward()
    for p in (lam1, lam2, theta):
        assert torch.isfinite(p.grad).all()
    assert lam1.grad[0] != 0 and lam2.grad[0] != 0 and theta.grad[0] != 0
    # theta is measured from the x (column) axis: a long horizontal kernel spreads along the columns
    flat = moesr_kernels(torch.tensor([4.0]), torch.tensor([0.3]), torch.tensor([0.0]), 13, 2)[0]
    assert flat.sum(0).std() < flat.sum(1).std()  # column profile (sum over rows) wider than the row profile


def test_nearest_rules():
    grid = MoESRGrid(2)
    # every grid kernel maps onto itself
    assert grid.nearest(grid.params.float()).tolist() == list(range(85))
    # small perturbations snap back
    noisy = grid.params.clone()
    noisy[:, :2] += 0.1
    noisy[:, 2] += 0.05
    aniso = grid.params[:, 0] != grid.params[:, 1]
    assert (grid.nearest(noisy)[aniso] == torch.arange(85)[aniso]).all()
    # equal snapped variances -> the isotropic kernel; lambda2 > lambda1 is swapped first (theta + pi/2), not made
    # isotropic as the official rule did
    iso_227 = int(((grid.params[:, 0] == 2.27) & (grid.params[:, 1] == 2.27)).nonzero())
    assert grid.nearest(torch.tensor([[2.3, 2.2, 9 * U]])).tolist() == [iso_227]
    assert grid.nearest(torch.tensor([[2.2, 2.3, 9 * U]])).tolist() == [iso_227]
    swapped = grid.nearest(torch.tensor([[1.0, 2.2, 9 * U], [2.2, 1.0, U]]))
    assert swapped[0] == swapped[1] and grid.params[swapped[0]].tolist() == pytest.approx([2.27, 0.85, U])
    # theta is taken mod pi and snapped on the circle: -0.05 rad is next to 15pi/16, not pi/16
    idx = grid.nearest(torch.tensor([[4.37, 0.85, -0.05], [4.37, 0.85, math.pi + 0.25]]))
    assert grid.params[idx, 2].tolist() == pytest.approx([15 * U, U])
    # the official isotropic quirk: the transform follows the snapped theta even for the isotropic expert
    expert, transform = grid.nearest_expert(torch.tensor([[2.3, 2.2, 9 * U], [4.37, 0.85, 13 * U]]))
    assert expert[0] == grid.expert_index[iso_227] and transform[0] == 2
    assert grid.transform[iso_227] == 0
    aniso_13 = int(grid.nearest(torch.tensor([[4.37, 0.85, 13 * U]])))
    assert expert[1] == grid.expert_index[aniso_13] and transform[1] == grid.transform[aniso_13] == 3


def _swap(params: torch.Tensor) -> torch.Tensor:
    """The other parametrisation of the same kernels: ``(l2, l1, theta + pi/2)``."""
    return torch.stack([params[:, 1], params[:, 0], params[:, 2] + math.pi / 2], dim=1)


@pytest.mark.parametrize("scale", [2, 4])
def test_both_parametrisations_of_every_grid_kernel_pick_the_same_expert(scale):
    """Issue 11 item 1: K(l1, l2, theta) == K(l2, l1, theta + pi/2); KEN may output either, the choice is the same."""
    grid = MoESRGrid(scale)
    p = grid.params
    q = _swap(p)
    size = grid.kernel_size
    same = moesr_kernels(q[:, 0], q[:, 1], q[:, 2], size, scale)
    torch.testing.assert_close(same, grid.kernels(torch.float64), atol=1e-12, rtol=0)  # one kernel, two names
    everything = torch.arange(85)
    for params in (p, q, _swap(q), q + torch.tensor([0.0, 0.0, math.pi])):
        assert grid.nearest(params).tolist() == everything.tolist()
        assert grid.nearest_l1(params).tolist() == everything.tolist()
        assert grid.choose(params, "kernel").tolist() == everything.tolist()
    e_p, t_p = grid.nearest_expert(p)
    e_q, t_q = grid.nearest_expert(q)
    aniso = grid.theta_index >= 0  # isotropic kernels: the official transform follows any angle (the quirk)
    assert torch.equal(e_p, e_q) and torch.equal(t_p[aniso], t_q[aniso]) and torch.equal(e_p, grid.expert_index)
    # the measured case: K(4.37, 0.85, 3pi/16) and K(0.85, 4.37, 11pi/16) chose experts 17 and 24 (isotropic)
    f = 5 if scale == 4 else 1
    pair = torch.tensor([[4.37 * f, 0.85 * f, 3 * U], [0.85 * f, 4.37 * f, 11 * U]])
    assert grid.expert_index[grid.nearest(pair)].tolist() == [17, 17]
    # off the grid too: random parameters and their swaps pick the same grid kernel (and the same as canonical ones)
    gen = torch.Generator().manual_seed(0)
    lam = (0.85 + 3.52 * torch.rand(500, 2, generator=gen, dtype=torch.float64)) * f
    rho = torch.cat([lam, 2 * math.pi * torch.rand(500, 1, generator=gen, dtype=torch.float64) - 0.5], dim=1)
    canonical = canonical_params(rho)
    assert bool((canonical[:, 0] >= canonical[:, 1]).all()) and 0 <= float(canonical[:, 2].min())
    assert float(canonical[:, 2].max()) < math.pi
    k_rho, k_can = (moesr_kernels(*x.unbind(1), size, scale) for x in (rho, canonical))
    torch.testing.assert_close(k_can, k_rho, atol=1e-12, rtol=0)
    for rule in ("snap", "eq12", "kernel"):
        assert torch.equal(grid.choose(rho, rule), grid.choose(_swap(rho), rule)), rule


def test_eq12_choice_is_the_literal_argmin_and_differs_from_snapping():
    """Issue 11 item 4: ``nearest_l1`` is Eq. 12 (against a loop); snapping (the official rule) is not."""
    grid = MoESRGrid(2)
    gen = torch.Generator().manual_seed(1)
    n = 2000
    lam = 0.85 + 3.52 * torch.rand(n, 2, generator=gen, dtype=torch.float64)
    rho = canonical_params(torch.cat([lam, math.pi * torch.rand(n, 1, generator=gen, dtype=torch.float64)], dim=1))
    rows = grid.params.tolist()

    def literal(r):
        dist = []
        for g1, g2, gt in rows:
            dt = abs(r[2] - gt) % math.pi
            dist.append(abs(r[0] - g1) + abs(r[1] - g2) + (min(dt, math.pi - dt) if g1 != g2 else 0.0))
        return min(range(len(dist)), key=dist.__getitem__)

    eq12 = grid.nearest_l1(rho)
    assert eq12.tolist() == [literal(r) for r in rho[:300].tolist()] + eq12[300:].tolist()
    assert grid.choose(rho, "eq12").tolist() == eq12.tolist()
    differ = float((grid.choose(rho, "snap") != eq12).double().mean())
    assert 0.03 < differ < 0.08, differ  # the docstring's "5 %"
    # "kernel": the grid kernel nearest in pixel L1 to K(rho), against a loop over the grid
    k = moesr_kernels(rho[:50, 0], rho[:50, 1], rho[:50, 2], 13, 2)
    grid_k = grid.kernels(torch.float64)
    loop = [min(range(85), key=lambda i, kk=kk: float((grid_k[i] - kk).abs().sum())) for kk in k]
    assert grid.choose(rho[:50], "kernel").tolist() == loop
    with pytest.raises(ValueError, match="snap"):
        grid.choose(rho, "nearest")


def test_kernel_nearest_and_intermediate_kernels():
    grid = MoESRGrid(2)
    assert grid.kernel_nearest(grid.kernels()).tolist() == list(range(85))
    x4 = MoESRGrid(4)
    inter = x4.intermediate_kernels(x4.params[:3].float())
    torch.testing.assert_close(inter, MoESRGrid(2).kernels()[:3], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="x4"):
        grid.intermediate_kernels(grid.params[:1])


def test_grid_degradation_every_expert_kernel():
    deg = GridDegradation(2, [0.85, 2.27, 4.37])
    torch.manual_seed(0)
    hr = torch.rand(3, 3, 32, 24)
    gen = torch.Generator().manual_seed(0)
    out = deg(hr, gen)
    assert out["lr_experts"].shape == (3, 9, 3, 16, 12)
    assert out["lr"].shape == (3, 3, 16, 12) and out["kernel"].shape == (3, 13, 13)
    idx = out["params"]["expert_index"]
    for b in range(3):
        torch.testing.assert_close(out["lr"][b], out["lr_experts"][b, idx[b]])
        torch.testing.assert_close(out["kernel"][b], deg.grid.expert_kernels()[idx[b]])
    # one convolution with the experts as output channels == ops.blur_decimate with each kernel, then quantised
    for e in (0, 4, 8):
        ref = ops.quantize(ops.blur_decimate(hr, deg.grid.expert_kernels()[e], 2))
        torch.testing.assert_close(out["lr_experts"][:, e], ref, atol=1 / 255 + 1e-6, rtol=0)
        exact = ops.blur_decimate(hr, deg.grid.expert_kernels()[e], 2)
        torch.testing.assert_close(deg.degrade_all(hr)[:, e], exact, atol=1e-6, rtol=0)
    assert torch.equal(out["lr_experts"], ops.quantize(out["lr_experts"]))


@pytest.mark.parametrize("scale", [2, 4])
def test_moesr_kernel_degradation(scale):
    deg = MoESRKernelDegradation(scale)
    gen = torch.Generator().manual_seed(0)
    params = deg.sample(torch.Size((400, 3, 8, 8)), gen, "cpu")
    # the supported space (issue 11, item 2): lambda in (0.6, 5) at x2, (3, 25) at x4, beyond the grid's outermost
    # variances (0.85, 4.37): about a third of DIV2KRK's kernels lie outside those
    lo, hi = 0.6 * (5 if scale == 4 else 1), 5.0 * (5 if scale == 4 else 1)
    grid_lo, grid_hi = 0.85 * (5 if scale == 4 else 1), 4.37 * (5 if scale == 4 else 1)
    assert bool((params["lambda1"] >= params["lambda2"]).all())
    assert lo <= float(params["lambda2"].min()) and float(params["lambda1"].max()) <= hi
    assert float(params["lambda2"].min()) < grid_lo and float(params["lambda1"].max()) > grid_hi
    assert float(params["theta"].max()) > 2.8
    hr = torch.rand(2, 3, 16 * scale, 16 * scale)
    out = deg.apply(hr, {k: v[:2] for k, v in params.items()})
    k = out["kernel"]
    assert k.shape == (2, deg.kernel_size, deg.kernel_size) and deg.kernel_size == (13 if scale == 2 else 33)
    torch.testing.assert_close(k, moesr_kernels(params["lambda1"][:2], params["lambda2"][:2],
                                                params["theta"][:2], deg.kernel_size, scale))  # fmt: skip
    torch.testing.assert_close(out["lr"], ops.quantize(ops.blur_decimate(hr, k, scale)))


@pytest.mark.parametrize("scale", [2, 4])
def test_moesr_kernel_degradation_with_div2krk_style_noise_stays_block_centred(scale):
    deg = MoESRKernelDegradation(scale, kernel_noise=0.25)
    params = deg.sample(torch.Size((64, 3, 8, 8)), torch.Generator().manual_seed(0), "cpu")
    kernels = deg.kernels(params)
    clean = moesr_kernels(params["lambda1"], params["lambda2"], params["theta"], deg.kernel_size, scale)
    assert float((kernels - clean).abs().sum(dim=(-2, -1)).mean()) > 0.01  # the noise is there
    torch.testing.assert_close(kernels.sum(dim=(-2, -1)), torch.ones(64), atol=1e-5, rtol=0)
    grid = torch.arange(deg.kernel_size, dtype=kernels.dtype)
    centre = deg.kernel_size // 2 + 0.5 * (scale - 1)
    assert float(((kernels.sum(-1) * grid).sum(-1) - centre).abs().max()) < 0.01  # rows
    assert float(((kernels.sum(-2) * grid).sum(-1) - centre).abs().max()) < 0.01  # columns
    with pytest.raises(ValueError, match="lambda_range"):
        MoESRKernelDegradation(scale, lambda_range=(2.0, 1.0))


def test_x4_grid_batches_carry_the_intermediate_targets():
    deg = GridDegradation(4, (0.85, 2.27, 4.37))
    hr = torch.rand(2, 3, 48, 48)
    out = deg(hr, torch.Generator().manual_seed(0))
    mid = out["hr_mid_experts"]
    assert mid.shape == (2, deg.grid.num_experts, 3, 24, 24) and "hr_mid_experts" not in GridDegradation(2)(
        hr[..., :24, :24]
    )
    for e in (0, deg.grid.num_experts - 1):
        lam1, lam2, theta = deg.grid.experts[e].tolist()
        k2 = moesr_kernels(torch.tensor([lam1 / 5]), torch.tensor([lam2 / 5]), torch.tensor([theta]), 13, 2)
        torch.testing.assert_close(mid[:, e], ops.blur_decimate(hr, k2.float(), 2), atol=1e-6, rtol=0)

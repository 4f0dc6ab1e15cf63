"""MoESR's kernel family and grid, and the symmetry folding of the grid onto 25 experts (no Lightning, no nn.Module).

Kernel grid (official ``options.py``; read from the code, see ``reference/official_code_facts.md`` section 1)
-----------------------------------------------------------------------------------------------------------
Anisotropic Gaussians given by covariance eigenvalues (variances) ``lambda1 >= lambda2`` and the angle ``theta`` of
the first principal axis from the x (column) axis, block-centred and applied by correlation with decimation from
pixel 0 (``kernels.gaussian_kernels(..., param="var", centre="block")``), of side 13 at x2 and 33 at x4.

* x2 variances ``X2_LAMBDAS = (0.85, 1.47, 2.27, 3.23, 4.37)``; x4 uses 5 times these (the variance of an x2 kernel
  applied twice, DIV2KRK's x4 construction).
* Angles: the 8 odd multiples of ``pi/16`` (``pi/16, 3pi/16, ..., 15pi/16``).
* Enumeration order (the order of KEN's input vector): ``for l1 in lambdas, for l2 in lambdas, for theta in
  thetas``, skipping ``l2 > l1``; an isotropic pair (``l1 == l2``) keeps only its first angle, with ``theta = 0``.
  5 lambdas: 5 isotropic + 10 pairs x 8 angles = 85 kernels; 3 lambdas: 3 + 3 x 8 = 27.

Folding (``transform``): a kernel with ``theta`` outside ``(0, pi/4)`` is handled by the expert of a model angle in
``{0, pi/16, 3pi/16}`` applied to a flipped/rotated LR image, the output transformed back:

====================  =============  ================================  =========================
grid angle            model angle    input transform ``t``             ``apply_transform``
====================  =============  ================================  =========================
``theta < pi/4``      ``theta``      0: identity                       ``x``
``pi/4..pi/2``        ``pi/2-theta`` 1: flip W, then rot90             ``rot90(flip_W(x))``
``pi/2..3pi/4``       ``theta-pi/2`` 2: rot90                          ``rot90(x)``
``theta > 3pi/4``     ``pi-theta``   3: flip W                         ``flip_W(x)``
====================  =============  ================================  =========================

``rot90`` is ``torch.rot90(x, 1, dims=(-2, -1))`` (counter-clockwise on screen). With rows pointing down, it maps a
direction ``(dx, dy)`` to ``(dy, -dx)``, i.e. a blur along ``theta`` to a blur along ``theta - pi/2``; ``flip_W``
maps ``theta`` to ``pi - theta``. So ``blur_decimate(hr, k_theta) == invert_transform(blur_decimate(
apply_transform(hr, t), k_model), t)`` for an HR image whose sides are multiples of the scale: the block centres
``s*i + (s-1)/2`` are mapped onto block centres by every transform. With the official 13x13 (33x33) support this
holds up to the kernel's truncated tail (the block-centred support spans offsets ``-6.5 .. 5.5`` from the mean,
which a flip turns into ``-5.5 .. 6.5``: about 1e-3 of the kernel mass at the largest variance); with a support
symmetric about the block centre (side ``k + s - 1``, pixel-centred) it is exact (``tests/moesr/test_grid.py``).

Stored experts: unique ``(lambda1, lambda2, model angle)`` in order of first appearance in the grid: 5 isotropic +
10 pairs x 2 angles = 25 for 5 lambdas (9 for 3). ``MoESRGrid.expert_index`` names the expert of every grid kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from datamodules.degradation.kernels.gaussian import gaussian_kernels

THETA_UNIT = math.pi / 16
X2_LAMBDAS = (0.85, 1.47, 2.27, 3.23, 4.37)  # centres of 5 equal sigma-bins of [sqrt(0.6), sqrt(5)], squared
SUPPORTED_X2_LAMBDAS = (0.6, 5.0)  # the variances those bins cover: what MoESR supports (and DIV2KRK's range)
X4_VARIANCE_FACTOR = 5  # x4 variances = 5 x the x2 ones (an x2 kernel applied twice: Sigma + 4 Sigma)
KERNEL_SIZES = {2: 13, 4: 33}
NUM_THETAS = 8  # odd multiples of pi/16 in (0, pi)
TRANSFORM_NAMES = ("identity", "flip_rot90", "rot90", "flip")
ExpertChoice = Literal["snap", "eq12", "kernel"]


# ----------------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------------


def _check_transform(t: int) -> int:
    t = int(t)
    if t not in (0, 1, 2, 3):
        raise ValueError(f"transform must be 0 (identity), 1 (flip W + rot90), 2 (rot90) or 3 (flip W), got {t}")
    return t


def apply_transform(x: Tensor, t: int) -> Tensor:
    """MoESR's input transform ``t`` on the last two axes (see the module docstring).

    Args:
        x: ``(..., H, W)``.
        t: 0 identity, 1 flip W then rot90, 2 rot90, 3 flip W.

    Returns:
        ``(..., H, W)`` for ``t`` in {0, 3}, ``(..., W, H)`` for ``t`` in {1, 2}.
    """
    t = _check_transform(t)
    if t == 0:
        return x
    if t == 1:
        return torch.rot90(x.flip(-1), 1, dims=(-2, -1))
    if t == 2:
        return torch.rot90(x, 1, dims=(-2, -1))
    return x.flip(-1)


def invert_transform(x: Tensor, t: int) -> Tensor:
    """The inverse of :func:`apply_transform`: ``invert_transform(apply_transform(x, t), t) == x``."""
    t = _check_transform(t)
    if t == 0:
        return x
    if t == 1:
        return torch.rot90(x, -1, dims=(-2, -1)).flip(-1)
    if t == 2:
        return torch.rot90(x, -1, dims=(-2, -1))
    return x.flip(-1)


def fold_theta(theta: Tensor) -> tuple[Tensor, Tensor]:
    """Model angle in ``[0, pi/4]`` and input transform of kernels at angles ``theta`` (radians, taken mod ``pi``).

    Boundaries (never hit by the grid's odd multiples of ``pi/16``): ``[0, pi/4]`` -> 0, ``(pi/4, pi/2]`` -> 1,
    ``(pi/2, 3pi/4]`` -> 2, ``(3pi/4, pi)`` -> 3.

    Returns:
        ``(model_theta, transform)``, float and long tensors of ``theta``'s shape.
    """
    theta = torch.remainder(theta, math.pi)
    q = math.pi / 4
    transform = torch.where(theta <= q, 0, torch.where(theta <= 2 * q, 1, torch.where(theta <= 3 * q, 2, 3))).long()
    model = torch.where(
        transform == 0,
        theta,
        torch.where(transform == 1, 2 * q - theta, torch.where(transform == 2, theta - 2 * q, math.pi - theta)),
    )
    return model, transform


def _fold_unit(m: int) -> tuple[int, int]:
    """Fold an odd multiple ``m`` of ``pi/16`` (1..15): ``(model multiple, transform)``."""
    if m < 4:
        return m, 0
    if m < 8:
        return 8 - m, 1
    if m < 12:
        return m - 8, 2
    return 16 - m, 3


# ----------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------


def moesr_kernels(lam1: Tensor, lam2: Tensor, theta: Tensor, size: int, scale: int) -> Tensor:
    """MoESR's kernel generator ``K(rho)`` (official ``gen_kernel`` without noise), differentiable in all parameters.

    ``Sigma = R(theta) diag(lam1, lam2) R(theta)^T`` on the ``(x = column, y = row)`` grid, mean at the block centre
    ``size // 2 + 0.5 * (scale - size % 2)``, normalised to sum 1: KEN's Eq. 9 generator and the grid's kernels.

    Args:
        lam1: ``(B,)`` first variance (positive; KEN clamps to ``>= 0.01``).
        lam2: ``(B,)`` second variance (positive).
        theta: ``(B,)`` angle of the first axis from the x (column) axis, radians.
        size: Kernel side (13 at x2, 33 at x4).
        scale: Scale the block centre is made for.

    Returns:
        ``(B, size, size)``, applied by correlation (``ops.blur_decimate`` with phase 0).
    """
    return gaussian_kernels(size, lam1, lam2, theta, param="var", centre="block", scale=scale)


def canonical_params(params: Tensor) -> Tensor:
    """MoESR parameters ``(B, 3)`` with ``lambda1 >= lambda2`` and ``theta`` in ``[0, pi)`` (the same kernels).

    ``K(l1, l2, theta) == K(l2, l1, theta + pi/2) == K(l1, l2, theta + pi)``: rows with ``lambda2 > lambda1`` are
    swapped and turned by ``pi/2``. The one place where the grid lookups order KEN's output.
    """
    l1, l2, theta = params.unbind(dim=-1)
    swap = l2 > l1
    theta = torch.remainder(torch.where(swap, theta + math.pi / 2, theta), math.pi)
    return torch.stack([torch.maximum(l1, l2), torch.minimum(l1, l2), theta], dim=-1)


class MoESRGrid:
    """MoESR's grid of kernels at one scale, its enumeration order and its folding onto the stored experts.

    Immutable after construction (tensors are CPU float64 / long; callers move copies to their device).

    Args:
        scale: 2 (13x13 kernels) or 4 (33x33; variances 5 x ``lambdas``).
        lambdas: The x2 variances (strictly increasing), the official ``X2_LAMBDAS`` by default.

    Attributes:
        scale: The scale.
        kernel_size: 13 (x2) or 33 (x4).
        base_lambdas: The x2 variances as given.
        lambdas: The variances at this scale.
        thetas: The 8 grid angles ``(2j + 1) pi / 16``.
        params: ``(N, 3)`` float64 ``(lambda1, lambda2, theta)`` in the official order.
        experts: ``(E, 3)`` float64 ``(lambda1, lambda2, model theta)``, model theta in ``{0, pi/16, 3pi/16}``.
        expert_index: ``(N,)`` long, the stored expert of each grid kernel.
        transform: ``(N,)`` long in ``{0, 1, 2, 3}`` (see ``apply_transform``).
        lambda_index: ``(N, 2)`` long indices of ``lambda1``, ``lambda2`` in ``lambdas``.
        theta_index: ``(N,)`` long index of the angle in ``thetas`` (-1 for isotropic kernels).
    """

    def __init__(self, scale: int = 2, lambdas: Sequence[float] = X2_LAMBDAS) -> None:
        if scale not in KERNEL_SIZES:
            raise ValueError(f"MoESR's grid is defined for x2 and x4, got x{scale}")
        base = tuple(float(v) for v in lambdas)
        if len(base) < 1 or any(v <= 0 for v in base) or any(b <= a for a, b in zip(base, base[1:], strict=False)):
            raise ValueError(f"lambdas must be positive and strictly increasing, got {list(lambdas)}")
        self.scale = scale
        self.kernel_size = KERNEL_SIZES[scale]
        self.base_lambdas = base
        factor = X4_VARIANCE_FACTOR if scale == 4 else 1
        self.lambdas = tuple(v * factor for v in base)
        self.thetas = tuple((2 * j + 1) * THETA_UNIT for j in range(NUM_THETAS))

        rows, experts, expert_of, lam_idx, theta_idx, transforms = [], [], [], [], [], []
        keys: dict[tuple[int, int, int], int] = {}
        for i1, l1 in enumerate(self.lambdas):
            for i2, l2 in enumerate(self.lambdas):
                if i2 > i1:
                    continue
                for j in range(NUM_THETAS):
                    if i1 == i2:
                        if j > 0:
                            continue
                        unit, model_unit, t, jj = 0, 0, 0, -1
                    else:
                        unit = 2 * j + 1
                        model_unit, t = _fold_unit(unit)
                        jj = j
                    key = (i1, i2, model_unit)
                    if key not in keys:
                        keys[key] = len(experts)
                        experts.append((l1, l2, model_unit * THETA_UNIT))
                    rows.append((l1, l2, unit * THETA_UNIT))
                    expert_of.append(keys[key])
                    lam_idx.append((i1, i2))
                    theta_idx.append(jj)
                    transforms.append(t)
        self.params = torch.tensor(rows, dtype=torch.float64)
        self.experts = torch.tensor(experts, dtype=torch.float64)
        self.expert_index = torch.tensor(expert_of, dtype=torch.long)
        self.transform = torch.tensor(transforms, dtype=torch.long)
        self.lambda_index = torch.tensor(lam_idx, dtype=torch.long)
        self.theta_index = torch.tensor(theta_idx, dtype=torch.long)
        # nearest(): table[i1, i2, j] -> grid index; i1 <= i2 (snapped lambda2 >= lambda1) -> isotropic at lambda_i2
        n_l = len(self.lambdas)
        table = torch.full((n_l, n_l, NUM_THETAS), -1, dtype=torch.long)
        for g, ((i1, i2), j) in enumerate(zip(lam_idx, theta_idx, strict=True)):
            if i1 == i2:
                table[: i1 + 1, i1, :] = g  # isotropic kernel i1; also every (smaller lambda1, lambda2 = l_i1) pair
            else:
                table[i1, i2, j] = g
        self._nearest_table = table
        self._kernels = moesr_kernels(
            self.params[:, 0], self.params[:, 1], self.params[:, 2], self.kernel_size, self.scale
        )
        self._expert_kernels = moesr_kernels(
            self.experts[:, 0], self.experts[:, 1], self.experts[:, 2], self.kernel_size, self.scale
        )

    # ------------------------------------------------------------------------------------------- basic facts
    @property
    def num_kernels(self) -> int:
        """``N``, the number of grid kernels (85 for 5 lambdas)."""
        return self.params.shape[0]

    @property
    def num_experts(self) -> int:
        """``E``, the number of stored experts (25 for 5 lambdas)."""
        return self.experts.shape[0]

    def __len__(self) -> int:
        return self.num_kernels

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MoESRGrid) and (self.scale, self.base_lambdas) == (other.scale, other.base_lambdas)

    def __hash__(self) -> int:
        return hash((self.scale, self.base_lambdas))

    def __repr__(self) -> str:
        return (
            f"MoESRGrid(scale={self.scale}, lambdas={list(self.base_lambdas)}: {self.num_kernels} kernels, "
            f"{self.num_experts} experts, {self.kernel_size}x{self.kernel_size})"
        )

    def describe(self, index: int) -> str:
        """One grid kernel in words, e.g. ``'(4.37, 0.85, 5pi/16) -> expert 19 (3pi/16), flip_rot90'``."""
        l1, l2, th = self.params[index].tolist()
        e = int(self.expert_index[index])
        model = self.experts[e, 2].item()
        return (
            f"({l1:.2f}, {l2:.2f}, {round(th / THETA_UNIT)}pi/16) -> expert {e} ({round(model / THETA_UNIT)}pi/16), "
            f"{TRANSFORM_NAMES[int(self.transform[index])]}"
        )

    # ----------------------------------------------------------------------------------------------- kernels
    def kernels(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(N, k, k)`` block-centred grid kernels (correlate, decimate from pixel 0), official order."""
        return self._kernels.to(dtype)

    def expert_kernels(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(E, k, k)`` kernels of the stored experts (model angles)."""
        return self._expert_kernels.to(dtype)

    def intermediate_kernels(self, params: Tensor) -> Tensor:
        """x4 only: the x2 kernels (variances / 5, 13x13, scale 2) of the intermediate stage of parameters ``params``.

        Args:
            params: ``(B, 3)`` x4 ``(lambda1, lambda2, theta)``.

        Returns:
            ``(B, 13, 13)`` (differentiable).
        """
        if self.scale != 4:
            raise ValueError("intermediate kernels exist only at x4 (the x2 stage of two chained x2 experts)")
        p = params.reshape(-1, 3)
        f = X4_VARIANCE_FACTOR
        return moesr_kernels(p[:, 0] / f, p[:, 1] / f, p[:, 2], KERNEL_SIZES[2], 2)

    # ------------------------------------------------------------------------------------------------ lookup
    def _snap(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p = canonical_params(params.detach().reshape(-1, 3).to(torch.float64).cpu())
        lam = torch.tensor(self.lambdas, dtype=torch.float64)
        i1 = (p[:, :1] - lam).abs().argmin(dim=1)
        i2 = (p[:, 1:2] - lam).abs().argmin(dim=1)
        grid_theta = torch.tensor(self.thetas, dtype=torch.float64)
        d = (p[:, 2:] - grid_theta).abs()
        j = torch.minimum(d, math.pi - d).argmin(dim=1)  # circular distance: theta and theta + pi are one kernel
        return i1, i2, j

    def nearest(self, params: Tensor) -> Tensor:
        """Grid index of estimated parameters: Eq. 12 as the official code does it, each value snapped on its own.

        After :func:`canonical_params`, ``lambda1`` and ``lambda2`` snap to the nearest grid variance and ``theta`` to
        the nearest grid angle on the circle; equal snapped variances give the isotropic kernel (official: a snapped
        ``lambda2 > lambda1`` raises ``lambda1`` to ``lambda2``; canonical input leaves only equality).

        This is *not* Eq. 12's L1 argmin: the grid is not the full product of its values (one angle for isotropic
        pairs, ``lambda2 <= lambda1``): for 2,000 ``rho`` uniform on ``[0.85, 4.37]^2 x [0, pi)`` they differ 5 % of
        the time (17 % if the isotropic kernels' placeholder angle 0 is counted as an angle). The official code
        snaps, so this does; :meth:`nearest_l1` is Eq. 12 as written (:meth:`choose`).

        Deviations from the official code: (a) canonicalisation: Eq. 9 cannot tell ``(l1, l2, theta)`` from ``(l2,
        l1, theta + pi/2)``, nothing makes KEN output ``l1 >= l2``, and the official rule made a snapped ``l2 > l1``
        isotropic (``K(4.37, 0.85, 3pi/16)``: expert 17, ``K(0.85, 4.37, 11pi/16)``: 24); (b) the angle is snapped
        on the circle (the official code snaps the raw value).

        Args:
            params: ``(B, 3)`` ``(lambda1, lambda2, theta in radians)``, e.g. KEN's output.

        Returns:
            ``(B,)`` long grid indices on ``params.device``.
        """
        i1, i2, j = self._snap(params)
        return self._nearest_table[i1, i2, j].to(params.device)

    def nearest_expert(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """Expert and input transform of the official selection, including its isotropic quirk.

        Like :meth:`nearest`, but the transform always follows the snapped angle: for an isotropic choice the
        official code still rotates/flips for the snapped ``theta`` (harmless in theory; the output differs
        slightly). :meth:`nearest` returns the grid's own entry (identity transform) instead.

        Returns:
            ``(expert_index, transform)``, ``(B,)`` long each, on ``params.device``.
        """
        i1, i2, j = self._snap(params)
        grid_index = self._nearest_table[i1, i2, j]
        transform = torch.tensor([_fold_unit(2 * int(v) + 1)[1] for v in j], dtype=torch.long)
        return self.expert_index[grid_index].to(params.device), transform.to(params.device)

    def nearest_l1(self, params: Tensor) -> Tensor:
        """Eq. 12 as written: ``argmin_i |l1 - l1_i| + |l2 - l2_i| + |theta - theta_i|`` over the grid -> ``(B,)``.

        ``params`` made canonical first; the angle difference on the circle of period ``pi``, and 0 to isotropic grid
        kernels (the same kernel at every angle; the official list's ``theta = 0`` is a placeholder); ties go to the
        first grid kernel. On ``params.device``.
        """
        p = canonical_params(params.detach().reshape(-1, 3).to(torch.float64))
        grid = self.params.to(p.device)
        d_theta = (p[:, None, 2] - grid[None, :, 2]).abs()
        d_theta = torch.minimum(d_theta, math.pi - d_theta) * (self.theta_index >= 0).to(p.device)
        dist = (p[:, None, :2] - grid[None, :, :2]).abs().sum(dim=-1) + d_theta
        return dist.argmin(dim=1).to(params.device)

    def choose(self, params: Tensor, rule: ExpertChoice = "snap") -> Tensor:
        """Grid index of estimated parameters ``(B, 3)`` by ``rule`` (MoESR inference's ``expert_choice``).

        ``rule``: ``"snap"`` :meth:`nearest` (the official code); ``"eq12"`` :meth:`nearest_l1` (Eq. 12 as written,
        L1 in parameter space); ``"kernel"``: the grid kernel nearest to ``K(params)`` in sum of absolute pixel
        differences (:meth:`kernel_nearest`, Eq. 9's distance). Returns ``(B,)`` long indices on ``params.device``.
        """
        if rule == "snap":
            return self.nearest(params)
        if rule == "eq12":
            return self.nearest_l1(params)
        if rule == "kernel":
            p = params.detach().reshape(-1, 3).to(torch.float64)
            return self.kernel_nearest(moesr_kernels(p[:, 0], p[:, 1], p[:, 2], self.kernel_size, self.scale))
        raise ValueError(f"expert choice must be 'snap', 'eq12' or 'kernel', got {rule!r}")

    def kernel_nearest(self, kernels: Tensor) -> Tensor:
        """Grid index of the grid kernel closest in sum of absolute errors to each of ``kernels`` ``(B, k, k)``."""
        grid = self.kernels(kernels.dtype).to(kernels.device)
        return (kernels[:, None] - grid[None]).abs().sum(dim=(-2, -1)).argmin(dim=1)
